"""Columns of a stream batch: the letterbox meta, the body box on the canvas, refined peaks and the box rows.

Pure functions from a `dict[str, np.ndarray]` batch to more columns; the UDFs of engine/runtime call them, and so do
`make boxes` and `make evaluate` on stored heatmaps (one box path for all three).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from engine.core.localization.boxes import BoxParams, RefinedPeaks, boxes_for_batch, refined_peaks
from engine.core.localization.spots import SPOT_COLUMNS, SpotRanker, image_boxes, spot_features, spots_of
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original_batch, original_to_canvas

META_COLUMNS = ("orig_h", "orig_w", "canvas_h", "canvas_w", "scale", "pad_left", "pad_top", "new_h", "new_w")
QC_BODY_COLUMNS = ("qc_body_x1", "qc_body_y1", "qc_body_x2", "qc_body_y2")  # QC body box, original px (or NaN)
BODY_CANVAS_COLUMNS = ("body_x1_canvas", "body_y1_canvas", "body_x2_canvas", "body_y2_canvas")  # the same, canvas px


def row_slices(batch: dict[str, Any], rows: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (first row, the batch's columns sliced to rows first .. first + rows - 1), in order."""
    n, rows = len(next(iter(batch.values()), ())), max(int(rows), 1)
    for first in range(0, n, rows):
        yield first, {k: v[first : first + rows] for k, v in batch.items()}


