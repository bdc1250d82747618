"""`make bench`: the harness that runs stages side by side with a plain loop (it sits above engine/stages).

It declares itself here, as a stage does in its module (engine/stages/_stage.py), the one stage outside
engine/stages (`engine.stages.ELSEWHERE`); `run.py` (Ray, torch, timm) is imported only when it runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.stages._stage import Stage

if TYPE_CHECKING:
    from engine.config import Config
    from engine.io.summary import StageSummary


def run_bench(cfg: Config) -> StageSummary:
    """Runs `make bench` (engine/bench/run.py: run_bench)."""
    from engine.bench.run import run_bench as bench

    return bench(cfg)


def bench_data(cfg: Config) -> str:
    """Returns the data `make bench` reads: the dataset it generates at `bench.data_root`, not data.root."""
    return cfg.bench.data_root


STAGE = Stage(
    name="bench",
    run=run_bench,
    help="the feed, then model-only vs plain loop vs engine, memory at N and 10 x N (CONF=conf/bench_gpu.yaml on "
    "a GPU)",
    sections=("bench", "ray", "canvas", "model", "infer"),
    data=bench_data,
)
