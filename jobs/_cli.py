"""The one code path of every stage's command line: `--config FILE [--verbose] key=value ...`, checks, logging, exit
codes.

A job reads its stage's declaration (engine/stages/_stage.py; the module stays light) and imports what the stage
runs on (torch, timm, Ray) only after the config has loaded and the driver-side checks of engine/preflight.py have
passed, so that a typo or a missing input is one line within a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from engine.config import Config, ConfigError, load_config
from engine.stages._stage import Stage

CHECK = "--check-enabled"  # runs nothing: the stage's `<name>.enabled` switch as the exit code (0 on, 1 off)


def parse_config(argv: list[str] | None, stage: Stage) -> Config:
    """Returns the Config from `--config`, `--verbose` and the trailing `key=value` overrides."""
    from engine.config_help import stage_help

    parser = argparse.ArgumentParser(
        prog=f"python -m jobs {stage.name}",
        description=f"`make {stage.name}`: {stage.help}",
        epilog=stage_help(stage),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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


def preamble(stage: Stage | str, cfg: Config) -> str:
    """Returns a job's first line: its name, run dir and the data it reads (its declaration's `data`, else data.root;
    `make bench`: its own generated data)."""
    if isinstance(stage, str):
        from engine.stages import stage as declaration

        stage = declaration(stage)
    data = stage.data(cfg) if stage.data else cfg.data.root
    return f"-> {stage.name}: run {cfg.run.dir}, data {data}"


def run_stage(stage: Stage, argv: list[str] | None) -> int:
    """Parses the config, checks the stage's inputs, runs it, prints its summary; returns the exit code.

    Bad configuration, missing inputs and refused inputs are one clear line on stderr and exit code 2. A stage that
    serves (`make browse`) runs until Ctrl-C instead; `--check-enabled` only answers the stage's switch.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if CHECK in args:
        args.remove(CHECK)
        return check_enabled(stage, args)
    if stage.serves:
        return serve(stage, args)
    from engine.preflight import preflight
    from engine.runtime import console

    native_log = ""
    try:
        cfg = parse_config(args, stage)
        console.configure(cfg.log)
        native_log = console.route_native_stderr(stage.name)  # Ray's C++ lines to a file, Python's to the terminal
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        preflight(stage, cfg)
        print(preamble(stage, cfg), flush=True)
        summary = stage.run(cfg)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if native_log and os.path.getsize(native_log):
            print(f"  native log (Ray's own lines): {native_log}", file=sys.stderr)
        return 2
    if summary is not None:
        print(summary.render())
    return 0


def serve(stage: Stage, argv: list[str]) -> int:
    """Runs a stage that serves until interrupted (`make browse`); exit code 0 on Ctrl-C, 2 on bad config."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        stage.run(parse_config(argv, stage))
    except KeyboardInterrupt:
        return 0
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def check_enabled(stage: Stage, argv: list[str]) -> int:
    """Runs nothing: exit code 0 when `<stage>.enabled` is true, 1 when false, 2 on bad config or no such switch."""
    try:
        section = getattr(parse_config(argv, stage), stage.name, None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(getattr(section, "enabled", None), bool):
        print(f"error: {CHECK}: stage {stage.name} has no `{stage.name}.enabled` switch", file=sys.stderr)
        return 2
    return 0 if section.enabled else 1
