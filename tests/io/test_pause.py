"""Pause points (engine/io/pause.py): where a kill test stops a job, independent of the machine's speed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.io.pause import PAUSE_AT_ENV, PAUSE_DIR_ENV, pause_point
from tests.conftest import REPO

SCRIPT = """from engine.io.pause import pause_point
pause_point("other")
print("passed other", flush=True)
pause_point("here")
print("never")
"""


def test_a_pause_point_not_named_returns_at_once(monkeypatch) -> None:
    monkeypatch.delenv(PAUSE_AT_ENV, raising=False)
    assert pause_point("train_epoch_1") is None


def test_the_named_pause_point_marks_itself_and_holds_the_process(tmp_path: Path) -> None:
    env = {**os.environ, PAUSE_AT_ENV: "here", PAUSE_DIR_ENV: str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "here").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # polling a condition with a deadline, not a fixed wait
        assert (tmp_path / "here").exists() and not (tmp_path / "other").exists()
        assert proc.poll() is None, "the process went past its pause point"
    finally:
        proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert out == "passed other\n"
