"""StageRun: a stage's tables land only with a balanced account, with its config and summary beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from engine.config import Config, load_config
from engine.io.summary import AccountError
from engine.io.tables import OutputError, read_table, write_part
from engine.stages._run import StageRun
from engine.stages.report import run_report
from engine.stages.threshold import run_threshold

SPLITS = pd.DataFrame(
    {
        "image_id": ["a", "b"],
        "patient_id": ["p1", "p2"],
        "folder": ["wholeBodyANT"] * 2,
        "view": ["ANT"] * 2,
        "label": [0, 1],
        "patient_label": [0, 1],
        "group_id": ["p1", "p2"],
        "split": ["train", "test"],
    }
)


def _config(run_dir: Path) -> Config:
    return load_config("conf/demo.yaml", [f"run.dir={run_dir}"])


def _staging_left(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "_staging").glob("*") if p.is_dir()] if (run_dir / "_staging").exists() else []


def test_balanced_run_commits_its_tables_and_saves_config_and_summary(tmp_path: Path) -> None:
    with StageRun(_config(tmp_path), "split", ("splits",)) as run:
        run.summary.rows_in = 3
        run.summary.rows_ok = run.writer.write("splits", SPLITS)
        run.summary.add_errors(["bad_row: c"])
    assert sorted(read_table(str(tmp_path), "splits")["image_id"]) == ["a", "b"]
    assert (tmp_path / "config" / "split.yaml").read_text().strip()
    saved = json.loads((tmp_path / "summaries" / "split.json").read_text())
    assert (saved["rows_in"], saved["rows_ok"], saved["errors"], saved["balanced"]) == (3, 2, 1, True)
    assert saved["tables"] == {"splits": 2} and run.summary.seconds > 0
    assert not _staging_left(tmp_path)


def test_unbalanced_run_commits_nothing_and_names_the_counts(tmp_path: Path) -> None:
    with (
        pytest.raises(AccountError, match=r"split: 3 rows in, but 2 ok \+ 0 errors"),
        StageRun(_config(tmp_path), "split", ("splits",)) as run,
    ):
        run.summary.rows_in = 3
        run.summary.rows_ok = run.writer.write("splits", SPLITS)
    assert read_table(str(tmp_path), "splits").empty
    assert not (tmp_path / "summaries" / "split.json").exists()
    assert not (tmp_path / "config" / "split.yaml").exists()
    assert not _staging_left(tmp_path)


def test_failure_inside_the_run_aborts_its_staged_tables(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="stream died"), StageRun(_config(tmp_path), "split", ("splits",)) as run:
        run.writer.write("splits", SPLITS)
        raise RuntimeError("stream died")
    assert read_table(str(tmp_path), "splits").empty
    assert not (tmp_path / "summaries").exists()
    assert not _staging_left(tmp_path)


def test_unwritten_table_commits_as_an_empty_partition_set(tmp_path: Path) -> None:
    with StageRun(_config(tmp_path), "boxes", ("boxes", "errors"), replace=("boxes", "errors")) as run:
        run.summary.rows_in = run.summary.rows_ok = 0
        run.writer.write("errors", {"file": [], "line": [], "image_id": [], "stage": [], "reason": [], "split": []})
    assert run.summary.tables == {"errors": 0, "boxes": 0}
    assert (tmp_path / "tables" / "boxes").is_dir()


def test_existing_output_fails_on_entry_without_overwrite(tmp_path: Path) -> None:
    with StageRun(_config(tmp_path), "split", ("splits",)) as run:
        run.summary.rows_in = run.summary.rows_ok = run.writer.write("splits", SPLITS)
    with pytest.raises(OutputError, match="run.overwrite=true"), StageRun(_config(tmp_path), "split", ("splits",)):
        pass
    with StageRun(_config(tmp_path), "split", ("splits",), overwrite=True) as run:
        run.summary.rows_in = run.summary.rows_ok = run.writer.write("splits", SPLITS.head(1))
    assert read_table(str(tmp_path), "splits")["image_id"].tolist() == ["a"]


def _val_preds(n: int) -> dict[str, list]:
    ids = [f"wholeBodyANT/{i}.jpg" for i in range(n)]
    return {
        "image_id": ids,
        "patient_id": ids,
        "view": ["ANT"] * n,
        "y_true": [i % 2 for i in range(n)],
        "y_prob": [0.1 + 0.8 * (i % 2) for i in range(n)],
        "logit": [0.0] * n,
        "epoch": [1] * n,
        "run_id": ["r"] * n,
        "model": ["m"] * n,
        "stage": ["train"] * n,
        "split": ["val"] * n,
        "folder": ["wholeBodyANT"] * n,
        "qc_flags": [None] * n,
    }


def test_threshold_and_report_save_their_resolved_config_beside_the_tables(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "best.json").write_text(json.dumps({"epoch": 1}))
    write_part(str(tmp_path), "preds", _val_preds(6), "epoch-001")
    cfg = _config(tmp_path)
    run_threshold(cfg)
    assert load_config(tmp_path / "config" / "threshold.yaml").run.dir == str(tmp_path)
    report = run_report(cfg)
    assert report.balanced and (tmp_path / "report" / "index.html").is_file()
    assert load_config(tmp_path / "config" / "report.yaml").run.dir == str(tmp_path)
