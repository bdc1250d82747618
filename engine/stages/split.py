"""`make split`: the patient-level `splits` table of a run's `index`."""

from __future__ import annotations

from engine.config import Config
from engine.core.splitting import assign_splits, split_sizes, split_sizes_line
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._run import StageRun
from engine.stages._stage import INDEX, Stage


def run_split(cfg: Config) -> StageSummary:
    """Writes the patient-level `splits` table from the run's `index`."""
    with StageRun(cfg, "split", ("splits",), overwrite=cfg.run.overwrite) as run:
        index = read_table(cfg.run.dir, "index")
        if index.empty:
            raise ValueError(f"{cfg.run.dir}: the index table is empty or missing; run `make index` first")
        splits = assign_splits(index, cfg.split.train, cfg.split.val, cfg.seed, cfg.split.duplicate_groups)
        run.summary.rows_in = len(index)
        run.summary.rows_ok = run.writer.write("splits", splits)
        run.commit()
        whole_body = splits[splits["folder"].str.startswith("wholeBody")]
        run.summary.extra["whole_body_images normal/abnormal"] = split_sizes_line(split_sizes(whole_body))
        run.summary.extra["patients_per_split"] = dict(splits.groupby("split")["patient_id"].nunique())
    return run.summary


STAGE = Stage(
    name="split",
    run=run_split,
    help="patient-level train/val/test split -> table splits",
    sections=("split",),
    needs=(INDEX,),
    writes=("splits",),
)
