"""`make segment`: the trained segmentation network over a split (or the whole index) -> table `seg_masks`.

A Ray Data actor-pool stream like `make cam`: ``engine.runtime.pipeline.image_stream`` decodes and letterboxes, the
`SegmentStage` actors (engine/runtime/udfs/segment.py; one network each, loaded once, weights_only=True) turn each
canvas into a probability map, its components into COCO RLE rows in original px, and the map itself, pooled to uint8,
into one `seg_probs` row per image (the network's continuous map: `make evaluate` scores its PxAP on it). Every image
of the trained view is scored (no QC exclusion, as `make cam`); an undecodable image becomes an `errors` row.
Rows in = images segmented (with or without a component) + errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from engine.config import Config
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import TableWriter
from engine.stages._rows import select_rows
from engine.stages._run import StageRun
from engine.stages._stage import INDEX, SPLITS, Need, Stage

if TYPE_CHECKING:
    from engine.runtime.udfs.segment import SegmentSettings


def _stream(cfg: Config, rows: Any, settings: SegmentSettings) -> Any:
    from engine.runtime.decode import DecodeSettings
    from engine.runtime.pipeline import PoolSpec, StreamSettings, actor_stream, image_stream
    from engine.runtime.udfs.segment import SegmentStage

    seg = cfg.segtrain
    gpus = seg.num_gpus if settings.use_gpu else 0
    pool = PoolSpec(actors=seg.actors, rows_per_call=seg.batch_size, num_cpus=cfg.infer.num_cpus, num_gpus=gpus)
    images = image_stream(rows, DecodeSettings.of(cfg.data, cfg.canvas), StreamSettings.of(cfg.ray))
    return actor_stream(images, SegmentStage, (settings,), pool)


def prob_rows(out: dict[str, np.ndarray], written: set[str]) -> dict[str, Any]:
    """Returns the `seg_probs` columns of a stream batch: one row per ok image not in `written` (then added to it)."""
    keep = []
    for i, (image_id, error) in enumerate(zip(out["image_id"], out["error"], strict=True)):
        if error == "" and str(image_id) not in written:
            written.add(str(image_id))
            keep.append(i)
    prob = out["prob"][keep] if len(keep) else np.zeros((0, 1, 1), dtype=np.uint8)
    h, w = prob.shape[1:]
    return {
        "image_id": [str(out["image_id"][i]) for i in keep],
        "prob": pa.FixedSizeListArray.from_arrays(pa.array(prob.reshape(-1), pa.uint8()), h * w),
        "prob_h": np.full(len(keep), h, dtype=np.int16),
        "prob_w": np.full(len(keep), w, dtype=np.int16),
        "canvas_h": np.asarray([out["canvas_h"][i] for i in keep], dtype=np.int16),
        "canvas_w": np.asarray([out["canvas_w"][i] for i in keep], dtype=np.int16),
        "split": [str(out["split"][i]) for i in keep],
        "folder": [str(out["folder"][i]) for i in keep],
    }


def _write(writer: TableWriter, out: dict[str, np.ndarray], summary: StageSummary, seen: dict[str, set]) -> None:
    """Writes one stream batch: component rows to seg_masks, each image's map to seg_probs (once), error rows to
    errors; counts images once."""
    bad = out["error"] != ""
    masks = {k: v[~bad & (out["rank"] >= 0)] for k, v in out.items() if k != "prob"}
    masks["qc_flags"] = [[] for _ in masks["image_id"]]
    writer.write("seg_masks", masks)
    writer.write("seg_probs", prob_rows(out, seen["probs"]))
    seen["ok"].update(str(i) for i in out["image_id"][~bad])
    seen["with_masks"].update(str(i) for i in masks["image_id"])
    summary.rows_ok = len(seen["ok"])
    errors = {k: v[bad] for k, v in out.items()}
    write_errors(writer, errors["path"], errors["image_id"], list(errors["error"]), errors["split"], summary)


def run_segment(cfg: Config) -> StageSummary:
    """Segments `segtrain.split` (or every split: `all`) of the trained view with the run's segnet -> seg_masks."""
    from engine.io.checkpoints import load_segnet
    from engine.runtime.pipeline import init_ray, iter_results, use_gpu
    from engine.runtime.udfs.segment import SegmentSettings

    load_segnet(cfg.run.dir)  # fail fast: no network, or one that does not load
    split = None if cfg.segtrain.split == "all" else cfg.segtrain.split
    rows = select_rows(cfg, None if split is None else (split,), qc_exclude=False)
    tables = ("seg_masks", "seg_probs", "errors")
    with StageRun(cfg, "segment", tables, replace=tables, split=split) as run:
        summary = run.summary
        summary.rows_in = len(rows)
        init_ray(cfg.ray)
        gpu = use_gpu(cfg.train.use_gpu)
        settings = SegmentSettings(cfg.run.dir, cfg.segtrain, gpu, cfg.train.amp, max(1, int(cfg.infer.num_cpus)))
        seen: dict[str, set] = {"ok": set(), "with_masks": set(), "probs": set()}
        if len(rows):
            for out in iter_results(_stream(cfg, rows, settings)):
                _write(run.writer, out, summary, seen)
        run.commit()
        summary.extra.update(
            split=cfg.segtrain.split, images_with_masks=len(seen["with_masks"]), threshold=cfg.segtrain.threshold
        )
    return summary


STAGE = Stage(
    name="segment",
    run=run_segment,
    help="the segmentation network's masks and probability maps of segtrain.split (all: whole index), actor pool "
    "-> seg_masks, seg_probs",
    sections=("ray", "canvas", "model", "segtrain"),
    needs=(INDEX, SPLITS, Need("segnet/best.pt", "make segtrain")),
    writes=("seg_masks", "seg_probs", "errors"),
)
