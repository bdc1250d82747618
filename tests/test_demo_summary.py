"""`make demo`'s last lines: the evaluate figures and every stage's time, read back from the runs' summaries."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.demo_summary import figure_lines, main, timing_lines


def _summary(run_dir: Path, stage: str, seconds: float, rows_in: int, **extra) -> None:
    (run_dir / "summaries").mkdir(parents=True, exist_ok=True)
    (run_dir / "summaries" / f"{stage}.json").write_text(json.dumps({"seconds": seconds, "rows_in": rows_in, **extra}))


def test_stages_are_listed_in_pipeline_order_per_run_with_the_total(tmp_path: Path) -> None:
    demo, seed = tmp_path / "demo", tmp_path / "demo_seed"
    for stage, seconds in (("report", 3.0), ("index", 30.5), ("train", 120.0), ("masks", 9.0)):
        _summary(demo, stage, seconds, 10)
    _summary(seed, "train", 60.0, 7)
    lines = timing_lines([demo, seed], started=1000.0, now=1000.0 + 15 * 60)
    stages = [line.split()[1] for line in lines[1:-1]]
    assert stages == ["index", "train", "masks", "report", "train"]
    assert lines[1].split()[0] == "demo" and lines[-2].split()[0] == "demo_seed" and "60.0 s" in lines[-2]
    assert lines[-1] == "total wall time: 15.0 min (process start-ups included)"


def test_figures_are_printed_from_the_evaluate_summary(tmp_path: Path, capsys) -> None:
    demo = tmp_path / "demo"
    _summary(demo, "evaluate", 5.0, 40, peaks={"pointing_game": 0.9}, centre_prior={"pointing_game": 0.1})
    assert figure_lines({"peaks": 1, "unrelated": 2}) == ["localisation on the demo test split:", "  peaks: 1"]
    assert main([str(demo)]) == 0
    out = capsys.readouterr().out
    assert "  peaks: {'pointing_game': 0.9}" in out and "centre_prior" in out and "evaluate" in out
