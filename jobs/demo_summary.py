"""The end of `make demo`: the localisation figures of the demo's test split and the time each stage took.

Usage: python -m jobs.demo_summary RUN_DIR [RUN_DIR ...] [--started EPOCH_SECONDS]
The first run dir is the demo's; its evaluate summary gives the figures. Seconds are each stage's own clock
(`summaries/<stage>.json`); the total is wall time since `--started`, process start-ups included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FIGURES = ("peaks", "peaks_unrefined", "masks_tight", "masks", "masks_note", "segnet_tight", "segnet", "peaks_tuned",
           "seed_rule", "seed",
           "centre_prior", "body_prior", "max_box_acc", "max_box_acc_threshold", "left_out_test", "left_out_val",
           "box_params")  # fmt: skip
STAGE_ORDER = ("synth", "index", "split", "train", "threshold", "infer", "cam", "boxes", "masks", "segtrain", "segment",
               "evaluate", "report")


def figure_lines(evaluate: dict) -> list[str]:
    """Returns the localisation figures of an evaluate summary, one `name: value` line each."""
    return ["localisation on the demo test split:"] + [f"  {k}: {evaluate[k]}" for k in FIGURES if k in evaluate]


def timing_lines(run_dirs: list[Path], started: float | None, now: float) -> list[str]:
    """Returns one line per stage summary found under `run_dirs` (seconds, rows in) and the total wall time."""
    lines = ["stage times (each stage's own clock):"]
    for run_dir in run_dirs:
        found = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "summaries").glob("*.json"))}
        ordered = sorted(found, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
        for stage in ordered:
            summary = found[stage]
            lines.append(f"  {run_dir.name:>10} {stage:<10} {summary.get('seconds', 0.0):7.1f} s"
                         f"  {summary.get('rows_in', 0):>6} rows in")  # fmt: skip
    if started is not None:
        lines.append(f"total wall time: {(now - started) / 60:.1f} min (process start-ups included)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--started", type=float, default=None, help="epoch seconds when the demo started")
    args = parser.parse_args(argv)
    evaluate = args.run_dirs[0] / "summaries" / "evaluate.json"
    lines = figure_lines(json.loads(evaluate.read_text())) if evaluate.is_file() else []
    print("\n".join(lines + timing_lines(args.run_dirs, args.started, time.time())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
