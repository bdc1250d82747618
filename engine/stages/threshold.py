"""`make threshold`: the operating threshold chosen on the best epoch's val predictions."""

from __future__ import annotations

import json

import pandas as pd

from engine.config import Config
from engine.core.metrics.classification import select_threshold
from engine.io.fs import read_run_json, resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._rows import attach_qc, exclude_flagged
from engine.stages._run import StageRun
from engine.stages._stage import Need, Stage


def _best_info(cfg: Config) -> dict:
    info = read_run_json(cfg.run.dir, "model/best.json")
    if info is None:
        raise ValueError(f"{cfg.run.dir.rstrip('/')}/model/best.json missing: run `make train` first")
    return info


def run_threshold(cfg: Config) -> StageSummary:
    """Chooses the operating threshold on the best epoch's val predictions.

    Raises:
        ThresholdError: `sens_atleast` cannot reach `threshold.sens_min` (no silent fallback).
    """
    best = _best_info(cfg)
    preds = read_table(cfg.run.dir, "preds")
    val = preds[(preds["stage"] == "train") & (preds["split"] == "val") & (preds["epoch"] == best["epoch"])]
    n_val = int(val["image_id"].nunique())
    val, skipped = exclude_flagged(attach_qc(cfg, val), cfg.qc.exclude)  # as select_rows: QC flags chosen out
    chosen = select_threshold(
        val["y_true"].to_numpy(), val["y_prob"].to_numpy(), cfg.threshold.mode, cfg.threshold.sens_min
    )
    record = {
        "mode": cfg.threshold.mode,
        "sens_min": cfg.threshold.sens_min,
        "epoch": best["epoch"],
        "thr": chosen.thr,
        "sens": chosen.sensitivity,
        "spec": chosen.specificity,
        "precision": chosen.precision,
        "f1": chosen.f1,
        "youden_j": chosen.youden_j,
        "auc": chosen.auc,
        "tp": chosen.tp,
        "tn": chosen.tn,
        "fp": chosen.fp,
        "fn": chosen.fn,
        "n": chosen.n,
    }
    with StageRun(cfg, "threshold", ("thresholds",), overwrite=True, replace=("thresholds",)) as run:
        for reason, count in skipped.items():
            run.summary.add_skipped(reason, count)
        run.writer.write("thresholds", pd.DataFrame([record]))
        run.summary.rows_in = n_val  # the val images of the best epoch, each once
        run.summary.rows_ok = int(chosen.n)  # the predictions the threshold was chosen on (a repeated one counts twice)
        run.commit()
        fs, root = resolve_fs(cfg.run.dir)
        with fs.open_output_stream(f"{root}/threshold.json") as out:
            out.write(json.dumps(record, indent=2).encode())
        run.summary.extra.update({k: record[k] for k in ("mode", "epoch", "thr", "sens", "spec", "f1", "youden_j")})
    return run.summary


STAGE = Stage(
    name="threshold",
    run=run_threshold,
    help="choose the threshold on val -> thresholds, threshold.json",
    sections=("threshold", "qc"),
    needs=(Need("model/best.json", "make train"),),
    writes=("thresholds",),
)
