"""Index layouts beyond BS-80K: a clinic's unlabeled image folders (`images`) and NM DICOM studies (`dicom`).

- `images`: every JPEG/PNG/TIFF (8 or 16 bit) anywhere under the root is one row, `label` null. The view comes
  from `view_pattern` on the relative path (`unknown` when it does not match), the patient from
  `patient_pattern` (default: the file stem). A VOC XML with the image's stem beside it gives gt boxes.
- `dicom`: every DICOM file (a `.dcm`/`.dicom` name, or the PS3.10 `DICM` preamble whatever the name: media
  exports name files `IM000000`) is read up to its pixel data (engine/core/scans/dicom.py) and gives one row per static
  whole-body frame of its primary energy window, path `<file>#<frame>`, view from the DICOM view code, patient
  from PatientID (else as in `images`), pixel spacing and study date kept. Derived objects (Secondary Captures,
  colour, palette, DERIVED/SECONDARY), non-NM, unreadable and extensionless non-DICOM files are error rows;
  dynamic/gated/tomographic files, secondary energy windows and DICOMDIRs are skip rows (SKIP_CODES), each with
  its reason code.

Walks list folders only through the data tree (engine/io/data_tree.py): entries resolving outside the data root
are error rows, never opened or listed; a folder reached twice (a symlink loop) is listed once.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import PurePosixPath

from engine.config_sections import DEFAULT_VIEW_PATTERN
from engine.core.parsing import parse_voc_xml
from engine.core.scans.dicom import (
    PREAMBLE_BYTES,
    UNKNOWN_VIEW,
    DicomError,
    DicomFrame,
    NmStudy,
    has_dicom_preamble,
    is_dicom_name,
    read_nm_study,
)
from engine.io.data_tree import TreeEntry, read_image_size
from engine.io.index_tables import IndexAccumulator

LAYOUTS = ("bs80k", "images", "dicom")
IMAGE_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
# ANT/POST or anterior/posterior as a word of the path (not inside "patient" or "postop"), any case.
MAX_DEPTH = 32  # folder levels walked below the root
ROOT_FOLDER = "."  # `folder` of files directly in the root (the column is a partition key: never empty)


@dataclass(frozen=True)
class LayoutSettings:
    """How a data root is laid out (`data.layout`, `data.view_pattern`, `data.patient_pattern`)."""

    layout: str = "bs80k"  # bs80k | images | dicom
    view_pattern: str = DEFAULT_VIEW_PATTERN  # regex on the relative path; the matching group's name is the view
    patient_pattern: str = ""  # regex on the relative path; group `patient` (or the match) is the id; "": stem


@dataclass(frozen=True)
class _Patterns:
    view: re.Pattern
    patient: re.Pattern | None


def check_layout(settings: LayoutSettings) -> _Patterns:
    """Returns the compiled patterns of `settings`.

    Raises:
        ValueError: an unknown layout, a pattern that does not compile, or a view pattern without an
            `ANT` or `POST` group.
    """
    if settings.layout not in LAYOUTS:
        raise ValueError(f"layout {settings.layout!r}: unknown (choices: {', '.join(LAYOUTS)})")
    try:
        view = re.compile(settings.view_pattern)
        patient = re.compile(settings.patient_pattern) if settings.patient_pattern else None
    except re.error as exc:
        raise ValueError(f"layout pattern {exc.pattern!r}: {exc}") from exc
    if not {"ANT", "POST"} & set(view.groupindex):
        raise ValueError(f"view_pattern {settings.view_pattern!r}: needs a group (?P<ANT>...) or (?P<POST>...)")
    return _Patterns(view, patient)


def view_of(path: str, pattern: re.Pattern) -> str:
    """Returns ANT/POST from the last match of `pattern` in `path` (the part nearest the file), or unknown."""
    matches = list(pattern.finditer(path))
    if not matches:
        return UNKNOWN_VIEW
    groups = {name: value for name, value in matches[-1].groupdict().items() if value is not None}
    return next((view for view in ("ANT", "POST") if view in groups), UNKNOWN_VIEW)


def patient_of(path: str, pattern: re.Pattern | None) -> str | None:
    """Returns the patient id in `path`: group `patient` (else the match) of `pattern`, or the stem when None.

    None when the pattern does not match.
    """
    if pattern is None:
        return PurePosixPath(path).stem
    match = pattern.search(path)
    if match is None:
        return None
    return match["patient"] if "patient" in pattern.groupindex else match[0]


def index_layout(acc: IndexAccumulator, settings: LayoutSettings) -> None:
    """Walks the whole data root of an `images` or `dicom` layout into `acc`."""
    patterns = check_layout(settings)
    visit = _visit_image_folder if settings.layout == "images" else _visit_dicom_folder
    seen: set[str] = set()
    pending = [(acc.tree.top, "")]
    while pending:
        directory, relative = pending.pop()
        if directory in seen:
            acc.lines_listed += 1
            acc.error(relative, "duplicate_folder: reached twice (symlink loop); listed once")
            continue
        seen.add(directory)
        entries = acc.tree.entries(directory)
        for name, entry in entries.items():
            rel = f"{relative}/{name}" if relative else name
            if entry.is_dir and not entry.is_inside:
                acc.lines_listed += 1
                acc.error(rel, "unsafe_path: folder resolves outside the data root; skipped")
            elif entry.is_dir and rel.count("/") < MAX_DEPTH:
                pending.append((entry.path, rel))
            elif entry.is_dir:
                acc.lines_listed += 1
                acc.error(rel, f"too_deep: more than {MAX_DEPTH} folder levels; skipped")
        visit(acc, patterns, relative, entries)


def _unsafe_file(acc: IndexAccumulator, rel: str, entry: TreeEntry) -> bool:
    """Returns True (after recording unsafe_path) when a listed file resolves outside the data root."""
    if entry.is_inside:
        return False
    acc.lines_listed += 1
    acc.error(rel, "unsafe_path: file resolves outside the data root; never opened")
    return True


def _patient(acc: IndexAccumulator, rel: str, patterns: _Patterns, image_id: str) -> str:
    """Returns the patient id of `rel`; a pattern miss falls back to the file stem and is reported."""
    patient = patient_of(rel, patterns.patient)
    if patient:
        return patient
    acc.error(rel, "no_patient_match: patient_pattern does not match; the file stem is used", image_id=image_id)
    return PurePosixPath(rel).stem


def _visit_image_folder(acc: IndexAccumulator, patterns: _Patterns, relative: str, entries: dict) -> None:
    """Adds one unlabeled row per image file of one folder, with the boxes of a VOC XML beside it."""
    images = [
        (name, entry)
        for name, entry in entries.items()
        if entry.is_file and name.lower().endswith(IMAGE_FILE_EXTENSIONS)
    ]
    xml_jobs = {}
    for name, entry in images:
        rel = f"{relative}/{name}" if relative else name
        if _unsafe_file(acc, rel, entry):
            continue
        acc.lines_listed += 1
        view = view_of(rel, patterns.view)
        xml = entries.get(f"{PurePosixPath(name).stem}.xml")
        has_xml = xml is not None and xml.is_file and xml.is_inside
        xml_rel = str(PurePosixPath(rel).with_suffix(".xml")) if has_xml else None
        row = {
            "image_id": rel,
            "folder": relative or ROOT_FOLDER,
            "part": None,
            "side": None,
            "view": view,
            "patient_id": _patient(acc, rel, patterns, rel),
            "path": rel,
            "is_whole_body": True,
            "has_xml": has_xml,
            "xml_path": xml_rel,
        }
        acc.add_row(**row)
        if has_xml:
            xml_jobs[rel] = (xml.path, entry.path, xml_rel, row)
    results = acc.pool.map(lambda job: _read_xml(acc, job[0], job[1]), xml_jobs.values())
    for (rel, (_, _, xml_rel, row)), (data, size) in zip(xml_jobs.items(), results, strict=True):
        _add_boxes(acc, rel, xml_rel, row, data, size)


def _read_xml(acc: IndexAccumulator, xml_path: str, image_path: str) -> tuple[bytes | OSError, tuple | None]:
    """Returns (XML bytes or the read error, image (width, height) or None); runs on the read pool."""
    try:
        return acc.tree.read_bytes(xml_path), read_image_size(image_path, acc.tree)
    except OSError as exc:
        return exc, None


def _add_boxes(acc: IndexAccumulator, rel: str, xml_rel: str, row: dict, data: bytes | OSError, size) -> None:
    """Parses one VOC XML into gt box rows of image `rel`; its problems become finding rows."""
    if isinstance(data, OSError):
        acc.error(xml_rel, f"unreadable_file: {data.strerror or data}", image_id=rel)
        return
    width, height = size or (None, None)
    boxes, xml_errors, _ = parse_voc_xml(data, xml_rel, width, height)
    acc.errors.extend(replace(error, image_id=rel) for error in xml_errors)
    acc.boxes_by_image[rel] = [
        {"image_id": rel, "view": row["view"], "patient_id": row["patient_id"], **asdict(box)} for box in boxes
    ]


def _visit_dicom_folder(acc: IndexAccumulator, patterns: _Patterns, relative: str, entries: dict) -> None:
    """Adds one row per kept frame of every DICOM file of one folder; the rest become error or skip rows.

    A file is DICOM by its name (`.dcm`, `.dicom`) or by its PS3.10 preamble, whatever its name; hidden files
    (`.name`) are not inputs. A file that is neither and has no extension (`IM000000` beside DICOM) is a
    `not_dicom` error row; one with another extension (`README.txt`, a thumbnail) is not an input.
    """
    files = {}
    for name, entry in entries.items():
        rel = f"{relative}/{name}" if relative else name
        if entry.is_file and not name.startswith(".") and not _unsafe_file(acc, rel, entry):
            files[rel] = (name, entry.path)
    read = acc.pool.map(lambda item: _read_study(acc, *item), files.values())
    for rel, study in zip(files, read, strict=True):
        if study is None:
            continue
        if isinstance(study, str):
            acc.lines_listed += 1
            acc.error(rel, study)
            continue
        acc.lines_listed += len(study.frames) + len(study.left_out)
        for reason in study.left_out:
            acc.error(rel, reason)
        for frame in study.frames:
            _add_frame(acc, patterns, relative, rel, frame, single=len(study.frames) == 1)


def _read_study(acc: IndexAccumulator, name: str, path: str) -> NmStudy | str | None:
    """Returns a DICOM file's kept frames, the reason it has none, or None for a named non-DICOM file; runs on the
    read pool. Only the first PREAMBLE_BYTES of a file without a DICOM extension are read to tell."""
    try:
        with acc.tree.open(path) as handle:
            if not is_dicom_name(name):
                head = handle.read(PREAMBLE_BYTES)
                if not has_dicom_preamble(head):
                    return _not_dicom(name, len(head))
                handle.seek(0)
            return read_nm_study(handle)
    except DicomError as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable_file: {exc.strerror or exc}"


def _not_dicom(name: str, size: int) -> str | None:
    """Returns the not_dicom reason of a file without a DICOM preamble when its name has no extension (as PS3.10
    media files have none), else None (not an input of the dicom layout)."""
    suffix = PurePosixPath(name).suffix
    if suffix and not suffix[1:].isdigit():  # `1.2.840.5.77` (a UID as the name) has no real extension either
        return None
    head = "fewer than 132 bytes" if size < PREAMBLE_BYTES else "no 'DICM' at byte 128"
    return f"not_dicom: no extension and {head}: not a DICOM PS3.10 file; not indexed"


def _add_frame(
    acc: IndexAccumulator, patterns: _Patterns, relative: str, rel: str, frame: DicomFrame, single: bool
) -> None:
    """Adds one DICOM frame row; a single frame without a view code takes the view pattern's view."""
    view = frame.view
    if view == UNKNOWN_VIEW and single:
        view = view_of(rel, patterns.view)
    image_id = f"{rel}#{frame.frame}"
    acc.add_row(
        image_id=image_id,
        folder=relative or ROOT_FOLDER,
        part=None,
        side=None,
        view=view,
        patient_id=frame.patient_id or _patient(acc, rel, patterns, image_id),
        path=image_id,
        is_whole_body=frame.is_whole_body,
        has_xml=False,
        xml_path=None,
        pixel_spacing_y_mm=frame.pixel_spacing_y_mm,
        pixel_spacing_x_mm=frame.pixel_spacing_x_mm,
        study_date=frame.study_date,
    )
