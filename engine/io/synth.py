"""Owns the synthetic BS-80K generator: bone-scan-like data in the real dataset's on-disk layout.

Layout under the root: 28 folders, each `F/F.txt` with lines `<id>.jpg<TAB><label>`; whole-body JPEGs
(256 wide x 1024 tall) in `wholeBodyANT/`, `wholeBodyPOST/`; Pascal-VOC XML (1-based inclusive px) in
`wholeBodyANT/ant/`, `wholeBodyPOST/post/`; region crops cut from the whole-body views in the 26 region folders.
Beside them, never listed in a label file and never read by the indexer, the model or tuning: each abnormal
whole-body image's true lesion masks (`lesion_mask_path`, `read_lesion_masks`) and `synth_truth.jsonl`, one
line per whole-body image saying what was drawn. The patients live in `engine.core.synth.patients` (draws) and
`engine.core.synth.anatomy` (geometry and rendering).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.core.scans.qc import ImageQc, image_qc, summarize_qc
from engine.core.synth.anatomy import (
    IMAGE_H,
    IMAGE_W,
    REF_HEIGHT,
    REGIONS,
    Patient,
    lesion_mask,
    render_tissue,
    render_view,
    view_x,
)
from engine.core.synth.patients import sample_patient

logger = logging.getLogger(__name__)

VIEWS = ("ANT", "POST")
WHOLE_BODY_FOLDERS = ("wholeBodyANT", "wholeBodyPOST")
SIDED_PARTS, MIDLINE_PARTS = ("ankle", "chest", "elbow", "knee", "sho"), ("head", "pelvis", "vertbra")
REGION_FOLDERS: tuple[str, ...] = tuple(
    sorted(
        [f"{part}{side}{view}" for part in SIDED_PARTS for side in "LR" for view in VIEWS]
        + [f"{part}{view}" for part in MIDLINE_PARTS for view in VIEWS]
    )
)
JPEG_QUALITY = 95  # fixed, so that encoding is byte-deterministic
MANIFEST = "synth.json"  # written last at the root: the generator's parameters (a crashed run has none)
TRUTH = "synth_truth.jsonl"  # at the root: one JSON line per whole-body image (what was drawn)
MASK_DIR = "lesion_masks"  # <whole-body folder>/lesion_masks/<id>.png: the image's lesion label map
CROP_PX = (48, 180)  # region crop side limits, px

VocObject = tuple[str, tuple[int, int, int, int]]  # (name, (xmin, ymin, xmax, ymax)), VOC 1-based inclusive px


@dataclass(frozen=True)
class SynthSummary:
    """What `generate_dataset` wrote."""

    out: str  # dataset root written
    patients: int
    images: int  # image files written (whole-body + region crops)
    abnormal_patients: int  # patients with an Abnormal box in at least one view
    xml_files: int
    seconds: float
    reused: bool = False  # True: the folder already held a dataset generated with the same parameters


def xml_subdir(folder: str) -> str:
    """Returns the VOC XML subfolder ("ant" or "post") of a whole-body folder name such as "wholeBodyPOST"."""
    for view in ("POST", "ANT"):
        if folder.endswith(view):
            return view.lower()
    raise ValueError(f"folder {folder!r}: name must end with ANT or POST (known: {WHOLE_BODY_FOLDERS})")


def _voc_objects(patient: Patient, view: int) -> list[VocObject]:
    """Returns one VOC object per spot boxed in the view, box in the view's frame, clamped to the image."""
    objects = []
    for spot in patient.spots:
        if spot.boxed[view]:
            x = view_x(spot.x, view)
            x1, x2 = max(0, math.floor(x - spot.rx)), min(IMAGE_W - 1, math.ceil(x + spot.rx))
            y1, y2 = max(0, math.floor(spot.y - spot.ry)), min(IMAGE_H - 1, math.ceil(spot.y + spot.ry))
            objects.append((spot.name, (x1 + 1, y1 + 1, x2 + 1, y2 + 1)))
    return objects


