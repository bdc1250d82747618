"""The run helpers the stages share: the resolved config beside the tables, row selection, the QC flags read back
(exclusion from training / threshold / evaluation, flags copied into preds), run ids, box and CAM settings, the
selected threshold and the error rows; every stage imports these from here, never from another stage."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from engine.config import Config, dump_config
from engine.core.batch_columns import (
    QC_BODY_COLUMNS,
)
from engine.core.boxes import BoxParams
from engine.core.contract import apply_contract, trained_views
from engine.core.metrics import binary_metrics
from engine.core.qc import SHIFT_STATS, fit_shift_reference
from engine.io.fs import read_run_json, read_saved_config, resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import TableWriter, read_table, write_part
from engine.runtime.udfs import CamSettings

QC_FLAGS = ("noise_frame", "low_count", "small_body", "body_cut")  # the bool flag columns of schemas/qc.py
BODY_COLUMNS = ("body_x1", "body_y1", "body_x2", "body_y2")  # the qc table's body box, original px


def qc_frame(cfg: Config) -> pd.DataFrame | None:
    """Returns the run's qc table (image_id, the flags, the body box as QC_BODY_COLUMNS), or None before QC."""
    qc = read_table(cfg.run.dir, "qc")
    if qc.empty:
        return None
    renamed = dict(zip(BODY_COLUMNS, QC_BODY_COLUMNS, strict=True))
    return qc[["image_id", *QC_FLAGS, *BODY_COLUMNS]].rename(columns=renamed).drop_duplicates("image_id")


def attach_qc(cfg: Config, rows: pd.DataFrame) -> pd.DataFrame:
    """Returns `rows` with the QC flag columns (nullable bool) and QC_BODY_COLUMNS (float, NaN without a body box).

    A run indexed before QC existed has no qc table: every flag is null, every body box NaN.
    """
    qc = qc_frame(cfg)
    if qc is None:
        return rows.assign(**{f: pd.NA for f in QC_FLAGS}, **{c: np.nan for c in QC_BODY_COLUMNS})
    merged = rows.merge(qc, on="image_id", how="left")
    for c in QC_BODY_COLUMNS:
        merged[c] = merged[c].astype("float64")
    return merged


