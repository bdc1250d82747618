"""Shared CLI plumbing for the jobs: `--config FILE [--verbose] key=value ...`, checks, logging, exit codes.

A job imports its stage (and with it torch, timm and Ray) only after the config has loaded and the driver-side
checks of engine/preflight.py have passed, so that a typo or a missing input is one line within a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from engine.io.summary import StageSummary

StageRef = Callable[[Config], "StageSummary"] | str  # a stage function, or "module:function" imported when run


def parse_config(argv: list[str] | None, description: str, stage: str = "") -> Config:
    """Returns the Config from `--config`, `--verbose` and the trailing `key=value` overrides."""
    from engine.config_help import stage_help

    parser = argparse.ArgumentParser(
        prog=f"python -m jobs.{stage}" if stage else None, description=description,
        epilog=stage_help(stage) if stage else None, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--config", default="conf/default.yaml", help="YAML config (default: conf/default.yaml)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs too (same as log.level=debug)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. boxes.nms_iou=0.2")
    args = parser.parse_intermixed_args(argv)  # `--verbose` may come after key=value (make ARGS="... --verbose")
    overrides = [*args.overrides, *(["log.level=debug"] if args.verbose else [])]
    return absolute_paths(load_config(args.config, overrides))


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


def _resolve(stage: StageRef) -> Callable[[Config], StageSummary]:
    if callable(stage):
        return stage
    module, name = stage.split(":")
    return getattr(importlib.import_module(module), name)


def preamble(name: str, cfg: Config) -> str:
    """Returns a job's first line: its name, run dir and the data it reads (`make bench`: its own generated data)."""
    data = cfg.bench.data_root if name == "bench" else cfg.data.root
    return f"-> {name or 'stage'}: run {cfg.run.dir}, data {data}"


def run_job(argv: list[str] | None, description: str, stage: StageRef, name: str = "") -> int:
    """Parses the config, checks the stage's inputs, runs `stage`, prints its summary; returns the exit code.

    Bad configuration, missing inputs and refused inputs are one clear line on stderr and exit code 2.
    """
    from engine.preflight import preflight
    from engine.runtime import console

    native_log = ""
    try:
        cfg = parse_config(argv, description, name)
        console.configure(cfg.log)
        native_log = console.route_native_stderr(name)  # Ray's C++ lines to a file, Python's to the terminal
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        preflight(name, cfg)
        print(preamble(name, cfg), flush=True)
        summary = _resolve(stage)(cfg)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if native_log and os.path.getsize(native_log):
            print(f"  native log (Ray's own lines): {native_log}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


def job_main(stage: StageRef, description: str | None, name: str = "") -> Callable[[list[str] | None], int]:
    """Returns a job's `main(argv) -> exit code` running `stage` (a function or "module:function")."""

    def main(argv: list[str] | None = None) -> int:
        return run_job(argv, description or str(stage), stage, name)

    return main
