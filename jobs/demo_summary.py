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

from engine.io.summary import pack_items

# the headline methods (every method and baseline: the evaluate summary above it, or tables/loc_metrics)
FIGURES = (
    "peaks",
    "peaks_confirmed",  # the run's boxes that the patient's other view confirms (cross_view > 0)
    "body_prior",  # the no-model prior beside the run's boxes and each ablation row below
    "spots_peak",
    "spots_scan",
    "spots_cam",
    "spots_cam_asym",
    "spots_cam_site",
    "spots_full",
    "masks_tight",
    "masks",
    "cam",
    "segnet_tight",
    "segnet",
    "peaks_tuned",
    "seed",
    "max_box_acc",
)
STAGE_ORDER = (
    "synth",
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


def figure_lines(evaluate: dict, infer: dict | None = None) -> list[str]:
    """Returns the test split's classification figures (infer summary) and headline localisation figures."""
    lines = []
    if infer and "auc" in infer:
        lines.append(
            f"classification on the {infer.get('split', 'test')} split: auc {infer['auc']:.3f}, sensitivity "
            f"{infer['sensitivity']:.3f}, specificity {infer['specificity']:.3f} at thr {infer['thr']:.3f} "
            f"({infer['n']} images)"
        )
        views = [
            f"{k.removeprefix('auc_')} {v:.3f}" for k, v in infer.items() if k.startswith("auc_") and v is not None
        ]
        if views:
            lines.append(f"  auc per view and per patient: {', '.join(views)}; patients: {infer.get('patients', '-')}")
    figures = [f"  {k}: {evaluate[k]}" for k in FIGURES if k in evaluate]  # evaluate stores them formatted
    if figures:
        lines += ["localisation on the test split (all methods: evaluate's summary above):", *figures]
    return lines


def timing_lines(run_dirs: list[Path], started: float | None, now: float) -> list[str]:
    """Returns each run's stage times (`train 520 s`, pipeline order, wrapped) and the total wall time."""
    lines = ["stage times (each stage's own clock; the last pass of a stage run twice):"]
    for run_dir in run_dirs:
        found = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "summaries").glob("*.json"))}
        ordered = sorted(found, key=lambda s: (STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER), s))
        items = [f"{stage} {found[stage].get('seconds', 0.0):.0f} s" for stage in ordered]
        lines += pack_items(items, first=f"  {run_dir.name}: ", rest=" " * (len(run_dir.name) + 4), sep=", ")
    if started is not None:
        lines.append(f"total wall time: {(now - started) / 60:.1f} min (process start-ups included)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--started", type=float, default=None, help="epoch seconds when the demo started")
    args = parser.parse_args(argv)
    summaries = args.run_dirs[0] / "summaries"
    evaluate, infer = (
        json.loads(p.read_text()) if p.is_file() else {}
        for p in (summaries / "evaluate.json", summaries / "infer.json")
    )
    lines = figure_lines(evaluate, infer)
    print("\n".join(lines + timing_lines(args.run_dirs, args.started, time.time())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