def exclude_flagged(rows: pd.DataFrame, exclude: tuple[str, ...]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Returns (rows without those flagged by any of `exclude`, rows left out per `qc_<flag>`).

    A row flagged twice counts under its first flag in `exclude` order; null flags (no qc row) never exclude.
    """
    keep = pd.Series(True, index=rows.index)
    skipped: dict[str, int] = {}
    for flag in exclude:
        hit = keep & rows[flag].fillna(False).astype(bool) if flag in rows else keep & False
        skipped[f"qc_{flag}"] = int(hit.sum())
        keep &= ~hit
    return rows[keep], skipped


def qc_flag_lists(rows: pd.DataFrame) -> list[list[str] | None]:
    """Returns each row's raised QC flags (a list, maybe empty), or None where the row has no qc row."""
    if not len(rows):
        return []
    known = rows[QC_FLAGS[0]].notna().to_numpy()
    raised = [[f for f in QC_FLAGS if bool(rows[f].iloc[i])] if known[i] else None for i in range(len(rows))]
    return raised


QC_REFERENCE_FILE = "qc_reference.json"  # <run.dir>/: the domain_shift reference its `make cam` flags were judged by


def training_qc_reference(cfg: Config) -> dict[str, Any] | None:
    """Returns the domain_shift reference (engine.core.qc.ShiftReference.to_dict, plus where it came from) of the
    images `make train` trains on in `cfg.run.dir`: split train, data.view, after qc.exclude (select_rows); None
    without a qc table, splits, or such an image with its statistics."""
    qc = read_table(cfg.run.dir, "qc")
    if qc.empty or read_table(cfg.run.dir, "splits").empty:
        return None
    rows = select_rows(cfg, ("train",))
    stats = qc.drop_duplicates("image_id").set_index("image_id").reindex(rows["image_id"].astype(str))
    reference = fit_shift_reference({name: stats[name].to_numpy(dtype=np.float64) for name in SHIFT_STATS})
    if reference is None:
        return None
    return {**reference.to_dict(), "run": cfg.run.dir, "split": "train", "view": cfg.data.view,
            "qc_exclude": list(cfg.qc.exclude), "left_out": dict(rows.attrs.get("skipped", {}))}  # fmt: skip


def model_qc_reference(cfg: Config) -> dict[str, Any] | None:
    """Returns the domain_shift reference of the model that scores this run (`model_run_dir`): the one recorded with
    the model (`qc_reference` in `model/best.json`, or `model/qc_reference.json`: `make train` may write either with
    `training_qc_reference`), else `training_qc_reference` of that run, with the data.view and qc.exclude its saved
    `config/train.yaml` trained with (this config's where it has none)."""
    run_dir = model_run_dir(cfg)
    recorded = (model_info(run_dir) or {}).get("qc_reference") or read_qc_reference(f"{run_dir.rstrip('/')}/model")
    if recorded:
        return dict(recorded)
    saved = read_saved_config(run_dir, "train")
    view = (saved.get("data") or {}).get("view", cfg.data.view)
    exclude = tuple((saved.get("qc") or {}).get("exclude", cfg.qc.exclude))
    trained = dataclasses.replace(
        cfg, run=dataclasses.replace(cfg.run, dir=run_dir), model=dataclasses.replace(cfg.model, from_run=""),
        data=dataclasses.replace(cfg.data, view=view), qc=dataclasses.replace(cfg.qc, exclude=exclude),
    )  # fmt: skip
    return training_qc_reference(trained)


def write_qc_reference(run_dir: str, record: dict[str, Any]) -> str:
    """Writes `record` as `<run_dir>/qc_reference.json`; returns its path."""
    fs, root = resolve_fs(run_dir)
    fs.create_dir(root, recursive=True)
    path = f"{root}/{QC_REFERENCE_FILE}"
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(record, indent=2, default=str).encode())
    return path


def read_qc_reference(run_dir: str) -> dict[str, Any] | None:
    """Returns `<run_dir>/qc_reference.json` (a run's: written by `make cam` with model.from_run), or None."""
    return read_run_json(run_dir, QC_REFERENCE_FILE)


def save_config(cfg: Config, stage: str) -> None:
    """Writes the resolved config beside the run's tables (`<run.dir>/config/<stage>.yaml`)."""
    fs, root = resolve_fs(cfg.run.dir)
    fs.create_dir(f"{root}/config", recursive=True)
    with fs.open_output_stream(f"{root}/config/{stage}.yaml") as out:
        out.write(dump_config(cfg).encode())


