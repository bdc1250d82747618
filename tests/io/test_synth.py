"""Synthetic BS-80K generator: layout, labels vs. boxes, crops, determinism, visible lesions and their masks."""

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.io.synth import (
    REGION_FOLDERS,
    WHOLE_BODY_FOLDERS,
    generate_dataset,
    lesion_mask_path,
    read_lesion_masks,
    xml_subdir,
)

PATIENTS = 40
LINE = re.compile(r"^(\d+)\.jpg\t([01])$")
SIDED = re.compile(r"^(?:ankle|chest|elbow|knee|sho)([LR])(ANT|POST)$")


def read_labels(root: Path, folder: str) -> dict[int, int]:
    text = (root / folder / f"{folder}.txt").read_bytes().decode()
    assert "\r" not in text
    matches = [LINE.match(line) for line in text.splitlines()]
    assert all(matches), f"{folder}: malformed line"
    return {int(m.group(1)): int(m.group(2)) for m in matches}


def read_boxes(root: Path, folder: str, pid: int) -> list[tuple[str, int, int, int, int]] | None:
    path = root / folder / xml_subdir(folder) / f"{pid}.xml"
    if not path.exists():
        return None
    annotation = ET.parse(path).getroot()
    assert annotation.findtext("filename") == f"{pid}.jpg"
    assert [annotation.findtext(f"size/{tag}") for tag in ("width", "height", "depth")] == ["256", "1024", "1"]
    return [
        (obj.findtext("name"), *(int(obj.findtext(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax")))
        for obj in annotation.iter("object")
    ]


def read_gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("synth") / "bs80k"
    return root, generate_dataset(root, patients=PATIENTS, seed=7, region_fraction=0.8)


@pytest.fixture(scope="module")
def crop_positions(dataset) -> dict[tuple[str, int], tuple[int, int, int, int]]:
    """(folder, pid) -> (x0, y0, width, height) of each region crop, found in its whole-body view by matching.

    Crops with fewer than 20 % non-zero pixels (sparse counts: feet, noise frames) match in many places; skipped.
    """
    root, _ = dataset
    positions, crops = {}, 0
    for folder in REGION_FOLDERS:
        whole_body = "wholeBodyPOST" if folder.endswith("POST") else "wholeBodyANT"
        for pid in read_labels(root, folder):
            crop = read_gray(root / folder / f"{pid}.jpg").astype(np.float32)
            crops += 1
            if np.count_nonzero(crop) < 0.2 * crop.size:
                continue
            scores = cv2.matchTemplate(
                read_gray(root / whole_body / f"{pid}.jpg").astype(np.float32), crop, cv2.TM_SQDIFF
            )
            x0, y0 = cv2.minMaxLoc(scores)[2]
            positions[folder, pid] = (x0, y0, crop.shape[1], crop.shape[0])
    assert len(positions) > 0.8 * crops
    return positions


def test_region_folder_names_follow_bs80k():
    assert len(REGION_FOLDERS) == 26
    assert list(REGION_FOLDERS) == sorted(REGION_FOLDERS)
    assert {"kneeLANT", "shoRPOST", "chestLPOST", "headANT", "vertbraPOST", "pelvisANT"} <= set(REGION_FOLDERS)
    assert not set(REGION_FOLDERS) & set(WHOLE_BODY_FOLDERS)
    assert (xml_subdir("wholeBodyANT"), xml_subdir("wholeBodyPOST")) == ("ant", "post")
    with pytest.raises(ValueError, match="wholeBodyLAT"):
        xml_subdir("wholeBodyLAT")


def test_dataset_has_28_folders_each_with_a_sorted_label_file(dataset):
    root, summary = dataset
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(REGION_FOLDERS + WHOLE_BODY_FOLDERS)
    assert (root / "synth.json").is_file()
    for folder in REGION_FOLDERS + WHOLE_BODY_FOLDERS:
        ids = list(read_labels(root, folder))
        assert ids == sorted(ids)
        assert sorted(p.name for p in (root / folder).glob("*.jpg")) == sorted(f"{pid}.jpg" for pid in ids)
    region_ids = set(read_labels(root, "kneeLANT"))
    assert all(set(read_labels(root, folder)) == region_ids for folder in REGION_FOLDERS)
    assert 0.6 * PATIENTS < len(region_ids) < PATIENTS
    assert summary.images == 2 * PATIENTS + 26 * len(region_ids)
    assert summary.patients == PATIENTS
    assert summary.out == str(root)


def test_ant_and_post_list_every_patient_as_1024_by_256_gray_images(dataset):
    root, _ = dataset
    for folder in WHOLE_BODY_FOLDERS:
        assert list(read_labels(root, folder)) == list(range(1, PATIENTS + 1))
        for pid in (1, PATIENTS):
            image = read_gray(root / folder / f"{pid}.jpg")
            assert image.shape == (1024, 256)
            assert image.dtype == np.uint8
            assert np.median(image[:, :8]) <= 3  # dark background at the image edge


def test_labels_match_abnormal_boxes_and_boxes_lie_in_the_image(dataset):
    root, summary = dataset
    abnormal_patients, normal_xml, normal_images = set(), 0, 0
    for folder in WHOLE_BODY_FOLDERS:
        for pid, label in read_labels(root, folder).items():
            boxes = read_boxes(root, folder, pid)
            if label:
                assert boxes is not None
                assert any(name == "Abnormal" for name, *_ in boxes)
                abnormal_patients.add(pid)
            else:
                normal_images += 1
                normal_xml += boxes is not None
                assert boxes is None or all(name == "Normal" for name, *_ in boxes)
            for name, x1, y1, x2, y2 in boxes or []:
                assert name in ("Abnormal", "Normal")
                assert 1 <= x1 <= x2 <= 256
                assert 1 <= y1 <= y2 <= 1024
    assert summary.abnormal_patients == len(abnormal_patients) > 0
    assert 0.5 < normal_xml / normal_images < 0.95  # most normal images have an XML, not all
    assert summary.xml_files == len(list(root.glob("wholeBody*/*/*.xml")))


def test_post_lesion_boxes_mirror_the_ant_ones(dataset):
    root, _ = dataset
    post_boxes, mirrored = 0, 0
    for pid in range(1, PATIENTS + 1):
        ant = set(read_boxes(root, "wholeBodyANT", pid) or [])
        for name, x1, y1, x2, y2 in read_boxes(root, "wholeBodyPOST", pid) or []:
            if name == "Abnormal" and ant:
                post_boxes += 1
                mirrored += (name, 257 - x2, y1, 257 - x1, y2) in ant
    assert post_boxes > 0
    assert mirrored / post_boxes > 0.8


def test_region_crops_come_from_their_view_at_anatomical_places(dataset, crop_positions):
    root, _ = dataset
    for (folder, pid), (x0, y0, width, height) in crop_positions.items():
        whole_body = "wholeBodyPOST" if folder.endswith("POST") else "wholeBodyANT"
        source = read_gray(root / whole_body / f"{pid}.jpg")[y0 : y0 + height, x0 : x0 + width].astype(float)
        crop = read_gray(root / folder / f"{pid}.jpg").astype(float)
        assert 48 <= min(width, height)
        assert max(width, height) <= 180
        assert np.abs(source - crop).mean() < 3, f"{folder}/{pid}.jpg is not cut from {whole_body}/{pid}.jpg"
        sided = SIDED.match(folder)
        if sided:  # patient's left: viewer's right in ANT, viewer's left in POST
            assert (x0 + width / 2 > 128) == ((sided.group(1) == "L") == (sided.group(2) == "ANT")), folder
    for pid in {pid for folder, pid in crop_positions if folder == "headANT"}:
        parts = ("head", "shoL", "chestL", "pelvis", "kneeL", "ankleL")
        boxes = [crop_positions.get((f"{part}ANT", pid)) for part in parts]
        boxes = [box for box in boxes if box is not None]
        centre_rows = [y0 + height / 2 for _, y0, _, height in boxes]
        assert centre_rows == sorted(centre_rows)


def test_region_labels_say_whether_a_lesion_centre_lies_in_the_crop(dataset, crop_positions):
    root, _ = dataset
    checked_abnormal = 0
    for folder in REGION_FOLDERS:
        whole_body = "wholeBodyPOST" if folder.endswith("POST") else "wholeBodyANT"
        for pid, label in read_labels(root, folder).items():
            if (folder, pid) not in crop_positions:
                continue
            x0, y0, width, height = crop_positions[folder, pid]
            centres = [
                ((x1 + x2) / 2 - 1, (y1 + y2) / 2 - 1)
                for name, x1, y1, x2, y2 in read_boxes(root, whole_body, pid) or []
                if name == "Abnormal"
            ]
            if any(min(abs(x - x0), abs(x - x0 - width), abs(y - y0), abs(y - y0 - height)) < 1 for x, y in centres):
                continue  # box centres are rounded to half a pixel: skip lesions on the crop's edge
            inside = any(x0 <= x < x0 + width and y0 <= y < y0 + height for x, y in centres)
            assert label == int(inside), f"{folder}/{pid}.jpg"
            checked_abnormal += label
    assert checked_abnormal > 0


def box_contrast(image: np.ndarray, box: tuple[int, int, int, int], margin: int = 8) -> float:
    """Returns mean of the box's top 0.1% pixels (at least 3) minus the median of the ring around the box."""
    x1, y1, x2, y2 = (v - 1 for v in box)  # VOC 1-based inclusive -> 0-based inclusive
    inside = np.sort(image[y1 : y2 + 1, x1 : x2 + 1].ravel())
    top = inside[-max(3, int(np.ceil(inside.size * 0.001))) :].mean()
    outer = np.zeros(image.shape, bool)
    outer[max(0, y1 - margin) : y2 + 1 + margin, max(0, x1 - margin) : x2 + 1 + margin] = True
    outer[y1 : y2 + 1, x1 : x2 + 1] = False
    return float(top - np.median(image[outer]))


def test_lesions_are_brighter_than_their_surroundings_and_normal_images_have_hot_spots(dataset):
    root, _ = dataset
    lesion_contrasts, normal_image_hot_spots = [], []
    for folder in WHOLE_BODY_FOLDERS:
        for pid, label in read_labels(root, folder).items():
            image = read_gray(root / folder / f"{pid}.jpg")
            boxes = read_boxes(root, folder, pid) or []
            lesion_contrasts += [box_contrast(image, box) for name, *box in boxes if name == "Abnormal"]
            if not label and boxes:
                normal_image_hot_spots.append(max(box_contrast(image, box) for _, *box in boxes))
    assert min(lesion_contrasts) > 10
    assert np.median(lesion_contrasts) > 30
    assert normal_image_hot_spots
    assert min(normal_image_hot_spots) > 30


def test_same_seed_gives_identical_bytes_whatever_the_patient_count(tmp_path):
    first = file_bytes(Path(generate_dataset(tmp_path / "a", patients=3, seed=1, region_fraction=1.0).out))
    second = file_bytes(Path(generate_dataset(tmp_path / "b", patients=3, seed=1, region_fraction=1.0).out))
    longer = file_bytes(Path(generate_dataset(tmp_path / "c", patients=4, seed=1, region_fraction=1.0).out))
    other = file_bytes(Path(generate_dataset(tmp_path / "d", patients=3, seed=2, region_fraction=1.0).out))
    assert first == second
    images = (".jpg", ".xml")
    assert {name: data for name, data in longer.items() if name.endswith(images) and "/4." not in name} == {
        name: data for name, data in first.items() if name.endswith(images)
    }
    assert first["wholeBodyPOST/1.jpg"] != other["wholeBodyPOST/1.jpg"]


def test_region_fraction_zero_writes_empty_region_lists_and_the_same_whole_body_images(tmp_path):
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine
    summary = generate_dataset(tmp_path / "empty", patients=2, seed=1, region_fraction=0.0)
    full = file_bytes(Path(generate_dataset(tmp_path / "full", patients=2, seed=1, region_fraction=1.0).out))
    assert summary.images == 4
    assert all((tmp_path / "empty" / folder / f"{folder}.txt").read_text() == "" for folder in REGION_FOLDERS)
    for name in ("wholeBodyANT/1.jpg", "wholeBodyPOST/2.jpg"):
        assert (tmp_path / "empty" / name).read_bytes() == full[name]


def test_existing_non_empty_output_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_dataset(tmp_path, patients=1)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_dataset_with_the_same_parameters_is_reused_and_other_parameters_are_refused(tmp_path):
    first = generate_dataset(tmp_path / "d", patients=2, seed=1, region_fraction=0.0)
    before = file_bytes(tmp_path / "d")
    again = generate_dataset(tmp_path / "d", patients=2, seed=1, region_fraction=0.0)
    assert again.reused and not first.reused
    assert (again.images, again.abnormal_patients, again.xml_files) == (
        first.images,
        first.abnormal_patients,
        first.xml_files,
    )
    assert file_bytes(tmp_path / "d") == before
    with pytest.raises(FileExistsError, match="lesion_gain"):
        generate_dataset(tmp_path / "d", patients=2, seed=1, region_fraction=0.0, lesion_gain=2.0)
    assert file_bytes(tmp_path / "d") == before


def test_replace_regenerates_only_a_folder_the_generator_wrote(tmp_path):
    generate_dataset(tmp_path / "d", patients=2, seed=1, region_fraction=0.0)
    (tmp_path / "d" / "stale.txt").write_text("from the old parameters")
    fresh = generate_dataset(tmp_path / "d", patients=3, seed=1, region_fraction=0.0, replace=True)
    assert not fresh.reused and fresh.images == 6 and not (tmp_path / "d" / "stale.txt").exists()
    generate_dataset(tmp_path / "e", patients=3, seed=1, region_fraction=0.0)
    assert file_bytes(tmp_path / "d") == file_bytes(tmp_path / "e")  # as if generated afresh
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan.jpg").write_bytes(b"a clinic's file")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        generate_dataset(tmp_path / "mine", patients=1, replace=True)
    assert (tmp_path / "mine" / "scan.jpg").read_bytes() == b"a clinic's file"


@pytest.mark.parametrize(
    ("patients", "region_fraction", "message"), [(0, 0.5, "patients=0"), (2, 1.5, "region_fraction=1.5")]
)
def test_invalid_arguments_raise_value_error(tmp_path, patients, region_fraction, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "out", patients=patients, region_fraction=region_fraction)


def test_lesion_knobs_change_only_the_lesions(tmp_path):
    """lesion_gain / lesion_size scale the Abnormal spots after the draws: labels, normal images and the lesion
    centres stay; abnormal boxes grow around the same centres and lesions get brighter."""
    plain, easy = tmp_path / "plain", tmp_path / "easy"
    generate_dataset(plain, patients=12, seed=4, region_fraction=0.0)
    generate_dataset(easy, patients=12, seed=4, region_fraction=0.0, lesion_gain=2.0, lesion_size=1.5)
    folder = "wholeBodyPOST"
    labels = read_labels(plain, folder)
    assert labels == read_labels(easy, folder) and 0 < sum(labels.values()) < len(labels)
    for pid, label in labels.items():
        image_plain, image_easy = read_gray(plain / folder / f"{pid}.jpg"), read_gray(easy / folder / f"{pid}.jpg")
        if label == 0:
            assert np.array_equal(image_plain, image_easy)
            continue
        boxes_plain = [b for b in read_boxes(plain, folder, pid) if b[0] == "Abnormal"]
        boxes_easy = [b for b in read_boxes(easy, folder, pid) if b[0] == "Abnormal"]
        assert len(boxes_plain) == len(boxes_easy)
        for (_, *small), (_, *large) in zip(boxes_plain, boxes_easy, strict=True):
            small, large = np.array(small), np.array(large)
            assert np.all(large[:2] <= small[:2]) and np.all(large[2:] >= small[2:])  # same centre, grown
            inside = (slice(small[1], small[3]), slice(small[0], small[2]))
            assert image_easy[inside].mean() >= image_plain[inside].mean()


@pytest.mark.parametrize("knob", ["lesion_gain", "lesion_size"])
def test_lesion_knobs_must_be_positive(tmp_path, knob):
    with pytest.raises(ValueError, match=knob):
        generate_dataset(tmp_path / "out", patients=1, **{knob: 0.0})


def test_lesion_masks_hold_one_mask_per_abnormal_box_inside_it(dataset):
    root, _ = dataset
    masks_checked = 0
    for folder in WHOLE_BODY_FOLDERS:
        for pid, label in read_labels(root, folder).items():
            path = root / lesion_mask_path(f"{folder}/{pid}.jpg")
            assert path.is_file() == bool(label)
            if not label:
                continue
            masks = read_lesion_masks(path.read_bytes())
            boxes = [box for name, *box in read_boxes(root, folder, pid) if name == "Abnormal"]
            assert masks.shape == (len(boxes), 1024, 256) and masks.dtype == bool
            for mask, (x1, y1, x2, y2) in zip(masks, boxes, strict=True):
                rows, cols = np.nonzero(mask)
                if rows.size:  # an overlapped lesion may be fully covered by a later one
                    assert (
                        x1 - 1 <= cols.min() and cols.max() <= x2 - 1 and y1 - 1 <= rows.min() and rows.max() <= y2 - 1
                    )
                    masks_checked += 1
    assert masks_checked > 0


def test_truth_file_lists_every_whole_body_image_once(dataset):
    root, _ = dataset
    lines = [json.loads(line) for line in (root / "synth_truth.jsonl").read_text().splitlines()]
    assert sorted(line["image_id"] for line in lines) == sorted(
        f"{folder}/{pid}.jpg" for folder in WHOLE_BODY_FOLDERS for pid in range(1, PATIENTS + 1)
    )
    for line in lines:
        assert (line["lesion_mask"] is not None) == (line["lesions"] > 0)
