"""The command line: `python -m jobs <stage> --config FILE key=value ...` runs one stage (`make <stage>`)."""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str] | None = None) -> int:
    """Runs `argv[0]` (a stage name) with the rest of `argv`; returns the exit code (2: unknown stage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m jobs <stage> --config FILE [key=value ...]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jobs.{args[0]}")  # interim: H3 replaces this with the stage declarations
    return module.main(args[1:])
