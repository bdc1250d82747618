"""The run machinery every stage shares: `StageRun` (tables committed only with a balanced account, config and
summary saved beside them), the saved config, run ids and the account of skipped and trained rows."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from engine.config import Config, dump_config
from engine.io.fs import resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import TableWriter, read_table


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
        self,
        cfg: Config,
        stage: str,
        tables: tuple[str, ...] = (),
        *,
        run_dir: str | None = None,
        overwrite: bool = False,
        replace: tuple[str, ...] = (),
        split: str | None = None,
        config: bool = True,
    ) -> None:
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


def add_skipped(summary: StageSummary, rows: pd.DataFrame) -> int:
    """Counts `select_rows`' QC exclusions into `summary`; returns how many rows were left out."""
    skipped = rows.attrs.get("skipped", {})
    for reason, count in skipped.items():
        summary.add_skipped(reason, count)
    return sum(skipped.values())


def run_id(cfg: Config) -> str:
    return os.path.basename(cfg.run.dir.rstrip("/")) or "run"


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
