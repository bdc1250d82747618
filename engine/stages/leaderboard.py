"""`make leaderboard`: the test metrics of every run under `leaderboard.runs`."""

from __future__ import annotations

import pandas as pd
import pyarrow.fs as pafs

import schemas
from engine.config import Config
from engine.io.fs import resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._run import StageRun
from engine.stages._stage import Stage


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
            rows.append(test.iloc[0].to_dict() | {"run": entry})  # every image of the model's views (infer.py)
        else:
            missing.append(entry)
    board = pd.DataFrame(rows).reindex(columns=schemas.TABLES["leaderboard"].SCHEMA.names)
    return board.sort_values(["auc", "sensitivity"], ascending=False).reset_index(drop=True), missing


def run_leaderboard(cfg: Config) -> StageSummary:
    """Writes the `leaderboard` table under `leaderboard.runs` (tables/leaderboard/); the board is in the summary.

    Raises:
        ValueError: no run under `leaderboard.runs` has test metrics yet.
    """
    board, missing = leaderboard_frame(cfg.leaderboard.runs)
    if board.empty:
        raise ValueError(f"no run under {cfg.leaderboard.runs} has test metrics yet (run `make infer` first)")
    with StageRun(
        cfg, "leaderboard", ("leaderboard",), run_dir=cfg.leaderboard.runs, replace=("leaderboard",), config=False
    ) as run:
        run.summary.rows_in = len(board) + len(missing)
        run.summary.rows_ok = run.writer.write("leaderboard", board)
        run.summary.add_errors([f"no_test_metrics: {name}" for name in missing])
        run.summary.extra["leaderboard"] = "\n" + board.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    return run.summary


STAGE = Stage(
    name="leaderboard",
    run=run_leaderboard,
    help="test metrics of every run under leaderboard.runs",
    sections=("leaderboard",),
    writes=("leaderboard",),
)
