"""Weak-localisation metrics on arrays: pixel boxes, overlaps, pointing game, hit@k, box precision/recall, FP boxes.

Exact integer-pixel geometry in the original image (conventions: ``engine.core.scans.letterbox``): a box covers pixel
column ``i`` when ``x1 <= i + 0.5 < x2``, so float boxes become ``[ceil(x1 - 0.5), ceil(x2 - 0.5))`` and integer
(GT) boxes stay as they are; areas, intersections, IoU and intersection-over-GT are pixel counts and their ratios.

Protocol (adapted from the WSOL evaluation of Choe et al., CVPR 2020, arXiv:2001.07437): targets are the
**Abnormal** GT boxes only; Normal GT boxes (physiological uptake) are counted apart. Pointing game (Zhang et al.,
ECCV 2016): the CAM peak pixel lies within ``tolerance_px`` (Euclidean, to the nearest box pixel) of an Abnormal
box. Hit@k: one of the top-k boxes shares a pixel with an Abnormal box. Box precision/recall (VOC style): greedy
one-to-one matching in rank order at IoU or intersection-over-GT thresholds; precision counts the boxes of every
scored image. Integer counts add up in ``LocalizationAccumulator``: shards merge exactly.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from engine.core.localization.boxes import RefinedPeaks, body_peaks, box_overlaps, peak_points
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original


@dataclass(frozen=True)
class LocSettings:
    """What `score_image` measures (conf ``evaluate.*``; IoU 0.5 as in CorLoc, 0.3 a lenient second threshold)."""

    ks: tuple[int, ...] = (1, 3, 5)  # hit@k for these k (conf evaluate.ks)
    iou_thresholds: tuple[float, ...] = (0.3, 0.5)  # box precision/recall at IoU >= t (conf evaluate.iou)
    iogt_thresholds: tuple[float, ...] = (0.5,)  # ... and at intersection-over-GT >= t (conf evaluate.iogt)
    tolerance_px: float = 15.0  # pointing-game tolerance, original px (Zhang et al. 2016: 15 px)

    def criteria(self) -> tuple[tuple[str, str, float], ...]:
        """Returns (name, kind, threshold) per matching criterion, e.g. ("iou0.3", "iou", 0.3)."""
        return tuple(
            (f"{kind}{t:g}", kind, t)
            for kind, ts in (("iou", self.iou_thresholds), ("iogt", self.iogt_thresholds))
            for t in ts
        )


@dataclass(frozen=True)
class ImageCase:
    """One scored image: its ranked pseudo boxes, GT boxes, CAM peak and probability (original px)."""

    boxes: np.ndarray  # (N, 4) float pseudo boxes, rank order (best first)
    gt_abnormal: np.ndarray  # (M, 4) int Abnormal GT boxes
    gt_normal: np.ndarray  # (L, 4) int Normal GT boxes
    peak: tuple[int, int] | None  # (x, y) pixel of the CAM peak; None when the map has no positive value
    orig_h: int
    orig_w: int
    label: int  # 0 normal, 1 abnormal (label file)
    y_prob: float  # NaN when unknown: never above the cutoff
    cutoff: float  # boxes count "at the cutoff" only when y_prob >= cutoff


def pixel_boxes(boxes: np.ndarray, orig_w: int | np.ndarray, orig_h: int | np.ndarray) -> np.ndarray:
    """Returns (N, 4) int64 pixel boxes (pixel-centre rule), clipped to the image; empty boxes have x2 == x1.

    `orig_w` / `orig_h` are one image size or one per box ((N,) arrays).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.ceil(boxes - 0.5)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, np.reshape(orig_w, (-1, 1)))
    out[:, 1::2] = np.clip(out[:, 1::2], 0, np.reshape(orig_h, (-1, 1)))
    out[:, 2] = np.maximum(out[:, 2], out[:, 0])
    out[:, 3] = np.maximum(out[:, 3], out[:, 1])
    return out.astype(np.int64)


