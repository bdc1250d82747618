"""Continuous score maps of the mask methods, for PxAP (Choe et al., CVPR 2020), and mask boxes on Normal GT boxes.

PxAP sweeps a threshold over one continuous map per method; a painted or binary map has a single operating point.
Each mask method therefore keeps or rebuilds its own continuous map (pure numpy + OpenCV):

* the segmentation network: its pixel probability on the canvas, stored compactly by `make segment` (table
  `seg_probs`): ``pool_probability`` takes area means over ``PROB_STRIDE`` x ``PROB_STRIDE`` canvas blocks and
  quantises them to uint8 (1/255 steps, finer than PxAP's 0.01 thresholds); ``unpool_probability`` brings it back
  to the canvas with the bilinear, pixel-centre resize of the stored CAM (``engine.core.model.cam.upsample_heatmap``).
* the pseudo masks: the segmenters store one score per mask, no pixel probability, so their map is the CAM inside
  the union of the kept masks and 0 outside (``masked_score``).
"""

from __future__ import annotations

import cv2
import numpy as np

PROB_STRIDE = 4  # canvas px per stored probability cell, each way (1024 x 512 canvas: 256 x 128 uint8 = 32 KiB)


def pooled_shape(height: int, width: int, stride: int = PROB_STRIDE) -> tuple[int, int]:
    """Returns the (h, w) of a pooled (height, width) map: ceil(height / stride), ceil(width / stride)."""
    if stride < 1 or height < 1 or width < 1:
        raise ValueError(f"need a positive stride and map size, got stride {stride}, size {(height, width)}")
    return -(-int(height) // stride), -(-int(width) // stride)


def pool_probability(prob: np.ndarray, stride: int = PROB_STRIDE) -> np.ndarray:
    """Returns the (ceil(H / stride), ceil(W / stride)) uint8 map of round(255 * the area mean of each block).

    Args:
        prob: (H, W) pixel probabilities in [0, 1] (values outside are clipped; non-finite ones count as 0).
        stride: block side in px; a map whose size is not a multiple of it is area-resampled (OpenCV INTER_AREA).
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"need an (H, W) probability map, got shape {prob.shape}")
    h, w = pooled_shape(*prob.shape, stride)
    clean = np.clip(np.where(np.isfinite(prob), prob, 0.0), 0.0, 1.0).astype(np.float32)
    pooled = cv2.resize(clean, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != prob.shape else clean
    return np.round(pooled * 255.0).astype(np.uint8)


def unpool_probability(pooled: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Returns the (out_h, out_w) float32 probability in [0, 1] of a ``pool_probability`` map (bilinear, centres)."""
    pooled = np.asarray(pooled)
    if pooled.ndim != 2 or pooled.size == 0:
        raise ValueError(f"need a non-empty (h, w) pooled map, got shape {pooled.shape}")
    values = pooled.astype(np.float32) / 255.0
    return np.clip(cv2.resize(values, (int(out_w), int(out_h)), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def masked_score(heat: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Returns `heat` (h, w) inside the union of `masks` (each (h, w) bool) and 0 outside, float64 in [0, 1]."""
    heat = np.clip(np.where(np.isfinite(heat), np.asarray(heat, dtype=np.float64), 0.0), 0.0, 1.0)
    if not masks:
        return np.zeros(heat.shape, dtype=np.float64)
    union = np.any(np.stack([np.asarray(m, dtype=bool) for m in masks]), axis=0)
    if union.shape != heat.shape:
        raise ValueError(f"masks of shape {union.shape} on a score map of shape {heat.shape}")
    return np.where(union, heat, 0.0)
