"""`make cam`: probabilities + CAM + pseudo boxes in one pass of the model actor pool (cam.scope=all: whole index)."""

from __future__ import annotations

import logging

import pandas as pd

from engine.config import Config
from engine.core.scans.qc import ShiftReference, domain_shift
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._rows import (
    flag_images,
    flags_by_image,
    model_qc_reference,
    off_view_ids,
    select_rows,
    trained_view_only,
    unsplit,
    write_qc_reference,
)
from engine.stages._run import StageRun, add_skipped, run_id
from engine.stages._scoring import (
    adopt_threshold,
    box_params,
    cam_settings,
    min_prob,
    model_run_dir,
    scored_patients,
    scoring_config,
    scoring_extras,
    scoring_feed,
    spot_ranker,
)
from engine.stages._stage import INDEX, MODEL, SPLITS, THRESHOLD, Need, Stage

log = logging.getLogger(__name__)

CAM_TABLES = ("preds", "heatmaps", "boxes", "meta", "errors")


def training_range_check(cfg: Config, flags: dict[str, list[str] | None]) -> dict[str, str]:
    """With `model.from_run`: adds `domain_shift` to the QC flags of the images unlike the model's training images
    (engine.core.scans.qc.domain_shift against `model_qc_reference`: the images that model was trained on, after its
    qc.exclude), writes that reference to `<run.dir>/qc_reference.json`; returns the summary lines."""
    record, here = model_qc_reference(cfg), read_table(cfg.run.dir, "qc")
    if record is None or here.empty:
        return {
            "domain_shift": "not checked: a qc table is missing here, or model.from_run has no qc table, splits "
            "or trained images with QC statistics"
        }
    reference = ShiftReference.from_dict(record)
    here = here.drop_duplicates("image_id")
    here = here[here["image_id"].isin(list(flags))]
    stats = {k: here[k].to_numpy(dtype="float64") for k in reference.stats}
    shifted = domain_shift(stats, reference)
    for image_id in here.loc[shifted, "image_id"]:
        flags[image_id] = [*(flags.get(image_id) or []), "domain_shift"]
    where = write_qc_reference(cfg.run.dir, {**record, "model_run": model_run_dir(cfg)})
    medians = ", ".join(
        f"{k} {here[k].median():.3g} / {m:.3g}" for k, m in zip(reference.stats, reference.median, strict=True)
    )
    return {
        "domain_shift": f"{int(shifted.sum())} of {len(here)} images outside the training images' range",
        "domain_shift_reference": f"{reference.images} training images of {model_run_dir(cfg)} (split train, "
        f"after qc.exclude), {reference.train_flagged} of them above the threshold "
        f"{reference.threshold:.3g}: {where}",
        "median here / training": medians,
    }


def cam_rows(cfg: Config, whole: bool | None = None) -> pd.DataFrame:
    """Returns the rows `make cam` scores: the trained view's `cam.split`, or the whole index.

    A run without splits scored with `model.from_run` scores its whole index (cam.scope=all implied). Rows of another
    or unknown view are left out (counted in `rows.attrs["skipped"]`) unless `model.other_views=score`; `cam.limit`
    keeps the first that many rows scored (common.trained_view_only).
    """
    if cfg.cam.scope not in ("split", "all"):
        raise ValueError(f"cam.scope={cfg.cam.scope!r}: expected 'split' or 'all'")
    if cfg.cam.scope == "all" or (unsplit(cfg) if whole is None else whole):
        rows = select_rows(cfg, None, False, qc_exclude=False)
    else:
        rows = select_rows(cfg, (cfg.cam.split,), qc_exclude=False)
    return trained_view_only(cfg, rows, cfg.cam.limit)


def run_cam(cfg: Config) -> StageSummary:
    """One streaming pass: probability, CAM and pseudo boxes per image -> preds/heatmaps/boxes/meta/errors.

    The model's contract (model/best.json) sets the canvas, view and count rule where the config leaves them at their
    defaults (common.scoring_config); rows of another or unknown view are skipped `view_mismatch` (or, with
    `model.other_views=score`, scored and flagged); the run's threshold becomes the scoring model's.
    """
    from engine.io.overlays import OverlayCollector, OverlaySettings
    from engine.runtime.cam_stream import RowContext, stream_to_tables
    from engine.runtime.pipeline import init_ray, use_gpu

    cfg, contract = scoring_config(cfg)
    whole = unsplit(cfg)
    rows = cam_rows(cfg, whole)
    off_view = off_view_ids(cfg, rows)  # none unless model.other_views=score
    threshold = adopt_threshold(cfg)
    sample = OverlaySettings(cfg.cam.overlays, cfg.seed, cfg.data.root, cfg.run.dir, cfg.data.count_scale)
    overlays = OverlayCollector(sample, rows["image_id"].tolist())
    ctx = RowContext(
        run_id=run_id(cfg),
        model=cfg.model.name,
        qc_flags=flag_images(flags_by_image(rows), off_view),
        boxes=box_params(cfg),
        min_prob=min_prob(cfg),
        overlays=overlays,
        ranker=spot_ranker(cfg),
    )
    checks = training_range_check(cfg, ctx.qc_flags) if cfg.model.from_run else {}
    scope = "all" if whole else cfg.cam.scope
    split = cfg.cam.split if scope == "split" else None  # scope=all owns every split's partition
    with StageRun(cfg, "cam", CAM_TABLES, overwrite=cfg.run.overwrite, split=split) as run:
        init_ray(cfg.ray)
        gpu = use_gpu(cfg.train.use_gpu)
        stream_to_tables(run.writer, run.summary, rows, cam_settings(cfg, True, gpu), scoring_feed(cfg, gpu), ctx)
        run.summary.rows_in += add_skipped(run.summary, rows)  # view_mismatch: selected, not scored
        run.commit()
        run.summary.extra["scope"] = scope
        run.summary.extra["patients"] = scored_patients(cfg, "cam", split)
        run.summary.extra.update(checks)
        if cfg.model.from_run:
            run.summary.extra["model_from_run"] = cfg.model.from_run
        run.summary.extra.update(scoring_extras(contract, threshold, off_view))
    return run.summary


def _more_needs(cfg: Config) -> tuple[Need, ...]:
    """`cam.min_prob=threshold` reads the selected threshold (box rows only at or above it)."""
    return (THRESHOLD,) if cfg.cam.min_prob == "threshold" else ()


STAGE = Stage(
    name="cam",
    run=run_cam,
    help="probabilities + CAM + pseudo boxes in one pass (cam.scope=all: whole index) -> preds, heatmaps, boxes, meta",
    sections=("ray", "canvas", "model", "infer", "cam", "boxes", "train"),
    needs=(INDEX, SPLITS, MODEL),
    writes=CAM_TABLES,
    more_needs=_more_needs,
)
