"""The `images` layout on generated unlabeled folder trees: rows, views, patients, boxes, path safety."""

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.io.indexing import build_index
from engine.io.layouts import LayoutSettings, check_layout, patient_of, view_of
from engine.runtime.decode import decode_batch

IMAGES = LayoutSettings(layout="images")
VIEW = check_layout(IMAGES).view


def write_image(path: Path, image: np.ndarray) -> Path:
    """Writes `image` with the codec of the path's extension, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def image_root(tmp_path) -> Path:
    """Returns an unlabeled tree: 8-bit JPEG, 16-bit PNG, TIFF, a nested folder, an XML, a stray text file."""
    root = tmp_path / "clinic"
    gray = np.full((64, 16), 90, np.uint8)
    write_image(root / "p7_ANT.jpg", gray)
    write_image(root / "p7_POST.png", (np.arange(64 * 16, dtype=np.uint16) % 140).reshape(64, 16))
    write_image(root / "2024" / "posterior" / "p9.tif", gray)
    write_image(root / "2024" / "patient3.png", gray)
    (root / "p7_ANT.xml").write_text(
        "<annotation><size><width>16</width><height>64</height></size><object><name>abnormal</name>"
        "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>8</xmax><ymax>20</ymax></bndbox></object></annotation>"
    )
    (root / "2024" / "readme.txt").write_text("not an image")
    return root


def test_every_image_in_the_tree_is_an_unlabeled_row_with_view_and_stem_patient(image_root):
    result = build_index(image_root, layout=IMAGES)
    index = result.index
    assert list(index["path"]) == ["p7_ANT.jpg", "p7_POST.png", "2024/patient3.png", "2024/posterior/p9.tif"]
    assert list(index["image_id"]) == list(index["path"])
    assert list(index["view"]) == ["ANT", "POST", "unknown", "POST"]  # "patient" holds "ant" but not as a word
    assert list(index["patient_id"]) == ["p7_ANT", "p7_POST", "patient3", "p9"]
    assert list(index["folder"]) == [".", ".", "2024", "2024/posterior"]
    assert index["label"].isna().all()
    assert list(index["has_xml"]) == [True, False, False, False]
    assert result.errors.empty
    assert result.lines_listed == len(index) + len(result.listing_errors()) == 4


def test_a_voc_xml_beside_an_image_gives_its_gt_boxes(image_root):
    boxes = build_index(image_root, layout=IMAGES).gt_boxes  # VOC 1-based inclusive -> 0-based, x2/y2 exclusive
    rows = boxes[["image_id", "cls", "x1", "y1", "x2", "y2"]].values.tolist()
    assert rows == [["p7_ANT.jpg", "Abnormal", 1, 2, 8, 20]]


def test_a_patient_pattern_pairs_the_views_and_a_miss_is_reported(image_root):
    layout = LayoutSettings(layout="images", patient_pattern=r"(?P<patient>p\d+)(?:_(?:ANT|POST))?\.\w+$")
    result = build_index(image_root, layout=layout)
    assert list(result.index["patient_id"]) == ["p7", "p7", "patient3", "p9"]
    assert [(row.image_id, row.reason.split(":")[0]) for row in result.errors.itertuples()] == [
        ("2024/patient3.png", "no_patient_match")
    ]
    assert result.listing_errors().empty  # a finding on an indexed row, not a lost input


def test_image_rows_decode_with_the_count_rule_and_16_bit_counts_are_scaled(image_root):
    index = build_index(image_root, layout=IMAGES).index
    out = decode_batch({"path": index["path"].to_numpy()}, str(image_root), 64, 16, count_scale="fixed:0.5")
    assert list(out["error"]) == ["", "", "", ""]
    counts = cv2.imread(str(image_root / "p7_POST.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(out["canvas"][1], np.minimum(counts * 2, 255))  # 0.5 counts per grey level
    np.testing.assert_array_equal(out["counts_per_grey"], [1.0, 0.5, 1.0, 1.0])  # 8-bit images pass through
    assert (out["canvas"][0] == 90).all()


def test_symlinks_leaving_the_root_are_errors_and_a_symlink_loop_is_listed_once(image_root, tmp_path):
    outside = write_image(tmp_path / "outside" / "secret_ANT.png", np.zeros((8, 8), np.uint8))
    os.symlink(outside, image_root / "leak_ANT.png")
    os.symlink(outside.parent, image_root / "elsewhere")
    os.symlink(image_root / "2024", image_root / "2024" / "again")
    result = build_index(image_root, layout=IMAGES)
    assert "secret_ANT" not in " ".join(result.index["path"])
    assert len(result.index) == 4
    assert sorted((row.file, row.reason.split(":")[0]) for row in result.errors.itertuples()) == [
        ("2024/again", "duplicate_folder"),
        ("elsewhere", "unsafe_path"),
        ("leak_ANT.png", "unsafe_path"),
    ]
    assert result.lines_listed == len(result.index) + len(result.listing_errors()) == 7


def test_view_of_takes_the_match_nearest_the_file_and_needs_a_whole_word():
    assert view_of("ANT/p1_post.png", VIEW) == "POST"
    assert view_of("Anterior-1.png", VIEW) == "ANT"
    assert view_of("postop/plant.png", VIEW) == "unknown"
    assert view_of("scan.png", VIEW) == "unknown"


def test_patient_of_uses_the_named_group_the_match_or_the_stem():
    assert patient_of("a/b/17_ANT.png", None) == "17_ANT"
    assert patient_of("a/17_ANT.png", check_layout(LayoutSettings(patient_pattern=r"\d+")).patient) == "17"
    assert patient_of("a/x.png", check_layout(LayoutSettings(patient_pattern=r"(?P<patient>\d+)_")).patient) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (LayoutSettings(layout="pacs"), r"layout 'pacs': unknown \(choices: bs80k, images, dicom\)"),
        (LayoutSettings(patient_pattern="(unclosed"), r"layout pattern '\(unclosed'"),
        (LayoutSettings(view_pattern="(?i)front|back"), r"needs a group \(\?P<ANT>"),
    ],
)
def test_invalid_layout_settings_raise_before_any_listing(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        build_index(tmp_path / "nowhere", layout=settings)


def test_the_default_view_pattern_is_case_insensitive():
    assert [view_of(name, VIEW) for name in ("x_ant.png", "x_POSTERIOR.png", "x_Post.png")] == ["ANT", "POST", "POST"]
