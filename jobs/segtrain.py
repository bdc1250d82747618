"""`make segtrain`: Train a segmentation network (smp, timm encoder) on the kept pseudo masks with Ray Train.

`--check-enabled` runs nothing: exit 0 when `segtrain.enabled` is true, else 1 (`make all` asks it first).
"""

from __future__ import annotations

import sys

from engine.config import ConfigError
from jobs._cli import parse_config, run_job

CHECK = "--check-enabled"


def main(argv: list[str] | None = None) -> int:
    """Runs `make segtrain`, or with --check-enabled only reports `segtrain.enabled` in the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if CHECK not in args:
        return run_job(args, __doc__, "engine.stages.segtrain:run_segtrain", "segtrain")
    args.remove(CHECK)
    try:
        return 0 if parse_config(args, __doc__, "segtrain").segtrain.enabled else 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
