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
_IN_PLANE = np.stack([np.zeros((3, 3), dtype=bool), _EIGHT_NEIGHBOURS, np.zeros((3, 3), dtype=bool)])  # per map
_CHUNK = 2048  # maps per step of boxes_for_batch (bounds its memory)


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
    its first cell in row-major order. ``stack_peaks`` of a stack of one map.

    Args:
        heatmap: (h, w) map.
        valid: (h, w) bool mask of cells that may hold a peak.
    """
    heatmap = _check_heatmap(heatmap)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != heatmap.shape:
        raise BoxError(f"valid mask shape {valid.shape} must equal heatmap shape {heatmap.shape}")
    _, rows, cols = stack_peaks(heatmap[None], valid[None])
    return rows, cols


def stack_peaks(heatmaps: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (image, rows, cols) int64 of the ``find_peaks`` peaks of every map of a stack at once.

    Ordered by image, then as ``find_peaks`` orders one map's peaks (value desc, ties by row-major index).

    Args:
        heatmaps: (N, h, w) finite float64 maps.
        valid: (N, h, w) bool mask of cells that may hold a peak.
    """
    masked = np.where(valid, heatmaps, -np.inf)
    neighbour_max = ndimage.maximum_filter(masked, footprint=_EIGHT_NEIGHBOURS[None], mode="constant", cval=-np.inf)
    is_peak = valid & (heatmaps > 0) & (masked >= neighbour_max)
    # Adjacent peak cells are equal (each >= the other): 8-connected components of one map are plateaus.
    labels, count = ndimage.label(is_peak, structure=_IN_PLANE)
    empty = np.zeros(0, dtype=np.int64)
    if count == 0:
        return empty, empty, empty
    cells = np.flatnonzero(is_peak)  # row-major over (N, h, w)
    _, first = np.unique(labels.ravel()[cells], return_index=True)
    flat = cells[first]  # first cell of each plateau in row-major order
    cell_count, width = heatmaps.shape[1] * heatmaps.shape[2], heatmaps.shape[2]
    image, cell = np.divmod(flat, cell_count)
    order = np.lexsort((cell, -heatmaps.ravel()[flat], image))
    rows, cols = np.divmod(cell[order], width)
    return image[order].astype(np.int64), rows.astype(np.int64), cols.astype(np.int64)


def box_overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (intersection (..., N, M), area_a (..., N), area_b (..., M)) of x2/y2-exclusive boxes, float64.

    `a` is (..., N, 4) and `b` (..., M, 4) with the same leading shape (none: (N, 4) and (M, 4)).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = (a.reshape(-1, 4), b.reshape(-1, 4)) if a.ndim < 3 and b.ndim < 3 else (a, b)
    width = np.minimum(a[..., :, None, 2], b[..., None, :, 2]) - np.maximum(a[..., :, None, 0], b[..., None, :, 0])
    height = np.minimum(a[..., :, None, 3], b[..., None, :, 3]) - np.maximum(a[..., :, None, 1], b[..., None, :, 1])
    inter = np.maximum(width, 0) * np.maximum(height, 0)
    area_a = np.maximum(a[..., 2] - a[..., 0], 0) * np.maximum(a[..., 3] - a[..., 1], 0)
    area_b = np.maximum(b[..., 2] - b[..., 0], 0) * np.maximum(b[..., 3] - b[..., 1], 0)
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

    ``nms_keep`` of one image: a box is kept when its IoU with every kept box is <= nms_iou, in the given order.
    Greedy choices never depend on later boxes, so the first max_boxes kept are the capped result.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = nms_keep(boxes[None], np.ones((1, len(boxes)), dtype=bool), params.nms_iou, params.max_boxes)
    return np.flatnonzero(keep[0]).astype(np.int64)


