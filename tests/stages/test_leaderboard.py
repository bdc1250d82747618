"""`make leaderboard`: one row per run with test metrics, written as a schema'd table through the stage runner."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import schemas
from engine.io.tables import read_table, write_part
from jobs import stage_main
from tests.conftest import REPO

CONFIG = str(REPO / "conf" / "demo.yaml")
main = stage_main("leaderboard")


def _metrics(split: str, auc: float) -> dict[str, list]:
    return {
        "run_id": ["r"],
        "split": [split],
        "view": ["POST"],
        "thr": [0.5],
        "auc": [auc],
        "accuracy": [0.75],
        "sensitivity": [0.5],
        "specificity": [1.0],
        "precision": [1.0],
        "f1": [2 / 3],
        "tp": [1],
        "tn": [2],
        "fp": [0],
        "fn": [1],
        "n": [4],
    }


def test_leaderboard_writes_one_schema_row_per_run_best_auc_first(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    write_part(str(runs / "weak"), "metrics", _metrics("test", 0.625), "test")
    write_part(str(runs / "strong"), "metrics", _metrics("test", 0.875), "test")
    write_part(str(runs / "val_only"), "metrics", _metrics("val", 0.99), "val")
    (runs / "not_a_run").mkdir()
    assert main(["--config", CONFIG, f"leaderboard.runs={runs}"]) == 0
    board = read_table(str(runs), "leaderboard")
    assert board[["run", "auc"]].to_dict("records") == [{"run": "strong", "auc": 0.875}, {"run": "weak", "auc": 0.625}]
    for path in (runs / "tables" / "leaderboard").rglob("*.parquet"):
        assert pq.read_schema(path).remove_metadata() == schemas.TABLES["leaderboard"].SCHEMA
    out = capsys.readouterr().out
    assert "== leaderboard: 3 in, 2 ok, 1 errors (balanced)" in out
    assert "error no_test_metrics: 1" in out and "strong" in out
    assert main(["--config", CONFIG, f"leaderboard.runs={runs}"]) == 0  # a re-run replaces its own table
    assert len(read_table(str(runs), "leaderboard")) == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [("leaderboard.runz=x", r"unknown key 'leaderboard.runz'"), ("leaderboard.runs={empty}", r"no run under")],
)
def test_leaderboard_errors_are_one_line_and_exit_code_2(tmp_path: Path, capsys, override, message) -> None:
    assert main(["--config", CONFIG, override.format(empty=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error:")
    assert re.search(message, err)
