"""`make infer`: probabilities of `infer.split` through the model actor pool -> `preds`, `metrics`."""

from __future__ import annotations

import pandas as pd

from engine.config import Config
from engine.io.summary import StageSummary
from engine.io.tables import read_table, write_part
from engine.runtime.cam_stream import stream_to_tables
from engine.stages.common import (
    UNSPLIT,
    adopt_threshold,
    cam_settings,
    flags_by_image,
    run_id,
    save_config,
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
    thr = selected_threshold(cfg)
    ctx = {"run_id": run_id(cfg), "model": cfg.model.name, "qc_flags": flags_by_image(rows)}
    split = UNSPLIT if whole else cfg.infer.split
    summary = stream_to_tables(cfg, "infer", rows, None if whole else split, cam_settings(cfg, with_cam=False), ctx)
    save_config(cfg, "infer")
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[(preds["stage"] == "infer") & (preds["split"] == split)]
    labeled = preds[preds["y_true"].notna() & (preds["y_true"] >= 0)]
    if labeled.empty:
        summary.extra["metrics"] = f"skipped: none of the {len(preds)} scored images has a label"
    else:
        metrics = split_metrics(cfg, labeled, split, thr)
        write_part(cfg.run.dir, "metrics", pd.DataFrame([metrics]), split)
        summary.extra.update({k: metrics[k] for k in ("split", "thr", "auc", "sensitivity", "specificity", "f1", "n")})
    summary.save(cfg.run.dir)
    return summary.finish()
