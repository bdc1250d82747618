"""`make evaluate`: weak localisation scored against the Abnormal GT boxes -> `loc_metrics`, evaluate.json, COCO.

Scored images: exactly the trained view's whole-body folders (``data.view``) of ``evaluate.split`` (and of
``evaluate.tune_split`` for tuning), whatever `make cam` wrote (``engine.stages.evaluate.population``); heatmap rows of
other folders are left out and counted per folder in the summary.

Methods (the `method` column of `loc_metrics`):

* ``peaks``: the run's `boxes` table as `make cam` / `make boxes` wrote it (local CAM maxima on the body).
* ``peaks_confirmed``: the run's boxes that the patient's other whole-body view confirms (``boxes.cross_view`` > 0,
  set by `make boxes`; ``engine.core.scans.views``), on the same images: precision of the confirmed boxes beside
  all of them. Only when some box has its other view scored (``data.view: BOTH``).
* ``peaks_unrefined``: the same heatmaps and box settings with the stored refined peak centres ignored (cell
  centres), on the images that have stored boxes: what the refinement (``cam.refine``) alone adds.
* ``peaks_tuned``: the same rule (``core.localization.columns.pseudo_boxes``) with box size, NMS IoU, min score and
  probability cutoff chosen on ``evaluate.tune_split`` only; the choice is scored on that split (rows with
  split=val) and then on ``evaluate.split`` once.
* ``seed_rule``: the seed's top-N-pixel rule (``core.localization.boxes.top_pixel_boxes``) on this run's heatmaps.
* ``seed``: the seed's rule on ``evaluate.baseline_run``'s heatmaps (trained on the seed's landscape canvas).
* ``centre_prior``, ``body_prior``, ``max_box_acc``: baselines (``engine.stages.evaluate.baselines``): no model, the
  brightest smoothed scan pixel, and Choe et al.'s threshold-swept box accuracy of this run's heatmaps.
* ``masks_tight``, ``masks`` (and ``segnet_tight``, ``segnet``): pseudo / network masks (``engine.io.evaluate_masks``).

The CAM peak of the pointing game is the best body peak (``core.metrics.localization.cam_peak_original``: its refined
centre when `make cam` ran with ``cam.refine``, else the cell centre) for our methods and the brightest canvas
pixel for the seed's (its first box). Tuning needs heatmaps of the tune split:
run ``make cam ARGS="cam.split=val"`` (it writes split=val partitions beside split=test); without them tuning is
skipped and the reason recorded.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from engine.config import Config
from engine.core.localization.box_methods import (
    MethodRun,
    gt_by_image,
    heatmap_of,
    meta_of,
    recompute_boxes,
    refined_peaks_of,
    score_method,
    seed_rule_boxes,
)
from engine.core.localization.boxes import BoxParams
from engine.core.localization.columns import PEAK_COLUMNS
from engine.core.localization.spot_methods import (
    case_peaks,
    has_spots,
    score_ranker,
    spot_cases,
    tune_ranker,
    with_features,
)
from engine.core.metrics.localization import LocSettings, cam_peak_original
from engine.io.evaluate_masks import mask_methods
from engine.io.fs import write_run_json
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._population import scored_population
from engine.stages._run import StageRun, run_id
from engine.stages._scoring import loc_settings, selected_threshold, spot_ranker, tune_grid
from engine.stages.evaluate.baselines import body_prior_method, centre_prior_method, max_box_acc_method
from engine.stages.evaluate.outputs import export_coco

log = logging.getLogger(__name__)

HEADLINE = (
    "pointing_game",
    "pointing_chance",
    "hit@5",
    "precision@iou0.3",
    "recall@iou0.3",
    "max_box_acc@iou0.3",
    "max_box_acc@iou0.5",
    "mask_box_iou",
    "mask_inside_fraction",
    "mask_hit_rate",
    "mask_dice",
    "mask_pxap",
    "mask_fp_per_normal",
    "mask_fp_image_rate",
)


@dataclass
class EvalContext:
    """What every method of one `make evaluate` run shares."""

    cfg: Config
    settings: LocSettings
    gt: dict[str, tuple[np.ndarray, np.ndarray]]
    thr: float  # the run's selected probability threshold (the cutoff of the untuned methods)
    notes: dict[str, Any] = field(default_factory=dict)


def _threshold(run_dir: str, notes: dict, key: str) -> float:
    try:
        return selected_threshold(run_dir)
    except ValueError:
        notes[key] = f"{run_dir}: no selected threshold (run `make threshold`); cutoff 0.5 used"
        return 0.5


def stored_box_params(boxes: pd.DataFrame, cfg: Config) -> tuple[BoxParams, str]:
    """Returns the box settings the stored `boxes` rows were built with, and where each came from.

    `box_size` and `nms_iou` are always stored; `boxes_max` and `min_score` only in newer tables: older ones (or
    an empty table) fall back to the config's ``boxes.*``, and the returned text says so.
    """
    if not len(boxes) or ("box_method" in boxes and (boxes["box_method"] == "spots").any()):
        source = (
            "config (no boxes)" if not len(boxes) else "config (the stored boxes are spots: boxes.size for the rest)"
        )
        return BoxParams(cfg.boxes.size, cfg.boxes.max, cfg.boxes.nms_iou, cfg.boxes.min_score), source
    size, nms = int(boxes["box_size"].iloc[0]), round(float(boxes["nms_iou"].iloc[0]), 6)
    if all(c in boxes and boxes[c].notna().all() for c in ("boxes_max", "min_score")):
        max_boxes, min_score = int(boxes["boxes_max"].iloc[0]), round(float(boxes["min_score"].iloc[0]), 6)
        return BoxParams(size, max_boxes, nms, min_score), "boxes table"
    source = "boxes table (box_size, nms_iou); config (boxes.max, boxes.min_score): the table predates those columns"
    return BoxParams(size, cfg.boxes.max, nms, cfg.boxes.min_score), source


def seed_params(cfg: Config) -> BoxParams:
    """Returns the original pipeline's box settings (`evaluate.seed_*`: 48 px, 5 boxes, NMS IoU 0.15)."""
    ev = cfg.evaluate
    return BoxParams(size=ev.seed_size, max_boxes=ev.seed_max, nms_iou=ev.seed_nms_iou, min_score=0.0)


