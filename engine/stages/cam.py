"""`make cam`: probabilities + CAM + pseudo boxes in one pass of the model actor pool (cam.scope=all: whole index)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from engine.config import Config
from engine.core.qc import SHIFT_STATS, domain_shift
from engine.io.overlays import OverlayCollector
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.runtime.cam_stream import CAM_TABLES, stream_to_tables
from engine.stages.common import (
    StageRun,
    adopt_threshold,
    box_params,
    cam_settings,
    flags_by_image,
    min_prob,
    run_id,
    select_rows,
    unsplit,
    view_folders,
)

log = logging.getLogger(__name__)


def training_range_check(cfg: Config, flags: dict[str, list[str] | None]) -> dict[str, str]:
    """With `model.from_run`: adds `domain_shift` to the QC flags of images whose statistics (core.qc.SHIFT_STATS)
    lie outside the range of the model's training images; returns the summary lines (the count, both medians)."""
    reference, here = read_table(cfg.model.from_run, "qc"), read_table(cfg.run.dir, "qc")
    splits = read_table(cfg.model.from_run, "splits")
    if reference.empty or here.empty or splits.empty:
        return {"domain_shift": "not checked: a qc table is missing here or in model.from_run"}
    trained = reference.drop(columns=["split"], errors="ignore").merge(splits[["image_id", "split"]], on="image_id")
    trained = trained[(trained["split"] == "train") & trained["folder"].isin(view_folders(cfg.data.view))]
    here = here[here["image_id"].isin(list(flags))]
    shifted = domain_shift(
        {k: here[k].to_numpy() for k in SHIFT_STATS}, {k: trained[k].to_numpy() for k in SHIFT_STATS}
    )
    for image_id in here.loc[shifted, "image_id"]:
        flags[image_id] = [*(flags.get(image_id) or []), "domain_shift"]
    medians = ", ".join(f"{k} {here[k].median():.3g} / {trained[k].median():.3g}" for k in SHIFT_STATS)
    return {"domain_shift": f"{int(shifted.sum())} of {len(here)} images outside the training images' range",
            "median here / training": medians}  # fmt: skip


def cam_rows(cfg: Config, whole: bool | None = None) -> pd.DataFrame:
    """Returns the rows `make cam` scores: the trained view's `cam.split`, or the whole index.

    A run without splits scored with `model.from_run` scores its whole index (cam.scope=all implied).
    """
    if cfg.cam.scope not in ("split", "all"):
        raise ValueError(f"cam.scope={cfg.cam.scope!r}: expected 'split' or 'all'")
    if cfg.cam.scope == "all" or (unsplit(cfg) if whole is None else whole):
        rows = select_rows(cfg, None, False, qc_exclude=False)
    else:
        rows = select_rows(cfg, (cfg.cam.split,), qc_exclude=False)
    return rows.head(cfg.cam.limit) if cfg.cam.limit else rows


def run_cam(cfg: Config) -> StageSummary:
    """One streaming pass: probability, CAM and pseudo boxes per image -> preds/heatmaps/boxes/meta/errors."""
    whole = unsplit(cfg)
    rows = cam_rows(cfg, whole)
    adopt_threshold(cfg)
    overlays = OverlayCollector(cfg, rows["image_id"].tolist())
    ctx: dict[str, Any] = {
        "run_id": run_id(cfg), "model": cfg.model.name, "params": box_params(cfg), "min_prob": min_prob(cfg),
        "overlays": overlays, "qc_flags": flags_by_image(rows),
    }  # fmt: skip
    checks = training_range_check(cfg, ctx["qc_flags"]) if cfg.model.from_run else {}
    scope = "all" if whole else cfg.cam.scope
    split = cfg.cam.split if scope == "split" else None  # scope=all owns every split's partition
    with StageRun(cfg, "cam", CAM_TABLES, overwrite=cfg.run.overwrite, split=split) as run:
        stream_to_tables(cfg, run.writer, run.summary, rows, cam_settings(cfg, with_cam=True), ctx)
        run.commit()
        run.summary.extra["scope"] = scope
        run.summary.extra.update(checks)
        if cfg.model.from_run:
            run.summary.extra["model_from_run"] = cfg.model.from_run
    return run.summary