class StageRun:
    """One stage run as a context manager: its StageSummary, one TableWriter over `tables`, commit or abort, and the
    resolved config and summary saved beside the tables.

    On entry the writer checks its tables (an existing output fails fast). `commit()` commits them only when rows
    in = ok + errors + skipped (else aborts and raises AccountError) and saves `config/<stage>.yaml`; leaving the
    block commits when the stage did not, then writes `summaries/<stage>.json`. An exception inside the block
    aborts the staged tables and saves nothing. A stage without tables (tables=()) gets the balance check only.

    Args:
        cfg: the run's config; `run_dir` (default `run.dir`) receives the tables and the summary.
        stage: the stage name (partition of the tables with a `stage` column, file names of config and summary).
        tables: the tables this run writes (every one is committed, empty partitions included).
        overwrite, replace, split: as in TableWriter.
        config: False for a run whose `run_dir` is not a run (the leaderboard's runs folder).
    """

    def __init__(
        self, cfg: Config, stage: str, tables: tuple[str, ...] = (), *, run_dir: str | None = None,
        overwrite: bool = False, replace: tuple[str, ...] = (), split: str | None = None, config: bool = True,
    ) -> None:  # fmt: skip
        self.cfg, self.tables, self.config = cfg, tuple(tables), config
        self.run_dir = run_dir or cfg.run.dir
        self.summary = StageSummary(stage)
        self.writer = TableWriter(self.run_dir, stage, overwrite, replace, split) if self.tables else None
        self.committed = False

    def __enter__(self) -> StageRun:
        if self.writer is not None:
            self.writer.check(self.tables)
        return self

    def commit(self) -> dict[str, int]:
        """Commits the staged tables of a balanced account and saves the config; returns rows per table.

        Raises:
            AccountError: rows in != ok + errors + skipped; the staged tables are deleted, nothing is committed.
        """
        if self.committed:
            return self.summary.tables
        if self.writer is None:
            self.summary.require_balanced()
        else:
            for name in self.tables:
                self.writer.rows.setdefault(name, 0)
            self.summary.commit(self.writer)
        self.committed = True
        if self.config:
            save_config(self.cfg, self.summary.stage)
        return self.summary.tables

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None:
            if self.writer is not None and not self.committed:
                self.writer.abort()  # nothing of a failed run is committed
            return
        self.commit()
        self.summary.save(self.run_dir)


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
    if not index.empty and splits is None and unsplit(cfg, split_table):
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


def run_id(cfg: Config) -> str:
    return os.path.basename(cfg.run.dir.rstrip("/")) or "run"


def model_run_dir(cfg: Config) -> str:
    """Returns the run whose model/best.pt and threshold score this run: `model.from_run`, else `run.dir`."""
    return cfg.model.from_run or cfg.run.dir


def model_info(run_dir: str) -> dict[str, Any] | None:
    """Returns the run's `model/best.json` (what `make train` recorded beside the weights), or None without one."""
    return read_run_json(run_dir, "model/best.json")


def scoring_config(cfg: Config) -> tuple[Config, dict[str, str]]:
    """Returns (the config that scores with the model of `model_run_dir(cfg)`, what its contract changed or
    overrode: key -> note), by engine/core/contract.py's `apply_contract` on the model's `model/best.json`.

    Raises:
        ContractError: the config contradicts the model (one line naming both values) without
            model.override_contract; engine/preflight.py raises the same before Ray starts.
    """
    run_dir = model_run_dir(cfg)
    info = model_info(run_dir)
    if info is None:
        return cfg, {}
    return apply_contract(cfg, info, f"{run_dir.rstrip('/')}/model/best.json")


VIEW_MISMATCH = "view_mismatch"  # a row of another or unknown view than the model's data.view (skip reason, QC flag)


def trained_view_only(cfg: Config, rows: pd.DataFrame, limit: int = 0) -> pd.DataFrame:
    """Returns the rows `make cam` / `make infer` score: with `model.other_views=skip` (the default) those whose index
    `view` is one of `data.view`'s, the others (another view, `unknown`, null) counted in `rows.attrs["skipped"]`
    as `view_mismatch` (StageSummary.add_skipped); with `score` all of them (off_view_ids: the ones to flag).

    `limit` > 0 keeps the first `limit` rows scored; only the rows of other views before the last of them count.
    """
    skipped = dict(rows.attrs.get("skipped", {}))
    if cfg.model.other_views == "score":
        return rows.head(limit) if limit else rows
    other = ~rows["view"].isin(trained_views(cfg)).to_numpy()
    scored_at = np.flatnonzero(~other)
    if limit and len(scored_at) > limit:
        rows, other = rows.iloc[: scored_at[limit - 1] + 1], other[: scored_at[limit - 1] + 1]
    kept = rows[~other].reset_index(drop=True)
    skipped[VIEW_MISMATCH] = skipped.get(VIEW_MISMATCH, 0) + int(other.sum())
    kept.attrs["skipped"] = skipped
    return kept


