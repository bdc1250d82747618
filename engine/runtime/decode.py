"""Batch UDFs that read images: decode + letterbox for the model stream (on decode tasks or inside the model
actor, `infer.decode`), and the QC pass."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine.core.localization.columns import (
    META_COLUMNS,
    QC_BODY_COLUMNS,
    body_canvas_columns,
    row_slices,
)
from engine.core.scans.counts import CountScale, counts_to_gray8, parse_count_scale
from engine.core.scans.dicom import split_frame_path
from engine.core.scans.letterbox import letterbox
from engine.core.scans.qc import QcThresholds, image_qc, qc_row
from engine.io.fs import load_counts, load_scan, resolve_fs
from engine.io.indexing import WHOLE_BODY_PART

if TYPE_CHECKING:
    from engine.config import CanvasConfig, DataConfig


def decode_batch(
    batch: dict[str, np.ndarray],
    data_root: str,
    canvas_h: int,
    canvas_w: int,
    count_scale: str | CountScale = "max",
    canvas: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Reads, decodes and letterboxes every row's `path`; a failure fills `error` and a zero canvas.

    `canvas`: a (B, canvas_h, canvas_w) uint8 buffer to draw on (whatever it holds: every pixel is written)
    instead of a new array.

    A path `<file>#<frame>` names one frame of a DICOM file (engine/core/scans/dicom.py); image files and DICOM frames
    become grey levels through the same `count_scale` rule (engine/core/scans/counts.py).

    Returns the input columns plus `canvas` (B, canvas_h, canvas_w) uint8, the letterbox meta
    columns (META_COLUMNS), `count_rule` (the rule string), `counts_per_grey` (float32 divisor used,
    NaN on failed rows) and `error` ("" when the row is fine, else `reason: detail`).
    """
    scale = parse_count_scale(count_scale) if isinstance(count_scale, str) else count_scale
    fs, root = resolve_fs(data_root)
    n = len(batch["path"])
    if canvas is None:
        canvas = np.empty((n, canvas_h, canvas_w), dtype=np.uint8)  # no zero fill: every row is written below
    elif canvas.shape != (n, canvas_h, canvas_w) or canvas.dtype != np.uint8:
        want = f"({n}, {canvas_h}, {canvas_w}) uint8"
        raise ValueError(f"canvas must be a {want} buffer, got {canvas.shape} {canvas.dtype}")
    meta = {name: np.zeros(n, dtype=np.float32 if name == "scale" else np.int32) for name in META_COLUMNS}
    factors = np.full(n, np.nan, dtype=np.float32)
    errors = np.full(n, "", dtype=object)
    for i, relative in enumerate(batch["path"]):
        image, factors[i], errors[i] = load_scan(fs, root, str(relative), scale)
        if image is None:
            canvas[i] = 0
            continue
        _, lb = letterbox(image, canvas_h, canvas_w, out=canvas[i])  # drawn in place, the padding zeroed
        for name in META_COLUMNS:
            meta[name][i] = getattr(lb, name)
    meta["canvas_h"][:] = canvas_h
    meta["canvas_w"][:] = canvas_w
    rules = np.full(n, scale.rule, dtype=object)
    out = {**batch, "canvas": canvas, **meta, "count_rule": rules, "counts_per_grey": factors, "error": errors}
    if all(k in batch for k in QC_BODY_COLUMNS):
        out.update(body_canvas_columns(out))
    return out


@dataclass(frozen=True)
class DecodeSettings:
    """What `decode_batch` needs, carried to a model actor that decodes its own rows (`infer.decode=actor`)."""

    data_root: str
    canvas_h: int
    canvas_w: int
    count_scale: str = "max"
    threads: int = 1  # rows of one batch are decoded on this many threads (OpenCV and file reads release the GIL)

    @classmethod
    def of(cls, data: DataConfig, canvas: CanvasConfig, threads: int = 1) -> DecodeSettings:
        """Returns the decode + letterbox settings of the `data` and `canvas` sections."""
        return cls(data.root, canvas.height, canvas.width, data.count_scale, threads)


