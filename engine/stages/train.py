"""`make train`: the classifier trained with Ray Train on the train split (re-run to resume) -> epochs, preds, model."""

from __future__ import annotations

import math
import os

from engine.config import Config
from engine.core.contract import contract_info
from engine.io.fs import delete_outputs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.runtime.pipeline import ordered_ingest
from engine.stages._rows import select_rows, training_qc_reference, write_qc_reference
from engine.stages._run import add_skipped, count_training_rows, run_id, save_config

# What a training run leaves in its run dir: deleted with run.overwrite=true (else a re-run resumes from it).
TRAINING_OUTPUTS = ("train_state", "model", "tables/epochs", "tables/preds/stage=train", "tables/errors/stage=train")

def run_train(cfg: Config) -> StageSummary:
    """Trains the classifier with Ray Train on the train split; re-running resumes the same run.

    Only `train` is split among the workers (Ray's `streaming_split(equal=True)` drops up to
    num_workers - 1 rows per epoch to equalise the shards); rank 0 scores the whole val set.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from engine.runtime.pipeline import (
        check_train_fits,
        fit_with_progress,
        image_stream,
        init_ray,
        progress_queue,
        use_gpu,
    )
    from engine.runtime.training import train_loop_per_worker

    summary = StageSummary("train")
    if cfg.run.overwrite:
        delete_outputs(cfg.run.dir, TRAINING_OUTPUTS)  # otherwise a re-run resumes
    init_ray(cfg.ray)
    gpu = use_gpu(cfg.train.use_gpu)
    check_train_fits(cfg, gpu)
    rows = select_rows(cfg, ("train", "val"))
    excluded = add_skipped(summary, rows)
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    n_pos = int(train_rows["label"].sum())
    pos_weight = (len(train_rows) - n_pos) / max(1, n_pos)  # BCE pos_weight = N_neg / N_pos, the seed's weighting
    workers = cfg.train.num_workers
    steps = math.ceil(len(train_rows) / (cfg.train.batch_size * workers))
    storage = cfg.run.dir if "://" in cfg.run.dir else os.path.abspath(cfg.run.dir)
    events = progress_queue()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg, "steps_per_epoch": steps, "pos_weight": pos_weight, "run_id": run_id(cfg),
                           "events": events},  # fmt: skip
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu, resources_per_worker=None if gpu else {"CPU": cfg.train.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name="train_state",
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": image_stream(train_rows, cfg), "val": image_stream(val_rows, cfg)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ordered_ingest()),
    )
    fit_with_progress(trainer, events, cfg.train.epochs, steps)
    save_config(cfg, "train")
    _count_rows(cfg, summary, len(train_rows), len(val_rows))
    summary.rows_in += excluded  # the QC-excluded rows were selected, then left out on purpose
    summary.extra["pos_weight"] = round(pos_weight, 4)
    summary.extra["contract"] = contract_info(cfg)["contract"]  # recorded in model/best.json for cam and infer
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
        epochs=len(epochs), train_rows_seen=trained, val_rows_scored=len(preds),
        best_epoch=None if best is None else int(best["epoch"]),
        best_val_auc=None if best is None else float(best["val_auc"]),
        train_img_per_s=float(epochs["img_per_s"].mean()) if len(epochs) else 0.0,
    )  # fmt: skip
