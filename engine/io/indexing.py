"""Walks a data root into the index, gt_boxes and errors DataFrames: BS-80K here, other layouts in engine/io/layouts.py.

The root is a local path, a storage URI (`file://`, `s3://`, …) or a path in a given pyarrow filesystem
(engine/io/data_tree.py). Every folder, label file, image and XML must resolve inside the data root; nothing
outside is opened. Images are never decoded, only their JPEG/PNG headers read; XMLs and headers are read
by a thread pool (one request each on object stores). Accounting: `lines_listed == len(index) +
len(listing_errors())`; in BS-80K roots exactly the label-line errors carry a line (others have NA).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from engine.core.parsing import (
    IMAGE_EXTENSIONS,
    DataError,
    FolderInfo,
    LabelLine,
    ParseError,
    VocBox,
    parse_folder_name,
    parse_label_file,
    parse_voc_xml,
)
from engine.io.data_tree import DataTree, TreeEntry, open_data_tree, read_image_size
from engine.io.index_tables import (
    BS80K_LAYOUT,
    ERROR_COLUMNS,
    GT_BOX_COLUMNS,
    INDEX_COLUMNS,
    IndexAccumulator,
    IndexResult,
)
from engine.io.layouts import LayoutSettings, check_layout, index_layout

__all__ = [
    "ERROR_COLUMNS",
    "GT_BOX_COLUMNS",
    "INDEX_COLUMNS",
    "IndexResult",
    "LayoutSettings",
    "build_index",
    "build_layout_index",
    "read_image_size",
]
WHOLE_BODY_PART = "wholeBody"  # BS-80K: only whole-body folders have VOC XML, in <folder>/<view lower>/
READ_THREADS = 16  # concurrent XML/header reads: latency-bound on object stores and network disks
READ_CHUNK = 1024  # label lines whose reads are in flight at once (bounds memory at 100x BS-80K)
_Entries = dict[str, TreeEntry]  # a directory listing by name
_Loaded = dict[str, tuple[bytes | OSError, tuple[int, int] | None]]  # xml path -> (bytes or error, image size)


def build_index(
    data_root: str | Path,
    filesystem: pafs.FileSystem | None = None,
    read_threads: int = READ_THREADS,
    layout: LayoutSettings | None = None,
) -> IndexResult:
    """Returns the index, gt_boxes and errors frames of a data root laid out as `layout` (default: BS-80K).

    `data_root` is a local path, a storage URI, or a path inside `filesystem` (e.g. a SubTreeFileSystem).
    Bad folders, lines, files and XMLs become error rows (accounting: see the module docstring). The
    `images` and `dicom` layouts are engine/io/layouts.py's.

    Raises:
        DataError: `data_root` is not a directory.
        ValueError: `layout` is invalid (engine.io.layouts.check_layout).
    """
    settings = layout or LayoutSettings()
    check_layout(settings)
    tree = open_data_tree(data_root, filesystem)
    if not tree.is_root_dir():
        raise DataError(f"{data_root}: data root is not a directory")
    with ThreadPoolExecutor(max(1, read_threads), thread_name_prefix="index-read") as pool:
        accumulator = IndexAccumulator(tree=tree, pool=pool)
        if settings.layout != BS80K_LAYOUT:
            index_layout(accumulator, settings)
            return accumulator.result(settings.layout)
        for entry in tree.entries(tree.top).values():
            if entry.is_dir:
                _index_folder(accumulator, entry)
    return accumulator.result()


def build_layout_index(data_root: str, layout: LayoutSettings) -> IndexResult:
    """Returns build_index(data_root, layout=layout): positional, for engine.runtime.pipeline.run_on_worker."""
    return build_index(data_root, layout=layout)


def _index_folder(acc: IndexAccumulator, entry: TreeEntry) -> None:
    """Indexes one top-level folder through its `F/F.txt`, or records why it was skipped."""
    name = entry.name
    info = parse_folder_name(name)
    if info is None:
        acc.error(name, f"unknown_folder: {name!r} is not a BS-80K folder name part[L|R](ANT|POST); skipped")
        return
    if not entry.is_inside:
        acc.error(name, "unsafe_path: folder resolves outside the data root; skipped")
        return
    files = acc.tree.entries(entry.path)
    label_rel = f"{name}/{name}.txt"
    label_entry = files.get(f"{name}.txt")
    if label_entry is None or not label_entry.is_file:
        acc.error(label_rel, f"missing_label_file: {label_rel} not found; folder skipped")
        return
    if not label_entry.is_inside:
        acc.error(label_rel, "unsafe_path: label file resolves outside the data root; never opened")
        return
    text = _read_label_text(acc, label_entry.path, label_rel)
    if text is None:
        return
    lines, line_errors = parse_label_file(text, label_rel, folder=name)
    acc.lines_listed += len(lines) + len(line_errors)
    acc.errors.extend(line_errors)
    xml_files = _xml_entries(acc, info, files) if info.part == WHOLE_BODY_PART else {}
    for start in range(0, len(lines), READ_CHUNK):
        chunk = lines[start : start + READ_CHUNK]
        loaded = _load_xml_inputs(acc, chunk, files, xml_files)
        for line in chunk:
            _index_image(acc, info, line, files, xml_files, loaded)
    _report_unlisted(acc, info, files, lines, line_errors)


def _read_label_text(acc: IndexAccumulator, path: str, label_rel: str) -> str | None:
    """Returns the label file as text (invalid UTF-8 replaced and reported), or None if unreadable."""
    try:
        data = acc.tree.read_bytes(path)
    except OSError as exc:
        acc.error(label_rel, f"unreadable_file: {exc.strerror or exc}; folder skipped")
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        acc.error(label_rel, f"bad_encoding: not UTF-8 at byte {exc.start}; undecodable bytes replaced")
        return data.decode("utf-8", errors="replace")


def _xml_entries(acc: IndexAccumulator, info: FolderInfo, files: _Entries) -> _Entries:
    """Returns the entries of `<folder>/<view lower>/`, the whole-body XML folder, if it is safe."""
    subfolder = info.view.lower()
    xml_dir = files.get(subfolder)
    if xml_dir is None or not xml_dir.is_dir:
        return {}
    if not xml_dir.is_inside:
        acc.error(f"{info.folder}/{subfolder}", "unsafe_path: XML folder resolves outside the data root; ignored")
        return {}
    return acc.tree.entries(xml_dir.path)


def _safe_file(entries: _Entries, name: str) -> TreeEntry | None:
    """Returns the listed entry `name` when it is a file inside the root, else None."""
    entry = entries.get(name)
    return entry if entry is not None and entry.is_file and entry.is_inside else None


def _load_xml_inputs(acc: IndexAccumulator, lines: list[LabelLine], files: _Entries, xml_files: _Entries) -> _Loaded:
    """Reads, concurrently, the XML bytes and image size of every line whose image and XML are safe files."""
    pairs = {}
    for line in lines:
        image = _safe_file(files, line.filename)
        xml = _safe_file(xml_files, f"{PurePosixPath(line.filename).stem}.xml")
        if image is not None and xml is not None:
            pairs[xml.path] = image.path
    results = acc.pool.map(lambda pair: _read_xml_input(acc.tree, *pair), pairs.items())
    return dict(zip(pairs, results, strict=True))


def _read_xml_input(tree: DataTree, xml_path: str, image_path: str) -> tuple[bytes | OSError, tuple[int, int] | None]:
    """Returns (XML bytes or the read error, image size or None); runs on the read pool."""
    try:
        return tree.read_bytes(xml_path), read_image_size(image_path, tree)
    except OSError as exc:
        return exc, None


def _index_image(
    acc: IndexAccumulator, info: FolderInfo, line: LabelLine, files: _Entries, xml_files: _Entries, loaded: _Loaded
) -> None:
    """Adds one listed image to the index (with its boxes), or a missing_file/unsafe_path error row."""
    image_id = f"{info.folder}/{line.filename}"
    label_rel = f"{info.folder}/{info.folder}.txt"
    entry = files.get(line.filename)
    if entry is None or not entry.is_file:
        acc.error(label_rel, f"missing_file: {image_id} is listed but not on disk; not indexed", image_id, line.line)
        return
    if not entry.is_inside:
        acc.error(label_rel, f"unsafe_path: {image_id} resolves outside the data root", image_id, line.line)
        return
    patient_id = PurePosixPath(line.filename).stem
    is_whole_body = info.part == WHOLE_BODY_PART
    xml_path = _index_gt_boxes(acc, info, line, xml_files, loaded) if is_whole_body else None
    acc.add_row(
        **{
            "image_id": image_id,
            "folder": info.folder,
            "part": info.part,
            "side": info.side,
            "view": info.view,
            "patient_id": patient_id,
            "path": image_id,
            "label": line.label,
            "is_whole_body": is_whole_body,
            "has_xml": xml_path is not None,
            "xml_path": xml_path,
            "line": line.line,
        }
    )


def _index_gt_boxes(
    acc: IndexAccumulator, info: FolderInfo, line: LabelLine, xml_files: _Entries, loaded: _Loaded
) -> str | None:
    """Parses the image's VOC XML into gt box rows and error rows; returns its relative path or None."""
    image_id = f"{info.folder}/{line.filename}"
    xml_name = f"{PurePosixPath(line.filename).stem}.xml"
    xml_entry = xml_files.get(xml_name)
    if xml_entry is None or not xml_entry.is_file:
        return None
    xml_rel = f"{info.folder}/{info.view.lower()}/{xml_name}"
    if not xml_entry.is_inside:
        acc.error(xml_rel, "unsafe_path: XML resolves outside the data root; never opened", image_id)
        return None
    data, size = loaded[xml_entry.path]
    if isinstance(data, OSError):
        acc.error(xml_rel, f"unreadable_file: {data.strerror or data}", image_id)
        return xml_rel
    image_w, image_h = size or (None, None)
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
    acc: IndexAccumulator, xml_rel: str, image_id: str, label: int, boxes: list[VocBox]
) -> None:
    """Records label_box_mismatch: abnormal exactly when an Abnormal box exists (BS-80K's labelling rule)."""
    abnormal = sum(box.cls == "Abnormal" for box in boxes)
    if (label == 1) != (abnormal > 0):
        acc.error(xml_rel, f"label_box_mismatch: label {label} but {abnormal} Abnormal box(es) in the XML", image_id)


def _report_unlisted(
    acc: IndexAccumulator, info: FolderInfo, files: _Entries, lines: list[LabelLine], line_errors: list[ParseError]
) -> None:
    """Records unlisted_file for images in the folder that no label line names (even a bad line)."""
    named = {line.filename for line in lines}
    named |= {error.image_id.split("/", 1)[1] for error in line_errors if error.image_id is not None}
    for name, entry in files.items():
        if name.lower().endswith(IMAGE_EXTENSIONS) and name not in named and entry.is_file:
            image_id = f"{info.folder}/{name}"
            acc.error(image_id, "unlisted_file: on disk but not in the label file; not indexed", image_id)