class BatchDecoder:
    """`decode_batch` over a batch's rows split across a thread pool; the same columns, rows and errors in order.

    One instance per model actor: concurrent calls (`infer.calls_per_actor`) share its threads.
    """

    def __init__(self, settings: DecodeSettings) -> None:
        self.settings = settings
        self.scale = parse_count_scale(settings.count_scale)
        self.threads = max(1, settings.threads)
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode") if self.threads > 1 else None
        self._buffers = threading.local()  # one reused canvas buffer per calling thread (`chunks`)

    def __reduce__(self) -> tuple:
        return BatchDecoder, (self.settings,)  # a decode task's UDF travels as its settings; threads start anew

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Returns the whole batch decoded onto new canvases (the caller may keep them: decode tasks ship them)."""
        s = self.settings
        n = len(batch["path"])
        return self._decode_into(batch, np.empty((n, s.canvas_h, s.canvas_w), dtype=np.uint8))

    def chunks(self, batch: dict[str, np.ndarray], rows: int) -> Iterator[dict[str, np.ndarray]]:
        """Yields the batch decoded `rows` rows at a time, in order, each drawn on this thread's reused buffer.

        A yielded chunk's `canvas` is valid until the next chunk is asked for (a model actor scores each chunk
        before it asks): no canvas memory is allocated, page-faulted or zero-filled per call, which made a
        128-row call's decode ~10 % dearer than a plain loop's (BENCHMARKS.md, the feed).
        """
        s, n, rows = self.settings, len(batch["path"]), max(int(rows), 1)
        buffer = getattr(self._buffers, "canvas", None)
        if buffer is None or len(buffer) < min(rows, n):
            buffer = self._buffers.canvas = np.empty((min(rows, n), s.canvas_h, s.canvas_w), dtype=np.uint8)
        for _, part in row_slices(batch, rows):
            yield self._decode_into(part, buffer[: len(part["path"])])

    def _decode_into(self, batch: dict[str, np.ndarray], canvas: np.ndarray) -> dict[str, np.ndarray]:
        s, n = self.settings, len(batch["path"])
        if self.pool is None or n < 2:
            return decode_batch(batch, s.data_root, s.canvas_h, s.canvas_w, self.scale, canvas=canvas)
        step = -(-n // self.threads)

        def decode(first: int, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            rows = canvas[first : first + len(part["path"])]  # each thread draws on its own rows of `canvas`
            return decode_batch(part, s.data_root, s.canvas_h, s.canvas_w, self.scale, canvas=rows)

        futures = [self.pool.submit(decode, first, part) for first, part in row_slices(batch, step)]
        parts = [future.result() for future in futures]
        return {k: canvas if k == "canvas" else np.concatenate([part[k] for part in parts]) for k in parts[0]}


def qc_batch(
    batch: dict[str, np.ndarray], data_root: str, thresholds: QcThresholds, count_scale: str = "max"
) -> dict[str, np.ndarray]:
    """Ray Data UDF: index rows -> one `qc` row each as columns, plus `error` ("" or `reason: detail`) and `path`.

    Each scan is read once: its counts (engine.io.fs.load_counts), then the grey image the model stream sees
    (the same `data.count_scale` rule). The count statistics use the true counts of 16-bit files and DICOM frames
    (`count_unit` counts), scaled by the index's pixel spacing where it has one; 8-bit files only have their grey
    levels. Rows whose `part` names a region crop get only the flags that apply to a crop (core.scans.qc.image_qc).
    """
    fs, root = resolve_fs(data_root)
    scale = parse_count_scale(count_scale)
    rows, errors = [], []
    n = len(batch["image_id"])
    parts = batch["part"] if "part" in batch else np.full(n, None)
    spacing = [
        np.asarray(batch[k], dtype=np.float64) if k in batch else np.full(n, np.nan)
        for k in ("pixel_spacing_y_mm", "pixel_spacing_x_mm")
    ]
    for i, relative in enumerate(batch["path"]):
        counts, error = load_counts(fs, root, str(relative))
        image_id, folder, part = batch["image_id"][i], batch["folder"][i], parts[i]
        whole_body = part is None or part != part or part == WHOLE_BODY_PART  # clinic layouts: no part (None/NaN)
        is_dicom_frame = split_frame_path(str(relative))[1] is not None
        pixel_mm = (spacing[0][i], spacing[1][i]) if np.isfinite([spacing[0][i], spacing[1][i]]).all() else None
        try:
            qc = None
            if counts is not None:
                image = counts_to_gray8(counts, scale)[0]
                true_counts = counts if counts.dtype != np.uint8 or is_dicom_frame else None
                qc = image_qc(image, thresholds, whole_body, counts=true_counts, pixel_mm=pixel_mm)
        except ValueError as exc:  # an image QC cannot measure (not 2-D)
            qc, error = None, f"bad_image: {exc}"
        rows.append(qc_row(str(image_id), str(folder), qc) if qc is not None else {"image_id": str(image_id)})
        errors.append(error)
    frame = pd.DataFrame(rows)
    out = {name: frame[name].to_numpy() if name in frame else np.full(len(rows), None) for name in _qc_names()}
    return {
        **out,
        "folder": np.asarray(batch["folder"]),
        "path": np.asarray(batch["path"]),
        "error": np.asarray(errors, dtype=object),
    }


def _qc_names() -> list[str]:
    import schemas

    return schemas.TABLES["qc"].SCHEMA.names
