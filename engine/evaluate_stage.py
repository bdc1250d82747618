"""`make evaluate`: weak localisation scored against the Abnormal GT boxes -> `loc_metrics`, evaluate.json, COCO.

Methods (the `method` column of `loc_metrics`):

* ``peaks``: the run's `boxes` table as `make cam` / `make boxes` wrote it (local CAM maxima on the body).
* ``peaks_tuned``: the same rule (``engine.stages.pseudo_boxes``) with box size, NMS IoU, min score and
  probability cutoff chosen on ``evaluate.tune_split`` only; the choice is scored on that split (rows with
  split=val) and then on ``evaluate.split`` once.
* ``seed_rule``: the seed's top-N-pixel rule (``engine.boxes.top_pixel_boxes``) on this run's heatmaps.
* ``seed``: the seed's rule on ``evaluate.baseline_run``'s heatmaps (trained on the seed's landscape canvas).

The CAM peak of the pointing game is the best body peak (``engine.localization.cam_peak_original``: its refined
centre when `make cam` ran with ``cam.refine``, else the cell centre) for our methods and the brightest canvas
pixel for the seed's (its first box). Tuning needs heatmaps of the tune split:
run ``make cam ARGS="cam.split=val"`` (it writes split=val partitions beside split=test); without them tuning is
skipped and the reason recorded.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from engine.boxes import BoxParams
from engine.classify_stages import _run_id
from engine.config import Config
from engine.data_stages import save_config
from engine.evaluate_methods import (
    MethodRun,
    coco_document,
    gt_by_image,
    heatmap_of,
    meta_of,
    recompute_boxes,
    refined_peaks_of,
    score_method,
    seed_rule_boxes,
    valid_heatmaps,
)
from engine.localization import LocSettings, cam_peak_original
from engine.summary import StageSummary
from engine.tables import TableWriter, read_table, resolve_fs

log = logging.getLogger(__name__)

HEADLINE = ("pointing_game", "pointing_chance", "hit@5", "precision@iou0.3", "recall@iou0.3")


@dataclass
class EvalContext:
    """What every method of one `make evaluate` run shares."""

    cfg: Config
    settings: LocSettings
    gt: dict[str, tuple[np.ndarray, np.ndarray]]
    thr: float  # the run's selected probability threshold (the cutoff of the untuned methods)
    notes: dict[str, Any] = field(default_factory=dict)


def loc_settings(cfg: Config) -> LocSettings:
    """Returns the localisation settings from `evaluate.*`."""
    ev = cfg.evaluate
    return LocSettings(ks=ev.ks, iou_thresholds=ev.iou, iogt_thresholds=ev.iogt, tolerance_px=ev.tolerance_px)


def scored_frame(run_dir: str, split: str, index: pd.DataFrame) -> pd.DataFrame:
    """Returns heatmaps + letterbox meta + index columns (view, label, path) of one split of a run."""
    only = pads.field("split") == split
    heat = read_table(run_dir, "heatmaps", only)
    meta = read_table(run_dir, "meta", only).drop(columns=["split", "folder"])
    frame = heat.merge(meta, on="image_id", how="inner")
    return frame.merge(index[["image_id", "view", "label", "path"]], on="image_id", how="inner")


def _threshold(run_dir: str, notes: dict, key: str) -> float:
    table = read_table(run_dir, "thresholds")
    if table.empty:
        notes[key] = f"{run_dir}: no selected threshold (run `make threshold`); cutoff 0.5 used"
        return 0.5
    return float(table["thr"].iloc[-1])


def _stored_params(boxes: pd.DataFrame, cfg: Config) -> BoxParams:
    size = int(boxes["box_size"].iloc[0]) if len(boxes) else cfg.boxes.size
    nms = float(boxes["nms_iou"].iloc[0]) if len(boxes) else cfg.boxes.nms_iou
    return BoxParams(size=size, max_boxes=cfg.boxes.max, nms_iou=round(nms, 6), min_score=cfg.boxes.min_score)


def seed_params(cfg: Config) -> BoxParams:
    """Returns the seed's box settings (`evaluate.seed_*`, DESIGN.md §3)."""
    ev = cfg.evaluate
    return BoxParams(size=ev.seed_size, max_boxes=ev.seed_max, nms_iou=ev.seed_nms_iou, min_score=0.0)


def _peaks(frame: pd.DataFrame) -> list[tuple[int, int] | None]:
    return [
        cam_peak_original(heatmap_of(row), meta_of(row), refined_peaks_of(row)) for row in frame.itertuples(index=False)
    ]


def _method_peaks(ctx: EvalContext, frame: pd.DataFrame, peaks: list) -> MethodRun:
    cfg = ctx.cfg
    only = pads.field("split") == cfg.evaluate.split
    stored = read_table(cfg.run.dir, "boxes", only)
    stored = stored[stored["image_id"].isin(frame["image_id"])]
    params = _stored_params(stored, cfg)
    return score_method("peaks", frame, stored, peaks, ctx.gt, params, ctx.thr, ctx.settings, cfg.run.dir)


