"""Box methods of `make evaluate` on stored heatmaps: recompute our boxes, the seed's rule, scoring.

Frames hold one row per scored image: `heatmaps` columns + letterbox meta (`meta`) + view, label, path (`index`).
Our boxes are recomputed only through ``core.batch_columns.pseudo_boxes`` / ``explode_boxes`` (the one box path of
`make cam` and `make boxes`); the seed's through ``engine.core.localization.boxes.top_pixel_boxes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import reduce
from typing import Any

import numpy as np
import pandas as pd

from engine.core.localization.boxes import BoxParams, RefinedPeaks, top_pixel_boxes
from engine.core.localization.columns import (
    BODY_CANVAS_COLUMNS,
    META_COLUMNS,
    PEAK_COLUMNS,
    explode_boxes,
    pseudo_boxes,
    refined_of,
)
from engine.core.metrics.localization import (
    ImageCase,
    LocalizationAccumulator,
    LocSettings,
    Ratio,
    brightest_pixel_original,
)
from engine.core.model.cam import upsample_heatmap
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original

ORIG_COLUMNS = ("x1_orig", "y1_orig", "x2_orig", "y2_orig")
GroupKey = tuple[str, str]  # (view, folder); folder "*" = the whole view, view "all" = every view


@dataclass(frozen=True)
class MethodRun:
    """One method scored on one split: box parameters, cutoff and metrics per (view, folder) group."""

    method: str
    split: str
    params: BoxParams
    cutoff: float
    canvas: tuple[int, int]  # (canvas_h, canvas_w) of the heatmaps
    source_run: str
    groups: dict[GroupKey, dict[str, Ratio]]
    tuned_on: str | None = None

    def overall(self) -> dict[str, Ratio]:
        """Returns the metrics over every image: group ("all", "*"), or the single view's."""
        return self.groups.get(("all", "*")) or next(v for k, v in self.groups.items() if k[1] == "*")

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready record: parameters and `view/folder -> metric -> value`."""
        groups = {
            f"{view}/{folder}": {name: r.value for name, r in metrics.items()}
            for (view, folder), metrics in self.groups.items()
        }
        return {
            "split": self.split,
            "params": asdict(self.params),
            "cutoff": self.cutoff,
            "canvas": list(self.canvas),
            "source_run": self.source_run,
            "tuned_on": self.tuned_on,
            "groups": groups,
        }


def heatmap_of(row: Any) -> np.ndarray:
    """Returns a frame row's stored heatmap as (heatmap_h, heatmap_w) float32."""
    return np.asarray(row.heatmap, dtype=np.float32).reshape(int(row.heatmap_h), int(row.heatmap_w))


def refined_peaks_of(row: Any) -> RefinedPeaks | None:
    """Returns a frame row's stored refined peak centres, or None (no `cam.refine`, or an older table)."""
    return refined_of(*(getattr(row, k, None) for k in PEAK_COLUMNS))


def meta_of(row: Any) -> LetterboxMeta:
    """Returns a frame row's letterbox meta."""
    return LetterboxMeta(**{k: float(getattr(row, k)) if k == "scale" else int(getattr(row, k)) for k in META_COLUMNS})


def _is_valid(row: Any) -> bool:
    values = np.asarray(row.heatmap if row.heatmap is not None else [], dtype=np.float64)
    sizes_ok = min(row.heatmap_h, row.heatmap_w, row.orig_h, row.orig_w, row.new_h, row.new_w, row.scale) > 0
    return bool(sizes_ok and values.size == row.heatmap_h * row.heatmap_w and np.isfinite(values).all())


