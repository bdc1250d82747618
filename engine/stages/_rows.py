"""Which index rows a stage works on: the index joined with splits and the QC table, QC exclusion and the flags
copied into preds, the trained view's rows, and the QC reference that `domain_shift` judges new scans by."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.contract import trained_views
from engine.core.localization.columns import (
    QC_BODY_COLUMNS,
)
from engine.core.scans.qc import SHIFT_STATS, fit_shift_reference
from engine.io.fs import read_run_json, read_saved_config, resolve_fs
from engine.io.tables import read_table
from engine.stages._scoring import VIEW_MISMATCH, model_info, model_run_dir

QC_FLAGS = ("noise_frame", "low_count", "small_body", "body_cut")  # the bool flag columns of schemas/qc.py

BODY_COLUMNS = ("body_x1", "body_y1", "body_x2", "body_y2")  # the qc table's body box, original px


def qc_frame(cfg: Config) -> pd.DataFrame | None:
    """Returns the run's qc table (image_id, the flags, the body box as QC_BODY_COLUMNS), or None before QC."""
    qc = read_table(cfg.run.dir, "qc", columns=["image_id", *QC_FLAGS, *BODY_COLUMNS])
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
    """Returns the domain_shift reference (engine.core.scans.qc.ShiftReference.to_dict, plus where it came from) of the
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
    return {
        **reference.to_dict(),
        "run": cfg.run.dir,
        "split": "train",
        "view": cfg.data.view,
        "qc_exclude": list(cfg.qc.exclude),
        "left_out": dict(rows.attrs.get("skipped", {})),
    }


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
        cfg,
        run=dataclasses.replace(cfg.run, dir=run_dir),
        model=dataclasses.replace(cfg.model, from_run=""),
        data=dataclasses.replace(cfg.data, view=view),
        qc=dataclasses.replace(cfg.qc, exclude=exclude),
    )
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


def flag_images(
    flags: dict[str, list[str] | None], image_ids: set[str], flag: str = VIEW_MISMATCH
) -> dict[str, list[str] | None]:
    """Returns `flags` (image_id -> QC flags, as flags_by_image) with `flag` added to each of `image_ids`."""
    for image_id in image_ids:
        flags[image_id] = [*(flags.get(image_id) or []), flag]
    return flags


def flags_by_image(rows: pd.DataFrame) -> dict[str, list[str] | None]:
    """Returns image_id -> the QC flags raised on it (None without a qc row), for the preds `qc_flags` column."""
    return dict(zip(rows["image_id"].astype(str), qc_flag_lists(rows), strict=True))


def unsplit(cfg: Config, splits: pd.DataFrame | None = None) -> bool:
    """True for new scans scored with another run's model: `model.from_run` set and no splits table here.

    `splits` is the run's splits table when the caller has read it already.
    """
    table = read_table(cfg.run.dir, "splits") if splits is None else splits
    return bool(cfg.model.from_run) and table.empty
