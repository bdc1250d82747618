"""Pseudo-mask crops, quality control and the crop -> original-image mapping (pure numpy, canvas px).

QC never deletes a mask: each failed check adds a reason code to the mask's flags, and a mask is kept when it
has none. The codes: empty, area_small, area_large, peak_outside, leak, low_contrast, cam_not_above_ring,
disagree, below_threshold (thresholds: ``engine.config_sections.MasksConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.config_sections import MasksConfig
from engine.core.masks.pixels import border_and_peak, box_bounds, smooth


@dataclass(frozen=True)
class CropBatch:
    """K crops around K canvas boxes, all of one shape (zero outside the canvas)."""

    images: np.ndarray  # (K, h, w) uint8
    heat: np.ndarray  # (K, h, w) float32 CAM in [0, 1]
    boxes: np.ndarray  # (K, 4) float32 box in crop px
    peaks: np.ndarray  # (K, 2) float32 x, y crop px: brightest blurred pixel near the box centre
    origins: np.ndarray  # (K, 2) int64 canvas x, y of each crop's top-left pixel


def _take(array: np.ndarray, x0: int, y0: int, h: int, w: int) -> np.ndarray:
    """Returns array[y0:y0+h, x0:x0+w], zero-padded where the window leaves the array."""
    out = np.zeros((h, w), dtype=array.dtype)
    sy, sx = max(y0, 0), max(x0, 0)
    ey, ex = min(y0 + h, array.shape[0]), min(x0 + w, array.shape[1])
    if ey > sy and ex > sx:
        out[sy - y0 : ey - y0, sx - x0 : ex - x0] = array[sy:ey, sx:ex]
    return out


def crop_boxes(canvas: np.ndarray, heat: np.ndarray, boxes: np.ndarray, cfg: MasksConfig) -> CropBatch:
    """Returns the crops of one image around its (K, 4) canvas boxes, with a `cfg.context` margin.

    Args:
        canvas: (H, W) uint8 letterboxed image.
        heat: (H, W) float32 canvas-resolution CAM (``engine.core.model.cam.upsample_heatmap``).
        boxes: (K, 4) canvas boxes x1, y1, x2, y2 (x2/y2 exclusive).
        cfg: masks settings (context, smooth_sigma).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sides = np.ceil(boxes[:, 2:] - boxes[:, :2]).astype(np.int64) if len(boxes) else np.ones((0, 2), np.int64)
    margin = int(np.ceil(cfg.context * sides.max())) if len(boxes) else 0
    w, h = (sides.max(axis=0) + 2 * margin) if len(boxes) else (1, 1)
    origins = np.floor(boxes[:, :2]).astype(np.int64) - margin
    images = np.stack([_take(canvas, x, y, h, w) for x, y in origins]) if len(boxes) else np.zeros((0, h, w), np.uint8)
    maps = np.stack([_take(heat, x, y, h, w) for x, y in origins]) if len(boxes) else np.zeros((0, h, w), np.float32)
    local = (boxes - np.tile(origins, 2)).astype(np.float32)
    peaks = np.stack([_peak(images[k], local[k], cfg) for k in range(len(boxes))]) if len(boxes) else local[:, :2]
    return CropBatch(images, maps.astype(np.float32), local, peaks.astype(np.float32), origins)


