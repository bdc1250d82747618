"""`make segment`: the trained segmentation network over a split (or the whole index) -> table `seg_masks`.

A Ray Data actor-pool stream like `make cam`: ``engine.runtime.pipeline.image_stream`` decodes and letterboxes, the
`SegmentStage` actors (engine/runtime/udfs/segment.py; one network each, loaded once, weights_only=True) turn each
canvas into a probability map, its components into COCO RLE rows in original px. Every image of the trained view is
scored (no QC exclusion, as `make cam`); an undecodable image becomes an `errors` row.
Rows in = images segmented (with or without a component) + errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

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


def _write(writer: TableWriter, out: dict[str, np.ndarray], summary: StageSummary, seen: dict[str, set]) -> None:
    """Writes one stream batch: component rows to seg_masks, error rows to errors; counts images once."""
    bad = out["error"] != ""
    masks = {k: v[~bad & (out["rank"] >= 0)] for k, v in out.items()}
    masks["qc_flags"] = [[] for _ in masks["image_id"]]
    writer.write("seg_masks", masks)
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
    with StageRun(cfg, "segment", ("seg_masks", "errors"), replace=("seg_masks", "errors"), split=split) as run:
        summary = run.summary
        summary.rows_in = len(rows)
        init_ray(cfg.ray)
        gpu = use_gpu(cfg.train.use_gpu)
        settings = SegmentSettings(cfg.run.dir, cfg.segtrain, gpu, cfg.train.amp, max(1, int(cfg.infer.num_cpus)))
        seen: dict[str, set] = {"ok": set(), "with_masks": set()}
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
    help="the segmentation network's masks of segtrain.split (all: whole index), actor pool -> seg_masks",
    sections=("ray", "canvas", "model", "segtrain"),
    needs=(INDEX, SPLITS, Need("segnet/best.pt", "make segtrain")),
    writes=("seg_masks", "errors"),
)
