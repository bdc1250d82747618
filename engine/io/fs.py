"""The filesystem of a run and of its data: one resolver for local paths and URIs, safe paths, reading one scan."""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import yaml

from engine.core.scans.counts import CountScale, counts_to_gray8
from engine.core.scans.decode import DecodeError, scan_counts
from engine.core.scans.dicom import split_frame_path

log = logging.getLogger(__name__)


def safe_relative_path(root: str, relative: str) -> str:
    """Returns `root/relative` after checking that it cannot leave `root`.

    Raises:
        DecodeError: `unsafe_path` for absolute paths, `..` parts or (local roots) symlinks leaving root.
    """
    norm = posixpath.normpath(relative.replace("\\", "/"))
    if relative.startswith(("/", "\\")) or norm.startswith("..") or ":" in norm.split("/")[0]:
        raise DecodeError(f"unsafe_path: '{relative}' leaves the data root")
    full = f"{root.rstrip('/')}/{norm}"
    if "://" not in root and os.path.exists(full):
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
            raise DecodeError(f"unsafe_path: '{relative}' resolves outside the data root")
    return full


def load_scan(fs: Any, root: str, relative: str, scale: CountScale) -> tuple[np.ndarray | None, float, str]:
    """Returns (uint8 (H, W) image or None, counts per grey level or NaN, error "" or `reason: detail`) of one path.

    A path `<file>#<frame>` names one frame of a DICOM file (core/scans/dicom.py); `relative` never leaves `root`.
    """
    counts, error = load_counts(fs, root, relative)
    if counts is None:
        return None, float("nan"), error
    image, factor = counts_to_gray8(counts, scale)
    return image, factor, ""


def load_counts(fs: Any, root: str, relative: str) -> tuple[np.ndarray | None, str]:
    """Returns (counts (H, W) or None, error "" or `reason: detail`) of one path, before any count rule.

    The counts of engine.core.scans.decode.scan_counts: a DICOM frame's rescaled counts, an image file's 16-bit
    counts or 8-bit grey levels.
    """
    file, frame = split_frame_path(relative)
    try:
        with fs.open_input_file(safe_relative_path(root, file)) as handle:
            return scan_counts(handle.read(), frame), ""
    except DecodeError as exc:
        return None, str(exc)
    except FileNotFoundError:
        return None, f"missing_file: {relative}"
    except OSError as exc:
        return None, f"read_error: {type(exc).__name__}: {exc}"


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """Returns (filesystem, path) for a local path or a storage URI (file://, s3://, gs://, ...)."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def read_run_json(run_dir: str, relative: str) -> dict[str, Any] | None:
    """Returns the JSON object of `<run_dir>/<relative>` (local path or storage URI), or None when the file is
    missing or is not JSON: the one reader of a run's small JSON records (best.json, threshold.json, ...)."""
    fs, root = resolve_fs(run_dir)
    try:
        with fs.open_input_stream(f"{root}/{relative}") as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, ValueError):
        return None


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader where built in (~10x faster)


def read_saved_config(run_dir: str, stage: str) -> dict[str, Any]:
    """Returns the config a stage saved in the run (`<run_dir>/config/<stage>.yaml`) as nested dicts, or {} when
    the file is missing or is not a YAML mapping: the one reader of what a run was made with."""
    fs, root = resolve_fs(run_dir)
    try:
        with fs.open_input_stream(f"{root}/config/{stage}.yaml") as stream:
            saved = yaml.load(stream.read(), Loader=SAFE_LOADER)
    except (OSError, yaml.YAMLError):
        return {}
    return saved if isinstance(saved, dict) else {}


def delete_outputs(run_dir: str, relatives: tuple[str, ...]) -> None:
    """Deletes each folder `<run_dir>/<relative>` that exists, with a warning naming it (run.overwrite=true)."""
    fs, root = resolve_fs(run_dir)
    for path in (f"{root}/{relative}" for relative in relatives):
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            log.warning("run.overwrite=true: deleting %s", path)
            fs.delete_dir(path)


def write_run_json(run_dir: str, relative: str, document: dict) -> str:
    """Writes `document` as strict, compact JSON (no indentation) to `<run_dir>/<relative>`; returns the path."""
    fs, root = resolve_fs(run_dir)
    path = f"{root}/{relative}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(json_safe(document), separators=(",", ":"), allow_nan=False).encode())
    return path


_PLAIN = (str, int, bool, type(None))  # JSON-ready as they are (bool is an int)


def json_safe(value: Any) -> Any:
    """Returns `value` with numpy scalars as Python numbers and NaN/inf as null (strict JSON)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return str(value)
