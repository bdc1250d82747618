"""Shared CLI plumbing for the jobs: `--config FILE key=value ...`, logging, exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable

from engine.config import Config, ConfigError, load_config
from engine.summary import StageSummary


def parse_config(argv: list[str] | None, description: str) -> Config:
    """Returns the Config from `--config` and the trailing `key=value` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="conf/default.yaml", help="YAML config (default: conf/default.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. boxes.nms_iou=0.2")
    args = parser.parse_args(argv)
    return absolute_paths(load_config(args.config, args.overrides))


def absolute_paths(cfg: Config) -> Config:
    """Returns `cfg` with local `data.root`, `run.dir` and `model.from_run` made absolute (URIs unchanged).

    Ray workers on a cluster run in their node's working directory, not the driver's (checked on Ray 2.60).
    """
    data = dataclasses.replace(cfg.data, root=_absolute(cfg.data.root))
    model = dataclasses.replace(cfg.model, from_run=cfg.model.from_run and _absolute(cfg.model.from_run))
    run = dataclasses.replace(cfg.run, dir=_absolute(cfg.run.dir))
    return dataclasses.replace(cfg, data=data, model=model, run=run)


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def run_job(argv: list[str] | None, description: str, stage: Callable[[Config], StageSummary]) -> int:
    """Parses the config, runs `stage`, prints its summary; returns the exit code.

    Bad configuration and refused inputs are one clear line on stderr and exit code 2.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv, description)
        summary = stage(cfg)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


def job_main(stage: Callable[[Config], StageSummary], description: str | None) -> Callable[[list[str] | None], int]:
    """Returns a job's `main(argv) -> exit code` running `stage`."""

    def main(argv: list[str] | None = None) -> int:
        return run_job(argv, description or stage.__name__, stage)

    return main
