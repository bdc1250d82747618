"""The command line of every stage: `python -m jobs <stage> --config FILE [--verbose] key=value ...` (`make <stage>`).

`python -m jobs --list` names the stages with their line of help (`make help`); `python -m jobs <stage> --help`
lists the config keys the stage reads with their defaults and meanings; `python -m jobs <stage> --check-enabled`
answers the stage's `<stage>.enabled` switch in the exit code (`make all` asks segtrain's). Each stage is read from
its declaration (`STAGE` in engine/stages/<stage>.py) and run by `jobs._cli.run_stage`: there is no file per stage
here. `python -m jobs.demo_summary` (the end of `make demo`) is no stage.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = "usage: python -m jobs <stage> --config FILE [--verbose] [key=value ...]   (python -m jobs --list: the stages)"


def main(argv: list[str] | None = None) -> int:
    """Runs `argv[0]` (a stage name) with the rest of `argv`; returns the exit code (2: no such stage)."""
    from engine.stages import stage

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--list"]:
        print(stage_list())
        return 0
    if args[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{stage_list()}")
        return 0
    if not args or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        declared = stage(args[0])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from jobs._cli import run_stage

    return run_stage(declared, args[1:])


def stage_main(name: str) -> Callable[[list[str] | None], int]:
    """Returns `main(argv) -> exit code` of one stage (`argv` without the stage's name), e.g. for tests."""

    def stage_job(argv: list[str] | None = None) -> int:
        return main([name, *(sys.argv[1:] if argv is None else argv)])

    return stage_job


def stage_list() -> str:
    """Returns one line per stage, by name: `name<TAB>help` (`make help` sorts them in among its other targets)."""
    from engine.stages import stage, stage_names

    return "\n".join(f"{name}\t{stage(name).help}" for name in stage_names())
