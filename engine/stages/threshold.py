"""`make threshold`: the operating threshold chosen on the best epoch's val predictions."""

from __future__ import annotations

import json

import pandas as pd

from engine.config import Config
from engine.core.metrics.classification import MetricsError, ThresholdError, select_threshold
from engine.core.metrics.patients import choose_fusion, fuse_patients
from engine.io.fs import read_run_json, resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._rows import attach_qc, exclude_flagged
from engine.stages._run import StageRun
from engine.stages._scoring import write_patient_preds
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
    record["patient"] = patient_point(cfg, val, record)
    with StageRun(cfg, "threshold", ("thresholds",), overwrite=True, replace=("thresholds",)) as run:
        for reason, count in skipped.items():
            run.summary.add_skipped(reason, count)
        run.writer.write("thresholds", pd.DataFrame([{k: v for k, v in record.items() if k != "patient"}]))
        run.summary.rows_in = n_val  # the val images of the best epoch, each once
        run.summary.rows_ok = int(chosen.n)  # the predictions the threshold was chosen on (a repeated one counts twice)
        run.commit()
        fs, root = resolve_fs(cfg.run.dir)
        with fs.open_output_stream(f"{root}/threshold.json") as out:
            out.write(json.dumps(record, indent=2).encode())
        run.summary.extra.update({k: record[k] for k in ("mode", "epoch", "thr", "sens", "spec", "f1", "youden_j")})
        write_patient_preds(cfg, val, record["patient"], "threshold", "val")
        run.summary.extra["patients"] = patient_line(record["patient"])
    return run.summary


def patient_point(cfg: Config, val: pd.DataFrame, image_point: dict) -> dict:
    """Returns the patient operating point chosen on val's image predictions: the fusion rule of the higher patient
    AUC and the threshold of `threshold.mode` on the fused probabilities (the image threshold when that mode cannot
    be met on patients, with the reason)."""
    choice = choose_fusion(val)
    fused = fuse_patients(val, choice.rule)
    labelled = fused[fused["y_true"] >= 0]
    point = {"fusion": choice.rule, "auc_by_rule": choice.auc_by_rule, "patients": len(fused)}
    point["views"] = {str(k): int(v) for k, v in fused["views"].value_counts().items()}
    try:
        chosen = select_threshold(
            labelled["y_true"].to_numpy(), labelled["y_prob"].to_numpy(), cfg.threshold.mode, cfg.threshold.sens_min
        )
    except (ThresholdError, MetricsError) as exc:
        return point | {"thr": image_point["thr"], "auc": None, "note": f"image threshold kept: {exc}"}
    return point | {
        "thr": chosen.thr,
        "auc": chosen.auc,
        "sens": chosen.sensitivity,
        "spec": chosen.specificity,
        "f1": chosen.f1,
        "n": chosen.n,
    }


def patient_line(point: dict) -> str:
    """Returns the summary line of a patient operating point."""
    auc = point.get("auc")
    views = ", ".join(f"{v} {n}" for v, n in point.get("views", {}).items())
    return (
        f"fusion {point['fusion']} (val patient AUC {'-' if auc is None else f'{auc:.3f}'}), thr {point['thr']:.4g}; "
        f"{point['patients']} patients ({views})"
    )


STAGE = Stage(
    name="threshold",
    run=run_threshold,
    help="choose the threshold on val -> thresholds, threshold.json",
    sections=("threshold", "qc"),
    needs=(Need("model/best.json", "make train"),),
    writes=("thresholds",),
)