def nms_keep(boxes: np.ndarray, valid: np.ndarray, nms_iou: float, max_boxes: int) -> np.ndarray:
    """Returns (N, P) bool: the boxes of each image kept by greedy NMS in the given order, at most max_boxes each.

    The rule and arithmetic of ``torchvision.ops.nms`` (a box is dropped when its IoU with a kept box is > nms_iou;
    IoU = inter / (area_kept + area - inter), float64; an inverted side counts as zero width), per image of a
    stack at once.

    Args:
        boxes: (N, P, 4) boxes per image, in rank order.
        valid: (N, P) bool, False for padding.
        nms_iou: IoU above which a later box is dropped.
        max_boxes: most boxes kept per image.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(len(valid), -1, 4)
    keep = np.zeros(np.shape(valid), dtype=bool)
    if max_boxes <= 0 or not keep.size:
        return keep
    x1, y1 = boxes[..., 0], boxes[..., 1]
    x2, y2 = np.maximum(boxes[..., 2], x1), np.maximum(boxes[..., 3], y1)
    area = (x2 - x1) * (y2 - y1)
    alive = np.asarray(valid, dtype=bool).copy()  # valid and not suppressed by a kept box
    count = np.zeros(len(keep), dtype=np.int64)
    p = 0
    while p < keep.shape[1]:
        open_rows = alive[:, p:] & (count < max_boxes)[:, None]
        columns = open_rows.any(axis=0)
        step = int(columns.argmax())
        if not columns[step]:
            break
        p += step
        take = open_rows[:, step]
        keep[:, p] = take
        count += take
        rows = np.flatnonzero(take) if len(take) > 1 else slice(None)  # the images that kept box p
        width = np.maximum(0.0, np.minimum(x2[rows, p, None], x2[rows]) - np.maximum(x1[rows, p, None], x1[rows]))
        height = np.maximum(0.0, np.minimum(y2[rows, p, None], y2[rows]) - np.maximum(y1[rows, p, None], y1[rows]))
        inter = width * height
        union = area[rows, p, None] + area[rows] - inter
        alive[rows] &= ~(np.divide(inter, union, out=np.zeros_like(inter), where=union != 0) > nms_iou)  # 0 / 0: kept
        p += 1
    return keep


def _check_body_boxes(body_boxes: np.ndarray, canvas_h: int, canvas_w: int) -> np.ndarray:
    """Returns (N, 4) float64 body boxes; raises BoxError naming the first that is empty or leaves the canvas."""
    body = np.asarray(body_boxes, dtype=np.float64).reshape(len(body_boxes), -1)
    if body.shape[1] != 4:
        raise BoxError(f"body_box {tuple(body[0])} must be a non-empty box inside the {canvas_h}x{canvas_w} canvas")
    ok = (0 <= body[:, 0]) & (body[:, 0] < body[:, 2]) & (body[:, 2] <= canvas_w)
    ok &= (0 <= body[:, 1]) & (body[:, 1] < body[:, 3]) & (body[:, 3] <= canvas_h)
    if not ok.all():
        bad = body[int(np.flatnonzero(~ok)[0])]
        raise BoxError(f"body_box {tuple(bad)} must be a non-empty box inside the {canvas_h}x{canvas_w} canvas")
    return body


def _body_cells(
    body_boxes: np.ndarray, shape: tuple[int, int], canvas_h: int, canvas_w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (valid (N, h, w), centre_x (w,), centre_y (h,)): the cells centred on each body box."""
    h, w = shape
    body = _check_body_boxes(body_boxes, canvas_h, canvas_w)
    centre_x = (np.arange(w) + 0.5) * canvas_w / w
    centre_y = (np.arange(h) + 0.5) * canvas_h / h
    in_y = (centre_y[None, :] >= body[:, 1, None]) & (centre_y[None, :] < body[:, 3, None])
    in_x = (centre_x[None, :] >= body[:, 0, None]) & (centre_x[None, :] < body[:, 2, None])
    return in_y[:, :, None] & in_x[:, None, :], centre_x, centre_y