def valid_heatmaps(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Returns (rows whose heatmap and meta are usable, how many were not): bad rows are counted, never crash."""
    if frame.empty:
        return frame, 0
    keep = np.array([_is_valid(row) for row in frame.itertuples(index=False)], dtype=bool)
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def gt_by_image(gt: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns image_id -> (Abnormal boxes (M, 4), Normal boxes (L, 4)), int64 original px (gt_boxes table)."""
    if gt.empty:
        return {}
    ids = gt["image_id"].astype(str).to_numpy(dtype=object)
    order = np.argsort(ids, kind="stable")  # one sort, then each image's rows are one slice
    ids = ids[order]
    coords = gt[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.int64)[order]
    cls = gt["cls"].astype(str).to_numpy(dtype=object)[order]
    abnormal, normal = cls == "Abnormal", cls == "Normal"
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {ids[a]: (coords[a:b][abnormal[a:b]], coords[a:b][normal[a:b]]) for a, b in zip(starts, ends, strict=True)}


def recompute_boxes(frame: pd.DataFrame, params: BoxParams) -> pd.DataFrame:
    """Returns `boxes`-table rows for every image of `frame` with `params` (NaN-probability images get none)."""
    parts = [pd.DataFrame(columns=["image_id", "rank", *ORIG_COLUMNS])]
    for _, chunk in frame.groupby(["heatmap_h", "heatmap_w", "canvas_h", "canvas_w"], sort=False):
        wanted = (
            "image_id",
            "y_prob",
            "raw_min",
            "raw_max",
            "split",
            "folder",
            *META_COLUMNS,
            *BODY_CANVAS_COLUMNS,
            *PEAK_COLUMNS,
        )
        batch: dict[str, Any] = {c: chunk[c].to_numpy() for c in wanted if c in chunk}
        maps = np.stack(chunk["heatmap"].to_numpy()).reshape(len(chunk), int(chunk["heatmap_h"].iloc[0]), -1)
        boxes, counts = pseudo_boxes(maps.astype(np.float16), batch, params)
        parts.append(pd.DataFrame(explode_boxes(batch, boxes, counts, params, float("-inf"))))
    return pd.concat(parts, ignore_index=True)


def boxes_by_image(boxes: pd.DataFrame) -> dict[str, np.ndarray]:
    """Returns image_id -> (N, 4) float64 original-px boxes in rank order."""
    if boxes.empty:
        return {}
    ordered = boxes.sort_values(["image_id", "rank"], kind="stable")
    coords = ordered[list(ORIG_COLUMNS)].to_numpy(dtype=np.float64)
    ids, starts = np.unique(ordered["image_id"].to_numpy().astype(str), return_index=True)
    ends = np.append(starts[1:], len(ordered))
    return {str(i): coords[s:e] for i, s, e in zip(ids, starts, ends, strict=True)}


def _label(value: Any) -> int:
    return int(value) if value is not None and not pd.isna(value) else -1


def group_metrics(fine: dict[GroupKey, Any]) -> dict[GroupKey, dict[str, Ratio]]:
    """Returns metrics per view ("*"), per folder when a view has several, and over all views when several.

    `fine` holds one accumulator (``update``/``merge``/``compute``) per (view, folder).
    """
    views: dict[str, list[GroupKey]] = {}
    for key in sorted(fine):
        views.setdefault(key[0], []).append(key)
    out: dict[GroupKey, Any] = {}
    for view, keys in views.items():
        out[(view, "*")] = reduce(lambda a, b: a.merge(b), [fine[k] for k in keys[1:]], fine[keys[0]])
        out.update({k: fine[k] for k in keys} if len(keys) > 1 else {})
    if len(views) > 1:
        totals = [out[(v, "*")] for v in views]
        out[("all", "*")] = reduce(lambda a, b: a.merge(b), totals[1:], totals[0])
    return {key: acc.compute() for key, acc in out.items()}


def score_method(
    method: str,
    frame: pd.DataFrame,
    boxes: pd.DataFrame,
    peaks: list[tuple[int, int] | None],
    gt: dict[str, tuple[np.ndarray, np.ndarray]],
    params: BoxParams,
    cutoff: float,
    settings: LocSettings,
    source_run: str,
) -> MethodRun:
    """Returns `method` scored on every image of `frame` (peaks[i] belongs to row i) against the GT boxes."""
    by_image, empty = boxes_by_image(boxes), np.zeros((0, 4))
    cases: dict[GroupKey, list[ImageCase]] = {}
    needed = frame[["image_id", "y_prob", "orig_h", "orig_w", "label", "view", "folder"]]  # not the heatmaps
    for row, peak in zip(needed.itertuples(index=False), peaks, strict=True):
        abnormal, normal = gt.get(row.image_id, (empty, empty))
        prob = float(row.y_prob) if row.y_prob is not None else float("nan")
        case = ImageCase(
            by_image.get(row.image_id, empty),
            abnormal,
            normal,
            peak,
            int(row.orig_h),
            int(row.orig_w),
            _label(row.label),
            prob,
            cutoff,
        )
        cases.setdefault((str(row.view), str(row.folder)), []).append(case)
    fine = {key: LocalizationAccumulator(settings).update(listed) for key, listed in cases.items()}
    canvas = (int(frame["canvas_h"].iloc[0]), int(frame["canvas_w"].iloc[0]))
    split = str(frame["split"].iloc[0])
    return MethodRun(method, split, params, float(cutoff), canvas, source_run, group_metrics(fine))


def seed_rule_boxes(
    method: str,
    frame: pd.DataFrame,
    gt: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: LocSettings,
    params: BoxParams,
    cutoff: float,
    source_run: str,
) -> MethodRun:
    """Returns the seed's way scored: its top-pixel boxes and brightest pixel on canvas-resolution maps."""
    rows, peaks = [], []
    for row in frame.itertuples(index=False):
        meta = meta_of(row)
        heat = upsample_heatmap(heatmap_of(row), meta.canvas_h, meta.canvas_w)
        peaks.append(brightest_pixel_original(heat, meta))
        found = top_pixel_boxes(heat, params)
        orig = canvas_to_original(found[:, :4].reshape(-1, 4), meta)
        rows += [
            {"image_id": row.image_id, "rank": rank, **dict(zip(ORIG_COLUMNS, box, strict=True))}
            for rank, box in enumerate(orig)
        ]
    boxes = pd.DataFrame(rows, columns=["image_id", "rank", *ORIG_COLUMNS])
    return score_method(method, frame, boxes, peaks, gt, params, cutoff, settings, source_run)
