"""`make evaluate`: weak localisation scored against the Abnormal GT boxes (run.py) and its helpers.

The declaration lives here and `run.py` (torch, through the box methods) is imported only when the stage runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.stages._stage import HEATMAPS, INDEX, Stage

if TYPE_CHECKING:
    from engine.config import Config
    from engine.io.summary import StageSummary


def run_evaluate(cfg: Config) -> StageSummary:
    """Runs `make evaluate` (engine/stages/evaluate/run.py: run_evaluate)."""
    from engine.stages.evaluate.run import run_evaluate as evaluate

    return evaluate(cfg)


STAGE = Stage(
    name="evaluate",
    run=run_evaluate,
    help="score CAM peaks + pseudo boxes against the Abnormal GT boxes (tuned on val) -> loc_metrics, COCO per split",
    sections=("evaluate", "boxes", "qc"),
    needs=(INDEX, HEATMAPS),  # a run without splits (new scans) is reported as skipped by evaluate itself
    writes=("loc_metrics",),
)
