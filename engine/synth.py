"""Owns the synthetic BS-80K generator: bone-scan-like data in the real dataset's on-disk layout (DESIGN.md §2).

Layout under the root: 28 folders, each `F/F.txt` with lines `<id>.jpg<TAB><label>`; whole-body JPEGs
(256 wide x 1024 tall) in `wholeBodyANT/`, `wholeBodyPOST/`; Pascal-VOC XML (1-based inclusive px) in
`wholeBodyANT/ant/`, `wholeBodyPOST/post/`; region crops cut from the whole-body views in the 26 region folders.
The patients themselves (anatomy, hot spots, rendering) live in `engine.synth_anatomy`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.synth_anatomy import (
    IMAGE_H,
    IMAGE_W,
    REF_HEIGHT,
    REGIONS,
    Patient,
    render_tissue,
    render_view,
    sample_patient,
)

logger = logging.getLogger(__name__)

VIEWS = ("ANT", "POST")
WHOLE_BODY_FOLDERS = ("wholeBodyANT", "wholeBodyPOST")
REGION_FOLDERS: tuple[str, ...] = tuple(
    sorted(
        [
            f"{part}{side}{view}"
            for part in ("ankle", "chest", "elbow", "knee", "sho")
            for side in "LR"
            for view in VIEWS
        ]
        + [f"{part}{view}" for part in ("head", "pelvis", "vertbra") for view in VIEWS]
    )
)
JPEG_QUALITY = 95  # fixed, so that encoding is byte-deterministic
MANIFEST = "synth.json"  # written last at the root: the generator's parameters (a crashed run has none)

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


def _view_x(x: float, view: int) -> float:
    """Returns the x of an ANT-frame x in view 0 (ANT) or 1 (POST, mirrored)."""
    return x if view == 0 else IMAGE_W - 1 - x


def _voc_objects(patient: Patient, view: int) -> list[VocObject]:
    """Returns one VOC object per spot boxed in the view, box in the view's frame, clamped to the image."""
    objects = []
    for spot in patient.spots:
        if spot.boxed[view]:
            x = _view_x(spot.x, view)
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
        crop_w = round(width * scale * patient.body.width)
        crop_h = round(height * scale * patient.body.height / REF_HEIGHT)
        for side, sign in (("L", 1), ("R", -1)) if u else (("", 1),):
            x, y = patient.body.point(sign * u, t)
            x0 = int(np.clip(round(_view_x(x, view) - crop_w / 2), 0, IMAGE_W - crop_w))
            y0 = int(np.clip(round(y - crop_h / 2), 0, IMAGE_H - crop_h))
            label = int(
                any(
                    s.name == "Abnormal"
                    and s.boxed[view]
                    and x0 <= _view_x(s.x, view) < x0 + crop_w
                    and y0 <= s.y < y0 + crop_h
                    for s in patient.spots
                )
            )
            folder = f"{part}{side}{VIEWS[view]}"
            _write_jpeg(root / folder / f"{patient.pid}.jpg", image[y0 : y0 + crop_h, x0 : x0 + crop_w])
            labels[folder].append((patient.pid, label))
            written += 1
    return written


def _write_patient(root: Path, patient: Patient, rng: np.random.Generator, labels: dict) -> tuple[int, int, bool]:
    """Returns (images, xml files, is abnormal in any view) after writing one patient's files."""
    tissue = render_tissue(patient)
    images = xml_files = 0
    is_abnormal = False
    for view, folder in enumerate(WHOLE_BODY_FOLDERS):
        image = render_view(patient, view, tissue, rng)
        objects = _voc_objects(patient, view)
        label = int(any(name == "Abnormal" for name, _ in objects))
        _write_jpeg(root / folder / f"{patient.pid}.jpg", image)
        labels[folder].append((patient.pid, label))
        if label or patient.has_normal_xml[view]:
            xml_path = root / folder / xml_subdir(folder) / f"{patient.pid}.xml"
            xml_path.write_text(_voc_xml(folder, patient.pid, objects), encoding="utf-8", newline="\n")
            xml_files += 1
        if patient.has_regions:
            images += _write_crops(root, patient, view, image, labels)
        images += 1
        is_abnormal = is_abnormal or bool(label)
    return images, xml_files, is_abnormal


def generate_dataset(
    out: str | Path,
    patients: int = 300,
    seed: int = 0,
    region_fraction: float = 0.9,
    lesion_gain: float = 1.0,
    lesion_size: float = 1.0,
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
    """
    if isinstance(patients, bool) or not isinstance(patients, int) or patients < 1:
        raise ValueError(f"patients={patients!r}: must be an int >= 1")
    if not 0.0 <= region_fraction <= 1.0:
        raise ValueError(f"region_fraction={region_fraction!r}: must lie in [0, 1]")
    for name, value in (("lesion_gain", lesion_gain), ("lesion_size", lesion_size)):
        if not value > 0:
            raise ValueError(f"{name}={value!r}: must be > 0")
    root, start = Path(out), time.perf_counter()
    params = {"patients": patients, "seed": seed, "region_fraction": region_fraction, "lesion_gain": lesion_gain,
              "lesion_size": lesion_size}  # fmt: skip
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        manifest = root / MANIFEST
        written = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        if written.get("params") == params:
            logger.info("synthetic BS-80K: %s already holds these parameters; reused", root)
            return SynthSummary(str(root), patients, **written["counts"], seconds=time.perf_counter() - start,
                                reused=True)  # fmt: skip
        raise FileExistsError(
            f"{root}: exists and is not an empty folder"
            + (f" (generated with {written['params']}, not {params})" if written.get("params") else "")
            + "; synthetic data never overwrites files: remove it or choose another synth.out"
        )
    for folder in WHOLE_BODY_FOLDERS:
        (root / folder / xml_subdir(folder)).mkdir(parents=True, exist_ok=True)
    for folder in REGION_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    labels: dict[str, list[tuple[int, int]]] = {folder: [] for folder in WHOLE_BODY_FOLDERS + REGION_FOLDERS}
    images = xml_files = abnormal = 0
    for pid in range(1, patients + 1):
        rng = np.random.default_rng([seed, pid])
        patient = sample_patient(rng, pid, region_fraction, (lesion_gain, lesion_size))
        counts = _write_patient(root, patient, rng, labels)
        images, xml_files, abnormal = images + counts[0], xml_files + counts[1], abnormal + counts[2]
    for folder, rows in labels.items():
        text = "".join(f"{pid}.jpg\t{label}\n" for pid, label in rows)
        (root / folder / f"{folder}.txt").write_text(text, encoding="utf-8", newline="\n")
    counts = {"images": images, "abnormal_patients": abnormal, "xml_files": xml_files}
    (root / MANIFEST).write_text(json.dumps({"params": params, "counts": counts}, indent=2), encoding="utf-8")
    summary = SynthSummary(str(root), patients, images, abnormal, xml_files, time.perf_counter() - start)
    logger.info("synthetic BS-80K: %s", summary)
    return summary