def _voc_xml(folder: str, pid: int, objects: list[VocObject]) -> str:
    """Returns Pascal-VOC XML text for one whole-body image."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{pid}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", IMAGE_W), ("height", IMAGE_H), ("depth", 1)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, box in objects:
        obj = ET.SubElement(root, "object")
        for tag, text in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = text
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    """Writes a uint8 grayscale array as a JPEG at JPEG_QUALITY."""
    is_ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not is_ok:
        raise OSError(f"{path}: JPEG encoding failed for an array of shape {image.shape}")
    path.write_bytes(encoded.tobytes())


def _write_crops(root: Path, patient: Patient, view: int, image: np.ndarray, labels: dict) -> int:
    """Returns the number of region crops written for one view (13).

    A crop is abnormal when the centre of a lesion visible in that view lies inside it.
    """
    written = 0
    for (part, (u, t, width, height)), scale in zip(REGIONS.items(), patient.crop_scale, strict=True):
        crop_w = int(np.clip(round(width * scale * patient.body.width), *CROP_PX))
        crop_h = int(np.clip(round(height * scale * patient.body.height / REF_HEIGHT), *CROP_PX))
        for side, sign in (("L", 1), ("R", -1)) if u else (("", 1),):
            x, y = patient.body.point(sign * u, t)
            x0 = int(np.clip(round(view_x(x, view) - crop_w / 2), 0, IMAGE_W - crop_w))
            y0 = int(np.clip(round(y - crop_h / 2), 0, IMAGE_H - crop_h))
            label = int(
                any(
                    s.name == "Abnormal"
                    and s.boxed[view]
                    and x0 <= view_x(s.x, view) < x0 + crop_w
                    and y0 <= s.y < y0 + crop_h
                    for s in patient.spots
                )
            )
            folder = f"{part}{side}{VIEWS[view]}"
            _write_jpeg(root / folder / f"{patient.pid}.jpg", image[y0 : y0 + crop_h, x0 : x0 + crop_w])
            labels[folder].append((patient.pid, label))
            written += 1
    return written


def lesion_mask_path(image_id: str) -> str:
    """Returns the root-relative path of a whole-body image's lesion mask PNG, e.g. "wholeBodyPOST/12.jpg" ->
    "wholeBodyPOST/lesion_masks/12.png". The file exists exactly for the abnormal whole-body images."""
    folder, name = image_id.split("/", 1)
    return f"{folder}/{MASK_DIR}/{Path(name).stem}.png"


def read_lesion_masks(data: bytes) -> np.ndarray:
    """Returns the bool (K, H, W) masks of the K lesions of one lesion-mask PNG (`lesion_mask_path`), in the
    order of the image's Abnormal XML objects; raises ValueError if the bytes are not a grey PNG."""
    labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2:
        raise ValueError("lesion mask: not a single-channel PNG")
    return labels[None] == np.arange(1, int(labels.max()) + 1, dtype=labels.dtype)[:, None, None]


def _truth_line(patient: Patient, view: int, lesions: int) -> dict:
    """Returns the synth_truth.jsonl record of one whole-body image."""
    image_id = f"{WHOLE_BODY_FOLDERS[view]}/{patient.pid}.jpg"
    return {
        "image_id": image_id,
        "noise_frame": patient.is_noise[view],
        "low_count": patient.count_factor < 1,
        "body_top_px": round(patient.body.top, 1),
        "body_height_px": round(patient.body.height, 1),
        "lesions": lesions,
        "lesion_mask": lesion_mask_path(image_id) if lesions else None,
    }


def _write_patient(root: Path, patient: Patient, seed: int, labels: dict, truth: list) -> tuple[int, int, bool]:
    """Returns (images, xml files, is abnormal in any view) after writing one patient's files.

    View v's counts draw from `np.random.default_rng([seed, pid, 1 + v])`, so one view never shifts the other's.
    """
    tissue = render_tissue(patient)
    images = xml_files = 0
    is_abnormal = False
    for view, folder in enumerate(WHOLE_BODY_FOLDERS):
        image = render_view(patient, view, tissue, np.random.default_rng([seed, patient.pid, 1 + view]))
        objects = _voc_objects(patient, view)
        label = int(any(name == "Abnormal" for name, _ in objects))
        _write_jpeg(root / folder / f"{patient.pid}.jpg", image)
        labels[folder].append((patient.pid, label))
        if label or patient.has_normal_xml[view]:
            xml_path = root / folder / xml_subdir(folder) / f"{patient.pid}.xml"
            xml_path.write_text(_voc_xml(folder, patient.pid, objects), encoding="utf-8", newline="\n")
            xml_files += 1
        if label:
            png = cv2.imencode(".png", lesion_mask(patient, view))[1]
            (root / lesion_mask_path(f"{folder}/{patient.pid}.jpg")).write_bytes(png.tobytes())
        truth.append(_truth_line(patient, view, sum(name == "Abnormal" for name, _ in objects)))
        if patient.has_regions:
            images += _write_crops(root, patient, view, image, labels)
        images += 1
        is_abnormal = is_abnormal or bool(label)
    return images, xml_files, is_abnormal


def _check_params(patients: int, region_fraction: float, lesion_gain: float, lesion_size: float) -> None:
    """Raises ValueError naming the first invalid generator parameter."""
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise ValueError(f"patients={patients!r}: must be an int >= 1")
    if not 0.0 <= region_fraction <= 1.0:
        raise ValueError(f"region_fraction={region_fraction!r}: must lie in [0, 1]")
    for name, value in (("lesion_gain", lesion_gain), ("lesion_size", lesion_size)):
        if not value > 0:
            raise ValueError(f"{name}={value!r}: must be > 0")


