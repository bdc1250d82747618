"""`make browse`: a local web page over every image of a run: sortable table, one page per image with CAM and boxes."""

from __future__ import annotations

import logging
import sys

from engine.config import ConfigError
from jobs._cli import parse_config


def main(argv: list[str] | None = None) -> int:
    """Parses `--config FILE key=value ...` and serves until interrupted; exit code 2 on bad config."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv, __doc__, "browse")
        from engine.stages.browse import serve

        serve(cfg, cfg.browse)
    except KeyboardInterrupt:
        return 0
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
