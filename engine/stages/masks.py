"""`make masks`: pseudo boxes + stored heatmaps + the images -> one pseudo mask (COCO RLE) per box, with QC.

The images stream through ``engine.runtime.pipeline.image_stream`` (the decode + letterbox of `make cam`), so boxes,
heatmaps and images share the canvas frame; each mask is segmented on a crop around its box and mapped back
to original px (the batch UDFs of engine/runtime/udfs/masks.py). A box whose image is bad or missing becomes an
`errors` row: boxes in = masks + errors.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.core.localization.columns import META_COLUMNS
from engine.core.masks.registry import MODEL_SEGMENTERS, check_segmenter
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import TableWriter, read_table
from engine.stages._run import StageRun
from engine.stages._scoring import model_run_dir, selected_threshold
from engine.stages._stage import BOXES, HEATMAPS, Stage

if TYPE_CHECKING:
    from engine.runtime.udfs.masks import Lookup


def _inputs(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Returns (boxes, heatmaps joined with meta, index rows) of the run."""
    boxes = read_table(cfg.run.dir, "boxes")
    heat = read_table(cfg.run.dir, "heatmaps")
    if heat.empty:
        raise ValueError(f"{cfg.run.dir}: no heatmaps table; run `make cam` first")
    meta = read_table(cfg.run.dir, "meta").drop(columns=["split", "folder"])
    frame = heat.merge(meta, on="image_id", how="inner")
    canvases = set(zip(frame["canvas_h"], frame["canvas_w"], strict=True))
    if canvases - {(cfg.canvas.height, cfg.canvas.width)}:
        expected = (cfg.canvas.height, cfg.canvas.width)
        raise ValueError(
            f"heatmaps were made on canvas {sorted(canvases)}, but canvas is {expected}: "
            "run `make masks` with the config of `make cam`"
        )
    return boxes.sort_values(["image_id", "rank"], kind="stable"), frame, read_table(cfg.run.dir, "index")


def build_lookup(boxes: pd.DataFrame, frame: pd.DataFrame) -> Lookup:
    """Returns, per image with boxes and a heatmap, what segmenting its boxes needs."""
    heat = frame.set_index("image_id")
    lookup: Lookup = {}
    for image_id, group in boxes.groupby("image_id", sort=True):
        row = heat.loc[image_id]
        lookup[str(image_id)] = {
            "boxes": group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32),
            "rank": group["rank"].to_numpy(),
            "y_prob": float(group["y_prob"].iloc[0]),
            "split": group["split"].iloc[0],
            "folder": group["folder"].iloc[0],
            "meta": {c: int(row[c]) for c in META_COLUMNS if c != "scale"},
            "heatmap": np.asarray(row["heatmap"], dtype=np.float16).reshape(int(row["heatmap_h"]), -1),
        }
    return lookup


def _stream(cfg: Config, rows: pd.DataFrame, lookup: Lookup, thr: float) -> Any:
    from engine.runtime.decode import DecodeSettings
    from engine.runtime.pipeline import PoolSpec, StreamSettings, actor_stream, image_stream, task_stream
    from engine.runtime.udfs.masks import MaskStage, segment_with

    mcfg = cfg.masks
    images = image_stream(rows, DecodeSettings.of(cfg.data, cfg.canvas), StreamSettings.of(cfg.ray))
    if {mcfg.segmenter, mcfg.second} & set(MODEL_SEGMENTERS):
        pool = PoolSpec(actors=mcfg.actors, rows_per_call=mcfg.batch_images, num_gpus=mcfg.num_gpus)
        return actor_stream(images, MaskStage, (mcfg, lookup, thr), pool)
    udf = partial(segment_with, lookup=lookup, cfg=mcfg, thr=thr)
    return task_stream(images, udf, mcfg.batch_images, num_cpus=1)


def _write(writer: TableWriter, out: dict[str, np.ndarray], summary: StageSummary) -> None:
    """Splits one stream batch into masks rows and errors rows."""
    bad = out["error"] != ""
    ok = {k: v[~bad] for k, v in out.items()}
    ok["qc_flags"] = [flags.split(";") if flags else [] for flags in ok["qc_flags"]]
    writer.write("masks", ok)
    summary.rows_ok += int((~bad).sum())
    errors = {k: v[bad] for k, v in out.items()}
    reasons = [f"{reason} (box rank {rank})" for reason, rank in zip(errors["error"], errors["rank"], strict=True)]
    write_errors(writer, errors["path"], errors["image_id"], reasons, errors["split"], summary)
    summary.extra.setdefault("qc_flags", Counter()).update(f for flags in ok["qc_flags"] for f in flags)


def _unmatched(writer: TableWriter, boxes: pd.DataFrame, known: set[str], summary: StageSummary) -> pd.DataFrame:
    """Writes an error row for each box whose image has no heatmap/meta or no index row; returns the others."""
    lost = ~boxes["image_id"].isin(known)
    reasons = [
        f"no_heatmap: image {i} has boxes but no heatmaps/meta/index row (box rank {r})"
        for i, r in zip(boxes.loc[lost, "image_id"], boxes.loc[lost, "rank"], strict=True)
    ]
    write_errors(writer, [None] * len(reasons), boxes.loc[lost, "image_id"], reasons, boxes.loc[lost, "split"], summary)
    return boxes[~lost]


def run_masks(cfg: Config) -> StageSummary:
    """Segments every pseudo box of the run -> tables masks (one row per box) and errors; no model by default."""
    from engine.runtime.pipeline import init_ray, iter_results

    mcfg = cfg.masks
    for name in (mcfg.segmenter, *([mcfg.second] if mcfg.second else [])):
        check_segmenter(name, mcfg)  # fail fast: unknown name, missing package or checkpoint
    thr = selected_threshold(model_run_dir(cfg)) if mcfg.min_prob == "threshold" else float("-inf")
    boxes, frame, index = _inputs(cfg)
    with StageRun(cfg, "masks", ("masks", "errors"), replace=("masks", "errors")) as run:
        summary, writer = run.summary, run.writer
        summary.rows_in = len(boxes)
        boxes = _unmatched(writer, boxes, set(frame["image_id"]) & set(index["image_id"]), summary)
        lookup = build_lookup(boxes, frame)
        ids = sorted(lookup)
        rows = index[index["image_id"].isin(ids)].merge(boxes.groupby("image_id")["split"].first().reset_index())
        if len(rows):
            init_ray(cfg.ray)
        for start in range(0, len(rows), max(mcfg.chunk_images, 1)):
            chunk = rows.iloc[start : start + mcfg.chunk_images]
            part = {i: lookup[i] for i in chunk["image_id"]}
            for out in iter_results(_stream(cfg, chunk, part, thr)):
                _write(writer, out, summary)
        run.commit()
        summary.extra.update(
            {
                "segmenter": mcfg.segmenter,
                "images_with_boxes": len(lookup),
                "images_without_boxes": int((~frame["image_id"].isin(boxes["image_id"])).sum()),
                "qc_flags": dict(summary.extra.get("qc_flags", {})),
            }
        )
    return summary


STAGE = Stage(
    name="masks",
    run=run_masks,
    help="pseudo masks from the pseudo boxes (COCO RLE, original px) with QC reason codes -> masks, errors",
    sections=("ray", "masks"),
    needs=(HEATMAPS, BOXES),
    writes=("masks", "errors"),
)