def _existing(root: Path, params: dict, replace: bool = False) -> dict | None:
    """Returns the manifest of a non-empty `root` generated with `params` (None if `root` is empty or new).

    With `replace`, a `root` this generator wrote with other parameters (its manifest says so) is removed first.

    Raises:
        FileExistsError: `root` holds anything else.
    """
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return None
    manifest = root / MANIFEST
    written = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    if written.get("params") == params:
        return written
    if replace and written.get("params") and root.is_dir() and not root.is_symlink():
        logger.info("synthetic BS-80K: %s was generated with %s; replaced", root, written["params"])
        shutil.rmtree(root)
        return None
    raise FileExistsError(
        f"{root}: exists and is not an empty folder"
        + (f" (generated with {written['params']}, not {params})" if written.get("params") else "")
        + "; synthetic data never overwrites files: remove it, choose another synth.out"
        + (" or set synth.replace=true" if written.get("params") else "")
    )


def generate_dataset(
    out: str | Path,
    patients: int = 300,
    seed: int = 0,
    region_fraction: float = 0.9,
    lesion_gain: float = 1.0,
    lesion_size: float = 1.0,
    replace: bool = False,
) -> SynthSummary:
    """Returns a summary after writing a synthetic BS-80K-shaped dataset of patients 1..`patients` under `out`.

    Patient i's files depend only on (seed, i): never on `patients`, and its images not on `region_fraction`.

    Args:
        out: dataset root; created. An existing non-empty `out` raises FileExistsError, unless its `synth.json`
            records the same parameters: then it is reused as it is (`SynthSummary.reused`).
        patients: number of patients (ids 1..patients), each with an ANT and a POST whole-body image.
        seed: base seed; patient i draws from `np.random.default_rng([seed, i])`.
        region_fraction: share of patients (drawn per patient) that get the 26 region crops.
        lesion_gain: factor on every lesion's peak uptake (> 0; 1 = the realistic default, larger = easier).
        lesion_size: factor on every lesion's radius (> 0; 1 = 3-10 px).
        replace: regenerate an `out` this generator wrote with other parameters (never a folder without its
            `synth.json`).
    """
    _check_params(patients, region_fraction, lesion_gain, lesion_size)
    root, start = Path(out), time.perf_counter()
    params = {
        "patients": patients,
        "seed": seed,
        "region_fraction": region_fraction,
        "lesion_gain": lesion_gain,
        "lesion_size": lesion_size,
    }
    written = _existing(root, params, replace)
    if written is not None:
        logger.info("synthetic BS-80K: %s already holds these parameters; reused", root)
        return SynthSummary(str(root), patients, **written["counts"], seconds=time.perf_counter() - start, reused=True)
    for folder in WHOLE_BODY_FOLDERS:
        for sub in (xml_subdir(folder), MASK_DIR):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
    for folder in REGION_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[tuple[int, int]]] = {folder: [] for folder in WHOLE_BODY_FOLDERS + REGION_FOLDERS}
    truth: list[dict] = []
    images = xml_files = abnormal = 0
    for pid in range(1, patients + 1):
        patient = sample_patient(np.random.default_rng([seed, pid]), pid, region_fraction, (lesion_gain, lesion_size))
        counts = _write_patient(root, patient, seed, labels, truth)
        images, xml_files, abnormal = images + counts[0], xml_files + counts[1], abnormal + counts[2]
    for folder, rows in labels.items():
        text = "".join(f"{pid}.jpg\t{label}\n" for pid, label in rows)
        (root / folder / f"{folder}.txt").write_text(text, encoding="utf-8", newline="\n")
    (root / TRUTH).write_text("".join(json.dumps(line) + "\n" for line in truth), encoding="utf-8", newline="\n")
    counts = {"images": images, "abnormal_patients": abnormal, "xml_files": xml_files}
    (root / MANIFEST).write_text(json.dumps({"params": params, "counts": counts}, indent=2), encoding="utf-8")
    summary = SynthSummary(str(root), patients, images, abnormal, xml_files, time.perf_counter() - start)
    logger.info("synthetic BS-80K: %s", summary)
    return summary


def whole_body_qc(root: str | Path) -> list[tuple[str, ImageQc]]:
    """Returns (image_id, QC) of every whole-body image listed in the label files of a local dataset root."""
    results = []
    for folder in WHOLE_BODY_FOLDERS:
        for line in (Path(root) / folder / f"{folder}.txt").read_text(encoding="utf-8").splitlines():
            name = line.split("\t", 1)[0]
            image = cv2.imread(str(Path(root) / folder / name), cv2.IMREAD_GRAYSCALE)
            results.append((f"{folder}/{name}", image_qc(image)))
    return results


def whole_body_statistics(root: str | Path) -> dict[str, float | int]:
    """Returns `engine.core.scans.qc.summarize_qc` over the whole-body images of a local dataset root."""
    return summarize_qc(qc for _, qc in whole_body_qc(root))
