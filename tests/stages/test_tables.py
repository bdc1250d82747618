"""`make tables`: a run's tables (rows from the Parquet footers, files, bytes on disk) and each stage's last summary
line, read without writing anything."""

from __future__ import annotations

import os
from pathlib import Path

from engine.io.summary import StageSummary
from engine.io.tables import write_part
from jobs import stage_main
from tests.conftest import REPO

CONFIG = str(REPO / "conf" / "demo.yaml")
main = stage_main("tables")


def _metrics(split: str) -> dict[str, list]:
    """Two rows of the `metrics` table (one per view) of `split`."""
    row = {"run_id": "r", "split": split, "thr": 0.5, "auc": 0.9, "accuracy": 0.75, "sensitivity": 0.5}
    row |= {"specificity": 1.0, "precision": 1.0, "f1": 0.5, "tp": 1, "tn": 2, "fp": 0, "fn": 1, "n": 4}
    return {"view": ["POST", "ANT"], **{key: [value] * 2 for key, value in row.items()}}


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_tables_prints_rows_files_bytes_and_the_stages_last_lines_and_writes_nothing(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    write_part(str(run), "metrics", _metrics("test"), "test")
    write_part(str(run), "metrics", _metrics("val"), "val")
    late = StageSummary("infer", rows_in=5, rows_ok=4)
    late.add_errors(["decode_error: bad file"])
    late.save(str(run))
    StageSummary("split", rows_in=3, rows_ok=3).save(str(run))
    os.utime(run / "summaries" / "infer.json", ns=(2 * 10**18, 2 * 10**18))  # infer ran last
    size = sum(p.stat().st_size for p in (run / "tables" / "metrics").rglob("*") if p.is_file())
    before = _files(run)
    assert main(["--config", CONFIG, f"run.dir={run}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("-> tables: run ") and out[1].startswith("== tables: 1 in, 1 ok, 0 errors (balanced)")
    assert out[3].split() == ["table", "rows", "files", "bytes", "bytes_per_row"]
    assert out[4].split() == ["metrics", "4", "2", str(size), f"{size / 4:.1f}"]
    assert out[5].split() == ["total", "4", "2", str(size), "-"]
    lines = [line.strip() for line in out[7:]]
    assert lines[0].startswith("== split: 3 in, 3 ok, 0 errors (balanced)")
    assert lines[1].startswith("== infer: 5 in, 4 ok, 1 errors (balanced)")
    assert _files(run) == before  # no table, summary or config written


def test_a_table_that_is_no_parquet_is_an_error_and_an_empty_run_dir_exit_2(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    write_part(str(run), "metrics", _metrics("test"), "test")
    (run / "tables" / "broken").mkdir()
    (run / "tables" / "broken" / "part-0.parquet").write_bytes(b"not parquet")
    assert main(["--config", CONFIG, f"run.dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "== tables: 2 in, 1 ok, 1 errors (balanced)" in out and "error unreadable_table: 1" in out
    empty = tmp_path / "empty"
    assert main(["--config", CONFIG, f"run.dir={empty}"]) == 2
    assert capsys.readouterr().err == f"error: {empty}: no tables and no summaries (run `make index` first)\n"
