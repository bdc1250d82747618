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
    assert lines[1] == "  demo: index 30 s, train 120 s, masks 9 s, report 3 s"
    assert lines[2] == "  demo_seed: train 60 s"
    assert lines[-1] == "total wall time: 15.0 min (process start-ups included)"


def test_a_long_run_wraps_its_stage_times_and_keeps_every_stage(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    stages = (
        "index",
        "split",
        "train",
        "threshold",
        "infer",
        "cam",
        "boxes",
        "masks",
        "segtrain",
        "segment",
        "evaluate",
        "report",
    )
    for stage in stages:
        _summary(demo, stage, 1234.0, 1)
    lines = timing_lines([demo], started=None, now=0.0)[1:]
    assert len(lines) == 2 and all(len(line) <= 110 for line in lines)
    items = [item.strip() for line in lines for item in line.split(":", 1)[-1].split(",")]
    assert items == [f"{stage} 1234 s" for stage in stages]


def test_figures_are_printed_from_the_evaluate_and_infer_summaries(tmp_path: Path, capsys) -> None:
    demo = tmp_path / "demo"
    _summary(demo, "evaluate", 5.0, 40, peaks="pointing_game=0.900, n=3", centre_prior="pointing_game=0.100")
    _summary(demo, "infer", 2.0, 40, split="test", auc=0.91843, sensitivity=0.875, specificity=0.7625, thr=0.839, n=40)
    assert figure_lines({"peaks": 1, "unrelated": 2})[1:] == ["  peaks: 1"]
    assert main([str(demo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "classification on the test split: auc 0.918, sensitivity 0.875, specificity 0.762 at thr 0.839 (40 images)"
    )
    assert "  peaks: pointing_game=0.900, n=3" in out
    assert not any("centre_prior" in line for line in out)  # a baseline: in evaluate's own summary, not the headline
    assert "  demo: infer 2 s, evaluate 5 s" in out


def test_the_patient_auc_stands_beside_each_views(tmp_path: Path, capsys) -> None:
    demo = tmp_path / "demo"
    figures = {"split": "test", "auc": 0.8, "sensitivity": 0.7, "specificity": 0.6, "thr": 0.5, "n": 80}
    _summary(demo, "infer", 2.0, 80, **figures, auc_ANT=0.75, auc_POST=0.81, auc_patient=0.86, patients="40 (max)")
    _summary(demo, "evaluate", 5.0, 80, peaks="precision@iou0.3=0.300", peaks_confirmed="precision@iou0.3=0.500")
    assert main([str(demo)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  auc per view and per patient: ANT 0.750, POST 0.810, patient 0.860; patients: 40 (max)" in out
    assert out.index("  peaks: precision@iou0.3=0.300") + 1 == out.index("  peaks_confirmed: precision@iou0.3=0.500")
