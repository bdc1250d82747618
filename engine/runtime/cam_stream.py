"""The classify-CAM stream of `make infer` and `make cam`: rows -> model actor pool -> the stage's tables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.core.localization.boxes import BoxParams
from engine.core.localization.columns import BODY_CANVAS_COLUMNS, explode_boxes
from engine.core.localization.spots import SpotRanker
from engine.io.codecs import heatmap_column, peak_list_columns, spot_list_columns
from engine.io.pause import pause_point
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import TableWriter

if TYPE_CHECKING:
    from engine.io.overlays import OverlayCollector
    from engine.runtime.pipeline import ScoringFeed
    from engine.runtime.udfs.cam import CamSettings


@dataclass(frozen=True)
class RowContext:
    """What the driver adds to the model stream's rows as it writes them (built by the stage)."""

    run_id: str
    model: str  # model.name, recorded with each pred
    qc_flags: Mapping[str, list[str] | None]  # image_id -> its QC flags (None: none)
    boxes: BoxParams = BoxParams()  # the pseudo boxes' parameters (with CAM)
    ranker: SpotRanker | None = None  # set: the actors built the boxes on spots with it (boxes.method=spots)
    min_prob: float = float("-inf")  # rows below it get no box rows (cam.min_prob)
    overlays: OverlayCollector | None = None  # with CAM: keeps the sampled rows, renders their PNGs at the end


def _take(batch: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in batch.items()}


def _write_batch(writer: TableWriter, batch: dict, ctx: RowContext, summary: StageSummary) -> None:
    """Splits one model-stream batch into rows of preds/errors (and heatmaps/meta/boxes with CAM)."""
    bad = np.asarray(batch["error"]) != ""
    errors = _take(batch, bad)
    write_errors(writer, errors["path"], errors["image_id"], list(errors["error"]), errors["split"], summary)
    ok = _take(batch, ~bad)
    n = len(ok["image_id"])
    qc_flags = [ctx.qc_flags.get(str(image_id)) for image_id in ok["image_id"]]
    label = np.asarray(ok["label"], dtype=np.int64)
    y_true = pa.array(label, mask=label < 0, type=pa.int8())  # -1 in the stream: unlabeled, null in preds
    summary.rows_ok += writer.write(
        "preds",
        {
            **ok,
            "y_true": y_true,
            "epoch": [None] * n,
            "qc_flags": qc_flags,
            "run_id": [ctx.run_id] * n,
            "model": [ctx.model] * n,
            "stage": [writer.stage] * n,
        },
    )
    if "heatmap" not in ok:
        return
    overlays = ctx.overlays
    refs = overlays.take(ok) if overlays else {"overlay_canvas": [None] * n, "overlay_orig": [None] * n}
    shape = {"heatmap_h": [ok["heatmap"].shape[1]] * n, "heatmap_w": [ok["heatmap"].shape[2]] * n}
    lists = {**peak_list_columns(ok), **spot_list_columns(ok), "heatmap": heatmap_column(ok["heatmap"])}
    writer.write("heatmaps", {**ok, **refs, **shape, **lists})
    body = {k: np.full(n, np.nan, np.float32) for k in BODY_CANVAS_COLUMNS if k not in ok}  # a stream without qc
    writer.write("meta", {**ok, **body})
    writer.write("boxes", explode_boxes(ok, ok["boxes"], ok["box_count"], ctx.boxes, ctx.min_prob, ctx.ranker))


def stream_to_tables(
    writer: TableWriter,
    summary: StageSummary,
    rows: pd.DataFrame,
    settings: CamSettings,
    feed: ScoringFeed,
    ctx: RowContext,
) -> None:
    """Streams `rows` through the model actor pool into `writer` (preds + errors; with CAM heatmaps, meta, boxes).

    The caller owns the writer's check, commit and abort (engine/stages/_run.py StageRun), and its `split`: the
    partition the stage owns, from its configuration, never from the rows.
    """
    from engine.runtime.pipeline import iter_results, scored_stream

    summary.rows_in = len(rows)
    if len(rows):
        stream = scored_stream(rows, settings, feed)
        for batch in iter_results(stream, progress=writer.stage, total=len(rows)):
            _write_batch(writer, batch, ctx, summary)
            pause_point("cam_staged")  # a kill test stops the driver here, with rows staged (engine/io/pause.py)
    if ctx.overlays:
        summary.extra["overlays_rendered"] = ctx.overlays.render()
