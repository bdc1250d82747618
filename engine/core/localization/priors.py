"""Localisation baselines on arrays: a centre prior, an image-brightness prior and MaxBoxAcc (no model involved).

* Centre prior: the peak is the image centre; boxes of the run's box side are stacked along the vertical midline,
  outward from the centre (the spine and pelvis of a whole-body scan lie there).
* Brightness prior: the letterboxed scan smoothed by a Gaussian stands in for the CAM; the run's own box rule
  (``core.localization.boxes.extract_pseudo_boxes``) and peak (the brightest smoothed body pixel) then apply to it.
* MaxBoxAcc (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization Methods Right"): for each
  CAM threshold, the box around the largest connected component of the thresholded map; an image is correct when
  that box reaches IoU >= delta with an Abnormal box; the best accuracy over the thresholds is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from engine.core.localization.boxes import BoxParams
from engine.core.metrics.localization import Ratio, iou_matrix, pixel_boxes, ratio
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original

_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def centre_prior(meta: LetterboxMeta, params: BoxParams) -> tuple[np.ndarray, tuple[int, int]]:
    """Returns (boxes (K, 4) float64 original px, peak (x, y)) of the centre prior.

    Box side: ``params.size`` canvas px in original px (clipped to the image); the first box is centred on the
    image centre, the next ones stacked below, above, below, ... without overlap while they fit in the image.
    """
    side_w = min(params.size / meta.scale, float(meta.orig_w))
    side_h = min(params.size / meta.scale, float(meta.orig_h))
    centre_x, centre_y = meta.orig_w / 2, meta.orig_h / 2
    boxes = []
    for step in range(2 * int(meta.orig_h / side_h) + 2):
        offset = (step + 1) // 2 * (1 if step % 2 else -1)
        y1 = centre_y - side_h / 2 + offset * side_h
        if 0 <= y1 and y1 + side_h <= meta.orig_h and len(boxes) < params.max_boxes:
            boxes.append([centre_x - side_w / 2, y1, centre_x + side_w / 2, y1 + side_h])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), (meta.orig_w // 2, meta.orig_h // 2)


def brightness_prior_map(canvas: np.ndarray, meta: LetterboxMeta, sigma_px: float) -> np.ndarray:
    """Returns the canvas-resolution brightness prior: the scan smoothed, in [0, 1] on the body, 0 in the padding.

    Args:
        canvas: (canvas_h, canvas_w) letterboxed grey image (``engine.core.scans.letterbox.letterbox``).
        meta: its letterbox meta.
        sigma_px: Gaussian sigma in original px (conf ``evaluate.prior_sigma_px``).
    """
    smooth = ndimage.gaussian_filter(np.asarray(canvas, dtype=np.float32), sigma=sigma_px * meta.scale)
    x1, y1, x2, y2 = meta.body_box()
    out = np.zeros_like(smooth)
    body = smooth[y1:y2, x1:x2]
    low, high = float(body.min()), float(body.max())
    out[y1:y2, x1:x2] = (body - low) / (high - low) if high > low else 0.0
    return out


def largest_component_box(mask: np.ndarray) -> np.ndarray | None:
    """Returns the (4,) box x1, y1, x2, y2 (x2/y2 exclusive, px) of the largest 8-connected True component.

    Ties: the component found first in row-major order. None when the mask is all False. Choe et al. take the
    largest contour (cv2.findContours); a component's pixel count stands in for the contour area.
    """
    labels, count = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    if count == 0:
        return None
    largest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    rows, cols = ndimage.find_objects(labels, max_label=largest)[largest - 1]
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float64)


def box_accuracy_hits(
    heat_canvas: np.ndarray, meta: LetterboxMeta, abnormal: np.ndarray, thresholds: np.ndarray, ious: tuple[float, ...]
) -> np.ndarray:
    """Returns (T, D) bool: at threshold t, the largest-component box reaches IoU >= ious[d] with an Abnormal box.

    The canvas-resolution CAM is cropped to the body and min-max normalised (Choe et al. normalise each map to
    [0, 1]); a pixel is on when its value exceeds the threshold. Boxes go back to original px through the
    letterbox inverse and are compared as pixel boxes (``engine.core.metrics.localization``).

    Args:
        heat_canvas: (canvas_h, canvas_w) map (``engine.core.model.cam.upsample_heatmap`` of the stored heatmap).
        meta: letterbox meta of the image.
        abnormal: (M, 4) int Abnormal GT boxes, original px (x2/y2 exclusive).
        thresholds: (T,) CAM thresholds in [0, 1).
        ious: IoU levels delta.
    """
    x1, y1, x2, y2 = meta.body_box()
    body = np.where(np.isfinite(heat_canvas), heat_canvas, 0.0)[y1:y2, x1:x2].astype(np.float64)
    low, high = float(body.min()), float(body.max())
    body = (body - low) / (high - low) if high > low else np.zeros_like(body)
    gt = pixel_boxes(abnormal, meta.orig_w, meta.orig_h)
    out = np.zeros((len(thresholds), len(ious)), dtype=bool)
    if not len(gt):
        return out
    found = [(t, largest_component_box(body > threshold)) for t, threshold in enumerate(thresholds)]
    found = [(t, box) for t, box in found if box is not None]
    if not found:
        return out
    rows = np.array([t for t, _ in found])
    canvas_boxes = np.stack([box for _, box in found]) + np.array([x1, y1, x1, y1], dtype=np.float64)
    pred = pixel_boxes(canvas_to_original(canvas_boxes, meta), meta.orig_w, meta.orig_h)
    best = iou_matrix(pred, gt).max(axis=1)
    out[rows] = best[:, None] >= np.asarray(ious, dtype=np.float64)[None, :]
    return out


def box_accuracy_thresholds(step: float) -> np.ndarray:
    """Returns the CAM thresholds 0, step, 2 step, ... < 1 (conf ``evaluate.box_acc_step``; Choe et al.: 0.01)."""
    if not 0 < step < 1:
        raise ValueError(f"evaluate.box_acc_step must be in (0, 1), got {step}")
    return np.round(np.arange(0.0, 1.0 - 1e-9, step), 6)


@dataclass
class BoxAccuracyAccumulator:
    """Correct-image counts per (threshold, IoU) over target images; `compute` takes the best threshold."""

    settings: tuple[tuple[float, ...], tuple[float, ...]]  # (thresholds, IoU levels)
    hits: np.ndarray | None = None  # (T, D) int64 correct images
    images: int = 0  # target images (with an Abnormal box)

    def update(self, hits: np.ndarray) -> BoxAccuracyAccumulator:
        """Adds one target image's (T, D) bool hits; returns self."""
        counts = np.asarray(hits, dtype=np.int64)
        self.hits = counts if self.hits is None else self.hits + counts
        self.images += 1
        return self

    def merge(self, other: BoxAccuracyAccumulator) -> BoxAccuracyAccumulator:
        """Returns a new accumulator holding both count sets (settings must be equal)."""
        if other.settings != self.settings:
            raise ValueError("cannot merge box-accuracy accumulators with different thresholds or IoU levels")
        parts = [h for h in (self.hits, other.hits) if h is not None]
        return BoxAccuracyAccumulator(self.settings, sum(parts) if parts else None, self.images + other.images)

    def best_thresholds(self) -> dict[str, float | None]:
        """Returns `max_box_acc@iou…` -> the threshold reaching it (the lowest on ties), None without images."""
        thresholds, ious = self.settings
        if self.hits is None:
            return {f"max_box_acc@iou{d:g}": None for d in ious}
        return {f"max_box_acc@iou{d:g}": float(thresholds[int(np.argmax(self.hits[:, j]))]) for j, d in enumerate(ious)}

    def compute(self) -> dict[str, Ratio]:
        """Returns `max_box_acc@iou…` = best correct images / target images, and `n_target_images`."""
        _, ious = self.settings
        out = {
            f"max_box_acc@iou{d:g}": ratio(int(self.hits[:, j].max()) if self.hits is not None else 0, self.images)
            for j, d in enumerate(ious)
        }
        out["n_target_images"] = ratio(self.images, None)
        return out