def _peaks(frame: pd.DataFrame) -> list[tuple[int, int] | None]:
    return [
        cam_peak_original(heatmap_of(row), meta_of(row), refined_peaks_of(row)) for row in frame.itertuples(index=False)
    ]


def _stored_peaks(ctx: EvalContext, frame: pd.DataFrame, stored: pd.DataFrame) -> list[tuple[int, int] | None]:
    """Returns the pointing-game peaks of the stored boxes' method: the best-ranked spot when the boxes are the run's
    spot ranker's (``boxes.method=spots``), else the best CAM body peak."""
    ranker = spot_ranker(ctx.cfg)
    if ranker is None or stored.empty or not (stored["box_method"] == "spots").all() or not has_spots(frame):
        return _peaks(frame)
    return case_peaks(with_features(spot_cases(frame, ctx.gt), ranker.physiology), ranker)


def _method_peaks(ctx: EvalContext, frame: pd.DataFrame) -> tuple[list[MethodRun], BoxParams]:
    """Returns `peaks` (the stored boxes), `peaks_confirmed` (those the other view confirms, with both views scored)
    and `peaks_unrefined` (cell-centre peaks), and the stored box settings."""
    cfg = ctx.cfg
    stored = read_table(cfg.run.dir, "boxes", pads.field("split") == cfg.evaluate.split)
    stored = stored[stored["image_id"].isin(frame["image_id"])]
    params, ctx.notes["box_params_source"] = stored_box_params(stored, cfg)
    args = (ctx.gt, params, ctx.thr, ctx.settings, cfg.run.dir)
    runs = [score_method("peaks", frame, stored, _stored_peaks(ctx, frame, stored), *args)]
    if np.isfinite(stored["cross_view"].to_numpy(dtype=np.float64)).any():  # some box has its other view scored
        confirmed = stored[stored["cross_view"] > 0]
        runs.append(score_method("peaks_confirmed", frame, confirmed, _stored_peaks(ctx, frame, stored), *args))
    plain = frame.drop(columns=[c for c in PEAK_COLUMNS if c in frame.columns])
    boxes = recompute_boxes(plain, params)
    boxes = boxes[boxes["image_id"].isin(stored["image_id"])]  # the images `make cam` kept (cam.min_prob)
    runs.append(score_method("peaks_unrefined", plain, boxes, _peaks(plain), *args))
    return runs, params


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


def check_tuning(cfg: Config) -> None:
    """Raises ValueError when tuning would see the scored split or optimise an IoU that is not reported."""
    ev = cfg.evaluate
    if ev.tune and (ev.tune_split == ev.split or ev.tune_iou not in ev.iou):
        raise ValueError(
            f"evaluate.tune_split={ev.tune_split!r} must differ from evaluate.split={ev.split!r} and "
            f"evaluate.tune_iou={ev.tune_iou} must be one of evaluate.iou={list(ev.iou)}"
        )


