"""`make segtrain`: train the segmentation network on the kept pseudo masks with Ray Train (like `make train`).

Rows: the QC-passed train and val images of the trained view (``select_rows``, the run's `splits` table, so the
split is patient-level as everywhere). Targets: the union of an image's kept pseudo masks (`masks` rows with
kept = true, from `make masks` over train and val: `make cam cam.scope=all`); images of normal patients (label 0)
have empty targets; an abnormal image without a kept mask is left out (skipped `no_kept_pseudo_mask`), as is an
unlabeled one. Rows in = trained + val scored + errors + skipped.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd

from engine.config import Config
from engine.core.localization.columns import QC_BODY_COLUMNS
from engine.core.segnet.arrays import pack_rles, target_canvas
from engine.io.fs import delete_outputs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._rows import select_rows
from engine.stages._run import add_skipped, count_training_rows, run_id, save_config
from engine.stages._stage import INDEX, MODEL, SPLITS, Need, Stage

STREAM_COLUMNS = ("image_id", "patient_id", "view", "split", "folder", "label", "path", *QC_BODY_COLUMNS)


def decode_with_targets(
    batch: dict[str, np.ndarray], data_root: str, canvas_h: int, canvas_w: int, count_scale: str
) -> dict[str, np.ndarray]:
    """Returns ``decode_batch`` of the rows plus `target` (B, canvas_h, canvas_w) uint8 0/1 from `target_rles`.

    A pseudo mask that does not fit its image turns the row into an error (`bad_pseudo_mask: ...`).
    """
    from engine.runtime.decode import decode_batch

    batch = dict(batch)
    packed = batch.pop("target_rles")
    out = decode_batch(batch, data_root, canvas_h, canvas_w, count_scale)
    target = np.zeros(out["canvas"].shape, dtype=np.uint8)
    for i in np.flatnonzero(out["error"] == ""):
        try:
            target[i] = target_canvas(str(packed[i]), int(out["orig_h"][i]), int(out["orig_w"][i]), canvas_h, canvas_w)
        except ValueError as exc:
            out["error"][i] = f"bad_pseudo_mask: {exc}"
    out["target"] = target
    return out


def training_rows(cfg: Config, summary: StageSummary) -> tuple[pd.DataFrame, int]:
    """Returns (train + val rows with `target_rles`, rows left out) and counts the left-out reasons."""
    rows = select_rows(cfg, ("train", "val"))
    left_out = add_skipped(summary, rows)
    masks = read_table(cfg.run.dir, "masks")
    kept = masks[masks["kept"].fillna(False).astype(bool) & masks["image_id"].isin(rows["image_id"])]
    packed = (
        kept.sort_values(["image_id", "rank"])
        .groupby("image_id")
        .apply(lambda g: pack_rles(zip(g["rle_counts"], g["rle_h"], g["rle_w"], strict=True)), include_groups=False)
    )
    label = rows["label"].astype("Float64")
    normal = (label == 0).fillna(False).to_numpy(bool)  # a normal patient's scan: empty target, whatever its masks
    rows = rows.assign(target_rles=np.where(normal, "", rows["image_id"].map(packed).fillna("").to_numpy(object)))
    no_mask = (label == 1).fillna(False) & (rows["target_rles"] == "")
    reasons = {"unlabeled": label.isna(), "no_kept_pseudo_mask": no_mask}
    for reason, mask in reasons.items():
        summary.add_skipped(reason, int(mask.sum()))
        left_out += int(mask.sum())
    usable = ~(reasons["unlabeled"] | reasons["no_kept_pseudo_mask"]).to_numpy(bool)
    rows = rows[usable].reset_index(drop=True)
    if not (rows["target_rles"] != "").any():
        raise ValueError(
            f"{cfg.run.dir}: no kept pseudo mask on a train/val image; run `make cam cam.scope=all`, "
            "`make boxes` and `make masks` first"
        )
    return rows, left_out


def target_stream(rows: pd.DataFrame, cfg: Config) -> object:
    """Returns the Ray Dataset of canvases + targets of `rows` (the decode tasks of ``runtime.pipeline.row_stream``)."""
    from engine.runtime.pipeline import StreamSettings, row_stream

    frame = rows.loc[:, [c for c in (*STREAM_COLUMNS, "target_rles") if c in rows]].reset_index(drop=True)
    frame["label"] = frame["label"].astype(np.int64)
    udf = partial(
        decode_with_targets,
        data_root=cfg.data.root,
        canvas_h=cfg.canvas.height,
        canvas_w=cfg.canvas.width,
        count_scale=cfg.data.count_scale,
    )
    return row_stream(frame, StreamSettings.of(cfg.ray), udf)


def run_segtrain(cfg: Config) -> StageSummary:
    """Trains the segmentation network with Ray Train on the train split; re-running resumes the same run."""
    from engine.core.segnet.network import SEGNET_DIR, segnet_arch
    from engine.runtime.fit import FitSpec, check_train_fits, fit
    from engine.runtime.pipeline import init_ray, use_gpu
    from engine.runtime.segtrain_loop import SegTrainSettings, segtrain_loop_per_worker

    summary = StageSummary("segtrain")
    if cfg.run.overwrite:  # what segtrain leaves in its run dir goes; otherwise a re-run resumes from it
        delete_outputs(cfg.run.dir, ("segtrain_state", SEGNET_DIR, "tables/seg_epochs", "tables/errors/stage=segtrain"))
    init_ray(cfg.ray)
    gpu = use_gpu(cfg.train.use_gpu)
    check_train_fits(cfg.ray, cfg.train.num_workers, cfg.train.cpus_per_worker, gpu)
    rows, left_out = training_rows(cfg, summary)
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    steps = math.ceil(len(train_rows) / (cfg.segtrain.batch_size * cfg.train.num_workers))
    settings = SegTrainSettings(
        run_dir=cfg.run.dir,
        run_id=run_id(cfg),
        seed=cfg.seed,
        segtrain=cfg.segtrain,
        train=cfg.train,
        arch=segnet_arch(cfg.segtrain, cfg.model.name),
        steps_per_epoch=steps,
        canvas_h=cfg.canvas.height,
        canvas_w=cfg.canvas.width,
        view=cfg.data.view,
    )
    spec = FitSpec.of(cfg.train, gpu, cfg.run.dir, "segtrain_state", cfg.segtrain.epochs, steps)
    fit(segtrain_loop_per_worker, settings, spec, target_stream(train_rows, cfg), target_stream(val_rows, cfg))
    save_config(cfg, "segtrain")
    _count_rows(cfg, summary, len(train_rows), len(val_rows))
    summary.rows_in += left_out
    summary.save(cfg.run.dir)
    summary.require_balanced()
    return summary.finish()


def _count_rows(cfg: Config, summary: StageSummary, n_train: int, n_val: int) -> None:
    """Fills the summary: rows in = train + val rows; ok = rows the last epoch trained on or scored."""
    epochs = read_table(cfg.run.dir, "seg_epochs").sort_values("epoch")
    val_scored = int(epochs["val_images"].iloc[-1]) if len(epochs) else 0
    count_training_rows(cfg, summary, epochs, n_train, n_val, val_scored)
    summary.tables = {"seg_epochs": len(epochs)}
    best = epochs.loc[epochs["val_dice"].idxmax()] if epochs["val_dice"].notna().any() else None
    summary.extra.update(
        epochs=len(epochs),
        best_epoch=None if best is None else int(best["epoch"]),
        best_val_dice=None if best is None else round(float(best["val_dice"]), 4),
        best_val_dice_lesion=None if best is None else round(float(best["val_dice_lesion"]), 4),
        best_val_fp_normal=None if best is None else round(float(best["val_fp_normal"]), 4),
        seconds_per_epoch=round(float(epochs["seconds"].mean()), 2) if len(epochs) else None,
    )


def _more_needs(cfg: Config) -> tuple[Need, ...]:
    """Returns MODEL when `segtrain.init_from_classifier` starts the encoder from the classifier's weights."""
    return (MODEL,) if cfg.segtrain.init_from_classifier else ()


STAGE = Stage(
    name="segtrain",
    run=run_segtrain,
    help="train a segmentation network on the kept pseudo masks (Ray Train, re-run to resume) -> seg_epochs, "
    "segnet/best.pt",
    sections=("ray", "canvas", "model", "train", "segtrain"),
    needs=(INDEX, SPLITS, Need("tables/masks", "make masks")),
    writes=("seg_epochs", "errors"),
    more_needs=_more_needs,
)
