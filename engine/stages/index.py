"""`make index`: `data.root` -> the `index`, `gt_boxes` and `errors` tables, then the QC pass -> the `qc` table."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import fields
from functools import partial

import numpy as np
import pandas as pd

from engine.config import Config
from engine.core.scans.qc import QcThresholds
from engine.io.index_tables import IndexResult
from engine.io.indexing import build_index, build_layout_index
from engine.io.layouts import LayoutSettings
from engine.io.summary import StageSummary
from engine.io.tables import TableWriter
from engine.stages._rows import QC_FLAGS
from engine.stages._run import StageRun
from engine.stages._stage import Stage

log = logging.getLogger(__name__)


def run_index(cfg: Config) -> StageSummary:
    """Indexes `data.root` into the `index`, `gt_boxes` and `errors` (stage=index) tables, then decodes every
    indexed image into the `qc` table (+ `errors` stage=qc; `run_qc` below)."""
    with StageRun(cfg, "index", ("index", "gt_boxes", "errors"), overwrite=cfg.run.overwrite, split="all") as run:
        summary = run.summary
        result = _build_index(cfg)
        run.writer.write("index", result.index)
        run.writer.write("gt_boxes", result.gt_boxes)
        run.writer.write("errors", result.errors.assign(split="all"))
        listing_errors = result.listing_errors()
        summary.rows_in = result.lines_listed
        summary.rows_ok = len(result.index)
        error_reasons, skipped = result.listing_account()  # skip rows: a dynamic study, a secondary energy window
        summary.add_errors(error_reasons)
        for code, count in skipped.items():
            summary.add_skipped(code, count)
        run.commit()
        run_qc(cfg, result.index, summary)
        other = result.errors.drop(listing_errors.index)
        summary.extra["other_findings"] = dict(other["reason"].str.split(":").str[0].value_counts().sort_index())
        summary.extra["images_by_view"] = dict(result.index["view"].value_counts().sort_index())
        summary.extra["gt_boxes_by_class"] = dict(result.gt_boxes["cls"].value_counts().sort_index())
    return summary


def _build_index(cfg: Config) -> IndexResult:
    """Returns build_index(data.root); on a cluster in a Ray task, so the driver need not see the data."""
    from engine.runtime.pipeline import cluster_address, init_ray, run_on_worker

    layout = LayoutSettings(cfg.data.layout, cfg.data.view_pattern, cfg.data.patient_pattern)
    if not cluster_address(cfg.ray):
        return build_index(cfg.data.root, layout=layout)
    init_ray(cfg.ray)
    return run_on_worker(build_layout_index, cfg.data.root, layout)


def qc_thresholds(cfg: Config) -> QcThresholds:
    """Returns the QcThresholds of `cfg.qc` (the config section names the same fields)."""
    return QcThresholds(**{f.name: getattr(cfg.qc, f.name) for f in fields(QcThresholds)})


def run_qc(cfg: Config, index: pd.DataFrame, summary: StageSummary) -> None:
    """Streams the index rows through `qc_batch` into the `qc` table and `errors` (stage=qc); commits a balanced
    account of its own and puts the flag counts into `summary.extra["qc"]`."""
    from engine.runtime.decode import qc_batch
    from engine.runtime.pipeline import StreamSettings, init_ray, iter_results, row_stream

    account = StageSummary("qc")
    writer = TableWriter(cfg.run.dir, "qc", cfg.run.overwrite, split="all")
    writer.check(["qc", "errors"])
    account.rows_in = len(index)
    flags = dict.fromkeys(QC_FLAGS, 0)
    units: Counter[str] = Counter()  # images whose count statistics are true counts / grey levels
    try:
        if len(index):
            init_ray(cfg.ray)
            udf = partial(
                qc_batch, data_root=cfg.data.root, thresholds=qc_thresholds(cfg), count_scale=cfg.data.count_scale
            )
            spacing = ("pixel_spacing_y_mm", "pixel_spacing_x_mm")  # DICOM: body_counts_per_px per 2.4 mm px
            columns = [c for c in ("image_id", "folder", "path", "part", *spacing) if c in index]
            for batch in iter_results(row_stream(index[columns], StreamSettings.of(cfg.ray), udf)):
                bad = batch["error"] != ""
                n_bad = int(bad.sum())
                writer.write(
                    "errors",
                    {
                        "file": batch["path"][bad],
                        "line": [None] * n_bad,
                        "image_id": batch["image_id"][bad],
                        "stage": ["qc"] * n_bad,
                        "reason": batch["error"][bad],
                        "split": ["all"] * n_bad,
                    },
                )
                account.add_errors(batch["error"][bad])
                good = _typed_qc_rows({k: v[~bad] for k, v in batch.items()})
                account.rows_ok += writer.write("qc", good)
                for flag in QC_FLAGS:
                    flags[flag] += int(np.sum(good[flag].astype(bool)))
                units.update(good["count_unit"].astype(str))
        for name in ("qc", "errors"):
            writer.rows.setdefault(name, 0)
    except BaseException:
        writer.abort()
        raise
    account.commit(writer)
    summary.extra["qc"] = {
        "images": account.rows_ok,
        "errors": dict(account.errors),
        **flags,
        "count_unit": dict(sorted(units.items())),
    }


def _typed_qc_rows(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """Returns the ok rows of a batch with the qc schema's types (a batch holding a failed image widens them)."""
    frame = pd.DataFrame(columns)
    for name in QC_FLAGS:
        frame[name] = frame[name].astype(bool)
    frame["total_counts"] = frame["total_counts"].astype("int64")
    for name in ("body_counts_per_px", "shape_snr", "roughness"):
        frame[name] = pd.to_numeric(frame[name]).astype("float64")  # None (no body) -> NaN
    for name in ("body_x1", "body_y1", "body_x2", "body_y2"):
        frame[name] = pd.to_numeric(frame[name]).astype("Int32")
    return frame


STAGE = Stage(
    name="index",
    run=run_index,
    help="index data.root, then decode every image for QC -> tables index, gt_boxes, qc, errors",
    sections=("ray", "qc"),
    writes=("index", "gt_boxes", "qc", "errors"),
)
