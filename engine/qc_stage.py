"""The QC pass of `make index`: decode every indexed image and write its `qc` row (engine/qc.py), and how other
stages read the QC flags back (exclusion from training / threshold / evaluation, flags copied into preds)."""

from __future__ import annotations

from dataclasses import fields
from functools import partial

import numpy as np
import pandas as pd

from engine.config import Config
from engine.counts import parse_count_scale
from engine.indexing import WHOLE_BODY_PART
from engine.qc import QcThresholds, image_qc, qc_row
from engine.stages import QC_BODY_COLUMNS, load_scan
from engine.summary import StageSummary
from engine.tables import TableWriter, read_table, resolve_fs

QC_FLAGS = ("noise_frame", "low_count", "small_body", "body_cut")  # the bool flag columns of schemas/qc.py
BODY_COLUMNS = ("body_x1", "body_y1", "body_x2", "body_y2")  # the qc table's body box, original px


def qc_thresholds(cfg: Config) -> QcThresholds:
    """Returns the QcThresholds of `cfg.qc` (the config section names the same fields)."""
    return QcThresholds(**{f.name: getattr(cfg.qc, f.name) for f in fields(QcThresholds)})


def qc_batch(
    batch: dict[str, np.ndarray], data_root: str, thresholds: QcThresholds, count_scale: str = "max"
) -> dict[str, np.ndarray]:
    """Ray Data UDF: index rows -> one `qc` row each as columns, plus `error` ("" or `reason: detail`) and `path`.

    Images are read as the model stream reads them (engine.stages.load_scan, the same `data.count_scale` rule).
    Rows whose `part` names a region crop get only the flags that apply to a crop (engine.qc.image_qc).
    """
    fs, root = resolve_fs(data_root)
    scale = parse_count_scale(count_scale)
    rows, errors = [], []
    parts = batch["part"] if "part" in batch else np.full(len(batch["image_id"]), None)
    for image_id, folder, relative, part in zip(batch["image_id"], batch["folder"], batch["path"], parts, strict=True):
        image, _, error = load_scan(fs, root, str(relative), scale)
        whole_body = part is None or part != part or part == WHOLE_BODY_PART  # clinic layouts: no part (None/NaN)
        try:
            qc = None if image is None else image_qc(image, thresholds, whole_body)
        except ValueError as exc:  # an image QC cannot measure (not 2-D uint8)
            qc, error = None, f"bad_image: {exc}"
        rows.append(qc_row(str(image_id), str(folder), qc) if qc is not None else {"image_id": str(image_id)})
        errors.append(error)
    frame = pd.DataFrame(rows)
    out = {name: frame[name].to_numpy() if name in frame else np.full(len(rows), None) for name in _qc_names()}
    return {**out, "folder": np.asarray(batch["folder"]), "path": np.asarray(batch["path"]),
            "error": np.asarray(errors, dtype=object)}  # fmt: skip


def _qc_names() -> list[str]:
    import schemas

    return schemas.TABLES["qc"].SCHEMA.names


def run_qc(cfg: Config, index: pd.DataFrame, summary: StageSummary) -> None:
    """Streams the index rows through `qc_batch` into the `qc` table and `errors` (stage=qc); commits a balanced
    account of its own and puts the flag counts into `summary.extra["qc"]`."""
    from engine.pipeline import init_ray, iter_results, row_stream

    account = StageSummary("qc")
    writer = TableWriter(cfg.run.dir, "qc", cfg.run.overwrite, split="all")
    writer.check(["qc", "errors"])
    account.rows_in = len(index)
    flags = dict.fromkeys(QC_FLAGS, 0)
    try:
        if len(index):
            init_ray(cfg.ray)
            udf = partial(
                qc_batch, data_root=cfg.data.root, thresholds=qc_thresholds(cfg), count_scale=cfg.data.count_scale
            )
            columns = [c for c in ("image_id", "folder", "path", "part") if c in index]
            for batch in iter_results(row_stream(index[columns], cfg, udf)):
                bad = batch["error"] != ""
                n_bad = int(bad.sum())
                writer.write("errors", {"file": batch["path"][bad], "line": [None] * n_bad,
                                        "image_id": batch["image_id"][bad], "stage": ["qc"] * n_bad,
                                        "reason": batch["error"][bad], "split": ["all"] * n_bad})  # fmt: skip
                account.add_errors(batch["error"][bad])
                good = _typed_qc_rows({k: v[~bad] for k, v in batch.items()})
                account.rows_ok += writer.write("qc", good)
                for flag in QC_FLAGS:
                    flags[flag] += int(np.sum(good[flag].astype(bool)))
        for name in ("qc", "errors"):
            writer.rows.setdefault(name, 0)
    except BaseException:
        writer.abort()
        raise
    account.commit(writer)
    summary.extra["qc"] = {"images": account.rows_ok, "errors": dict(account.errors), **flags}


def _typed_qc_rows(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Returns the ok rows of a batch with the qc schema's types (a batch holding a failed image widens them)."""
    frame = pd.DataFrame(columns)
    for name in QC_FLAGS:
        frame[name] = frame[name].astype(bool)
    frame["total_counts"] = frame["total_counts"].astype("int64")
    for name in ("body_x1", "body_y1", "body_x2", "body_y2"):
        frame[name] = pd.to_numeric(frame[name]).astype("Int32")
    return frame


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
