"""Walks a BS-80K-shaped data root into the index, gt_boxes and errors DataFrames (DESIGN.md §2, §6).

Every folder, label file, image and XML must resolve inside the data root; nothing outside is opened.
Images are never decoded, only their JPEG/PNG headers read. Accounting: `lines_listed == len(index) +
errors["line"].notna().sum()`: exactly the label-line errors carry a line (others have NA).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath

import pandas as pd

from engine.parsing import (
    IMAGE_EXTENSIONS,
    STAGE,
    DataError,
    FolderInfo,
    LabelLine,
    ParseError,
    VocBox,
    parse_folder_name,
    parse_image_size,
    parse_label_file,
    parse_voc_xml,
)

# Column name -> pandas dtype. "str" is pandas' string dtype (missing values read as NA, not None).
INDEX_COLUMNS = {
    "image_id": "str", "folder": "str", "part": "str", "side": "str", "view": "str", "patient_id": "str",
    "path": "str", "label": "int8", "is_whole_body": "bool", "has_xml": "bool", "xml_path": "str", "line": "int32",
}  # fmt: skip
GT_BOX_COLUMNS = {
    "image_id": "str", "view": "str", "patient_id": "str", "cls": "str",
    "x1": "int32", "y1": "int32", "x2": "int32", "y2": "int32", "repaired": "str",
}  # fmt: skip
ERROR_COLUMNS = {"file": "str", "line": "Int32", "image_id": "str", "stage": "str", "reason": "str"}
WHOLE_BODY_PART = "wholeBody"  # DESIGN.md §2: only whole-body folders have VOC XML in <folder>/<view lower>/
HEADER_PROBE_BYTES = 65536  # a JPEG SOF marker sits in the first few KB unless EXIF/ICC data precede it
_Entries = dict[str, os.DirEntry]  # a directory listing by name


@dataclass(frozen=True)
class IndexResult:
    """The three index tables plus the count of non-blank label lines read (each names one image)."""

    index: pd.DataFrame  # INDEX_COLUMNS, one row per indexed image
    gt_boxes: pd.DataFrame  # GT_BOX_COLUMNS, original-image px, 0-based, x2/y2 exclusive
    errors: pd.DataFrame  # ERROR_COLUMNS
    lines_listed: int


@dataclass
class _IndexAccumulator:
    """Rows gathered while walking; `result()` sorts them into deterministic frames."""

    root: Path
    index_rows: list[dict] = field(default_factory=list)
    boxes_by_image: dict[str, list[dict]] = field(default_factory=dict)
    errors: list[ParseError] = field(default_factory=list)
    lines_listed: int = 0

    def error(self, file: str, reason: str, image_id: str | None = None, line: int | None = None) -> None:
        """Records one error row of the index stage."""
        self.errors.append(ParseError(file=file, line=line, stage=STAGE, reason=reason, image_id=image_id))

    def result(self) -> IndexResult:
        """Returns the frames, sorted so that the output does not depend on listing order."""
        rows = sorted(self.index_rows, key=_image_sort_key)
        boxes = [box for row in rows for box in self.boxes_by_image.get(row["image_id"], [])]
        errors = sorted(self.errors, key=lambda e: (e.file, e.line or 0, e.image_id or "", e.reason))
        error_rows = [{name: getattr(error, name) for name in ERROR_COLUMNS} for error in errors]
        return IndexResult(
            index=_frame(rows, INDEX_COLUMNS),
            gt_boxes=_frame(boxes, GT_BOX_COLUMNS),
            errors=_frame(error_rows, ERROR_COLUMNS),
            lines_listed=self.lines_listed,
        )


def build_index(data_root: str | Path) -> IndexResult:
    """Returns the index, gt_boxes and errors frames of a BS-80K-shaped data root.

    Bad folders, lines, files and XMLs become error rows (accounting: see the module docstring).

    Raises:
        DataError: `data_root` is not a directory.
    """
    if not Path(data_root).is_dir():
        raise DataError(f"{data_root}: data root is not a directory")
    accumulator = _IndexAccumulator(root=Path(data_root).resolve())
    for entry in _sorted_entries(accumulator.root).values():
        if entry.is_dir():
            _index_folder(accumulator, entry)
    return accumulator.result()


def _index_folder(acc: _IndexAccumulator, entry: os.DirEntry) -> None:
    """Indexes one top-level folder through its `F/F.txt`, or records why it was skipped."""
    name = entry.name
    info = parse_folder_name(name)
    if info is None:
        acc.error(name, f"unknown_folder: {name!r} is not part[L|R](ANT|POST) (DESIGN.md §2); skipped")
        return
    folder_dir = _resolve_inside(acc.root, Path(entry.path))
    if folder_dir is None:
        acc.error(name, "unsafe_path: folder resolves outside the data root; skipped")
        return
    files = _sorted_entries(folder_dir)
    label_rel = f"{name}/{name}.txt"
    label_entry = files.get(f"{name}.txt")
    if label_entry is None or not label_entry.is_file():
        acc.error(label_rel, f"missing_label_file: {label_rel} not found; folder skipped")
        return
    if not _is_entry_inside(acc.root, label_entry):
        acc.error(label_rel, "unsafe_path: label file resolves outside the data root; never opened")
        return
    text = _read_label_text(acc, Path(label_entry.path), label_rel)
    if text is None:
        return
    lines, line_errors = parse_label_file(text, label_rel, folder=name)
    acc.lines_listed += len(lines) + len(line_errors)
    acc.errors.extend(line_errors)
    xml_files = _xml_entries(acc, info, folder_dir) if info.part == WHOLE_BODY_PART else {}
    for line in lines:
        _index_image(acc, info, line, files, xml_files)
    _report_unlisted(acc, info, files, lines, line_errors)


def _read_label_text(acc: _IndexAccumulator, path: Path, label_rel: str) -> str | None:
    """Returns the label file as text (invalid UTF-8 replaced and reported), or None if unreadable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        acc.error(label_rel, f"unreadable_file: {exc.strerror}; folder skipped")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        acc.error(label_rel, f"bad_encoding: not UTF-8 at byte {exc.start}; undecodable bytes replaced")
        return data.decode("utf-8", errors="replace")


