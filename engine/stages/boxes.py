"""`make boxes`: pseudo boxes rebuilt from the stored heatmaps and spots (no model).

``boxes.method=spots`` (default): the spot ranker is fitted and its box rule chosen on ``boxes.tune_split``'s boxes
(``engine.core.localization.spot_methods.tune_ranker``), saved as the run's ``spot_ranker.json`` (later `make cam`
runs of this model use it in the actors), and every stored image gets its boxes on its spots. Without spots or
without tune-split heatmaps with Abnormal boxes, the boxes stay on the CAM's peaks and the summary says why.
``boxes.method=cam_peaks``: fixed-size boxes on the CAM's local maxima with ``boxes.size/max/nms_iou/min_score``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.core.localization.columns import (
    BODY_CANVAS_COLUMNS,
    META_COLUMNS,
    PEAK_COLUMNS,
    explode_boxes,
    pseudo_boxes,
    ranked_batch_boxes,
)
from engine.core.localization.spots import SPOT_COLUMNS, SpotRanker
from engine.core.scans.views import cross_view_columns
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import TableWriter, read_table
from engine.stages._run import StageRun
from engine.stages._scoring import (
    RANKER_FILE,
    box_params,
    loc_settings,
    min_prob,
    selected_threshold,
    spot_ranker,
    tune_grid,
)
from engine.stages._stage import HEATMAPS, Stage


def _stored_batch(chunk: pd.DataFrame) -> tuple[dict[str, Any], np.ndarray]:
    """Returns the batch columns and the (N, h, w) float16 maps of stored heatmap + meta rows."""
    names = ("image_id", "y_prob", "raw_min", "raw_max", "split", "folder", *PEAK_COLUMNS, *SPOT_COLUMNS)
    batch: dict[str, Any] = {c: chunk[c].to_numpy() for c in (*names, *BODY_CANVAS_COLUMNS) if c in chunk}
    batch.update({c: chunk[c].to_numpy() for c in META_COLUMNS})
    maps = np.stack(chunk["heatmap"].to_numpy()).reshape(len(chunk), int(chunk["heatmap_h"].iloc[0]), -1)
    return batch, maps.astype(np.float16)


def fit_run_ranker(cfg: Config) -> tuple[SpotRanker | None, dict[str, Any]]:
    """Returns the ranker tuned on `boxes.tune_split` of this run (None when it cannot be) and the record of it.

    A run without splits (new scans scored with `model.from_run`) takes the model run's ranker as it is.
    """
    from engine.core.localization.box_methods import gt_by_image  # imports torch: only when tuning
    from engine.core.localization.spot_methods import has_spots, spot_cases, tune_ranker
    from engine.io.fs import write_run_json
    from engine.stages._population import scored_population

    if read_table(cfg.run.dir, "splits").empty:
        ranker = spot_ranker(cfg)
        return ranker, {"source": "the model run's spot_ranker.json" if ranker else "none: the model run has none"}
    split = cfg.boxes.tune_split
    frame = scored_population(cfg, cfg.run.dir, split).frame
    gt = gt_by_image(read_table(cfg.run.dir, "gt_boxes"))
    if frame.empty or not has_spots(frame):
        why = "no stored spots (cam.spots=0 or heatmaps older than spots)" if len(frame) else "no heatmaps"
        return None, {"skipped": f"{why} for split={split}: run `make cam cam.split={split}`; boxes on CAM peaks"}
    if not any(len(gt.get(i, ((),))[0]) for i in frame["image_id"]):
        return None, {"skipped": f"split={split} has no Abnormal box to tune on; boxes on CAM peaks"}
    cases = spot_cases(frame, gt)
    try:
        threshold = selected_threshold(cfg.run.dir)
    except ValueError:  # no `make threshold` yet: the grid's cutoffs and 0.5
        threshold = 0.5
    ranker, record = tune_ranker(
        tuple(cfg.boxes.features), frame, cases, gt, tune_grid(cfg), threshold, loc_settings(cfg), cfg.seed
    )
    record |= {"split": split, "source": "tuned by make boxes"}
    write_run_json(cfg.run.dir, RANKER_FILE, {"ranker": ranker.to_dict(), "tuning": record})
    return ranker, record


def run_boxes(cfg: Config) -> StageSummary:
    """Recomputes the `boxes` table from stored heatmaps (+ spots) and meta: no model, no GPU.

    A heatmap without its meta row (no letterbox to map boxes back) is an `errors` row (stage=boxes).
    """
    heat = read_table(cfg.run.dir, "heatmaps")
    if heat.empty:
        raise ValueError(f"{cfg.run.dir}: no heatmaps table; run `make cam` first")
    meta = read_table(cfg.run.dir, "meta").drop(columns=["split", "folder"])
    with StageRun(cfg, "boxes", ("boxes", "errors"), replace=("boxes", "errors")) as run:
        ranker = None
        if cfg.boxes.method == "spots":
            ranker, record = fit_run_ranker(cfg)
            run.summary.extra["ranker"] = _ranker_line(ranker, record)
        _write_boxes(cfg, heat, meta, run.writer, run.summary, ranker)
        run.commit()
        per_image = run.summary.tables.get("boxes", 0) / max(run.summary.rows_ok, 1)
        run.summary.extra["box_method"] = "spots" if ranker is not None else "cam_peaks"
        run.summary.extra["boxes_per_image"] = round(per_image, 3)
    return run.summary


def _ranker_line(ranker: SpotRanker | None, record: dict[str, Any]) -> str:
    if ranker is None:
        return str(record.get("skipped") or record.get("source"))
    weights = record.get("weights", "unfitted")
    weights = ", ".join(f"{k} {v:+.2f}" for k, v in weights.items()) if isinstance(weights, dict) else weights
    return (
        f"{record.get('source')} on {record.get('split', '-')} (F1 {record.get('f1', float('nan')):.3f}): "
        f"weights {weights}; side {ranker.size_factor:g} x sigma, <= {ranker.max_boxes} boxes, "
        f"score >= {ranker.min_score:.3f}, classifier cutoff {ranker.cutoff:.3f}"
    )


def _write_boxes(
    cfg: Config,
    heat: pd.DataFrame,
    meta: pd.DataFrame,
    writer: TableWriter,
    summary: StageSummary,
    ranker: SpotRanker | None,
) -> None:
    """Writes the boxes of every heatmap with a meta row, and an `errors` row for every heatmap without one."""
    summary.rows_in = len(heat)
    orphans = heat.loc[~heat["image_id"].isin(meta["image_id"]), ["image_id", "split"]]
    reasons = [f"missing_meta: heatmap of {i} has no meta row (run `make cam` again)" for i in orphans["image_id"]]
    write_errors(writer, orphans["image_id"], orphans["image_id"], reasons, orphans["split"], summary)
    frame = heat.merge(meta, on="image_id", how="inner")
    params, floor = box_params(cfg), min_prob(cfg)
    parts = []
    for start in range(0, len(frame), 4096):
        batch, maps = _stored_batch(frame.iloc[start : start + 4096])
        if ranker is not None:
            boxes, counts = ranked_batch_boxes(maps, batch, ranker, ranker.max_boxes)
        else:
            boxes, counts = pseudo_boxes(maps, batch, params)
        parts.append(pd.DataFrame(explode_boxes(batch, boxes, counts, params, floor, ranker)))
        summary.rows_ok += len(counts)  # images whose boxes were computed (a repeated meta row counts twice)
    if not parts:
        return
    boxes = pd.concat(parts, ignore_index=True)
    patients = read_table(cfg.run.dir, "index", columns=["image_id", "patient_id"]).drop_duplicates("image_id")
    placed = ["image_id", "folder", "orig_w", "orig_h", "new_h", "pad_top", "body_y1_canvas", "body_y2_canvas"]
    images = frame[placed].merge(patients, on="image_id", how="inner")  # what views.placement reads, no maps
    found = cross_view_columns(boxes, images)
    writer.write("boxes", boxes.assign(**found))
    confirmed = found["cross_view"][np.isfinite(found["cross_view"])]
    if len(confirmed):
        summary.extra["cross_view"] = (
            f"{int((confirmed > 0).sum())} of {len(confirmed)} boxes with the patient's other view scored are "
            "confirmed there (a box of that view at the matching place)"
        )


STAGE = Stage(
    name="boxes",
    run=run_boxes,
    help="rebuild boxes from stored heatmaps: tune the spot ranker on boxes.tune_split (boxes.method=spots)",
    sections=("boxes", "evaluate"),
    needs=(HEATMAPS,),
    writes=("boxes", "errors"),
)
