"""Heatmap -> pseudo boxes: local maxima inside the body, fixed-size boxes shifted onto the body, greedy NMS.

Boxes follow ``engine.core.scans.letterbox`` conventions (canvas px, x2/y2 exclusive). Output rows are
``x1, y1, x2, y2, score`` float32, best score first. The original pipeline's top-pixel rule is
kept as ``top_pixel_boxes`` for side-by-side comparison only; README.md "What changed from the original
scripts" says why it is replaced (its boxes cluster on the brightest blob, land in padding, get truncated).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


class BoxError(ValueError):
    """Invalid box parameters or input arrays."""


@dataclass(frozen=True)
class BoxParams:
    """Pseudo-box settings (conf ``boxes.*``; defaults: the original pipeline's 48 px, 5 boxes, NMS IoU 0.15)."""

    size: int = 48  # box side, canvas px (conf boxes.size)
    max_boxes: int = 5  # most boxes kept per image (conf boxes.max)
    nms_iou: float = 0.15  # a box is kept only if its IoU with every kept box is <= this (conf boxes.nms_iou)
    min_score: float = 0.0  # peaks with heatmap value <= this are dropped (conf boxes.min_score)

    def __post_init__(self) -> None:
        """Raises BoxError on out-of-range settings."""
        if self.size < 1:
            raise BoxError(f"boxes.size must be >= 1 canvas px, got {self.size}")
        if self.max_boxes < 0:
            raise BoxError(f"boxes.max must be >= 0, got {self.max_boxes}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise BoxError(f"boxes.nms_iou must be in [0, 1], got {self.nms_iou}")


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2 or heatmap.size == 0 or not np.all(np.isfinite(heatmap)):
        raise BoxError(f"heatmap must be a non-empty finite 2-D (h, w) array, got shape {heatmap.shape}")
    return heatmap.astype(np.float64)


def find_peaks(heatmap: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (rows, cols) of the local maxima of a heatmap, sorted by value desc, ties by row-major index.

    A peak is a valid cell with value > 0 and >= each valid 8-neighbour; invalid cells are ignored, so a hot
    spot cut by the body edge still peaks on the body. A plateau (8-connected equal maxima) yields one peak:
    its first cell in row-major order.

    Args:
        heatmap: (h, w) map.
        valid: (h, w) bool mask of cells that may hold a peak.
    """
    heatmap = _check_heatmap(heatmap)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != heatmap.shape:
        raise BoxError(f"valid mask shape {valid.shape} must equal heatmap shape {heatmap.shape}")
    masked = np.where(valid, heatmap, -np.inf)
    neighbour_max = ndimage.maximum_filter(masked, footprint=_EIGHT_NEIGHBOURS, mode="constant", cval=-np.inf)
    is_peak = valid & (heatmap > 0) & (masked >= neighbour_max)
    # Adjacent peak cells are equal (each >= the other): 8-connected components are plateaus.
    labels, count = ndimage.label(is_peak, structure=_EIGHT_NEIGHBOURS)
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    label_values, first_index = np.unique(labels.ravel(), return_index=True)
    flat = first_index[label_values > 0]  # first occurrence = first cell in row-major order; 0 = background
    order = np.lexsort((flat, -heatmap.ravel()[flat]))
    rows, cols = np.unravel_index(flat[order], heatmap.shape)
    return rows.astype(np.int64), cols.astype(np.int64)


def box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (intersection (N, M), area_a (N,), area_b (M,)) of x2/y2-exclusive boxes, float64."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    return inter, area_a, area_b


def _as_box_tensor(boxes: np.ndarray) -> torch.Tensor:
    """Returns (N, 4) float64 boxes as a tensor, an inverted side (x2 < x1) clipped to zero width as in box_overlaps.

    torch and torchvision are imported when first needed: a job that never compares boxes (split, threshold,
    report) starts ~6 s sooner without them (torchvision's import loads torch._dynamo).
    """
    import torch

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return torch.from_numpy(np.concatenate([boxes[:, :2], np.maximum(boxes[:, 2:], boxes[:, :2])], axis=1))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Returns the (N, M) float64 IoU of (N, 4) and (M, 4) boxes (x2/y2 exclusive; 0 where both areas are 0).

    ``torchvision.ops.box_iou`` (area = (x2 - x1)(y2 - y1): the exclusive-end convention), with its 0 / 0 = NaN of
    two empty boxes read as 0.
    """
    from torchvision import ops

    iou = ops.box_iou(_as_box_tensor(a), _as_box_tensor(b)).numpy()
    return np.nan_to_num(iou, nan=0.0)


def greedy_nms(boxes: np.ndarray, params: BoxParams) -> np.ndarray:
    """Returns indices of boxes (already in score order) kept by greedy NMS, at most params.max_boxes.

    ``torchvision.ops.nms`` keeps a box when its IoU with every kept box is <= nms_iou; it is given the row order as
    the score (-index), so equal scores keep their given order. Greedy choices never depend on later boxes, so the
    first max_boxes kept are the capped result.
    """
    if params.max_boxes == 0 or len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    import torch
    from torchvision import ops

    rank = -torch.arange(len(boxes), dtype=torch.float64)
    kept = ops.nms(_as_box_tensor(boxes), rank, params.nms_iou)
    return kept[: params.max_boxes].numpy().astype(np.int64)


def _check_body_box(body_box: tuple[float, float, float, float], canvas_h: int, canvas_w: int) -> np.ndarray:
    body = np.asarray(body_box, dtype=np.float64).reshape(-1)
    if body.shape != (4,) or not (0 <= body[0] < body[2] <= canvas_w and 0 <= body[1] < body[3] <= canvas_h):
        raise BoxError(f"body_box {tuple(body)} must be a non-empty box inside the {canvas_h}x{canvas_w} canvas")
    return body


def body_peaks(
    heatmap: np.ndarray, body_box: tuple[float, float, float, float], canvas_h: int, canvas_w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (rows, cols, centre_x, centre_y): the local maxima of the cells centred on the body, best first.

    ``find_peaks`` restricted to the cells whose centre lies inside ``body_box``; centre_x (w,) / centre_y (h,)
    are the canvas centres of every column / row: cell (r, c) is centred at ((c + 0.5) canvas_w / w,
    (r + 0.5) canvas_h / h). The set of peaks depends on the map and the body only, never on ``BoxParams``.
    """
    heatmap = _check_heatmap(heatmap)
    body = _check_body_box(body_box, canvas_h, canvas_w)
    h, w = heatmap.shape
    centre_x = (np.arange(w) + 0.5) * canvas_w / w
    centre_y = (np.arange(h) + 0.5) * canvas_h / h
    valid = ((centre_y >= body[1]) & (centre_y < body[3]))[:, None] & ((centre_x >= body[0]) & (centre_x < body[2]))
    rows, cols = find_peaks(heatmap, valid)
    return rows, cols, centre_x, centre_y


RefinedPeaks = tuple[np.ndarray, np.ndarray]  # (flat cell index (K,) int, refined canvas centre (K, 2) x, y)


def refined_peaks(
    heatmap: np.ndarray,
    body_box: tuple[float, float, float, float],
    canvas_h: int,
    canvas_w: int,
    centres: np.ndarray,
    limit: int,
) -> RefinedPeaks:
    """Returns the refined canvas centres of the (at most `limit`) best body peaks of a heatmap.

    Args:
        heatmap: (h, w) CAM as stored (its peaks are the ones ``extract_pseudo_boxes`` will find).
        body_box, canvas_h, canvas_w: as for ``extract_pseudo_boxes``.
        centres: (h, w, 2) refined canvas (x, y) of every cell (``core.model.cam.refine_cell_centres``); non-finite
            entries keep the cell centre.
        limit: most peaks kept, best first.
    """
    rows, cols, centre_x, centre_y = body_peaks(heatmap, body_box, canvas_h, canvas_w)
    rows, cols = rows[:limit], cols[:limit]
    centres = np.asarray(centres, dtype=np.float64)
    if centres.shape != (*np.shape(heatmap), 2):
        raise BoxError(f"centres must be (h, w, 2) = {(*np.shape(heatmap), 2)}, got {centres.shape}")
    xy = centres[rows, cols].reshape(-1, 2)
    xy = np.where(np.isfinite(xy), xy, np.stack([centre_x[cols], centre_y[rows]], axis=1))
    body = np.asarray(body_box, dtype=np.float64)
    xy[:, 0] = np.clip(xy[:, 0], body[0], body[2])
    xy[:, 1] = np.clip(xy[:, 1], body[1], body[3])
    return (rows * np.shape(heatmap)[1] + cols).astype(np.int32), xy.astype(np.float32)


def peak_points(
    rows: np.ndarray, cols: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray, refined: RefinedPeaks | None
) -> np.ndarray:
    """Returns (K, 2) canvas (x, y) of peaks: the refined centre where `refined` holds the cell, else its centre."""
    points = np.stack([centre_x[cols], centre_y[rows]], axis=1).reshape(-1, 2).astype(np.float64)
    if refined is not None and len(refined[0]) and len(rows):
        index, xy = np.asarray(refined[0], dtype=np.int64), np.asarray(refined[1], dtype=np.float64).reshape(-1, 2)
        flat = rows * len(centre_x) + cols
        position = {int(cell): k for k, cell in enumerate(index)}
        for k, cell in enumerate(flat):
            if int(cell) in position and np.isfinite(xy[position[int(cell)]]).all():
                points[k] = xy[position[int(cell)]]
    return points


def extract_pseudo_boxes(
    heatmap: np.ndarray,
    body_box: tuple[float, float, float, float],
    canvas_h: int,
    canvas_w: int,
    params: BoxParams,
    refined: RefinedPeaks | None = None,
) -> np.ndarray:
    """Returns (K, 5) float32 pseudo boxes ``x1, y1, x2, y2, score`` (canvas px), K <= params.max_boxes.

    Peaks are local maxima of the heatmap at cells whose centre lies inside ``body_box``; each gets a box of
    side min(size, body extent) centred on its point (the refined centre when `refined` holds the cell, else the
    cell centre) and shifted (never truncated) onto the body. Greedy NMS in score order keeps a box only if its
    IoU with every kept box is <= nms_iou (the original pipeline's NMS). An all-zero heatmap gives no box.

    Args:
        heatmap: (h, w) feature-resolution CAM in [0, 1] covering the whole canvas; cell (r, c) is centred at
            canvas ((c + 0.5) canvas_w / w, (r + 0.5) canvas_h / h).
        body_box: canvas box of the image region, ``LetterboxMeta.body_box()``.
        canvas_h: canvas height, px.
        canvas_w: canvas width, px.
        params: box settings.
        refined: optional ``refined_peaks`` output: where inside the cell's neighbourhood the evidence lies.
    """
    rows, cols, centre_x, centre_y = body_peaks(heatmap, body_box, canvas_h, canvas_w)
    body = np.asarray(body_box, dtype=np.float64)
    scores = _check_heatmap(heatmap)[rows, cols]
    keep = scores.astype(np.float32) > params.min_score  # as the float32 box rows store and compare it
    rows, cols, scores = rows[keep], cols[keep], scores[keep]
    points = peak_points(rows, cols, centre_x, centre_y, refined)
    side_w = min(float(params.size), body[2] - body[0])
    side_h = min(float(params.size), body[3] - body[1])
    x1 = np.clip(points[:, 0] - side_w / 2, body[0], body[2] - side_w)
    y1 = np.clip(points[:, 1] - side_h / 2, body[1], body[3] - side_h)
    boxes = np.stack([x1, y1, x1 + side_w, y1 + side_h, scores], axis=1).reshape(-1, 5)
    return boxes[greedy_nms(boxes[:, :4], params)].astype(np.float32)


def boxes_for_batch(
    heatmaps: np.ndarray,
    body_boxes: np.ndarray,
    canvas_h: int,
    canvas_w: int,
    params: BoxParams,
    refined: list[RefinedPeaks | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns pseudo boxes for a batch: (N, max_boxes, 5) float32 padded with NaN, and counts (N,) int32.

    Row i equals ``extract_pseudo_boxes(heatmaps[i], body_boxes[i], ...)``, whatever the batch size.

    Args:
        heatmaps: (N, h, w) feature-resolution CAMs in [0, 1], each covering the whole canvas.
        body_boxes: (N, 4) canvas body boxes (``LetterboxMeta.body_box()`` per row).
        canvas_h: canvas height, px (the same canvas for the whole batch).
        canvas_w: canvas width, px.
        params: box settings.
        refined: optional per-row ``refined_peaks`` (None entries: cell centres).
    """
    heatmaps = np.asarray(heatmaps)
    body_boxes = np.asarray(body_boxes, dtype=np.float64)
    if heatmaps.ndim != 3 or body_boxes.shape != (len(heatmaps), 4):
        raise BoxError(f"need heatmaps (N, h, w) and body_boxes (N, 4), got {heatmaps.shape} and {body_boxes.shape}")
    out = np.full((len(heatmaps), params.max_boxes, 5), np.nan, dtype=np.float32)
    counts = np.zeros(len(heatmaps), dtype=np.int32)
    if refined is not None and len(refined) != len(heatmaps):
        raise BoxError(f"refined must hold one entry per heatmap, got {len(refined)} for {len(heatmaps)}")
    for index, (heatmap, body) in enumerate(zip(heatmaps, body_boxes, strict=True)):
        peaks = refined[index] if refined is not None else None
        boxes = extract_pseudo_boxes(heatmap, tuple(body), canvas_h, canvas_w, params, peaks)
        out[index, : len(boxes)] = boxes
        counts[index] = len(boxes)
    return out, counts


def _brightest_pixels(flat: np.ndarray, count: int) -> np.ndarray:
    """Returns the indices of the `count` largest values, by value desc then index (deterministic ties)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    kth_value = -np.partition(-flat, count - 1)[count - 1]
    above = np.flatnonzero(flat > kth_value)
    candidates = np.concatenate([above, np.flatnonzero(flat == kth_value)[: count - len(above)]])
    return candidates[np.lexsort((candidates, -flat[candidates]))]


def top_pixel_boxes(heatmap_canvas: np.ndarray, params: BoxParams, candidates_multiplier: int = 50) -> np.ndarray:
    """Returns (K, 5) float32 boxes by the original pipeline's rule, for comparison only.

    The ``max_boxes * candidates_multiplier`` brightest pixels of a canvas-resolution map, in value order
    (ties by row-major index), stopping at the first value <= min_score; box ``x1 = max(0, x - size // 2)``,
    ``x2 = min(W, x1 + size)`` (shifted at the left/top edge, truncated at the right/bottom edge); greedy NMS
    rejecting IoU > nms_iou; score = clipped heat at the pixel. Boxes can sit in padding and cluster on the
    brightest blob: the defects the local-maximum rule above fixes.
    """
    heat = np.clip(_check_heatmap(heatmap_canvas), 0.0, 1.0)
    height, width = heat.shape
    count = min(max(params.max_boxes * candidates_multiplier, params.max_boxes), heat.size)
    flat = heat.ravel()
    candidates = _brightest_pixels(flat, count)
    scores = flat[candidates]
    stop = np.flatnonzero(scores <= params.min_score)
    candidates = candidates[: stop[0]] if len(stop) else candidates
    ys, xs = np.divmod(candidates, width)
    x1 = np.maximum(0, xs - params.size // 2)
    y1 = np.maximum(0, ys - params.size // 2)
    x2, y2 = np.minimum(width, x1 + params.size), np.minimum(height, y1 + params.size)
    boxes = np.stack([x1, y1, x2, y2, flat[candidates]], axis=1).astype(np.float64).reshape(-1, 5)
    return boxes[greedy_nms(boxes[:, :4], params)].astype(np.float32)