def _xml_entries(acc: _IndexAccumulator, info: FolderInfo, folder_dir: Path) -> _Entries:
    """Returns the entries of `<folder>/<view lower>/`, the whole-body XML folder, if it is safe."""
    subfolder = info.view.lower()
    xml_dir = folder_dir / subfolder
    if not xml_dir.is_dir():
        return {}
    resolved = _resolve_inside(acc.root, xml_dir)
    if resolved is None:
        acc.error(f"{info.folder}/{subfolder}", "unsafe_path: XML folder resolves outside the data root; ignored")
        return {}
    return _sorted_entries(resolved)


def _index_image(
    acc: _IndexAccumulator, info: FolderInfo, line: LabelLine, files: _Entries, xml_files: _Entries
) -> None:
    """Adds one listed image to the index (with its boxes), or a missing_file/unsafe_path error row."""
    image_id = f"{info.folder}/{line.filename}"
    label_rel = f"{info.folder}/{info.folder}.txt"
    entry = files.get(line.filename)
    if entry is None or not entry.is_file():
        acc.error(label_rel, f"missing_file: {image_id} is listed but not on disk; not indexed", image_id, line.line)
        return
    if not _is_entry_inside(acc.root, entry):
        acc.error(label_rel, f"unsafe_path: {image_id} resolves outside the data root", image_id, line.line)
        return
    patient_id = PurePosixPath(line.filename).stem
    is_whole_body = info.part == WHOLE_BODY_PART
    xml_path = _index_gt_boxes(acc, info, line, entry, xml_files) if is_whole_body else None
    # fmt: off
    acc.index_rows.append({
        "image_id": image_id, "folder": info.folder, "part": info.part, "side": info.side, "view": info.view,
        "patient_id": patient_id, "path": image_id, "label": line.label, "is_whole_body": is_whole_body,
        "has_xml": xml_path is not None, "xml_path": xml_path, "line": line.line,
    })
    # fmt: on