def _peak(image: np.ndarray, box: np.ndarray, cfg: MasksConfig) -> np.ndarray:
    """Returns the brightest blurred pixel (x, y) within a quarter box side of the box centre (the CAM peak)."""
    x1, y1, x2, y2 = box_bounds(box, image.shape)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    reach = max(1, int(min(x2 - x1, y2 - y1) // 4))
    wx1, wy1 = max(x1, int(cx) - reach), max(y1, int(cy) - reach)
    wx2, wy2 = min(x2, int(cx) + reach + 1), min(y2, int(cy) + reach + 1)
    if wx2 <= wx1 or wy2 <= wy1:
        return np.array([cx, cy], dtype=np.float32)
    window = smooth(image, cfg.smooth_sigma)[wy1:wy2, wx1:wx2]
    row, col = np.unravel_index(int(np.argmax(window)), window.shape)
    return np.array([wx1 + col, wy1 + row], dtype=np.float32)


def mask_to_original(mask: np.ndarray, origin: tuple[int, int], meta: dict) -> np.ndarray:
    """Returns the (orig_h, orig_w) bool mask of a crop mask placed at canvas `origin` (x, y).

    Each original pixel takes the value of the canvas pixel its centre maps to (nearest neighbour, the
    letterbox forward map of ``engine.core.scans.letterbox``: x_canvas = x_orig * new_w / orig_w + pad_left).

    Args:
        mask: (h, w) bool crop mask.
        origin: canvas (x, y) of the crop's top-left pixel.
        meta: letterbox meta (orig_h, orig_w, new_h, new_w, pad_left, pad_top).
    """
    orig_h, orig_w = int(meta["orig_h"]), int(meta["orig_w"])
    out = np.zeros((orig_h, orig_w), dtype=bool)
    col = np.floor((np.arange(orig_w) + 0.5) * int(meta["new_w"]) / orig_w).astype(np.int64)
    row = np.floor((np.arange(orig_h) + 0.5) * int(meta["new_h"]) / orig_h).astype(np.int64)
    col += int(meta["pad_left"]) - int(origin[0])
    row += int(meta["pad_top"]) - int(origin[1])
    xs = np.flatnonzero((col >= 0) & (col < mask.shape[1]))
    ys = np.flatnonzero((row >= 0) & (row < mask.shape[0]))
    if len(xs) and len(ys):
        out[np.ix_(ys, xs)] = mask[np.ix_(row[ys], col[xs])]
    return out


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Returns the (x1, y1, x2, y2) pixel box of a mask (x2/y2 exclusive), or None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def touched_sides(mask: np.ndarray, box: np.ndarray) -> int:
    """Returns how many of the box's four sides (its outermost pixel rows/columns) the mask reaches."""
    x1, y1, x2, y2 = box_bounds(box, mask.shape)
    if x2 <= x1 or y2 <= y1:
        return 0
    inner = mask[y1:y2, x1:x2]
    return int(inner[0].any()) + int(inner[-1].any()) + int(inner[:, 0].any()) + int(inner[:, -1].any())


@dataclass(frozen=True)
class MaskMeasures:
    """What QC measures of one mask in its crop."""

    area_px: int  # mask pixels, crop (canvas) px
    contrast: float  # Michelson contrast of the blurred peak against the box-border median
    cam_inside: float  # mean CAM inside the mask (NaN when empty)
    cam_ring: float  # mean CAM on the ring of ring_px around the mask (NaN when empty)


def measure_mask(
    image: np.ndarray, heat: np.ndarray, mask: np.ndarray, box: np.ndarray, peak: np.ndarray, cfg: MasksConfig
) -> MaskMeasures:
    """Returns the QC measures of one crop mask (inputs as in ``CropBatch``, one row)."""
    x1, y1, x2, y2 = box_bounds(box, image.shape)
    region = smooth(image, cfg.smooth_sigma)[y1:y2, x1:x2]
    px, py = int(np.clip(peak[0], x1, x2 - 1)) - x1, int(np.clip(peak[1], y1, y2 - 1)) - y1
    background, top = border_and_peak(region, (px, py)) if region.size else (0.0, 0.0)
    contrast = (top - background) / (top + background) if top + background > 0 else 0.0
    if not mask.any():
        return MaskMeasures(0, float(contrast), float("nan"), float("nan"))
    ring = ndimage.binary_dilation(mask, np.ones((3, 3), dtype=bool), iterations=max(cfg.ring_px, 1)) & ~mask
    cam_ring = float(heat[ring].mean()) if ring.any() else float("nan")
    return MaskMeasures(int(mask.sum()), float(contrast), float(heat[mask].mean()), cam_ring)


def qc_flags(
    mask: np.ndarray,
    box: np.ndarray,
    peak: np.ndarray,
    measures: MaskMeasures,
    cfg: MasksConfig,
    below_threshold: bool,
    agreement: float | None,
) -> list[str]:
    """Returns the QC reason codes of one crop mask (empty list: the mask is kept); see the module docstring."""
    if measures.area_px == 0:
        flags = ["empty"]
    else:
        x1, y1, x2, y2 = box_bounds(box, mask.shape)
        flags = ["area_small"] if measures.area_px < cfg.min_area_px else []
        if measures.area_px > cfg.max_box_fraction * (x2 - x1) * (y2 - y1):
            flags.append("area_large")
        px, py = int(np.clip(peak[0], 0, mask.shape[1] - 1)), int(np.clip(peak[1], 0, mask.shape[0] - 1))
        if not mask[py, px]:
            flags.append("peak_outside")
        if touched_sides(mask, box) >= cfg.leak_sides:
            flags.append("leak")
        if not measures.cam_inside > measures.cam_ring:  # NaN ring (mask fills the crop) fails too
            flags.append("cam_not_above_ring")
    if measures.contrast < cfg.min_contrast:
        flags.append("low_contrast")
    if agreement is not None and agreement < cfg.min_agreement:
        flags.append("disagree")
    if below_threshold:
        flags.append("below_threshold")
    return flags
