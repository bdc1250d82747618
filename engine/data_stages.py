"""Stages over the dataset itself: `make synth`, `make index`, `make split`."""

from __future__ import annotations

import logging

from engine.config import Config, dump_config
from engine.indexing import IndexResult, build_index, build_layout_index
from engine.layouts import LayoutSettings
from engine.qc_stage import run_qc
from engine.splitting import assign_splits, split_sizes
from engine.summary import StageSummary
from engine.synth import generate_dataset
from engine.tables import TableWriter, read_table, resolve_fs

log = logging.getLogger(__name__)


def save_config(cfg: Config, stage: str) -> None:
    """Writes the resolved config beside the run's tables (`<run.dir>/config/<stage>.yaml`)."""
    fs, root = resolve_fs(cfg.run.dir)
    fs.create_dir(f"{root}/config", recursive=True)
    with fs.open_output_stream(f"{root}/config/{stage}.yaml") as out:
        out.write(dump_config(cfg).encode())


def run_synth(cfg: Config) -> StageSummary:
    """Generates a synthetic BS-80K-shaped dataset at `synth.out`."""
    summary = StageSummary("synth")
    result = generate_dataset(
        cfg.synth.out,
        patients=cfg.synth.patients,
        seed=cfg.synth.seed,
        lesion_gain=cfg.synth.lesion_gain,
        lesion_size=cfg.synth.lesion_size,
        replace=cfg.synth.replace,
    )
    summary.rows_in = summary.rows_ok = result.images
    summary.extra.update(
        out=result.out,
        patients=result.patients,
        abnormal_patients=result.abnormal_patients,
        xml_files=result.xml_files,
        reused=result.reused,
    )
    return summary.finish()


def run_index(cfg: Config) -> StageSummary:
    """Indexes `data.root` into the `index`, `gt_boxes` and `errors` (stage=index) tables, then decodes every
    indexed image into the `qc` table (+ `errors` stage=qc; engine/qc_stage.py)."""
    summary = StageSummary("index")
    writer = TableWriter(cfg.run.dir, "index", cfg.run.overwrite, split="all")
    writer.check(["index", "gt_boxes", "errors"])
    result = _build_index(cfg)
    writer.write("index", result.index)
    writer.write("gt_boxes", result.gt_boxes)
    writer.write("errors", result.errors.assign(split="all"))
    listing_errors = result.listing_errors()
    summary.rows_in = result.lines_listed
    summary.rows_ok = len(result.index)
    summary.add_errors(listing_errors["reason"])
    summary.commit(writer)
    run_qc(cfg, result.index, summary)
    save_config(cfg, "index")
    other = result.errors.drop(listing_errors.index)
    summary.extra["other_findings"] = dict(other["reason"].str.split(":").str[0].value_counts().sort_index())
    summary.extra["images_by_view"] = dict(result.index["view"].value_counts().sort_index())
    summary.extra["gt_boxes_by_class"] = dict(result.gt_boxes["cls"].value_counts().sort_index())
    summary.save(cfg.run.dir)
    return summary.finish()


def _build_index(cfg: Config) -> IndexResult:
    """Returns build_index(data.root); on a cluster in a Ray task, so the driver need not see the data."""
    from engine.pipeline import cluster_address, init_ray, run_on_worker

    layout = LayoutSettings(cfg.data.layout, cfg.data.view_pattern, cfg.data.patient_pattern)
    if not cluster_address(cfg.ray):
        return build_index(cfg.data.root, layout=layout)
    init_ray(cfg.ray)
    return run_on_worker(build_layout_index, cfg.data.root, layout)


def run_split(cfg: Config) -> StageSummary:
    """Writes the patient-level `splits` table from the run's `index`."""
    summary = StageSummary("split")
    writer = TableWriter(cfg.run.dir, "split", cfg.run.overwrite)
    writer.check(["splits"])
    index = read_table(cfg.run.dir, "index")
    if index.empty:
        raise ValueError(f"{cfg.run.dir}: the index table is empty or missing; run `make index` first")
    splits = assign_splits(index, cfg.split.train, cfg.split.val, cfg.seed, cfg.split.duplicate_groups)
    summary.rows_in = len(index)
    summary.rows_ok = writer.write("splits", splits)
    summary.commit(writer)
    save_config(cfg, "split")
    sizes = split_sizes(splits[splits["folder"].str.startswith("wholeBody")]).reindex(columns=[0, 1], fill_value=0)
    summary.extra["whole_body_images normal/abnormal"] = "; ".join(
        f"{split} " + ", ".join(f"{view} {'/'.join(str(n) for n in counts)}" for view, counts in rows.iterrows())
        for split, rows in ((split, sizes.loc[split]) for split in sizes.index.unique(level=0))
    )  # "train ANT 92/43, POST 90/45; val ..."
    summary.extra["patients_per_split"] = dict(splits.groupby("split")["patient_id"].nunique())
    summary.save(cfg.run.dir)
    return summary.finish()
