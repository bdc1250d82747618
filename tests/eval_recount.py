"""Independent brute-force recount of `make evaluate`'s pointing game, chance, hit@k and precision (no engine code).

Tables are read with plain pyarrow; peaks, box pixels and distances are recomputed here with numpy (and scipy's
exact Euclidean distance transform), from the letterbox meta columns and the stored refined peak columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
from scipy.ndimage import distance_transform_edt


def table(run_dir: Path, name: str) -> pd.DataFrame:
    """Returns a run's table read with plain pyarrow (hive partitions as columns)."""
    dataset = pads.dataset(str(run_dir / "tables" / name), format="parquet", partitioning="hive")
    return dataset.to_table().to_pandas()


def box_mask(box, h: int, w: int) -> np.ndarray:
    """Returns the pixels whose centre lies inside `box` (x1 <= i + 0.5 < x2, likewise y)."""
    cols, rows = np.arange(w) + 0.5, np.arange(h) + 0.5
    x1, y1, x2, y2 = (float(v) for v in box)
    return ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :]


def peak_pixel(row, meta, refined: bool) -> tuple[int, int] | None:
    """Returns the original pixel of the best body cell (first maximum in row-major order), or None."""
    h, w = int(row.heatmap_h), int(row.heatmap_w)
    heat = np.asarray(row.heatmap, dtype=np.float64).reshape(h, w)
    cx, cy = (np.arange(w) + 0.5) * meta.canvas_w / w, (np.arange(h) + 0.5) * meta.canvas_h / h
    on_x = (cx >= meta.pad_left) & (cx < meta.pad_left + meta.new_w)
    on_y = (cy >= meta.pad_top) & (cy < meta.pad_top + meta.new_h)
    masked = np.where(on_y[:, None] & on_x[None, :], heat, -np.inf)
    best = int(np.argmax(masked))
    if not masked.flat[best] > 0:
        return None
    r, c = divmod(best, w)
    x, y = cx[c], cy[r]
    cells = [] if row.peak_index is None else list(row.peak_index)
    if refined and best in cells:
        k = cells.index(best)
        if np.isfinite(row.peak_x[k]) and np.isfinite(row.peak_y[k]):
            x, y = float(row.peak_x[k]), float(row.peak_y[k])
    ox = (x - meta.pad_left) * meta.orig_w / meta.new_w
    oy = (y - meta.pad_top) * meta.orig_h / meta.new_h
    return min(max(int(np.floor(ox)), 0), meta.orig_w - 1), min(max(int(np.floor(oy)), 0), meta.orig_h - 1)


def _greedy_true_positives(pred_masks: list[np.ndarray], gt_masks: list[np.ndarray], threshold: float) -> int:
    free = list(range(len(gt_masks)))
    for pred in pred_masks:
        ious = [(int((pred & gt_masks[j]).sum()) / max(int((pred | gt_masks[j]).sum()), 1), -j) for j in free]
        good = [(iou, j) for iou, j in ious if iou >= threshold and iou > 0]
        if good:
            free.remove(-max(good)[1])
    return len(gt_masks) - len(free)


@dataclass
class Recount:
    """What the recount found over the scored population."""

    images: int = 0
    target_images: int = 0
    pointing_hits: int = 0
    covered_pixels: int = 0
    target_pixels: int = 0
    hits_at_1: int = 0
    hits_at_5: int = 0
    boxes: int = 0
    true_positives_iou03: int = 0


def recount(run_dir: Path, split: str, folder: str, tolerance: float, refined: bool = True) -> Recount:
    """Returns the brute-force counts of the stored heatmaps + boxes of one split and folder."""
    heat = table(run_dir, "heatmaps")
    heat = heat[(heat["split"] == split) & (heat["folder"] == folder)]
    meta = table(run_dir, "meta").set_index("image_id")
    gt = table(run_dir, "gt_boxes")
    gt = gt[gt["cls"] == "Abnormal"]
    boxes = table(run_dir, "boxes").sort_values(["image_id", "rank"])
    out = Recount()
    for row in heat.itertuples(index=False):
        m = meta.loc[row.image_id]
        h, w = int(m.orig_h), int(m.orig_w)
        gt_masks = [box_mask(b, h, w) for b in gt.loc[gt["image_id"] == row.image_id, ["x1", "y1", "x2", "y2"]].values]
        own = boxes.loc[boxes["image_id"] == row.image_id, ["x1_orig", "y1_orig", "x2_orig", "y2_orig"]].values
        pred_masks = [box_mask(b, h, w) for b in own]
        out.images += 1
        out.boxes += len(pred_masks)
        out.true_positives_iou03 += _greedy_true_positives(pred_masks, gt_masks, 0.3)
        if not gt_masks:
            continue
        lesion = np.any(gt_masks, axis=0)
        near = distance_transform_edt(~lesion) <= tolerance
        peak = peak_pixel(row, m, refined)
        out.target_images += 1
        out.pointing_hits += bool(peak is not None and near[peak[1], peak[0]])
        out.covered_pixels += int(near.sum())
        out.target_pixels += h * w
        out.hits_at_1 += any((p & lesion).any() for p in pred_masks[:1])
        out.hits_at_5 += any((p & lesion).any() for p in pred_masks[:5])
    return out
