"""Mask methods of `make evaluate`: tight boxes, mask quality against GT boxes and true masks, and PxAP per score map.

* ``masks_tight``: for each image, the bounding boxes (original px) of its counted pseudo masks (`masks` table),
  with the pseudo box's rank, scored by the same ``score_method`` as ``peaks`` (same CAM peak, same cutoff).
* Mask rows (method ``masks`` in `loc_metrics`), over the scored images with Abnormal GT boxes:
  ``mask_box_iou`` (mean over GT boxes of the best mask bbox IoU, 0 without a mask), ``mask_inside_fraction``
  (mean over masks of the largest fraction of the mask inside one GT box) and ``mask_hit_rate`` (GT boxes
  whose best mask bbox IoU reaches the smallest ``evaluate.iou`` threshold); over every scored image
  ``boxes_on_normal_gt`` (masks whose bbox touches a Normal GT box, physiological uptake, and no Abnormal one,
  over all masks: the rule of the box methods' row of that name).
* Where the generator's true lesion masks exist (``engine.io.synth.lesion_mask_path``; generated data only):
  ``mask_dice`` (mean over lesion images of the Dice of the union of masks vs the union of true masks) and
  ``mask_pxap`` (PxAP, Choe et al. CVPR 2020, pooled over those images) of each method's own continuous score map
  in original px (``engine.core.masks.scoremaps``): method ``cam`` the CAM itself (as
  ``engine.io.heatmap_access.load_heatmap`` maps it; no masks), ``masks`` the CAM inside its masks and 0 outside
  (the segmenters store no pixel probability), ``segnet`` the network's pixel probability (table `seg_probs` of
  `make segment`). On real data these rows are absent.
* False-positive cost on normal scans (label 0): ``mask_fp_per_normal`` (masks per normal image),
  ``mask_fp_image_rate`` (normal images with any mask) and ``mask_fp_per_normal_at_cutoff`` (masks per normal image
  on the normal images the classifier calls abnormal, p >= cutoff).
* ``segnet_tight`` and ``segnet``: the same two methods on the segmentation network's masks (table `seg_masks`,
  `make segment`), so that one table answers whether the network beats the pseudo masks it was trained on.

Classifier gate (``GATE``): none, the same for every mask method. A pseudo mask counts when it passes its own QC
whatever the image's probability (its ``below_threshold`` flag, set by `make masks` with ``masks.min_prob:
threshold``, is ignored here); every network mask counts. ``n_masks_below_cutoff`` counts the masks on images with
p < cutoff, and the gated view is in the ``*_at_cutoff`` rows (the tight methods' and
``mask_fp_per_normal_at_cutoff``), at the same cutoff for every method. Nothing here is tuned: every number is one
pass over the scored split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from engine.core.localization.box_methods import (
    ORIG_COLUMNS,
    MethodRun,
    group_metrics,
    heatmap_of,
    meta_of,
    score_method,
)
from engine.core.localization.boxes import BoxParams
from engine.core.masks.scoremaps import masked_score, unpool_probability
from engine.core.masks.segmenters import decode_rle
from engine.core.metrics.localization import Ratio, ratio
from engine.core.metrics.masks import (
    PxapAccumulator,
    bbox_of,
    boxes_on_normal,
    dice,
    inside_fraction,
    mask_box_iou,
)
from engine.core.metrics.notes import MASK_GATE
from engine.core.model.cam import heatmap_to_original, upsample_heatmap
from engine.io.fs import resolve_fs, safe_relative_path
from engine.io.synth import lesion_mask_path, read_lesion_masks
from engine.io.tables import read_table

MASK_BOX = ("mask_x1", "mask_y1", "mask_x2", "mask_y2")
GATE_FLAG = "below_threshold"  # the QC code of the classifier gate in `make masks` (engine/core/masks/crops.py)
GATE = MASK_GATE  # one rule for every mask method, stated in the note and the report


def counted(masks: pd.DataFrame) -> np.ndarray:
    """Returns, per mask row, whether it counts: kept, or flagged by the classifier gate (GATE_FLAG) alone."""
    kept = masks["kept"].fillna(False).astype(bool).to_numpy()
    gated = [flags is not None and len(flags) > 0 and set(flags) == {GATE_FLAG} for flags in masks["qc_flags"]]
    return kept | np.asarray(gated, dtype=bool)


def kept_masks(run_dir: str, split: str, image_ids: pd.Series, table: str = "masks") -> pd.DataFrame | None:
    """Returns the counted `table` rows of `split` for `image_ids` (``counted``: no classifier gate); None when the
    run has no such rows of the split."""
    masks = read_table(run_dir, table, pads.field("split") == split)
    if masks.empty:
        return None
    return masks[counted(masks) & masks["image_id"].isin(image_ids).to_numpy()].reset_index(drop=True)


def tight_boxes(masks: pd.DataFrame) -> pd.DataFrame:
    """Returns `boxes`-like rows (image_id, rank, x1_orig..y2_orig) of the masks' bounding boxes.

    `rank` is the pseudo box's rank (its score order), so the tight boxes are ranked as the fixed boxes were.
    """
    frame = masks.dropna(subset=list(MASK_BOX))
    out = frame[["image_id", "rank", *MASK_BOX]].rename(columns=dict(zip(MASK_BOX, ORIG_COLUMNS, strict=True)))
    return out.reset_index(drop=True)


def decoded_by_image(masks: pd.DataFrame) -> dict[str, list[np.ndarray]]:
    """Returns image_id -> the (h, w) bool masks of its rows, in rank order."""
    out: dict[str, list[np.ndarray]] = {}
    for row in masks.sort_values(["image_id", "rank"], kind="stable").itertuples(index=False):
        out.setdefault(str(row.image_id), []).append(decode_rle(row.rle_counts, row.rle_h, row.rle_w))
    return out


def gt_box_scores(masks: list[np.ndarray], gt: np.ndarray) -> tuple[list[float], list[float]]:
    """Returns (best mask-bbox IoU per GT box, largest inside-a-GT-box fraction per mask) of one image.

    Args:
        masks: the image's kept masks, (h, w) bool each, original px.
        gt: (M, 4) Abnormal GT boxes, original px, x2/y2 exclusive.
    """
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    ious = np.stack([mask_box_iou(m, gt) for m in masks]) if masks else np.zeros((0, len(gt)))
    best = ious.max(axis=0) if len(masks) else np.zeros(len(gt))
    inside = [max((inside_fraction(m, box) for box in gt), default=0.0) for m in masks]
    return [float(v) for v in best], inside


class MaskQualityAccumulator:
    """Mask quality over images: GT-box overlap always; Dice and PxAP where a true lesion mask is given."""

    def __init__(self, iou_threshold: float) -> None:
        self.iou_threshold = iou_threshold
        self.best_ious: list[float] = []
        self.inside: list[float] = []
        self.dices: list[float] = []
        self.pxap = PxapAccumulator()
        self.pxap_images = 0
        self.normal_masks: list[int] = []  # masks on each normal image
        self.normal_masks_at_cutoff = 0  # masks on normal images with p >= cutoff
        self.masks = 0  # masks of every image
        self.on_normal = 0  # masks whose bbox touches a Normal GT box and no Abnormal one
        self.below_cutoff = 0  # masks on images with p < cutoff (they count: no classifier gate)

    def update(
        self,
        masks: list[np.ndarray],
        gt: np.ndarray,
        heat: np.ndarray | None,
        truth: np.ndarray | None,
        normal: bool = False,
        gt_normal: np.ndarray | None = None,
        above_cutoff: bool = True,
    ) -> None:
        """Adds one image.

        Args:
            masks: its (h, w) bool masks, original px.
            gt: (M, 4) Abnormal GT boxes.
            heat: the method's continuous score map in original px, or None (no PxAP for this image).
            truth: the union of the true lesion masks, or None (real data: no Dice, no PxAP).
            normal: a normal patient's image (label 0): every mask on it is a false positive.
            gt_normal: (L, 4) Normal GT boxes (physiological uptake), or None.
            above_cutoff: the classifier calls the image abnormal (p >= cutoff).
        """
        self.masks += len(masks)
        self.below_cutoff += 0 if above_cutoff else len(masks)
        if gt_normal is not None and len(masks):
            boxes = np.stack([bbox_of(m) for m in masks])
            self.on_normal += boxes_on_normal(boxes, np.asarray(gt).reshape(-1, 4), np.asarray(gt_normal))
        if normal:
            self.normal_masks.append(len(masks))
            self.normal_masks_at_cutoff += len(masks) if above_cutoff else 0
        if len(np.asarray(gt).reshape(-1, 4)):
            best, inside = gt_box_scores(masks, gt)
            self.best_ious += best
            self.inside += inside
        if truth is not None:
            union = np.any(np.stack(masks), axis=0) if masks else np.zeros(truth.shape, dtype=bool)
            self.dices.append(dice(union, truth))
            if heat is not None:
                self.pxap.update(heat, truth)
                self.pxap_images += 1

    def merge(self, other: MaskQualityAccumulator) -> MaskQualityAccumulator:
        """Adds another accumulator's images; returns self."""
        self.best_ious += other.best_ious
        self.inside += other.inside
        self.dices += other.dices
        self.normal_masks += other.normal_masks
        self.pxap.merge(other.pxap)
        for name in ("pxap_images", "normal_masks_at_cutoff", "masks", "on_normal", "below_cutoff"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def compute(self) -> dict[str, Ratio]:
        """Returns mask_box_iou, mask_inside_fraction, mask_hit_rate, boxes_on_normal_gt, n_masks,
        n_masks_below_cutoff, the normal-image rows with normal images, mask_dice/mask_pxap with true masks.

        Means carry their count as the denominator (numerator = the count too); the hit rate is a plain ratio.
        """

        def mean(values: list[float]) -> Ratio:
            return Ratio(float(np.mean(values)) if values else float("nan"), len(values), len(values))

        hits = sum(v >= self.iou_threshold for v in self.best_ious)
        out = {
            "mask_box_iou": mean(self.best_ious),
            "mask_inside_fraction": mean(self.inside),
            "mask_hit_rate": ratio(hits, len(self.best_ious)),
            "boxes_on_normal_gt": ratio(self.on_normal, self.masks),
            "n_masks": ratio(self.masks, None),
            "n_masks_below_cutoff": ratio(self.below_cutoff, None),
        }
        if self.normal_masks:
            normals = len(self.normal_masks)
            out |= {
                "mask_fp_per_normal": ratio(sum(self.normal_masks), normals),
                "mask_fp_image_rate": ratio(sum(n > 0 for n in self.normal_masks), normals),
                "mask_fp_per_normal_at_cutoff": ratio(self.normal_masks_at_cutoff, normals),
            }
        if self.dices:
            out["mask_dice"] = mean(self.dices)
        if self.pxap_images:
            out["mask_pxap"] = Ratio(self.pxap.compute()["pxap"], self.pxap_images, self.pxap_images)
        return out


class ScoreMapAccumulator:
    """PxAP of a score map alone (method ``cam``: no masks), pooled over the images with a true lesion mask."""

    def __init__(self) -> None:
        self.pxap = PxapAccumulator()
        self.images = 0

    def update(self, heat: np.ndarray, truth: np.ndarray) -> None:
        """Adds one image: its (h, w) score map in [0, 1] and the union of its true lesion masks."""
        self.pxap.update(heat, truth)
        self.images += 1

    def merge(self, other: ScoreMapAccumulator) -> ScoreMapAccumulator:
        """Adds another accumulator's images; returns self."""
        self.pxap.merge(other.pxap)
        self.images += other.images
        return self

    def compute(self) -> dict[str, Ratio]:
        """Returns mask_pxap (NaN without an image)."""
        value = self.pxap.compute()["pxap"] if self.images else float("nan")
        return {"mask_pxap": Ratio(value, self.images, self.images)}


def read_truth(data_root: str, image_id: str) -> np.ndarray | None:
    """Returns the union (H, W) bool of the image's true lesion masks, or None when the file does not exist."""
    fs, root = resolve_fs(data_root)
    try:
        with fs.open_input_file(safe_relative_path(root, lesion_mask_path(image_id))) as handle:
            masks = read_lesion_masks(handle.read())
    except (FileNotFoundError, OSError):
        return None
    return np.any(masks, axis=0) if len(masks) else None


def original_heat(row: Any) -> np.ndarray:
    """Returns a frame row's CAM in original px, [0, 1] (the mapping of ``engine.io.heatmap_access.load_heatmap``)."""
    meta = meta_of(row)
    canvas = np.clip(upsample_heatmap(heatmap_of(row), meta.canvas_h, meta.canvas_w), 0.0, 1.0)
    return np.clip(heatmap_to_original(canvas, meta), 0.0, 1.0)


def seg_probabilities(run_dir: str, split: str, image_ids: pd.Series) -> dict[str, tuple[np.ndarray, int, int]]:
    """Returns image_id -> (pooled uint8 probability map, canvas_h, canvas_w) of `make segment` (table `seg_probs`)."""
    probs = read_table(run_dir, "seg_probs", pads.field("split") == split)
    probs = probs[probs["image_id"].isin(image_ids)]
    return {
        str(row.image_id): (
            np.asarray(row.prob, dtype=np.uint8).reshape(int(row.prob_h), int(row.prob_w)),
            int(row.canvas_h),
            int(row.canvas_w),
        )
        for row in probs.itertuples(index=False)
    }


def network_score(row: Any, stored: tuple[np.ndarray, int, int] | None) -> np.ndarray | None:
    """Returns the network's probability in original px of a frame row, from its stored map (0 where the network
    scored no map for the image); None when the map was made on another canvas than the row's heatmap."""
    meta = meta_of(row)
    if stored is None:
        return np.zeros((meta.orig_h, meta.orig_w), dtype=np.float64)
    pooled, canvas_h, canvas_w = stored
    if (canvas_h, canvas_w) != (meta.canvas_h, meta.canvas_w):
        return None
    return np.clip(heatmap_to_original(unpool_probability(pooled, canvas_h, canvas_w), meta), 0.0, 1.0)


def _above(row: Any, cutoff: float) -> bool:
    prob = getattr(row, "y_prob", None)
    return prob is not None and bool(np.isfinite(prob)) and float(prob) >= cutoff


class _Truths:
    """The true lesion masks of the scored images, read once and shared by every method."""

    def __init__(self, data_root: str, frame: pd.DataFrame) -> None:
        self.by_image: dict[str, np.ndarray | None] = {}
        self.mismatched = 0
        for row in frame.itertuples(index=False):
            truth = read_truth(data_root, str(row.image_id))
            if truth is not None and truth.shape != (int(row.orig_h), int(row.orig_w)):
                truth, self.mismatched = None, self.mismatched + 1
            self.by_image[str(row.image_id)] = truth

    def count(self) -> int:
        """Returns how many scored images have a usable true lesion mask."""
        return sum(t is not None for t in self.by_image.values())

    def note(self) -> str:
        """Returns one line on the true lesion masks found (or why there are none)."""
        with_truth = self.count()
        if not with_truth:
            return "no true lesion masks under data.root (real data): mask_dice, mask_pxap not computed"
        wrong = f" ({self.mismatched} of a wrong shape left out)" if self.mismatched else ""
        return f"true lesion masks for {with_truth} images{wrong}"


def _run(ctx: Any, method: str, frame: pd.DataFrame, params: BoxParams, fine: dict) -> MethodRun:
    """Returns `method`'s MethodRun of the split from its accumulators per (view, folder)."""
    canvas = (int(frame["canvas_h"].iloc[0]), int(frame["canvas_w"].iloc[0]))
    return MethodRun(method, str(frame["split"].iloc[0]), params, ctx.thr, canvas, ctx.cfg.run.dir, group_metrics(fine))


def _cam_run(ctx: Any, frame: pd.DataFrame, params: BoxParams, truths: _Truths) -> MethodRun:
    """Returns method ``cam``: the PxAP of the CAM itself over the images with a true lesion mask."""
    fine: dict = {}
    for row in frame.itertuples(index=False):
        acc = fine.setdefault((str(row.view), str(row.folder)), ScoreMapAccumulator())
        truth = truths.by_image[str(row.image_id)]
        if truth is not None:
            acc.update(original_heat(row), truth)
    return _run(ctx, "cam", frame, params, fine)


def _quality_runs(
    ctx: Any, frame: pd.DataFrame, masks: pd.DataFrame, params: BoxParams, method: str, truths: _Truths
) -> tuple[MethodRun, str]:
    """Returns the `method` quality metrics per (view, folder) group and a one-line note on its PxAP score map."""
    decoded, empty, fine = decoded_by_image(masks), np.zeros((0, 4)), {}
    probs = (
        seg_probabilities(ctx.cfg.run.dir, str(frame["split"].iloc[0]), frame["image_id"]) if method != "masks" else {}
    )
    no_map = other_canvas = 0
    for row in frame.itertuples(index=False):
        truth = truths.by_image[str(row.image_id)]
        own = decoded.get(str(row.image_id), [])
        heat = None
        if truth is not None and method == "masks":
            heat = masked_score(original_heat(row), own)
        elif truth is not None and probs:
            no_map += str(row.image_id) not in probs
            heat = network_score(row, probs.get(str(row.image_id)))
            other_canvas += heat is None
        acc = fine.setdefault((str(row.view), str(row.folder)), MaskQualityAccumulator(min(ctx.cfg.evaluate.iou)))
        abnormal, normal = ctx.gt.get(row.image_id, (empty, empty))
        is_normal = bool(getattr(row, "label", None) == 0)
        acc.update(own, abnormal, heat, truth, normal=is_normal, gt_normal=normal, above_cutoff=_above(row, ctx.thr))
    if method == "masks":
        scored = "PxAP on the CAM inside the masks, 0 outside"
    elif not probs:
        scored = "no seg_probs rows (re-run `make segment`): no PxAP for the network"
    else:
        scored = "PxAP on the network's probability map" + f", {no_map} images without a map scored 0" * bool(no_map)
        scored += f", {other_canvas} maps of another canvas left out" * bool(other_canvas)
    return _run(ctx, method, frame, params, fine), scored


def mask_methods(ctx: Any, frame: pd.DataFrame, params: BoxParams, peaks: list) -> tuple[list[MethodRun], str]:
    """Returns `cam` (with true masks), `masks_tight`, `masks` (and `segnet_tight`, `segnet` with a seg_masks table)
    of the split, and a note (ending with the classifier gate, ``GATE``).

    Args:
        ctx: the evaluate context (``engine.stages.evaluate.run.EvalContext``: cfg, gt, settings, thr).
        frame: the scored images (heatmaps + meta + index columns).
        params: the stored box settings (recorded with the rows).
        peaks: the CAM peak of each row of `frame`, as ``peaks`` scores it.
    """
    truths = _Truths(ctx.cfg.data.root, frame)
    runs, notes = ([_cam_run(ctx, frame, params, truths)] if truths.count() else []), []
    for table, method, missing in (
        ("masks", "masks", "run `make masks` for masks_tight and the mask metrics"),
        ("seg_masks", "segnet", "no segnet rows (`make segtrain`, `make segment`)"),
    ):
        masks = kept_masks(ctx.cfg.run.dir, ctx.cfg.evaluate.split, frame["image_id"], table)
        if masks is None:
            notes.append(f"no {table} of split={ctx.cfg.evaluate.split}: {missing}")
            continue
        runs.append(
            score_method(
                f"{method}_tight",
                frame,
                tight_boxes(masks),
                peaks,
                ctx.gt,
                params,
                ctx.thr,
                ctx.settings,
                ctx.cfg.run.dir,
            )
        )
        quality, scored = _quality_runs(ctx, frame, masks, params, method, truths)
        runs.append(quality)
        note = truths.note() + (f"; {scored}" if truths.count() else "")
        notes.append(f"{method}: {len(masks)} counted masks on {masks['image_id'].nunique()} images; {note}")
    if truths.count():
        notes.append(f"cam: PxAP on the CAM itself, {truths.note()}")
    return runs, "; ".join(notes) + f". {GATE} Cutoff: {ctx.thr:.3f}."
