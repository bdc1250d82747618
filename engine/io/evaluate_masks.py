"""Pseudo masks in `make evaluate`: their tight boxes as a method, and mask quality against GT boxes and true masks.

* ``masks_tight``: for each image, the bounding boxes (original px) of its kept masks (`masks` table, ``kept``),
  with the pseudo box's rank, scored by the same ``score_method`` as ``peaks`` (same CAM peak, same cutoff).
* Mask rows (method ``masks`` in `loc_metrics`), over the scored images with Abnormal GT boxes:
  ``mask_box_iou`` (mean over GT boxes of the best kept-mask bbox IoU, 0 without a mask), ``mask_inside_fraction``
  (mean over kept masks of the largest fraction of the mask inside one GT box) and ``mask_hit_rate`` (GT boxes
  whose best kept-mask bbox IoU reaches the smallest ``evaluate.iou`` threshold).
* Where the generator's true lesion masks exist (``engine.io.synth.lesion_mask_path``; generated data only):
  ``mask_dice`` (mean over lesion images of the Dice of the union of kept masks vs the union of true masks) and
  ``mask_pxap`` (PxAP, Choe et al. CVPR 2020: the CAM in original px, as ``engine.io.heatmap_access.load_heatmap``
  maps it, vs the union of true masks, pooled over those images). On real data these rows are absent.
* False-positive cost on normal scans (label 0): ``mask_fp_per_normal`` (kept masks per normal image) and
  ``mask_fp_image_rate`` (normal images with any kept mask).
* ``segnet_tight`` and ``segnet``: the same two methods on the segmentation network's masks (table `seg_masks`,
  `make segment`), so that one table answers whether the network beats the pseudo masks it was trained on. Its
  PxAP score map is each pixel's best component score (the component's mean probability), 0 elsewhere.
Nothing here is tuned: every number is one pass over the scored split.
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
from engine.core.masks.segmenters import decode_rle
from engine.core.metrics.localization import Ratio, ratio
from engine.core.metrics.masks import PxapAccumulator, dice, inside_fraction, mask_box_iou
from engine.core.model.cam import heatmap_to_original, upsample_heatmap
from engine.io.fs import resolve_fs, safe_relative_path
from engine.io.synth import lesion_mask_path, read_lesion_masks
from engine.io.tables import read_table

MASK_BOX = ("mask_x1", "mask_y1", "mask_x2", "mask_y2")


def kept_masks(run_dir: str, split: str, image_ids: pd.Series, table: str = "masks") -> pd.DataFrame | None:
    """Returns the kept `table` rows of `split` for `image_ids`; None when the run has no such rows of the split."""
    masks = read_table(run_dir, table, pads.field("split") == split)
    if masks.empty:
        return None
    return masks[masks["kept"].fillna(False).astype(bool) & masks["image_id"].isin(image_ids)].reset_index(drop=True)


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
        self.normal_masks: list[int] = []  # kept masks on each normal image

    def update(
        self,
        masks: list[np.ndarray],
        gt: np.ndarray,
        heat: np.ndarray | None,
        truth: np.ndarray | None,
        normal: bool = False,
    ) -> None:
        """Adds one image: kept masks, Abnormal GT boxes, (both or neither) score map in original px + true union,
        and whether the image is a normal patient's (label 0: every mask on it is a false positive)."""
        if normal:
            self.normal_masks.append(len(masks))
        if len(np.asarray(gt).reshape(-1, 4)):
            best, inside = gt_box_scores(masks, gt)
            self.best_ious += best
            self.inside += inside
        if truth is not None and heat is not None:
            union = np.any(np.stack(masks), axis=0) if masks else np.zeros(truth.shape, dtype=bool)
            self.dices.append(dice(union, truth))
            self.pxap.update(heat, truth)

    def merge(self, other: MaskQualityAccumulator) -> MaskQualityAccumulator:
        """Adds another accumulator's images; returns self."""
        self.best_ious += other.best_ious
        self.inside += other.inside
        self.dices += other.dices
        self.normal_masks += other.normal_masks
        self.pxap.merge(other.pxap)
        return self

    def compute(self) -> dict[str, Ratio]:
        """Returns mask_box_iou, mask_inside_fraction, mask_hit_rate, and mask_dice/mask_pxap with true masks.

        Means carry their count as the denominator (numerator = the count too); the hit rate is a plain ratio.
        """

        def mean(values: list[float]) -> Ratio:
            return Ratio(float(np.mean(values)) if values else float("nan"), len(values), len(values))

        hits = sum(v >= self.iou_threshold for v in self.best_ious)
        out = {
            "mask_box_iou": mean(self.best_ious),
            "mask_inside_fraction": mean(self.inside),
            "mask_hit_rate": ratio(hits, len(self.best_ious)),
        }
        if self.normal_masks:
            normals = len(self.normal_masks)
            out |= {
                "mask_fp_per_normal": ratio(sum(self.normal_masks), normals),
                "mask_fp_image_rate": ratio(sum(n > 0 for n in self.normal_masks), normals),
            }
        if self.dices:
            count = len(self.dices)
            out |= {"mask_dice": mean(self.dices), "mask_pxap": Ratio(self.pxap.compute()["pxap"], count, count)}
        return out


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


