"""`make infer`: probabilities of `infer.split` through the model actor pool -> `preds`, `metrics`."""

from __future__ import annotations

import pandas as pd

from engine.config import Config
from engine.io.summary import StageSummary
from engine.io.tables import read_table, write_part
from engine.runtime.cam_stream import stream_to_tables
from engine.stages.common import (
    UNSPLIT,
    StageRun,
    adopt_threshold,
    cam_settings,
    flags_by_image,
    model_run_dir,
    run_id,
    select_rows,
    selected_threshold,
    split_metrics,
    unsplit,
)


def run_infer(cfg: Config) -> StageSummary:
    """Predicts `infer.split` (a run without splits scored with `model.from_run`: its whole index) through the model
    actor pool; writes preds, errors and, where the rows have labels, metrics."""
    whole = unsplit(cfg)
    rows = select_rows(cfg, None if whole else (cfg.infer.split,), not whole, qc_exclude=False)
    adopt_threshold(cfg)
    thr = selected_threshold(model_run_dir(cfg))
    ctx = {"run_id": run_id(cfg), "model": cfg.model.name, "qc_flags": flags_by_image(rows)}
    split = UNSPLIT if whole else cfg.infer.split
    owned = None if whole else split  # the split partition this run replaces (None: all of them)
    with StageRun(cfg, "infer", ("preds", "errors"), overwrite=cfg.run.overwrite, split=owned) as run:
        stream_to_tables(cfg, run.writer, run.summary, rows, cam_settings(cfg, with_cam=False), ctx)
        run.commit()
        run.summary.extra.update(_split_metrics(cfg, split, thr))
    return run.summary


def _split_metrics(cfg: Config, split: str, thr: float) -> dict:
    """Writes the `metrics` row of the split's labeled preds at `thr`; returns its headline figures (or why none)."""
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[(preds["stage"] == "infer") & (preds["split"] == split)]
    labeled = preds[preds["y_true"].notna() & (preds["y_true"] >= 0)]
    if labeled.empty:
        return {"metrics": f"skipped: none of the {len(preds)} scored images has a label"}
    metrics = split_metrics(cfg, labeled, split, thr)
    write_part(cfg.run.dir, "metrics", pd.DataFrame([metrics]), split)
    return {k: metrics[k] for k in ("split", "thr", "auc", "sensitivity", "specificity", "f1", "n")}
