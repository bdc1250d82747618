"""`make train`: the classifier trained with Ray Train on the train split (re-run to resume) -> epochs, preds, model."""

from __future__ import annotations

import math

from engine.config import Config
from engine.contract import contract_info
from engine.io.fs import delete_outputs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._rows import select_rows, training_qc_reference, write_qc_reference
from engine.stages._run import add_skipped, count_training_rows, run_id, save_config
from engine.stages._stage import INDEX, SPLITS, Stage

# What a training run leaves in its run dir: deleted with run.overwrite=true (else a re-run resumes from it).
TRAINING_OUTPUTS = ("train_state", "model", "tables/epochs", "tables/preds/stage=train", "tables/errors/stage=train")


def run_train(cfg: Config) -> StageSummary:
    """Trains the classifier with Ray Train on the train split; re-running resumes the same run.

    Only `train` is split among the workers (Ray's `streaming_split(equal=True)` drops up to
    num_workers - 1 rows per epoch to equalise the shards); rank 0 scores the whole val set.
    """
    from engine.runtime.decode import DecodeSettings
    from engine.runtime.fit import FitSpec, check_train_fits, fit
    from engine.runtime.pipeline import StreamSettings, image_stream, init_ray, use_gpu
    from engine.runtime.training import TrainSettings, train_loop_per_worker

    summary = StageSummary("train")
    if cfg.run.overwrite:
        delete_outputs(cfg.run.dir, TRAINING_OUTPUTS)  # otherwise a re-run resumes
    init_ray(cfg.ray)
    gpu = use_gpu(cfg.train.use_gpu)
    check_train_fits(cfg.ray, cfg.train.num_workers, cfg.train.cpus_per_worker, gpu)
    rows = select_rows(cfg, ("train", "val"))
    excluded = add_skipped(summary, rows)
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    n_pos = int(train_rows["label"].sum())
    pos_weight = (len(train_rows) - n_pos) / max(1, n_pos)  # BCE pos_weight = N_neg / N_pos, the seed's weighting
    steps = math.ceil(len(train_rows) / (cfg.train.batch_size * cfg.train.num_workers))
    contract = contract_info(cfg)  # recorded in model/best.json for cam and infer
    settings = TrainSettings(
        run_dir=cfg.run.dir,
        run_id=run_id(cfg),
        seed=cfg.seed,
        train=cfg.train,
        model=cfg.model,
        steps_per_epoch=steps,
        pos_weight=pos_weight,
        events_s=cfg.log.events_s,
        canvas_h=cfg.canvas.height,
        canvas_w=cfg.canvas.width,
        view=cfg.data.view,
        contract=contract,
    )
    spec = FitSpec.of(cfg.train, gpu, cfg.run.dir, "train_state", cfg.train.epochs, steps)
    decode, stream = DecodeSettings.of(cfg.data, cfg.canvas), StreamSettings.of(cfg.ray)
    train, val = image_stream(train_rows, decode, stream), image_stream(val_rows, decode, stream)
    fit(train_loop_per_worker, settings, spec, train, val)
    save_config(cfg, "train")
    _count_rows(cfg, summary, len(train_rows), len(val_rows))
    summary.rows_in += excluded  # the QC-excluded rows were selected, then left out on purpose
    summary.extra["pos_weight"] = round(pos_weight, 4)
    summary.extra["contract"] = contract["contract"]
    reference = training_qc_reference(cfg)  # the images the model saw: what `domain_shift` judges new scans by
    if reference is not None:
        summary.extra["qc_reference"] = write_qc_reference(f"{cfg.run.dir.rstrip('/')}/model", reference)
    summary.save(cfg.run.dir)
    summary.require_balanced()  # the account is saved either way; an unbalanced one fails the job
    return summary.finish()


def _count_rows(cfg: Config, summary: StageSummary, n_train: int, n_val: int) -> None:
    """Fills the train summary: rows in = train + val rows selected; ok = rows the last epoch trained on or scored."""
    import pyarrow.dataset as pads

    epochs = read_table(cfg.run.dir, "epochs").sort_values("epoch")
    last = int(epochs["epoch"].iloc[-1]) if len(epochs) else -1
    preds = read_table(cfg.run.dir, "preds", (pads.field("stage") == "train") & (pads.field("epoch") == last))
    trained = count_training_rows(cfg, summary, epochs, n_train, n_val, len(preds))
    summary.tables = {"epochs": len(epochs), "preds (stage=train)": int(n_val * len(epochs))}
    best = epochs.loc[epochs["val_auc"].idxmax()] if epochs["val_auc"].notna().any() else None
    summary.extra.update(
        epochs=len(epochs),
        train_rows_seen=trained,
        val_rows_scored=len(preds),
        best_epoch=None if best is None else int(best["epoch"]),
        best_val_auc=None if best is None else float(best["val_auc"]),
        train_img_per_s=float(epochs["img_per_s"].mean()) if len(epochs) else 0.0,
    )


STAGE = Stage(
    name="train",
    run=run_train,
    help="train the classifier on Ray Train (re-run to resume) -> epochs, preds, model/best.pt",
    sections=("ray", "canvas", "model", "train", "qc"),
    needs=(INDEX, SPLITS),
    writes=("epochs", "preds", "errors"),
)
