"""Mask quality against true masks or boxes: Dice, IoU, pixel AP (PxAP) and mask-box overlap (pure numpy).

PxAP follows Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020: one
pixel-level precision-recall curve over score thresholds, pooled over all images, and the area under it.
"""

from __future__ import annotations

import numpy as np

from engine.core.localization.boxes import box_iou
from engine.core.metrics.localization import overlap_areas


class MetricError(ValueError):
    """Arrays of mismatched shapes or invalid thresholds."""


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise MetricError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    return pred, truth


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Returns 2 |A and B| / (|A| + |B|) of two bool masks; 1.0 when both are empty."""
    pred, truth = _pair(pred, truth)
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Returns |A and B| / |A or B| of two bool masks; 1.0 when both are empty."""
    pred, truth = _pair(pred, truth)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def bbox_of(mask: np.ndarray) -> np.ndarray:
    """Returns the (4,) float box x1, y1, x2, y2 (x2/y2 exclusive) of a mask's pixels; zeros when empty."""
    rows, cols = np.flatnonzero(np.any(mask, axis=1)), np.flatnonzero(np.any(mask, axis=0))
    if not len(rows):
        return np.zeros(4, dtype=np.float64)
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def mask_box_iou(mask: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Returns the (M,) IoU of the mask's bounding box with each of M boxes (same frame; 0 for an empty mask)."""
    return box_iou(bbox_of(mask), np.asarray(boxes, dtype=np.float64).reshape(-1, 4))[0]


def boxes_on_normal(boxes: np.ndarray, gt_abnormal: np.ndarray, gt_normal: np.ndarray) -> int:
    """Returns how many of (N, 4) integer boxes touch a Normal GT box and no Abnormal one (x2/y2 exclusive).

    The rule of ``boxes_on_normal_gt`` in ``engine.core.metrics.localization.score_image`` (a shared pixel counts):
    a predicted region lying on physiological uptake rather than on a lesion.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    hits = (overlap_areas(boxes, gt_abnormal)[0] > 0).any(axis=1)
    return int(((overlap_areas(boxes, gt_normal)[0] > 0).any(axis=1) & ~hits).sum())


def inside_fraction(mask: np.ndarray, box: np.ndarray) -> float:
    """Returns the fraction of the mask's pixels inside `box` (x1, y1, x2, y2, exclusive); 0 for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    total = int(mask.sum())
    if total == 0:
        return 0.0
    h, w = mask.shape
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    return int(mask[y1:y2, x1:x2].sum()) / total if x2 > x1 and y2 > y1 else 0.0


class PxapAccumulator:
    """Pixel-level precision-recall over score thresholds, pooled over images (PxAP, Choe et al. 2020).

    Args:
        thresholds: ascending score thresholds; a pixel is predicted positive at t when its score >= t.
            Default: 0, 0.01, ..., 0.99 (the paper's CAM-curve interval of 0.01).
    """

    def __init__(self, thresholds: np.ndarray | None = None) -> None:
        values = np.arange(0.0, 1.0, 0.01) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        if values.ndim != 1 or len(values) == 0 or np.any(np.diff(values) <= 0):
            raise MetricError("thresholds must be a non-empty strictly ascending 1-D array")
        self.thresholds = values
        self.true_positive = np.zeros(len(values), dtype=np.int64)
        self.false_positive = np.zeros(len(values), dtype=np.int64)
        self.positives = 0

    def update(self, scores: np.ndarray, truth: np.ndarray) -> None:
        """Adds one image: (h, w) scores (CAM in [0, 1], or a 0/1 mask) and its (h, w) bool true mask."""
        scores = np.asarray(scores, dtype=np.float64)
        truth = np.asarray(truth, dtype=bool)
        if scores.shape != truth.shape or not np.all(np.isfinite(scores)):
            raise MetricError(f"need finite scores of the true mask's shape {truth.shape}, got {scores.shape}")
        # Pixels at or above threshold j: searchsorted gives how many thresholds each score reaches.
        for flat, counts in ((scores[truth], self.true_positive), (scores[~truth], self.false_positive)):
            reached = np.searchsorted(self.thresholds, flat, side="right")
            counts += np.bincount(reached, minlength=len(self.thresholds) + 1)[::-1].cumsum()[::-1][1:]
        self.positives += int(truth.sum())

    def merge(self, other: PxapAccumulator) -> PxapAccumulator:
        """Adds another accumulator's counts (same thresholds); returns self."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise MetricError("cannot merge PxAP accumulators with different thresholds")
        self.true_positive += other.true_positive
        self.false_positive += other.false_positive
        self.positives += other.positives
        return self

    def compute(self) -> dict[str, object]:
        """Returns {"pxap", "precision", "recall", "thresholds"}: AP = sum_j (R_j - R_j+1) P_j (R beyond = 0)."""
        predicted = self.true_positive + self.false_positive
        precision = np.divide(self.true_positive, predicted, out=np.zeros(len(predicted)), where=predicted > 0)
        recall = self.true_positive / self.positives if self.positives else np.zeros(len(predicted))
        drop = recall - np.append(recall[1:], 0.0)
        return {
            "pxap": float(np.sum(drop * precision)),
            "precision": precision,
            "recall": recall,
            "thresholds": self.thresholds,
        }


def pxap(scores: list[np.ndarray], truths: list[np.ndarray], thresholds: np.ndarray | None = None) -> float:
    """Returns the PxAP of per-image score maps against their true masks (see ``PxapAccumulator``)."""
    acc = PxapAccumulator(thresholds)
    for score, truth in zip(scores, truths, strict=True):
        acc.update(score, truth)
    return float(acc.compute()["pxap"])
