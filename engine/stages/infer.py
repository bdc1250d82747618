"""`make infer`: probabilities of `infer.split` through the model actor pool -> `preds`, `metrics`."""

from __future__ import annotations

import pandas as pd

from engine.config import Config
from engine.contract import trained_views
from engine.io.summary import StageSummary
from engine.io.tables import read_table, write_part
from engine.stages._rows import (
    UNSPLIT,
    flag_images,
    flags_by_image,
    off_view_ids,
    select_rows,
    trained_view_only,
    unsplit,
)
from engine.stages._run import StageRun, add_skipped, run_id
from engine.stages._scoring import (
    PATIENT_VIEW,
    adopt_threshold,
    cam_settings,
    model_run_dir,
    patient_point_of,
    scoring_config,
    scoring_extras,
    scoring_feed,
    selected_threshold,
    split_metrics,
    write_patient_preds,
)
from engine.stages._stage import INDEX, MODEL, SPLITS, THRESHOLD, Stage


def run_infer(cfg: Config) -> StageSummary:
    """Predicts `infer.split` (a run without splits scored with `model.from_run`: its whole index) through the model
    actor pool; writes preds, errors and, where the rows have labels, metrics.

    As `make cam`: the model's contract sets the config's defaults, other views are skipped `view_mismatch` (or
    scored and flagged with `model.other_views=score`), and the run's threshold becomes the scoring model's.
    """
    from engine.runtime.cam_stream import RowContext, stream_to_tables
    from engine.runtime.pipeline import init_ray, use_gpu

    cfg, contract = scoring_config(cfg)
    whole = unsplit(cfg)
    rows = trained_view_only(cfg, select_rows(cfg, None if whole else (cfg.infer.split,), not whole, qc_exclude=False))
    off_view = off_view_ids(cfg, rows)  # none unless model.other_views=score
    threshold = adopt_threshold(cfg)
    thr = selected_threshold(model_run_dir(cfg))
    ctx = RowContext(run_id(cfg), cfg.model.name, flag_images(flags_by_image(rows), off_view))
    split = UNSPLIT if whole else cfg.infer.split
    owned = None if whole else split  # the split partition this run replaces (None: all of them)
    with StageRun(cfg, "infer", ("preds", "errors"), overwrite=cfg.run.overwrite, split=owned) as run:
        init_ray(cfg.ray)
        gpu = use_gpu(cfg.train.use_gpu)
        stream_to_tables(run.writer, run.summary, rows, cam_settings(cfg, False, gpu), scoring_feed(cfg, gpu), ctx)
        run.summary.rows_in += add_skipped(run.summary, rows)  # view_mismatch: selected, not scored
        run.commit()
        run.summary.extra.update(_split_metrics(cfg, split, thr))
        run.summary.extra.update(scoring_extras(contract, threshold, off_view))
    return run.summary


def _split_metrics(cfg: Config, split: str, thr: float) -> dict:
    """Writes the `metrics` row of the split's labeled preds of the model's view at `thr`; returns its headline
    figures (or why none)."""
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[(preds["stage"] == "infer") & (preds["split"] == split) & preds["view"].isin(trained_views(cfg))]
    labeled = preds[preds["y_true"].notna() & (preds["y_true"] >= 0)]
    if labeled.empty:
        return {"metrics": f"skipped: none of the {len(preds)} scored images has a label"}
    metrics = split_metrics(cfg, labeled, split, thr)
    rows = [metrics]  # first: every image of the model's views; then each view alone when it has two; then patients
    views = trained_views(cfg)
    if len(views) > 1:
        for view in views:
            alone = labeled[labeled["view"] == view]
            if len(alone):
                rows.append(split_metrics(cfg, alone, split, thr) | {"view": view})
    point = patient_point_of(cfg)
    patients = write_patient_preds(cfg, preds, point, "infer", split)
    patients = patients[patients["y_true"] >= 0]
    if len(patients):
        rows.append(split_metrics(cfg, patients, split, float(point["thr"])) | {"view": PATIENT_VIEW})
    write_part(cfg.run.dir, "metrics", pd.DataFrame(rows), split)
    out = {k: metrics[k] for k in ("split", "thr", "auc", "sensitivity", "specificity", "f1", "n")}
    for row in rows[1:]:
        out[f"auc_{row['view']}"] = row["auc"]
    if len(patients):
        out["patients"] = f"{len(patients)} ({point['fusion']} of their views, thr {float(point['thr']):.4g})"
    return out


STAGE = Stage(
    name="infer",
    run=run_infer,
    help="predict infer.split with the model actor pool -> preds, metrics",
    sections=("ray", "canvas", "model", "infer", "train"),
    needs=(INDEX, SPLITS, MODEL, THRESHOLD),
    writes=("preds", "metrics", "errors"),
)