def _method_tuned(ctx: EvalContext, test: pd.DataFrame) -> list[MethodRun]:
    """Returns the tuned method scored on the tune split and on the test split; [] when skipped."""
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    population = scored_population(cfg, cfg.run.dir, ev.tune_split)
    ctx.notes["population"][ev.tune_split] = population.note()
    val, bad = population.frame, sum(population.errors.values())
    if val.empty:
        ctx.notes["tuning"] = {
            "skipped": f"no heatmaps for split={ev.tune_split}: run `make cam "
            f'ARGS="cam.split={ev.tune_split}"` before `make evaluate`'
        }
        return []
    grid = _tuning_grid(ctx, val)
    best = grid[0]
    params = BoxParams(size=best["size"], max_boxes=cfg.boxes.max, nms_iou=best["nms_iou"], min_score=best["min_score"])
    ctx.notes["tuning"] = {
        "split": ev.tune_split,
        "objective": f"F1 of box precision/recall at IoU {ev.tune_iou:g}, boxes only on images with y_prob >= cutoff",
        "images": len(val),
        "not_usable": bad,
        "chosen": best,
        "grid_size": len(grid),
        "grid_top": grid[:10],
        "make_boxes_args": f"boxes.size={best['size']} boxes.nms_iou={best['nms_iou']} "
        f"boxes.min_score={best['min_score']}",
    }
    runs = []
    for frame in (val, test):
        boxes = recompute_boxes(frame, params)
        run = score_method(
            "peaks_tuned", frame, boxes, _peaks(frame), ctx.gt, params, best["cutoff"], ctx.settings, cfg.run.dir
        )
        runs.append(replace(run, tuned_on=ev.tune_split))
    return runs


# The spot ranker's ablation: (method, features, uses the classifier). No-model rows get no classifier cutoff.
SPOT_ABLATION = (
    ("spots_peak", ("peak",), False),
    ("spots_scan", ("peak", "contrast", "asym", "physiology", "size"), False),
    ("spots_cam", ("cam",), True),
    ("spots_cam_contrast", ("cam", "peak", "contrast"), True),
    ("spots_cam_asym", ("cam", "peak", "contrast", "asym"), True),
    ("spots_cam_site", ("cam", "peak", "contrast", "asym", "physiology", "size"), True),
    ("spots_full", ("cam", "peak", "contrast", "asym", "physiology", "size", "prob"), True),
)


def _spot_ablation(ctx: EvalContext, test: pd.DataFrame) -> list[MethodRun]:
    """Returns each SPOT_ABLATION ranker tuned on the tune split and scored on it and on the test split once."""
    cfg, ev = ctx.cfg, ctx.cfg.evaluate
    val = scored_population(cfg, cfg.run.dir, ev.tune_split).frame
    if not (has_spots(val) and has_spots(test)):
        ctx.notes["spots"] = {"skipped": f"no stored spots for split={ev.tune_split} and {ev.split} (cam.spots=0?)"}
        return []
    val_cases, test_cases = spot_cases(val, ctx.gt), spot_cases(test, ctx.gt)
    runs, records = [], {}
    for method, features, gated in SPOT_ABLATION:
        grid = tune_grid(cfg) if gated else replace(tune_grid(cfg), cutoffs=(0.0,))
        threshold = ctx.thr if gated else 0.0
        ranker, records[method] = tune_ranker(features, val, val_cases, ctx.gt, grid, threshold, ctx.settings, cfg.seed)
        with_features(test_cases, ranker.physiology)
        for frame, cases in ((val, val_cases), (test, test_cases)):
            run = score_ranker(method, frame, cases, ranker, ctx.gt, ctx.settings, cfg.run.dir)
            runs.append(replace(run, tuned_on=ev.tune_split))
    ctx.notes["spots"] = records
    return runs


def _method_baseline(ctx: EvalContext, test: pd.DataFrame) -> list[MethodRun]:
    ev = ctx.cfg.evaluate
    if not ev.baseline_run:
        return []
    population = scored_population(ctx.cfg, ev.baseline_run, ev.split)
    frame = population.frame[population.frame["image_id"].isin(test["image_id"])]
    ctx.notes["baseline"] = {
        "run": ev.baseline_run,
        "common_with_this_run": len(frame),
        "this_run": len(test),
        "population": population.note(),
    }
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
            rows.append(
                {
                    "metric": metric,
                    "value": ratio.value,
                    "numerator": ratio.numerator,
                    "denominator": ratio.denominator,
                    "view": view,
                    "folder": folder,
                }
            )
    frame = pd.DataFrame(rows)
    params = {
        "run_id": run_id,
        "method": run.method,
        "split": run.split,
        "box_size": run.params.size,
        "nms_iou": run.params.nms_iou,
        "min_score": run.params.min_score,
        "max_boxes": run.params.max_boxes,
        "cutoff": run.cutoff,
        "canvas_h": run.canvas[0],
        "canvas_w": run.canvas[1],
        "tolerance_px": tolerance,
        "tuned_on": run.tuned_on,
        "source_run": run.source_run,
    }
    return frame.assign(**params)