def _index_gt_boxes(
    acc: _IndexAccumulator, info: FolderInfo, line: LabelLine, image: os.DirEntry, xml_files: _Entries
) -> str | None:
    """Parses the image's VOC XML into gt box rows and error rows; returns its relative path or None."""
    image_id = f"{info.folder}/{line.filename}"
    xml_name = f"{PurePosixPath(line.filename).stem}.xml"
    xml_entry = xml_files.get(xml_name)
    if xml_entry is None or not xml_entry.is_file():
        return None
    xml_rel = f"{info.folder}/{info.view.lower()}/{xml_name}"
    if not _is_entry_inside(acc.root, xml_entry):
        acc.error(xml_rel, "unsafe_path: XML resolves outside the data root; never opened", image_id)
        return None
    try:
        data = Path(xml_entry.path).read_bytes()
    except OSError as exc:
        acc.error(xml_rel, f"unreadable_file: {exc.strerror}", image_id)
        return xml_rel
    image_w, image_h = read_image_size(Path(image.path)) or (None, None)
    boxes, xml_errors, _ = parse_voc_xml(data, xml_rel, image_w, image_h)
    acc.errors.extend(replace(error, image_id=image_id) for error in xml_errors)
    acc.boxes_by_image[image_id] = [
        {"image_id": image_id, "view": info.view, "patient_id": PurePosixPath(line.filename).stem, **asdict(box)}
        for box in boxes
    ]
    if not any(error.code in ("malformed_xml", "unsafe_xml") for error in xml_errors):
        _check_label_matches_boxes(acc, xml_rel, image_id, line.label, boxes)
    return xml_rel


def _check_label_matches_boxes(
    acc: _IndexAccumulator, xml_rel: str, image_id: str, label: int, boxes: list[VocBox]
) -> None:
    """Records label_box_mismatch: abnormal exactly when an Abnormal box exists (DESIGN.md §2)."""
    abnormal = sum(box.cls == "Abnormal" for box in boxes)
    if (label == 1) != (abnormal > 0):
        acc.error(xml_rel, f"label_box_mismatch: label {label} but {abnormal} Abnormal box(es) in the XML", image_id)


def _report_unlisted(
    acc: _IndexAccumulator, info: FolderInfo, files: _Entries, lines: list[LabelLine], line_errors: list[ParseError]
) -> None:
    """Records unlisted_file for images in the folder that no label line names (even a bad line)."""
    named = {line.filename for line in lines}
    named |= {error.image_id.split("/", 1)[1] for error in line_errors if error.image_id is not None}
    for name, entry in files.items():
        if name.lower().endswith(IMAGE_EXTENSIONS) and name not in named and entry.is_file():
            image_id = f"{info.folder}/{name}"
            acc.error(image_id, "unlisted_file: on disk but not in the label file; not indexed", image_id)


def _sorted_entries(directory: Path) -> _Entries:
    """Returns the directory's entries by name, in sorted order whatever the filesystem's order."""
    with os.scandir(directory) as iterator:
        return {entry.name: entry for entry in sorted(iterator, key=lambda entry: entry.name)}


def _resolve_inside(root: Path, path: Path) -> Path | None:
    """Returns the resolved path when it lies inside the resolved root, else None."""
    resolved = path.resolve()
    return resolved if resolved.is_relative_to(root) else None


def _is_entry_inside(root: Path, entry: os.DirEntry) -> bool:
    """Returns whether an entry of an already-checked directory stays inside root (symlinks resolved)."""
    return not entry.is_symlink() or _resolve_inside(root, Path(entry.path)) is not None


def _image_sort_key(row: dict) -> tuple:
    """Returns the (folder, numeric patient_id, patient_id, filename) key; numeric ids sort first."""
    patient_id = row["patient_id"]
    is_numeric = patient_id.isascii() and patient_id.isdigit()
    return (row["folder"], not is_numeric, int(patient_id) if is_numeric else 0, patient_id, row["path"])


def _frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    """Returns a frame with exactly `columns` (name -> dtype), also when `rows` is empty."""
    return pd.DataFrame({name: pd.Series([row[name] for row in rows], dtype=dtype) for name, dtype in columns.items()})


def read_image_size(path: Path) -> tuple[int, int] | None:
    """Returns an image's (width, height) from its JPEG/PNG header, or None if unreadable."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER_PROBE_BYTES)
            size = parse_image_size(header)
            if size is None and len(header) == HEADER_PROBE_BYTES:
                size = parse_image_size(header + handle.read())
    except OSError:
        return None
    return size
