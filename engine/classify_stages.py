"""Classification stages: `make train`, `make threshold`, `make infer`, `make leaderboard`."""

from __future__ import annotations

import json
import logging
import math
import os

import pandas as pd
import pyarrow.fs as pafs

import schemas
from engine.config import Config
from engine.data_stages import save_config
from engine.metrics import binary_metrics, select_threshold
from engine.qc_stage import attach_qc, exclude_flagged
from engine.summary import StageSummary
from engine.tables import TableWriter, read_table, resolve_fs, write_part

log = logging.getLogger(__name__)


UNSPLIT = "all"  # the split of a run's rows when it has no splits table and is scored with model.from_run


def view_folders(view: str) -> list[str]:
    """Returns the whole-body folders of `data.view` (ANT, POST or BOTH)."""
    views = {"ANT": ["ANT"], "POST": ["POST"], "BOTH": ["ANT", "POST"]}
    if view not in views:
        raise ValueError(f"data.view={view!r}: expected one of {sorted(views)}")
    return [f"wholeBody{v}" for v in views[view]]


def select_rows(
    cfg: Config, splits: tuple[str, ...] | None, whole_body_view_only: bool = True, qc_exclude: bool = True
) -> pd.DataFrame:
    """Returns index rows joined with their split and QC columns, filtered by split and (optionally) the trained view.

    With `qc_exclude` the rows flagged by any of `qc.exclude` are left out (train, threshold, evaluate; cam and
    infer score every image); `rows.attrs["skipped"]` counts them per `qc_<flag>` for StageSummary.add_skipped.
    """
    index = read_table(cfg.run.dir, "index")
    split_table = read_table(cfg.run.dir, "splits")
    if not index.empty and split_table.empty and cfg.model.from_run and splits is None:
        split_table = pd.DataFrame({"image_id": index["image_id"], "split": UNSPLIT})  # new scans, another's model
    if index.empty or split_table.empty:
        raise ValueError(f"{cfg.run.dir}: index/splits tables missing; run `make index` and `make split` first")
    rows = index.merge(split_table[["image_id", "split"]], on="image_id", how="inner")
    if whole_body_view_only:
        rows = rows[rows["folder"].isin(view_folders(cfg.data.view))]
    if splits is not None:
        rows = rows[rows["split"].isin(splits)]
    rows, skipped = exclude_flagged(attach_qc(cfg, rows), cfg.qc.exclude if qc_exclude else ())
    rows = rows.sort_values("image_id", kind="stable").reset_index(drop=True)
    rows.attrs["skipped"] = skipped
    return rows


def add_skipped(summary: StageSummary, rows: pd.DataFrame) -> int:
    """Counts `select_rows`' QC exclusions into `summary`; returns how many rows were left out."""
    skipped = rows.attrs.get("skipped", {})
    for reason, count in skipped.items():
        summary.add_skipped(reason, count)
    return sum(skipped.values())