def off_view_ids(cfg: Config, rows: pd.DataFrame) -> set[str]:
    """Returns the image ids of `rows` whose view is not one of `data.view`'s (flagged view_mismatch when scored)."""
    return set(rows.loc[~rows["view"].isin(trained_views(cfg)).to_numpy(), "image_id"].astype(str))


def flag_images(flags: dict[str, list[str] | None], image_ids: set[str], flag: str = VIEW_MISMATCH
                ) -> dict[str, list[str] | None]:  # fmt: skip
    """Returns `flags` (image_id -> QC flags, as flags_by_image) with `flag` added to each of `image_ids`."""
    for image_id in image_ids:
        flags[image_id] = [*(flags.get(image_id) or []), flag]
    return flags


def scoring_extras(contract: dict[str, str], threshold: str, off_view: set[str]) -> dict[str, Any]:
    """Returns the summary lines of a scoring stage: what the model's contract set, the threshold, flagged views."""
    extras: dict[str, Any] = {}
    if contract:
        extras["model_contract"] = contract
    if threshold:
        extras["threshold"] = threshold
    if off_view:
        extras[VIEW_MISMATCH] = f"{len(off_view)} images of another or unknown view scored (model.other_views=score)"
    return extras


def selected_threshold(run_dir: str) -> float:
    """Returns the threshold `make threshold` chose for `run_dir` (the last `thresholds` row): the one reader.

    Stages that score with the run's model pass `model_run_dir(cfg)`.

    Raises:
        ValueError: the run has no selected threshold.
    """
    table = read_table(run_dir, "thresholds")
    if table.empty:
        raise ValueError(f"{run_dir}: no selected threshold; run `make threshold` first")
    return float(table["thr"].iloc[-1])


def threshold_record(run_dir: str) -> dict[str, Any] | None:
    """Returns the run's `threshold.json` (the chosen or adopted operating point), or None without one."""
    return read_run_json(run_dir, "threshold.json")


def adopt_threshold(cfg: Config) -> str:
    """Makes this run's threshold the one of the model that scores it; returns what it did (a summary line).

    With `model.from_run`, that run's selected threshold (`thresholds`, `threshold.json` with `from_run`) is copied
    here, replacing a threshold this run held from another model (its own, or another run's), so that masks,
    evaluate, report and browse read the operating point its preds were scored at. Scored with its own model, the
    run keeps its own threshold; one that names another run's model is reported (run `make threshold`).
    """
    held = threshold_record(cfg.run.dir)
    held_from = (held or {}).get("from_run", "")
    if not cfg.model.from_run:
        if held_from:
            return f"threshold.json names the model of {held_from}, not this run's: run `make threshold` here"
        return ""
    chosen = read_table(cfg.model.from_run, "thresholds")
    if chosen.empty:
        raise ValueError(f"model.from_run={cfg.model.from_run}: no selected threshold; run `make threshold` there")
    row = chosen.tail(1).reset_index(drop=True)
    record = {**{k: _plain(v) for k, v in row.iloc[0].to_dict().items()}, "from_run": cfg.model.from_run}
    mine = read_table(cfg.run.dir, "thresholds")["thr"].tolist()
    if held_from == cfg.model.from_run and mine and np.allclose([*mine, held.get("thr", np.nan)], record["thr"]):
        return f"thr {record['thr']:.4g} of {cfg.model.from_run}"
    fs, root = resolve_fs(cfg.run.dir)
    if fs.get_file_info(f"{root}/tables/thresholds").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{root}/tables/thresholds")  # one row: the threshold of the model that scores this run
    write_part(cfg.run.dir, "thresholds", row, "from_run")
    with fs.open_output_stream(f"{root}/threshold.json") as out:
        out.write(json.dumps(record, indent=2, default=str).encode())
    if held is None:
        return f"thr {record['thr']:.4g} adopted from {cfg.model.from_run}"
    before = f"thr {float(held['thr']):.4g} of {held_from or 'this run'}" if "thr" in held else "the old threshold"
    return f"thr {record['thr']:.4g} adopted from {cfg.model.from_run}, replacing {before}"