def painted_scores(masks: list[np.ndarray], scores: list[float], shape: tuple[int, int]) -> np.ndarray:
    """Returns the (h, w) score map whose pixels take the best score of the masks covering them (0 elsewhere)."""
    out = np.zeros(shape, dtype=np.float64)
    for mask, score in zip(masks, scores, strict=True):
        out[mask] = np.maximum(out[mask], np.clip(score, 0.0, 1.0))
    return out


def _score_map(row: Any, method: str, masks: list[np.ndarray], scores: dict[str, list[float]]) -> np.ndarray:
    """Returns the PxAP score map of a row: the CAM for the pseudo masks, the painted components for segnet."""
    if method == "masks":
        return original_heat(row)
    return painted_scores(masks, scores.get(str(row.image_id), []), (int(row.orig_h), int(row.orig_w)))


def _quality_runs(
    ctx: Any, frame: pd.DataFrame, masks: pd.DataFrame, params: BoxParams, method: str = "masks"
) -> tuple[MethodRun, str]:
    """Returns the `method` quality metrics per (view, folder) group and a one-line note on the true masks.

    A true mask of another shape than its image (a broken file) is counted in the note and left out.
    """
    decoded, empty, fine = decoded_by_image(masks), np.zeros((0, 4)), {}
    ordered = masks.sort_values(["image_id", "rank"], kind="stable")
    scores = {str(k): list(g) for k, g in ordered.groupby("image_id")["score"]}
    with_truth = mismatched = 0
    for row in frame.itertuples(index=False):
        truth = read_truth(ctx.cfg.data.root, str(row.image_id))
        if truth is not None and truth.shape != (int(row.orig_h), int(row.orig_w)):
            truth, mismatched = None, mismatched + 1
        own = decoded.get(str(row.image_id), [])
        heat = _score_map(row, method, own, scores) if truth is not None else None
        acc = fine.setdefault((str(row.view), str(row.folder)), MaskQualityAccumulator(min(ctx.cfg.evaluate.iou)))
        normal = getattr(row, "label", None) == 0
        acc.update(own, ctx.gt.get(row.image_id, (empty, empty))[0], heat, truth, normal=bool(normal))
        with_truth += truth is not None
    note = (
        f"true lesion masks for {with_truth} images" + f" ({mismatched} of a wrong shape left out)" * bool(mismatched)
        if with_truth
        else "no true lesion masks under data.root (real data): mask_dice, mask_pxap not computed"
    )
    canvas = (int(frame["canvas_h"].iloc[0]), int(frame["canvas_w"].iloc[0]))
    run = MethodRun(method, str(frame["split"].iloc[0]), params, ctx.thr, canvas, ctx.cfg.run.dir, group_metrics(fine))
    return run, note


def mask_methods(ctx: Any, frame: pd.DataFrame, params: BoxParams, peaks: list) -> tuple[list[MethodRun], str]:
    """Returns `masks_tight`, `masks` (and `segnet_tight`, `segnet` with a seg_masks table) of the split, and a note.

    Args:
        ctx: the evaluate context (``engine.stages.evaluate.run.EvalContext``: cfg, gt, settings, thr).
        frame: the scored images (heatmaps + meta + index columns).
        params: the stored box settings (recorded with the rows).
        peaks: the CAM peak of each row of `frame`, as ``peaks`` scores it.
    """
    runs, notes = [], []
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
        quality, note = _quality_runs(ctx, frame, masks, params, method)
        runs.append(quality)
        notes.append(f"{method}: {len(masks)} kept masks on {masks['image_id'].nunique()} images; {note}")
    return runs, "; ".join(notes)