def run_train(cfg: Config) -> StageSummary:
    """Trains the classifier with Ray Train on the train split; re-running resumes the same run.

    Only `train` is split among the workers (Ray's `streaming_split(equal=True)` drops up to
    num_workers - 1 rows per epoch to equalise the shards); rank 0 scores the whole val set.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from engine.pipeline import check_train_fits, fit_with_progress, image_stream, init_ray, progress_queue, use_gpu
    from engine.training import train_loop_per_worker

    summary = StageSummary("train")
    if cfg.run.overwrite:
        _clear_training(cfg)
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
        train_loop_config={"cfg": cfg, "steps_per_epoch": steps, "pos_weight": pos_weight, "run_id": _run_id(cfg),
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
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=_ordered()),
    )
    fit_with_progress(trainer, events, cfg.train.epochs, steps)
    save_config(cfg, "train")
    _count_rows(cfg, summary, len(train_rows), len(val_rows))
    summary.rows_in += excluded  # the QC-excluded rows were selected, then left out on purpose
    summary.extra["pos_weight"] = round(pos_weight, 4)
    summary.save(cfg.run.dir)
    summary.require_balanced()  # the account is saved either way; an unbalanced one fails the job
    return summary.finish()


def _count_rows(cfg: Config, summary: StageSummary, n_train: int, n_val: int) -> None:
    """Fills the train summary: rows in = train + val rows selected; ok = rows the last epoch trained on or scored."""
    import pyarrow.dataset as pads

    epochs = read_table(cfg.run.dir, "epochs").sort_values("epoch")
    errors = read_table(cfg.run.dir, "errors")
    errors = errors[errors["stage"] == "train"]
    summary.add_errors(errors["reason"])
    last = int(epochs["epoch"].iloc[-1]) if len(epochs) else -1
    preds = read_table(cfg.run.dir, "preds", (pads.field("stage") == "train") & (pads.field("epoch") == last))
    trained = int(epochs["images"].iloc[-1]) if len(epochs) else 0
    summary.rows_in = n_train + n_val
    summary.rows_ok = trained + len(preds)
    summary.tables = {"epochs": len(epochs), "preds (stage=train)": int(n_val * len(epochs))}
    # Ray's equal split drops up to num_workers - 1 train rows per epoch so that every worker steps alike.
    summary.add_skipped("equal_split", n_train - trained - int((errors["split"] == "train").sum()))
    best = epochs.loc[epochs["val_auc"].idxmax()] if epochs["val_auc"].notna().any() else None
    summary.extra.update(
        epochs=len(epochs), train_rows_seen=trained, val_rows_scored=len(preds),
        best_epoch=None if best is None else int(best["epoch"]),
        best_val_auc=None if best is None else float(best["val_auc"]),
        train_img_per_s=float(epochs["img_per_s"].mean()) if len(epochs) else 0.0,
    )  # fmt: skip


def _ordered() -> object:
    """Returns Ray Data execution options that keep block order: the same seed gives the same batches,
    so a resumed run replays exactly what an uninterrupted one would have seen."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def _clear_training(cfg: Config) -> None:
    """Deletes a run's training state and outputs (run.overwrite=true); otherwise a re-run resumes."""
    fs, root = resolve_fs(cfg.run.dir)
    for path in (f"{root}/train_state", f"{root}/model", f"{root}/tables/epochs", f"{root}/tables/preds/stage=train",
                 f"{root}/tables/errors/stage=train"):  # fmt: skip
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            log.warning("run.overwrite=true: deleting %s", path)
            fs.delete_dir(path)


def _run_id(cfg: Config) -> str:
    return os.path.basename(cfg.run.dir.rstrip("/")) or "run"


def _best_info(cfg: Config) -> dict:
    fs, root = resolve_fs(cfg.run.dir)
    try:
        with fs.open_input_stream(f"{root}/model/best.json") as stream:
            return json.loads(stream.read())
    except FileNotFoundError as exc:
        raise ValueError(f"{root}/model/best.json missing: run `make train` first") from exc


def run_threshold(cfg: Config) -> StageSummary:
    """Chooses the operating threshold on the best epoch's val predictions.

    Raises:
        ThresholdError: `sens_atleast` cannot reach `threshold.sens_min` (no silent fallback).
    """
    summary = StageSummary("threshold")
    best = _best_info(cfg)
    preds = read_table(cfg.run.dir, "preds")
    val = preds[(preds["stage"] == "train") & (preds["split"] == "val") & (preds["epoch"] == best["epoch"])]
    n_val = int(val["image_id"].nunique())
    val, skipped = exclude_flagged(attach_qc(cfg, val), cfg.qc.exclude)  # as select_rows: QC flags chosen out
    for reason, count in skipped.items():
        summary.add_skipped(reason, count)
    chosen = select_threshold(val["y_true"].to_numpy(), val["y_prob"].to_numpy(), cfg.threshold.mode,
                              cfg.threshold.sens_min)  # fmt: skip
    record = {
        "mode": cfg.threshold.mode, "sens_min": cfg.threshold.sens_min, "epoch": best["epoch"], "thr": chosen.thr,
        "sens": chosen.sensitivity, "spec": chosen.specificity, "precision": chosen.precision, "f1": chosen.f1,
        "youden_j": chosen.youden_j, "auc": chosen.auc, "tp": chosen.tp, "tn": chosen.tn, "fp": chosen.fp,
        "fn": chosen.fn, "n": chosen.n,
    }  # fmt: skip
    writer = TableWriter(cfg.run.dir, "threshold", overwrite=True, replace=("thresholds",))
    writer.check(["thresholds"])
    writer.write("thresholds", pd.DataFrame([record]))
    summary.rows_in = n_val  # the val images of the best epoch, each once
    summary.rows_ok = int(chosen.n)  # the predictions the threshold was chosen on (a repeated one counts twice)
    summary.commit(writer)
    fs, root = resolve_fs(cfg.run.dir)
    with fs.open_output_stream(f"{root}/threshold.json") as out:
        out.write(json.dumps(record, indent=2).encode())
    summary.extra.update({k: record[k] for k in ("mode", "epoch", "thr", "sens", "spec", "f1", "youden_j")})
    summary.save(cfg.run.dir)
    return summary.finish()


