"""`make boxes`: pseudo boxes recomputed from the stored heatmaps with new `boxes.*` (no model)."""

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
)
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import TableWriter, read_table
from engine.stages._run import StageRun
from engine.stages._scoring import box_params, min_prob
from engine.stages._stage import HEATMAPS, Stage


def _stored_batch(chunk: pd.DataFrame) -> tuple[dict[str, Any], np.ndarray]:
    """Returns the batch columns and the (N, h, w) float16 maps of stored heatmap + meta rows."""
    batch: dict[str, Any] = {
        c: chunk[c].to_numpy()
        for c in ("image_id", "y_prob", "raw_min", "raw_max", "split", "folder", *PEAK_COLUMNS, *BODY_CANVAS_COLUMNS)
        if c in chunk
    }
    batch.update({c: chunk[c].to_numpy() for c in META_COLUMNS})
    maps = np.stack(chunk["heatmap"].to_numpy()).reshape(len(chunk), int(chunk["heatmap_h"].iloc[0]), -1)
    return batch, maps.astype(np.float16)


def run_boxes(cfg: Config) -> StageSummary:
    """Recomputes the `boxes` table from stored heatmaps + meta with `boxes.*`: no model, no GPU.

    A heatmap without its meta row (no letterbox to map boxes back) is an `errors` row (stage=boxes).
    """
    heat = read_table(cfg.run.dir, "heatmaps")
    if heat.empty:
        raise ValueError(f"{cfg.run.dir}: no heatmaps table; run `make cam` first")
    meta = read_table(cfg.run.dir, "meta").drop(columns=["split", "folder"])
    with StageRun(cfg, "boxes", ("boxes", "errors"), replace=("boxes", "errors")) as run:
        _write_boxes(cfg, heat, meta, run.writer, run.summary)
        run.commit()
        per_image = run.summary.tables.get("boxes", 0) / max(run.summary.rows_ok, 1)
        run.summary.extra["boxes_per_image"] = round(per_image, 3)
    return run.summary


def _write_boxes(
    cfg: Config, heat: pd.DataFrame, meta: pd.DataFrame, writer: TableWriter, summary: StageSummary
) -> None:
    """Writes the boxes of every heatmap with a meta row, and an `errors` row for every heatmap without one."""
    summary.rows_in = len(heat)
    orphans = heat.loc[~heat["image_id"].isin(meta["image_id"]), ["image_id", "split"]]
    reasons = [f"missing_meta: heatmap of {i} has no meta row (run `make cam` again)" for i in orphans["image_id"]]
    write_errors(writer, orphans["image_id"], orphans["image_id"], reasons, orphans["split"], summary)
    frame = heat.merge(meta, on="image_id", how="inner")
    params, floor = box_params(cfg), min_prob(cfg)
    for start in range(0, len(frame), 4096):
        batch, maps = _stored_batch(frame.iloc[start : start + 4096])
        boxes, counts = pseudo_boxes(maps, batch, params)
        writer.write("boxes", explode_boxes(batch, boxes, counts, params, floor))
        summary.rows_ok += len(counts)  # images whose boxes were computed (a repeated meta row counts twice)


STAGE = Stage(
    name="boxes",
    run=run_boxes,
    help="recompute boxes from stored heatmaps with new boxes.* (no model)",
    sections=("boxes",),
    needs=(HEATMAPS,),
    writes=("boxes", "errors"),
)
