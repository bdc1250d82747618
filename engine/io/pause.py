"""Pause points: a job stops at a named place when its environment asks, so that a test can kill it exactly there.

With `ENGINE_PAUSE_AT=<name>` set, `pause_point(<name>)` creates the file `<ENGINE_PAUSE_DIR>/<name>` (the
temporary folder when unset) and then sleeps until the process is killed. The kill-and-resume tests use it, so
that where a job dies depends on the job's own progress, never on how fast the machine runs it. Unset (always,
outside those tests), a pause point does nothing.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

PAUSE_AT_ENV = "ENGINE_PAUSE_AT"
PAUSE_DIR_ENV = "ENGINE_PAUSE_DIR"


def pause_point(name: str) -> None:
    """Sleeps forever after marking `name` as reached when `ENGINE_PAUSE_AT` names it; otherwise returns at once."""
    if os.environ.get(PAUSE_AT_ENV) != name:
        return
    folder = Path(os.environ.get(PAUSE_DIR_ENV) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).touch()
    while True:
        time.sleep(60)