def model_run_dir(cfg: Config) -> str:
    """Returns the run whose model/best.pt and threshold score this run: `model.from_run`, else `run.dir`."""
    return cfg.model.from_run or cfg.run.dir


def selected_threshold(cfg: Config) -> float:
    """Returns the threshold chosen by `make threshold` for the run that owns the model (model_run_dir)."""
    run_dir = model_run_dir(cfg)
    table = read_table(run_dir, "thresholds")
    if table.empty:
        raise ValueError(f"{run_dir}: no selected threshold; run `make threshold` first")
    return float(table["thr"].iloc[-1])


def adopt_threshold(cfg: Config) -> None:
    """Copies the threshold of `model.from_run` into this run (`thresholds`, `threshold.json` with `from_run`).

    A run scored with another run's model then holds the operating point its preds were scored at, so that
    masks, evaluate, report and browse read it from the run itself. A run with its own threshold keeps it.
    """
    if not cfg.model.from_run or not read_table(cfg.run.dir, "thresholds").empty:
        return
    chosen = read_table(cfg.model.from_run, "thresholds")
    if chosen.empty:
        raise ValueError(f"model.from_run={cfg.model.from_run}: no selected threshold; run `make threshold` there")
    write_part(cfg.run.dir, "thresholds", chosen.tail(1).reset_index(drop=True), "from_run")
    record = {**chosen.iloc[-1].to_dict(), "from_run": cfg.model.from_run}
    fs, root = resolve_fs(cfg.run.dir)
    with fs.open_output_stream(f"{root}/threshold.json") as out:
        out.write(json.dumps(record, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)).encode())


def split_metrics(cfg: Config, preds: pd.DataFrame, split: str, thr: float) -> dict:
    """Returns the `metrics` row of one split's predictions at `thr` (scikit-learn metrics)."""
    m = binary_metrics(preds["y_true"].to_numpy(), preds["y_prob"].to_numpy(), thr)
    return {"run_id": _run_id(cfg), "split": split, "view": cfg.data.view, **m.to_dict()}


def leaderboard_frame(runs_dir: str) -> tuple[pd.DataFrame, list[str]]:
    """Returns (one row per run with test metrics, best AUC first; the runs that have metrics but none on test)."""
    fs, root = resolve_fs(runs_dir)
    entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    rows, missing = [], []
    for entry in sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory):
        run_dir = f"{runs_dir.rstrip('/')}/{entry}"
        if fs.get_file_info(f"{root}/{entry}/tables/metrics").type == pafs.FileType.NotFound:
            continue  # not a run with `make infer` outputs (or this stage's own folders)
        test = read_table(run_dir, "metrics").query("split == 'test'")
        if len(test):
            rows.append(test.iloc[-1].to_dict() | {"run": entry})
        else:
            missing.append(entry)
    board = pd.DataFrame(rows).reindex(columns=schemas.TABLES["leaderboard"].SCHEMA.names)
    return board.sort_values(["auc", "sensitivity"], ascending=False).reset_index(drop=True), missing


def run_leaderboard(cfg: Config) -> StageSummary:
    """Writes the `leaderboard` table under `leaderboard.runs` (tables/leaderboard/); the board is in the summary.

    Raises:
        ValueError: no run under `leaderboard.runs` has test metrics yet.
    """
    summary = StageSummary("leaderboard")
    board, missing = leaderboard_frame(cfg.leaderboard.runs)
    if board.empty:
        raise ValueError(f"no run under {cfg.leaderboard.runs} has test metrics yet (run `make infer` first)")
    writer = TableWriter(cfg.leaderboard.runs, "leaderboard", replace=("leaderboard",))
    writer.check(["leaderboard"])
    summary.rows_in = len(board) + len(missing)
    summary.rows_ok = writer.write("leaderboard", board)
    summary.add_errors([f"no_test_metrics: {run}" for run in missing])
    summary.commit(writer)
    summary.extra["leaderboard"] = "\n" + board.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    summary.save(cfg.leaderboard.runs)
    return summary.finish()