def body_canvas_columns(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Returns BODY_CANVAS_COLUMNS: each row's QC body box (QC_BODY_COLUMNS, original px) on the canvas, or NaN.

    Rows without a body box (noise frames, no qc row, undecodable rows) get NaN: `body_boxes` then falls back
    to the letterboxed image region.
    """
    orig = np.stack([np.asarray(batch[k], dtype=np.float64) for k in QC_BODY_COLUMNS], axis=1)
    n = len(orig)
    canvas = np.full((n, 4), np.nan, dtype=np.float32)
    for i in np.flatnonzero(np.isfinite(orig).all(axis=1) & (np.asarray(batch["orig_w"]) > 0)):
        lb = LetterboxMeta(**{k: batch[k][i].item() for k in META_COLUMNS})
        canvas[i] = original_to_canvas(orig[i : i + 1], lb)[0]
    return {name: canvas[:, j] for j, name in enumerate(BODY_CANVAS_COLUMNS)}


def body_boxes(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Returns (N, 4) canvas boxes peaks may sit in: the QC body box (BODY_CANVAS_COLUMNS) where the batch has one,
    else the letterboxed image region from the meta columns (runs indexed before QC, noise frames)."""
    left, top = np.asarray(batch["pad_left"], dtype=np.float32), np.asarray(batch["pad_top"], dtype=np.float32)
    region = np.stack([left, top, left + batch["new_w"], top + batch["new_h"]], axis=1).astype(np.float32)
    if not all(k in batch for k in BODY_CANVAS_COLUMNS):
        return region
    body = np.stack([np.asarray(batch[k], dtype=np.float32) for k in BODY_CANVAS_COLUMNS], axis=1)
    has_body = np.isfinite(body).all(axis=1) & (body[:, 2] > body[:, 0]) & (body[:, 3] > body[:, 1])
    return np.where(has_body[:, None], body, region)


def explode_boxes(
    batch: dict[str, Any],
    boxes: np.ndarray,
    counts: np.ndarray,
    params: BoxParams,
    min_prob: float,
    ranker: SpotRanker | None = None,
) -> dict[str, np.ndarray]:
    """Returns `boxes` table columns: one row per box of the images whose y_prob >= min_prob.

    `boxes` is (N, K, 5) canvas x1, y1, x2, y2, score padded with NaN (engine.core.localization.boxes.boxes_for_batch,
    or ``ranked_batch_boxes`` when `ranker` built them). The original-image coordinates come from the letterbox
    inverse; every row records how it was built: box_method, and for CAM peaks the `params` (box_size, nms_iou,
    boxes_max, min_score), for spots the ranker's settings and each box's own side.
    """
    keep_image = np.asarray(batch["y_prob"], dtype=np.float32) >= min_prob
    rank = np.arange(boxes.shape[1])[None, :]
    mask = (rank < counts[:, None]) & keep_image[:, None]
    img_idx, rank_idx = np.nonzero(mask)
    flat = boxes[img_idx, rank_idx].astype(np.float32)
    names = ("scale", "pad_left", "pad_top", "orig_w", "orig_h", "new_w", "new_h")
    per_box = {k: np.asarray(batch[k])[img_idx] for k in names}
    orig = canvas_to_original_batch(
        flat[:, :4],
        per_box["scale"],
        per_box["pad_left"],
        per_box["pad_top"],
        per_box["orig_w"],
        per_box["orig_h"],
        new_w=per_box["new_w"],
        new_h=per_box["new_h"],
    )
    raw_min = np.asarray(batch["raw_min"], dtype=np.float32)[img_idx]
    raw_max = np.asarray(batch["raw_max"], dtype=np.float32)[img_idx]
    n = len(img_idx)
    if ranker is None:
        method, sizes, raw = "cam_peaks", np.full(n, params.size), raw_min + flat[:, 4] * (raw_max - raw_min)
        nms, most, floor = params.nms_iou, params.max_boxes, params.min_score
    else:
        method, sizes, raw = "spots", np.rint(flat[:, 2] - flat[:, 0]), np.full(n, np.nan, dtype=np.float32)
        nms, most, floor = ranker.nms_iou, ranker.max_boxes, ranker.min_score
    columns: dict[str, np.ndarray] = {
        "image_id": np.asarray(batch["image_id"])[img_idx],
        "rank": rank_idx.astype(np.int16),
        "score": flat[:, 4],
        "score_raw": raw.astype(np.float32),  # cam_peaks: undoes the min-max normalisation
        "y_prob": np.asarray(batch["y_prob"], dtype=np.float32)[img_idx],
        "box_method": np.full(n, method, dtype=object),
        "box_size": sizes.astype(np.int16),
        "nms_iou": np.full(n, nms, dtype=np.float32),
        "boxes_max": np.full(n, most, dtype=np.int16),
        "min_score": np.full(n, floor, dtype=np.float32),
        "split": np.asarray(batch["split"])[img_idx],
        "folder": np.asarray(batch["folder"])[img_idx],
        # set by `make boxes` once both views of the patient are scored (engine/core/scans/views.py)
        "cross_view": np.full(n, np.nan, dtype=np.float32),
        "cross_rank": np.full(n, -1, dtype=np.int16),
    }
    for j, name in enumerate(("x1", "y1", "x2", "y2")):
        columns[name] = flat[:, j]
        columns[f"{name}_orig"] = orig[:, j].astype(np.float32)
    return columns


PEAK_COLUMNS = ("peak_index", "peak_x", "peak_y")  # refined peak centres stored with a heatmap (cam.refine)


def refined_peak_columns(
    heatmaps: np.ndarray, batch: dict[str, Any], centres: np.ndarray, limit: int
) -> dict[str, np.ndarray]:
    """Returns PEAK_COLUMNS as (N, limit) arrays padded with -1 / NaN: each row's best body peaks, refined.

    Args:
        heatmaps: (N, h, w) maps as stored (float16), so that `make boxes` finds the same peaks.
        batch: letterbox meta columns of the N rows.
        centres: (N, h, w, 2) refined cell centres (``engine.core.model.cam.refine_cell_centres``).
        limit: peaks kept per row.
    """
    canvas_h, canvas_w = int(batch["canvas_h"][0]), int(batch["canvas_w"][0])
    n = len(heatmaps)
    index = np.full((n, limit), -1, dtype=np.int32)
    xs, ys = np.full((n, limit), np.nan, dtype=np.float32), np.full((n, limit), np.nan, dtype=np.float32)
    for row, (heat, body) in enumerate(zip(heatmaps.astype(np.float32), body_boxes(batch), strict=True)):
        cells, xy = refined_peaks(heat, tuple(body), canvas_h, canvas_w, centres[row], limit)
        index[row, : len(cells)], xs[row, : len(cells)], ys[row, : len(cells)] = cells, xy[:, 0], xy[:, 1]
    return {"peak_index": index, "peak_x": xs, "peak_y": ys}


def refined_of(index: Any, xs: Any, ys: Any) -> RefinedPeaks | None:
    """Returns one row's stored refined peaks (padded arrays or Parquet lists), or None when it has none."""
    if index is None or isinstance(index, float):  # a null list cell reads back as None or NaN
        return None
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    keep = index >= 0
    xy = np.stack([np.asarray(xs, dtype=np.float32)[keep], np.asarray(ys, dtype=np.float32)[keep]], axis=1)
    return (index[keep], xy) if keep.any() else None


def pseudo_boxes(heatmaps: np.ndarray, batch: dict[str, Any], params: BoxParams) -> tuple[np.ndarray, np.ndarray]:
    """Returns boxes_for_batch over stored float16 heatmaps: the one path of `make cam` and `make boxes`.

    Rows whose batch carries PEAK_COLUMNS get their boxes on the refined peak centres.
    """
    canvas_h, canvas_w = int(batch["canvas_h"][0]), int(batch["canvas_w"][0])
    refined = None
    if all(k in batch for k in PEAK_COLUMNS):
        refined = [refined_of(*row) for row in zip(*(batch[k] for k in PEAK_COLUMNS), strict=True)]
    return boxes_for_batch(heatmaps.astype(np.float32), body_boxes(batch), canvas_h, canvas_w, params, refined)


def ranked_batch_boxes(
    heatmaps: np.ndarray, batch: dict[str, Any], ranker: SpotRanker, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns spot boxes of a batch by `ranker`: (N, width, 5) float32 padded with NaN, and counts (N,) int32.

    The batch carries SPOT_COLUMNS (padded arrays or lists), `y_prob` and the letterbox meta; heatmaps are the
    stored (N, h, w) maps. Row i holds ``spots.image_boxes`` of that row, its first `width` boxes.
    """
    canvas_h, canvas_w = int(batch["canvas_h"][0]), int(batch["canvas_w"][0])
    out = np.full((len(heatmaps), width, 5), np.nan, dtype=np.float32)
    counts = np.zeros(len(heatmaps), dtype=np.int32)
    columns = (batch["y_prob"], batch["scale"], *(batch[k] for k in SPOT_COLUMNS))
    for i, (heat, body, prob, scale, *values) in enumerate(zip(heatmaps, body_boxes(batch), *columns, strict=True)):
        spots = spots_of(tuple(values))
        heat = np.asarray(heat, np.float32)
        features = spot_features(spots, heat, body, canvas_h, canvas_w, ranker.physiology, float(scale), float(prob))
        boxes = image_boxes(spots, features, body, float(prob), ranker)[:width]
        out[i, : len(boxes)], counts[i] = boxes, len(boxes)
    return out, counts