def _plain(value: Any) -> Any:
    """Returns a numpy scalar as its Python value (JSON), other values unchanged."""
    return value.item() if hasattr(value, "item") else value


def split_metrics(cfg: Config, preds: pd.DataFrame, split: str, thr: float) -> dict:
    """Returns the `metrics` row of one split's predictions at `thr` (scikit-learn metrics)."""
    m = binary_metrics(preds["y_true"].to_numpy(), preds["y_prob"].to_numpy(), thr)
    return {"run_id": run_id(cfg), "split": split, "view": cfg.data.view, **m.to_dict()}


def box_params(cfg: Config) -> BoxParams:
    """Returns the pseudo-box parameters from `boxes.*`."""
    return BoxParams(size=cfg.boxes.size, max_boxes=cfg.boxes.max, nms_iou=cfg.boxes.nms_iou,
                     min_score=cfg.boxes.min_score)  # fmt: skip


def flags_by_image(rows: pd.DataFrame) -> dict[str, list[str] | None]:
    """Returns image_id -> the QC flags raised on it (None without a qc row), for the preds `qc_flags` column."""
    return dict(zip(rows["image_id"].astype(str), qc_flag_lists(rows), strict=True))


def cam_settings(cfg: Config, with_cam: bool) -> CamSettings:
    from engine.runtime.pipeline import init_ray, use_gpu

    init_ray(cfg.ray)
    return CamSettings(
        run_dir=model_run_dir(cfg), model_name=cfg.model.name, method=cfg.cam.method, target_layer=cfg.cam.target_layer,
        with_cam=with_cam, use_gpu=use_gpu(cfg.train.use_gpu), amp=cfg.train.amp,
        channels_last=cfg.model.channels_last, compile=cfg.model.compile, boxes=box_params(cfg),
        cpu_threads=max(1, int(cfg.infer.num_cpus)), refine=cfg.cam.refine, refine_reach=cfg.cam.refine_reach,
        refine_power=cfg.cam.refine_power, refine_peaks=cfg.cam.refine_peaks,
        warmup=(cfg.infer.batch_size, cfg.canvas.height, cfg.canvas.width),
    )  # fmt: skip


def unsplit(cfg: Config, splits: pd.DataFrame | None = None) -> bool:
    """True for new scans scored with another run's model: `model.from_run` set and no splits table here.

    `splits` is the run's splits table when the caller has read it already.
    """
    table = read_table(cfg.run.dir, "splits") if splits is None else splits
    return bool(cfg.model.from_run) and table.empty


def min_prob(cfg: Config) -> float:
    if cfg.cam.min_prob not in ("all", "threshold"):
        raise ValueError(f"cam.min_prob={cfg.cam.min_prob!r}: expected 'all' or 'threshold'")
    return selected_threshold(model_run_dir(cfg)) if cfg.cam.min_prob == "threshold" else float("-inf")


def count_training_rows(
    cfg: Config, summary: StageSummary, epochs: pd.DataFrame, n_train: int, n_val: int, val_scored: int
) -> int:
    """Fills the account of a Ray Train stage (`summary.stage`); returns the train rows its last epoch trained on.

    Rows in = the train + val rows selected; ok = the last epoch's train rows + the `val_scored` val rows; errors =
    the stage's `errors` rows; skipped `equal_split` = the train rows Ray's equal split dropped (up to
    num_workers - 1 per epoch, so that every worker steps alike).
    """
    errors = read_table(cfg.run.dir, "errors")
    errors = errors[errors["stage"] == summary.stage]
    summary.add_errors(errors["reason"])
    trained = int(epochs["images"].iloc[-1]) if len(epochs) else 0
    summary.rows_in = n_train + n_val
    summary.rows_ok = trained + val_scored
    summary.add_skipped("equal_split", n_train - trained - int((errors["split"] == "train").sum()))
    return trained