def _baselines(ctx: EvalContext, test: pd.DataFrame, params: BoxParams) -> list[MethodRun]:
    """Returns the centre prior, the body prior and MaxBoxAcc of this run's heatmaps (no tuning, no model)."""
    cfg = ctx.cfg
    runs = [centre_prior_method(test, ctx.gt, params, ctx.thr, ctx.settings, "")]
    body, ctx.notes["body_prior"] = body_prior_method(cfg, test, ctx.gt, params, ctx.thr, ctx.settings)
    box_acc, ctx.notes["max_box_acc"] = max_box_acc_method(cfg, test, ctx.gt, params, ctx.thr, cfg.run.dir)
    return [*runs, body, box_acc]


def run_evaluate(cfg: Config) -> StageSummary:
    """Scores pseudo boxes and CAM peaks of `evaluate.split` against the Abnormal GT boxes; see the module doc.

    Rows in: the trained view's images of the split (index + splits); rows ok: the images the `peaks` method
    actually scored; errors: selected images without a heatmap, without meta, or with an unusable heatmap.
    """
    check_tuning(cfg)
    summary = StageSummary("evaluate")
    if read_table(cfg.run.dir, "splits").empty and not read_table(cfg.run.dir, "index").empty:
        summary.extra["skipped"] = (
            "this run has no splits table (new scans scored with model.from_run): "
            "no labelled split to score; nothing written"
        )
        summary.save(cfg.run.dir)
        return summary.finish()
    with StageRun(cfg, "evaluate", ("loc_metrics",), replace=("loc_metrics",)) as run:
        notes: dict[str, Any] = {"population": {}}
        ctx = EvalContext(
            cfg,
            loc_settings(cfg),
            gt_by_image(read_table(cfg.run.dir, "gt_boxes")),
            _threshold(cfg.run.dir, notes, "threshold"),
            notes,
        )
        runs = _scored_methods(ctx, run.summary)
        table = pd.concat([method_rows(r, run_id(cfg), cfg.evaluate.tolerance_px) for r in runs], ignore_index=True)
        run.writer.write("loc_metrics", table)
        run.commit()
        if cfg.evaluate.coco:
            notes["coco"] = export_coco(cfg, notes.get("tuning", {}))
        write_run_json(cfg.run.dir, "evaluate.json", _document(cfg, ctx, runs))
        run.summary.extra.update(_headline(runs, cfg.evaluate.split))
        run.summary.extra.update(_account(notes))
    return run.summary


def _scored_methods(ctx: EvalContext, summary: StageSummary) -> list[MethodRun]:
    """Returns every method's run over the scored population of `evaluate.split`; fills the summary's account."""
    cfg, notes = ctx.cfg, ctx.notes
    population = scored_population(cfg, cfg.run.dir, cfg.evaluate.split)
    notes["population"][cfg.evaluate.split] = population.note()
    test = population.frame
    if test.empty:
        raise ValueError(
            f"{cfg.run.dir}: no usable heatmaps for split={cfg.evaluate.split} in folders "
            f"{population.folders} (data.view={cfg.data.view}); run `make cam` first"
        )
    summary.rows_in = population.selected
    summary.errors.update(population.errors)
    runs, params = _method_peaks(ctx, test)
    summary.rows_ok = runs[0].overall()["n_images"].numerator  # counted by the scorer, not len(test)
    mask_runs, notes["masks"] = mask_methods(ctx, test, params, _peaks(test))
    runs += mask_runs
    runs += _method_tuned(ctx, test) if cfg.evaluate.tune else []
    runs += _spot_ablation(ctx, test) if cfg.evaluate.tune else []
    runs.append(seed_rule_boxes("seed_rule", test, ctx.gt, ctx.settings, seed_params(cfg), ctx.thr, cfg.run.dir))
    runs += _method_baseline(ctx, test)
    runs += _baselines(ctx, test, params)
    return runs


def _account(notes: dict[str, Any]) -> dict[str, Any]:
    """Returns the summary lines on what was scored: left-out folders per split, box settings, baseline notes."""
    out = {f"left_out_{split}": note["left_out_per_folder"] or "none" for split, note in notes["population"].items()}
    out["box_params"], out["masks_note"] = notes["box_params_source"], notes["masks"]
    out["max_box_acc_threshold"] = notes["max_box_acc"]["best_threshold"]
    if notes["body_prior"]["unreadable"]:
        out["body_prior_unreadable"] = notes["body_prior"]["unreadable"]
    return out | {k: v for k, v in notes.items() if k in ("threshold", "baseline_threshold")}


def _document(cfg: Config, ctx: EvalContext, runs: list[MethodRun]) -> dict[str, Any]:
    methods = {f"{r.method}/{r.split}": r.to_dict() for r in runs}
    return {
        "split": cfg.evaluate.split,
        "settings": cfg.to_dict()["evaluate"],
        "threshold": ctx.thr,
        "methods": methods,
        **ctx.notes,
    }


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