def _tuning_grid(ctx: EvalContext, val: pd.DataFrame) -> list[dict[str, Any]]:
    """Returns one record per (size, nms_iou, min_score, cutoff) with the val objective, best first."""
    ev, peaks = ctx.cfg.evaluate, _peaks(val)
    cutoffs = sorted(set(ev.tune_cutoffs) | {round(ctx.thr, 6)})
    records = []
    for size, nms, min_score in itertools.product(ev.tune_sizes, ev.tune_nms_iou, ev.tune_min_scores):
        params = BoxParams(size=size, max_boxes=ctx.cfg.boxes.max, nms_iou=nms, min_score=min_score)
        boxes = recompute_boxes(val, params)
        for cutoff in cutoffs:
            run = score_method("peaks_tuned", val, boxes, peaks, ctx.gt, params, cutoff, ctx.settings, "")
            metrics = run.overall()
            name = f"iou{ev.tune_iou:g}"
            f1 = f1_score(metrics[f"precision_at_cutoff@{name}"].value, metrics[f"recall_at_cutoff@{name}"].value)
            records.append({"size": size, "nms_iou": nms, "min_score": min_score, "cutoff": cutoff, "f1": f1})
    return sorted(records, key=lambda r: (-r["f1"], r["size"], r["nms_iou"], r["min_score"], r["cutoff"]))


def _method_tuned(ctx: EvalContext, index: pd.DataFrame, test: pd.DataFrame, peaks: list) -> list[MethodRun]:
    """Returns the tuned method scored on the tune split and on the test split; [] when skipped."""
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    if ev.tune_split == ev.split or ev.tune_iou not in ev.iou:
        raise ValueError(f"evaluate.tune_split={ev.tune_split!r} must differ from evaluate.split={ev.split!r} and "
                         f"evaluate.tune_iou={ev.tune_iou} must be one of evaluate.iou={list(ev.iou)}")  # fmt: skip
    val, bad = valid_heatmaps(scored_frame(cfg.run.dir, ev.tune_split, index))
    if val.empty:
        ctx.notes["tuning"] = {"skipped": f"no heatmaps for split={ev.tune_split}: run `make cam "
                                          f"ARGS=\"cam.split={ev.tune_split}\"` before `make evaluate`"}  # fmt: skip
        return []
    grid = _tuning_grid(ctx, val)
    best = grid[0]
    params = BoxParams(size=best["size"], max_boxes=cfg.boxes.max, nms_iou=best["nms_iou"], min_score=best["min_score"])
    ctx.notes["tuning"] = {"split": ev.tune_split, "objective": f"F1 of box precision/recall at IoU {ev.tune_iou:g}, "
                           "boxes only on images with y_prob >= cutoff", "images": len(val), "bad_heatmaps": bad,
                           "chosen": best, "grid_size": len(grid), "grid_top": grid[:10],
                           "make_boxes_args": f"boxes.size={best['size']} boxes.nms_iou={best['nms_iou']} "
                           f"boxes.min_score={best['min_score']}"}  # fmt: skip
    runs = []
    for frame, frame_peaks in ((val, _peaks(val)), (test, peaks)):
        boxes = recompute_boxes(frame, params)
        run = score_method("peaks_tuned", frame, boxes, frame_peaks, ctx.gt, params, best["cutoff"], ctx.settings,
                           cfg.run.dir)  # fmt: skip
        runs.append(replace(run, tuned_on=ev.tune_split))
    return runs


def _method_baseline(ctx: EvalContext, index: pd.DataFrame, test: pd.DataFrame) -> list[MethodRun]:
    ev = ctx.cfg.evaluate
    if not ev.baseline_run:
        return []
    frame, bad = valid_heatmaps(scored_frame(ev.baseline_run, ev.split, index))
    frame = frame[frame["image_id"].isin(test["image_id"])]
    ctx.notes["baseline"] = {"run": ev.baseline_run, "images": len(frame), "common_with_this_run": len(frame),
                             "this_run": len(test), "bad_heatmaps": bad}  # fmt: skip
    if frame.empty:
        ctx.notes["baseline"]["skipped"] = f"no heatmaps of split={ev.split} shared with this run"
        return []
    thr = _threshold(ev.baseline_run, ctx.notes, "baseline_threshold")
    return [seed_rule_boxes("seed", frame, ctx.gt, ctx.settings, seed_params(ctx.cfg), thr, ev.baseline_run)]


