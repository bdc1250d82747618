"""`make browse`: a local web page over every image of a run: sortable table, one page per image with CAM and boxes."""

from __future__ import annotations

import dataclasses
import logging
import sys

from engine.browse import browse_config, serve
from engine.config import Config, ConfigError
from jobs._cli import parse_config


def split_browse_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Returns (argv for the shared parser, `browse.*` overrides) while engine.config has no `browse` section."""
    if "browse" in {f.name for f in dataclasses.fields(Config)}:
        return argv, []
    return [a for a in argv if not a.startswith("browse.")], [a for a in argv if a.startswith("browse.")]


def main(argv: list[str] | None = None) -> int:
    """Parses `--config FILE key=value ...` and serves until interrupted; exit code 2 on bad config."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    shared, browse_overrides = split_browse_overrides(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = parse_config(shared, __doc__)
        settings = browse_config(cfg, browse_overrides)
        serve(cfg, settings)
    except KeyboardInterrupt:
        return 0
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