def body_peaks(
    heatmap: np.ndarray, body_box: tuple[float, float, float, float], canvas_h: int, canvas_w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (rows, cols, centre_x, centre_y): the local maxima of the cells centred on the body, best first.

    ``find_peaks`` restricted to the cells whose centre lies inside ``body_box``; centre_x (w,) / centre_y (h,)
    are the canvas centres of every column / row: cell (r, c) is centred at ((c + 0.5) canvas_w / w,
    (r + 0.5) canvas_h / h). The set of peaks depends on the map and the body only, never on ``BoxParams``.
    """
    heatmap = _check_heatmap(heatmap)
    valid, centre_x, centre_y = _body_cells(
        np.asarray(body_box, dtype=np.float64)[None], heatmap.shape, canvas_h, canvas_w
    )
    rows, cols = find_peaks(heatmap, valid[0])
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
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    return _stack_points(np.zeros(len(rows), dtype=np.int64), rows, cols, centre_x, centre_y, [refined])


def _stack_points(
    image: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    centre_x: np.ndarray,
    centre_y: np.ndarray,
    refined: list[RefinedPeaks | None],
) -> np.ndarray:
    """Returns ``peak_points`` of peaks of several maps at once: peak k belongs to map image[k] (refined[image[k]]).

    A cell listed twice in one map's refined peaks takes its last entry; a non-finite entry keeps the cell centre.
    """
    points = np.stack([centre_x[cols], centre_y[rows]], axis=1).reshape(-1, 2).astype(np.float64)
    cell_count = len(centre_x) * len(centre_y)
    listed = [(i, r) for i, r in enumerate(refined) if r is not None and len(r[0])]
    if not listed or not len(rows):
        return points
    index = [np.asarray(r[0], dtype=np.int64).reshape(-1) for _, r in listed]
    xy = np.concatenate([np.asarray(r[1], dtype=np.float64).reshape(-1, 2) for _, r in listed])
    keys = np.concatenate([i * cell_count + cells for (i, _), cells in zip(listed, index, strict=True)])
    inside = np.concatenate([(cells >= 0) & (cells < cell_count) for cells in index])
    keys, xy = keys[inside][::-1], xy[inside][::-1]  # reversed: np.unique's first index is the last entry
    keys, last = np.unique(keys, return_index=True)
    xy = xy[last]
    wanted = image * cell_count + rows * len(centre_x) + cols
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    found = (keys[at] == wanted) & np.isfinite(xy[at]).all(axis=1) if len(keys) else np.zeros(len(rows), dtype=bool)
    points[found] = xy[at[found]]
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
    ``boxes_for_batch`` of a batch of one.

    Args:
        heatmap: (h, w) feature-resolution CAM in [0, 1] covering the whole canvas; cell (r, c) is centred at
            canvas ((c + 0.5) canvas_w / w, (r + 0.5) canvas_h / h).
        body_box: canvas box of the image region, ``LetterboxMeta.body_box()``.
        canvas_h: canvas height, px.
        canvas_w: canvas width, px.
        params: box settings.
        refined: optional ``refined_peaks`` output: where inside the cell's neighbourhood the evidence lies.
    """
    heatmap = _check_heatmap(heatmap)
    body = np.asarray(body_box, dtype=np.float64).reshape(1, -1)
    boxes, counts = boxes_for_batch(heatmap[None], body, canvas_h, canvas_w, params, [refined])
    return boxes[0, : counts[0]]


def boxes_for_batch(
    heatmaps: np.ndarray,
    body_boxes: np.ndarray,
    canvas_h: int,
    canvas_w: int,
    params: BoxParams,
    refined: list[RefinedPeaks | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns pseudo boxes for a batch: (N, max_boxes, 5) float32 padded with NaN, and counts (N,) int32.

    Row i holds ``extract_pseudo_boxes(heatmaps[i], body_boxes[i], ...)``, whatever the batch size; the maps are
    handled as stacks (``stack_peaks``, ``nms_keep``) of at most _CHUNK maps.

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
    for first in range(0, len(heatmaps), _CHUNK):
        part = slice(first, first + _CHUNK)
        peaks = refined[part] if refined is not None else [None] * len(heatmaps[part])
        _chunk_boxes(heatmaps[part], body_boxes[part], canvas_h, canvas_w, params, peaks, out[part], counts[part])
    return out, counts


def _chunk_boxes(
    heatmaps: np.ndarray,
    body_boxes: np.ndarray,
    canvas_h: int,
    canvas_w: int,
    params: BoxParams,
    refined: list[RefinedPeaks | None],
    out: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Fills `out` (n, max_boxes, 5) and `counts` (n,) with the boxes of a stack of maps (``boxes_for_batch``)."""
    if heatmaps.size == 0 or not np.all(np.isfinite(heatmaps)):
        raise BoxError(f"heatmap must be a non-empty finite 2-D (h, w) array, got shape {heatmaps.shape[1:]}")
    heat = heatmaps.astype(np.float64)
    valid, centre_x, centre_y = _body_cells(body_boxes, heat.shape[1:], canvas_h, canvas_w)
    image, rows, cols = stack_peaks(heat, valid)
    scores = heat[image, rows, cols]
    keep = scores.astype(np.float32) > params.min_score  # as the float32 box rows store and compare it
    image, rows, cols, scores = image[keep], rows[keep], cols[keep], scores[keep]
    points = _stack_points(image, rows, cols, centre_x, centre_y, refined)
    body = body_boxes[image]
    side_w = np.minimum(float(params.size), body[:, 2] - body[:, 0])
    side_h = np.minimum(float(params.size), body[:, 3] - body[:, 1])
    x1 = np.clip(points[:, 0] - side_w / 2, body[:, 0], body[:, 2] - side_w)
    y1 = np.clip(points[:, 1] - side_h / 2, body[:, 1], body[:, 3] - side_h)
    boxes = np.stack([x1, y1, x1 + side_w, y1 + side_h, scores], axis=1).reshape(-1, 5)
    per_image = np.bincount(image, minlength=len(heat))
    rank = np.arange(len(image)) - (np.cumsum(per_image) - per_image)[image]  # position among its map's peaks
    padded = np.zeros((len(heat), int(per_image.max(initial=0)), 4))
    present = np.zeros(padded.shape[:2], dtype=bool)
    padded[image, rank], present[image, rank] = boxes[:, :4], True
    kept = nms_keep(padded, present, params.nms_iou, params.max_boxes)[image, rank]
    image, boxes = image[kept], boxes[kept]
    kept_per_image = np.bincount(image, minlength=len(heat))
    slot = np.arange(len(image)) - (np.cumsum(kept_per_image) - kept_per_image)[image]
    out[image, slot] = boxes.astype(np.float32)
    counts[:] = kept_per_image


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