def method_rows(run: MethodRun, run_id: str, tolerance: float) -> pd.DataFrame:
    """Returns the `loc_metrics` rows of one scored method: one per group and metric."""
    rows = []
    for (view, folder), metrics in run.groups.items():
        for metric, ratio in metrics.items():
            rows.append({"metric": metric, "value": ratio.value, "numerator": ratio.numerator,
                         "denominator": ratio.denominator, "view": view, "folder": folder})  # fmt: skip
    frame = pd.DataFrame(rows)
    params = {"run_id": run_id, "method": run.method, "split": run.split, "box_size": run.params.size,
              "nms_iou": run.params.nms_iou, "min_score": run.params.min_score, "max_boxes": run.params.max_boxes,
              "cutoff": run.cutoff, "canvas_h": run.canvas[0], "canvas_w": run.canvas[1], "tolerance_px": tolerance,
              "tuned_on": run.tuned_on, "source_run": run.source_run}  # fmt: skip
    return frame.assign(**params)


def _write_json(run_dir: str, relative: str, document: dict) -> str:
    fs, root = resolve_fs(run_dir)
    path = f"{root}/{relative}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(_json_safe(document), indent=1, allow_nan=False).encode())
    return path


def _json_safe(value: Any) -> Any:
    """Returns `value` with numpy scalars as Python numbers and NaN/inf as null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _export_coco(cfg: Config, index: pd.DataFrame) -> dict[str, Any]:
    """Writes every image of the run's heatmaps and every row of its `boxes` table as COCO JSON."""
    meta = read_table(cfg.run.dir, "meta")[["image_id", "orig_w", "orig_h"]]
    images = meta.merge(index[["image_id", "path"]], on="image_id", how="inner")
    boxes = read_table(cfg.run.dir, "boxes")
    document = coco_document(images, boxes[boxes["image_id"].isin(images["image_id"])], cfg.run.dir)
    path = _write_json(cfg.run.dir, "prompts/coco_boxes.json", document)
    return {"path": path, "images": len(document["images"]), "annotations": len(document["annotations"])}


def run_evaluate(cfg: Config) -> StageSummary:
    """Scores pseudo boxes and CAM peaks of `evaluate.split` against the Abnormal GT boxes; see the module doc."""
    summary = StageSummary("evaluate")
    index = read_table(cfg.run.dir, "index")
    notes: dict[str, Any] = {}
    ctx = EvalContext(cfg, loc_settings(cfg), gt_by_image(read_table(cfg.run.dir, "gt_boxes")),
                      _threshold(cfg.run.dir, notes, "threshold"), notes)  # fmt: skip
    scored = scored_frame(cfg.run.dir, cfg.evaluate.split, index)
    test, bad = valid_heatmaps(scored)
    if test.empty:
        raise ValueError(f"{cfg.run.dir}: no usable heatmaps for split={cfg.evaluate.split}; run `make cam` first")
    summary.rows_in, summary.rows_ok = len(scored), len(test)
    summary.errors.update({"bad_heatmap": bad} if bad else {})
    peaks = _peaks(test)
    runs = [_method_peaks(ctx, test, peaks)]
    runs += _method_tuned(ctx, index, test, peaks) if cfg.evaluate.tune else []
    runs.append(seed_rule_boxes("seed_rule", test, ctx.gt, ctx.settings, seed_params(cfg), ctx.thr, cfg.run.dir))
    runs += _method_baseline(ctx, index, test)
    table = pd.concat([method_rows(r, _run_id(cfg), cfg.evaluate.tolerance_px) for r in runs], ignore_index=True)
    writer = TableWriter(cfg.run.dir, "evaluate", replace=("loc_metrics",))
    writer.check(["loc_metrics"])
    writer.write("loc_metrics", table)
    summary.tables = writer.commit()
    if cfg.evaluate.coco:
        notes["coco"] = _export_coco(cfg, index)
    document = _document(cfg, ctx, runs)
    _write_json(cfg.run.dir, "evaluate.json", document)
    save_config(cfg, "evaluate")
    summary.extra.update(_headline(runs, cfg.evaluate.split))
    summary.extra.update({k: v for k, v in notes.items() if k in ("threshold", "baseline_threshold")})
    summary.save(cfg.run.dir)
    return summary.finish()


def _document(cfg: Config, ctx: EvalContext, runs: list[MethodRun]) -> dict[str, Any]:
    methods = {f"{r.method}/{r.split}": r.to_dict() for r in runs}
    return {"split": cfg.evaluate.split, "settings": cfg.to_dict()["evaluate"], "threshold": ctx.thr,
            "methods": methods, **ctx.notes}  # fmt: skip


def _headline(runs: list[MethodRun], split: str) -> dict[str, str]:
    """Returns `method: pointing_game=…, hit@5=…` lines for the summary (the evaluated split only)."""
    lines = {}
    for run in runs:
        if run.split == split:
            metrics = run.overall()
            lines[run.method] = ", ".join(f"{k}={metrics[k].value:.3f}" for k in HEADLINE if k in metrics)
    return lines


def f1_score(precision: float, recall: float) -> float:
    """Returns 2PR / (P + R), 0 when both are 0 or either is NaN."""
    if not (np.isfinite(precision) and np.isfinite(recall)) or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