def overlap_areas(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (intersection (..., N, M), area_pred (..., N), area_gt (..., M)) in pixels of integer boxes
    (x2/y2 exclusive): (N, 4) and (M, 4) boxes, or stacks (..., N, 4) and (..., M, 4) of the same leading shape."""
    pred = np.asarray(pred, dtype=np.int64)
    gt = np.asarray(gt, dtype=np.int64)
    inter, area_pred, area_gt = box_overlaps(pred, gt)  # exact: integer pixel counts fit float64
    return inter.astype(np.int64), area_pred.astype(np.int64), area_gt.astype(np.int64)


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Returns the (..., N, M) IoU of integer boxes (0 where the union is empty); stacks as ``overlap_areas``."""
    inter, area_pred, area_gt = overlap_areas(pred, gt)
    union = area_pred[..., :, None] + area_gt[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def iogt_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Returns the (..., N, M) intersection over GT area of integer boxes (0 for an empty GT box)."""
    inter, _, area_gt = overlap_areas(pred, gt)
    area_gt = np.broadcast_to(area_gt[..., None, :], inter.shape)
    return np.divide(inter, area_gt, out=np.zeros(inter.shape), where=area_gt > 0)


def greedy_match(overlap: np.ndarray, threshold: float) -> int:
    """Returns how many (box, GT box) pairs one-to-one matching pairs at overlap >= threshold (and > 0).

    Boxes are taken in rank order (rows); each takes the free GT box (column) of largest overlap, ties to the
    lower index (VOC style). The count is both the true-positive boxes and the GT boxes found.
    """
    overlap = np.asarray(overlap, dtype=np.float64)
    return int(matched_rows(overlap.reshape(1, *overlap.shape), threshold).sum())


def matched_rows(overlap: np.ndarray, threshold: float) -> np.ndarray:
    """Returns (S, N) bool: which boxes (rows) of each of S stacked (N, M) overlap matrices ``greedy_match`` pairs.

    Rows and columns of zeros (padding) never match; the matches of the first k boxes are those of the first k
    rows (greedy choices never depend on later boxes).
    """
    overlap = np.asarray(overlap, dtype=np.float64)
    stacks, boxes, targets = overlap.shape
    matched = np.zeros((stacks, boxes), dtype=bool)
    if targets == 0:
        return matched
    free = np.ones((stacks, targets), dtype=bool)
    every = np.arange(stacks)
    for k in range(boxes):
        row = overlap[:, k]
        candidates = np.where(free & (row >= threshold) & (row > 0), row, -1.0)
        best = np.argmax(candidates, axis=1)
        took = candidates[every, best] >= 0
        free[every[took], best[took]] = False
        matched[:, k] = took
    return matched


def point_hits_boxes(point: tuple[int, int] | None, boxes: np.ndarray, tolerance_px: float = 0.0) -> bool:
    """Returns whether pixel `point` (x, y) lies within `tolerance_px` of a non-empty integer box (0: inside)."""
    if point is None:
        return False
    boxes = np.asarray(boxes, dtype=np.int64).reshape(1, -1, 4)
    return bool(points_hit_boxes(np.array([point], dtype=np.int64), boxes, tolerance_px)[0])


def points_hit_boxes(points: np.ndarray, boxes: np.ndarray, tolerance_px: float = 0.0) -> np.ndarray:
    """Returns (S,) bool: ``point_hits_boxes`` of point s (x, y) and integer boxes (S, M, 4) s; empty boxes
    (padding) never count."""
    boxes = np.asarray(boxes, dtype=np.int64)
    x, y = np.asarray(points, dtype=np.int64)[:, 0, None], np.asarray(points, dtype=np.int64)[:, 1, None]
    dx = np.maximum(np.maximum(boxes[..., 0] - x, 0), x - (boxes[..., 2] - 1)).astype(np.float64)
    dy = np.maximum(np.maximum(boxes[..., 1] - y, 0), y - (boxes[..., 3] - 1)).astype(np.float64)
    non_empty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return (non_empty & (dx**2 + dy**2 <= tolerance_px**2)).any(axis=1)


def pointing_chance_pixels(boxes: np.ndarray, orig_h: int, orig_w: int, tolerance_px: float = 0.0) -> int:
    """Returns how many image pixels lie within `tolerance_px` of a box (Euclidean, to its nearest pixel).

    A uniformly random peak hits with probability count / (orig_h * orig_w): the pointing game's chance level.
    Memoised: the same GT boxes are scored by every method and tuning candidate.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    return _chance_pixels(tuple(map(tuple, boxes.tolist())), int(orig_h), int(orig_w), float(tolerance_px))


@functools.lru_cache(maxsize=1 << 16)
def _chance_pixels(listed: tuple[tuple[int, ...], ...], orig_h: int, orig_w: int, tolerance_px: float) -> int:
    boxes = np.asarray(listed, dtype=np.int64).reshape(-1, 4)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    if len(boxes) == 0:
        return 0
    reach = int(np.floor(tolerance_px))
    x0, y0 = max(0, int(boxes[:, 0].min()) - reach), max(0, int(boxes[:, 1].min()) - reach)
    x1, y1 = min(orig_w, int(boxes[:, 2].max()) + reach), min(orig_h, int(boxes[:, 3].max()) + reach)
    if x1 <= x0 or y1 <= y0:
        return 0
    covered = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    cols, rows = np.arange(x0, x1), np.arange(y0, y1)
    for bx1, by1, bx2, by2 in boxes:
        dx = np.maximum(np.maximum(bx1 - cols, 0), cols - (bx2 - 1)).astype(np.float64)
        dy = np.maximum(np.maximum(by1 - rows, 0), rows - (by2 - 1)).astype(np.float64)
        covered |= dy[:, None] ** 2 + dx[None, :] ** 2 <= tolerance_px**2
    return int(covered.sum())


def cam_peak_original(
    heatmap: np.ndarray, meta: LetterboxMeta, refined: RefinedPeaks | None = None
) -> tuple[int, int] | None:
    """Returns the original pixel (x, y) of the CAM peak, or None when no body cell is positive.

    The best body peak of ``core.localization.boxes.body_peaks`` (the largest cell centred on the body, ties: first in
    row-major order), so the rank-0 box sits on it. Its point is the refined centre when `refined` holds the cell
    (``make cam`` with ``cam.refine``), else the cell centre; the letterbox inverse maps it to the original and the
    pixel containing it is taken. A map without a positive body cell (a confident negative) has no peak.

    Args:
        heatmap: (h, w) feature-resolution CAM covering the whole canvas.
        meta: letterbox meta of the image.
        refined: optional refined peak centres stored with the heatmap.
    """
    heatmap = np.where(np.isfinite(heatmap), np.asarray(heatmap, dtype=np.float64), 0.0)
    rows, cols, centre_x, centre_y = body_peaks(heatmap, meta.body_box(), meta.canvas_h, meta.canvas_w)
    if not len(rows):
        return None
    x, y = peak_points(rows[:1], cols[:1], centre_x, centre_y, refined)[0]
    return canvas_point_to_pixel(float(x), float(y), meta)


def canvas_point_to_pixel(x: float, y: float, meta: LetterboxMeta) -> tuple[int, int]:
    """Returns the original pixel (x, y) containing canvas point (x, y), clipped into the image."""
    orig = canvas_to_original(np.array([[x, y, x, y]]), meta)[0]
    return int(min(max(np.floor(orig[0]), 0), meta.orig_w - 1)), int(min(max(np.floor(orig[1]), 0), meta.orig_h - 1))


def brightest_pixel_original(heatmap_canvas: np.ndarray, meta: LetterboxMeta) -> tuple[int, int] | None:
    """Returns the seed's peak: the brightest canvas pixel (padding included, ties row-major) as an original pixel.

    The first candidate of ``engine.core.localization.boxes.top_pixel_boxes``; None for a map with no positive value.
    """
    heat = np.asarray(heatmap_canvas, dtype=np.float64)
    heat = np.where(np.isfinite(heat), heat, -np.inf)
    best = int(np.argmax(heat))
    if not heat.flat[best] > 0:
        return None
    row, col = divmod(best, heat.shape[1])
    return canvas_point_to_pixel(col + 0.5, row + 0.5, meta)


class Ratio(NamedTuple):
    """One metric: value = numerator / denominator (NaN when it is 0); plain counts have denominator None."""

    value: float
    numerator: int
    denominator: int | None


def ratio(numerator: int, denominator: int | None) -> Ratio:
    """Returns the Ratio of two counts; a plain count when denominator is None."""
    if denominator is None:
        return Ratio(float(numerator), int(numerator), None)
    return Ratio(numerator / denominator if denominator else float("nan"), int(numerator), int(denominator))


def score_image(case: ImageCase, settings: LocSettings) -> Counter:
    """Returns the integer counts of one image (keys as used by `LocalizationAccumulator.compute`).

    An image is a target when it has an Abnormal GT box (whatever its label), normal when it has none and
    label 0. Boxes with non-finite coordinates are dropped and counted (`bad_boxes`); a NaN probability is
    counted (`nan_prob`) and never above the cutoff. ``score_images`` of one image.
    """
    return score_images([case], settings)


def _stacked(arrays: list[np.ndarray], orig_w: np.ndarray, orig_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns ((S, K, 4) int64 pixel boxes of each image padded with empty (0, 0, 0, 0) boxes, (S, K) present)."""
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if len(arrays) else np.zeros((0, 4))
    image = np.repeat(np.arange(len(arrays)), sizes)
    slot = np.arange(len(flat)) - (np.cumsum(sizes) - sizes)[image]
    out = np.zeros((len(arrays), int(sizes.max(initial=0)), 4), dtype=np.int64)
    present = np.zeros(out.shape[:2], dtype=bool)
    out[image, slot], present[image, slot] = pixel_boxes(flat, orig_w[image], orig_h[image]), True
    return out, present


def score_images(cases: list[ImageCase] | tuple[ImageCase, ...], settings: LocSettings) -> Counter:
    """Returns the summed ``score_image`` counts of `cases`, computed for all of them at once (stacked arrays)."""
    counts: Counter = Counter()
    if not len(cases):
        return counts
    orig_w = np.array([c.orig_w for c in cases], dtype=np.int64)
    orig_h = np.array([c.orig_h for c in cases], dtype=np.int64)
    raw = [np.asarray(c.boxes, dtype=np.float64).reshape(-1, 4) for c in cases]
    finite = [np.isfinite(r).all(axis=1) for r in raw]
    boxes, present = _stacked([r[f] for r, f in zip(raw, finite, strict=True)], orig_w, orig_h)
    abnormal, is_gt = _stacked([np.asarray(c.gt_abnormal).reshape(-1, 4) for c in cases], orig_w, orig_h)
    normal, is_normal_gt = _stacked([np.asarray(c.gt_normal).reshape(-1, 4) for c in cases], orig_w, orig_h)
    hits = (overlap_areas(boxes, abnormal)[0] > 0).any(axis=2)
    on_normal = (overlap_areas(boxes, normal)[0] > 0).any(axis=2) & ~hits
    probs = np.array([c.y_prob for c in cases], dtype=np.float64)
    has_prob = np.isfinite(probs)
    is_above = has_prob & (probs >= np.array([c.cutoff for c in cases], dtype=np.float64))
    labels = np.array([c.label for c in cases], dtype=np.int64)
    n_boxes, n_gt = present.sum(axis=1), is_gt.sum(axis=1)
    is_target = n_gt > 0
    is_normal = ~is_target & (labels == 0)
    counts.update(
        images=len(cases),
        boxes=int(n_boxes.sum()),
        bad_boxes=int(sum(int((~f).sum()) for f in finite)),
        nan_prob=int((~has_prob).sum()),
        boxes_on_normal_gt=int(on_normal.sum()),
        gt_normal=int(is_normal_gt.sum()),
    )
    if is_above.any():
        counts.update(
            images_at_cutoff=int(is_above.sum()),
            boxes_at_cutoff=int(n_boxes[is_above].sum()),
            fp_boxes_at_cutoff=int((present & ~hits)[is_above].sum()),
        )
    if is_normal.any():
        counts.update(
            normal_images=int(is_normal.sum()),
            boxes_normal_images=int(n_boxes[is_normal].sum()),
            fp_boxes_normal_at_cutoff=int(n_boxes[is_normal & is_above].sum()),
        )
    counts["abnormal_without_gt"] += int(((labels == 1) & ~is_target).sum())
    counts["label_conflict"] += int(((labels == 0) & is_target).sum())
    if is_target.any():
        targets = [c for c, t in zip(cases, is_target, strict=True) if t]
        stacks = (boxes, n_boxes, hits, abnormal, n_gt, is_above)
        _score_targets(counts, targets, *(a[is_target] for a in stacks), settings)
    return counts


def _score_targets(
    counts: Counter,
    cases: list[ImageCase],
    boxes: np.ndarray,
    n_boxes: np.ndarray,
    hits: np.ndarray,
    abnormal: np.ndarray,
    n_gt: np.ndarray,
    is_above: np.ndarray,
    settings: LocSettings,
) -> None:
    """Adds the counts of the images with Abnormal GT boxes: pointing, chance, hit@k, matches (stacked arrays)."""
    counts["target_images"] += len(cases)
    counts["gt_abnormal"] += int(n_gt.sum())
    counts["boxes_target"] += int(n_boxes.sum())
    peaked = np.array([c.peak is not None for c in cases], dtype=bool)
    points = np.array([c.peak if c.peak is not None else (0, 0) for c in cases], dtype=np.int64).reshape(-1, 2)
    counts["pointing_hits"] += int((points_hit_boxes(points, abnormal, settings.tolerance_px) & peaked).sum())
    counts["no_peak"] += int((~peaked).sum())
    counts["chance_pixels"] += sum(
        pointing_chance_pixels(boxes_of[:m], c.orig_h, c.orig_w, settings.tolerance_px)
        for c, boxes_of, m in zip(cases, abnormal, n_gt, strict=True)
    )
    counts["image_pixels"] += sum(c.orig_h * c.orig_w for c in cases)
    for k in settings.ks:
        counts[f"hits@{k}"] += int(hits[:, :k].any(axis=1).sum())
    for name, kind, threshold in settings.criteria():
        overlap = iou_matrix(boxes, abnormal) if kind == "iou" else iogt_matrix(boxes, abnormal)
        matched = matched_rows(overlap, threshold).sum(axis=1)
        counts[f"tp@{name}"] += int(matched.sum())
        counts[f"tp_at_cutoff@{name}"] += int(matched[is_above].sum())


COUNT_METRICS = (
    "images",
    "target_images",
    "normal_images",
    "gt_abnormal",
    "gt_normal",
    "boxes",
    "images_at_cutoff",
    "abnormal_without_gt",
    "label_conflict",
    "no_peak",
    "nan_prob",
    "bad_boxes",
)


@dataclass
class LocalizationAccumulator:
    """Integer counts over images; `compute` turns them into metrics. Shards merge exactly."""

    settings: LocSettings = field(default_factory=LocSettings)
    counts: Counter = field(default_factory=Counter)

    def update(self, cases: list[ImageCase] | tuple[ImageCase, ...]) -> LocalizationAccumulator:
        """Adds the counts of `cases`; returns self."""
        self.counts.update(score_images(cases, self.settings))
        return self

    def merge(self, other: LocalizationAccumulator) -> LocalizationAccumulator:
        """Returns a new accumulator holding both count sets (settings must be equal)."""
        if other.settings != self.settings:
            raise ValueError(f"cannot merge accumulators with different settings: {self.settings} vs {other.settings}")
        return LocalizationAccumulator(self.settings, self.counts + other.counts)

    def compute(self) -> dict[str, Ratio]:
        """Returns metric name -> Ratio(value, numerator, denominator); plain counts have denominator None.

        `pointing_chance` pools pixels over target images: the mean per-image chance when all images share one
        size (BS-80K whole-body scans are all 256 x 1024). `precision@…` divides the true-positive boxes by the
        boxes of every scored image, so boxes on normal images count as false positives;
        `precision_on_target_images@…` divides by the boxes of images with an Abnormal box only.
        """
        c = self.counts
        out = {
            "pointing_game": ratio(c["pointing_hits"], c["target_images"]),
            "pointing_chance": ratio(c["chance_pixels"], c["image_pixels"]),
        }
        for k in self.settings.ks:
            out[f"hit@{k}"] = ratio(c[f"hits@{k}"], c["target_images"])
        for name, _, _ in self.settings.criteria():
            out[f"precision@{name}"] = ratio(c[f"tp@{name}"], c["boxes"])  # every scored image's boxes
            out[f"precision_on_target_images@{name}"] = ratio(c[f"tp@{name}"], c["boxes_target"])
            out[f"recall@{name}"] = ratio(c[f"tp@{name}"], c["gt_abnormal"])
            out[f"precision_at_cutoff@{name}"] = ratio(c[f"tp_at_cutoff@{name}"], c["boxes_at_cutoff"])
            out[f"recall_at_cutoff@{name}"] = ratio(c[f"tp_at_cutoff@{name}"], c["gt_abnormal"])
        out["fp_boxes_per_normal_image"] = ratio(c["boxes_normal_images"], c["normal_images"])
        out["fp_boxes_per_normal_image_at_cutoff"] = ratio(c["fp_boxes_normal_at_cutoff"], c["normal_images"])
        out["fp_boxes_per_image_at_cutoff"] = ratio(c["fp_boxes_at_cutoff"], c["images"])
        out["boxes_on_normal_gt"] = ratio(c["boxes_on_normal_gt"], c["boxes"])
        out.update({f"n_{name}": ratio(c[name], None) for name in COUNT_METRICS})
        return out
