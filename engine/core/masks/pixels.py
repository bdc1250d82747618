"""Pixel helpers shared by the classical segmenters, the model segmenters and the crops: box bounds, blur, the
peak's component, border/peak levels, and MaskError (the one module of engine/core/masks the others import)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


class MaskError(ValueError):
    """Invalid segmenter settings or input arrays."""


def box_bounds(box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Returns the integer pixel bounds (x1, y1, x2, y2) covered by a float box, clipped to an (h, w) shape."""
    h, w = shape
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    return x1, y1, max(x1, x2), max(y1, y2)


def peak_component(mask: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Returns the 8-connected component of `mask` holding the peak (else the largest one), holes filled."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    px, py = int(np.clip(peak[0], 0, mask.shape[1] - 1)), int(np.clip(peak[1], 0, mask.shape[0] - 1))
    keep = labels[py, px]
    if keep == 0:
        keep = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return ndimage.binary_fill_holes(labels == keep)


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Returns the image as float32, Gaussian-blurred with `sigma` px (unchanged for sigma <= 0)."""
    image = np.asarray(image, dtype=np.float32)
    return cv2.GaussianBlur(image, (0, 0), sigma) if sigma > 0 else image


def border_and_peak(region: np.ndarray, peak_xy: tuple[int, int]) -> tuple[float, float]:
    """Returns (median of the region's border pixels, value at the peak) of a box region."""
    border = np.concatenate([region[0], region[-1], region[1:-1, 0], region[1:-1, -1]])
    return float(np.median(border)), float(region[peak_xy[1], peak_xy[0]])


def relative_contrast(region: np.ndarray, mask: np.ndarray, background: float, peak: float) -> float:
    """Returns (mean inside the mask - background) / (peak - background), clipped to [0, 1]; 0 when undefined."""
    if not mask.any() or peak <= background:
        return 0.0
    return float(np.clip((region[mask].mean() - background) / (peak - background), 0.0, 1.0))
