"""What a job prints: no Ray-internal lines by default, a start line, progress, one line per epoch, the summary."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path

import pytest

from engine.runtime.console import Progress, done_line, epoch_line, format_duration, native_log_path, progress_line
from tests.conftest import REPO, run_job

# Lines only Ray itself writes: actor/worker prefixes, C++ core logs, Ray Data / Train internals, Ray's warnings.
RAY_INTERNAL = re.compile(
    r"pid=|core_worker|raylet|PlacementGroupCleaner|TrainController|streaming_executor|TrainingReport\(|"
    r"Checkpoint successfully|Progress bars|Token authentication|RayDeprecationWarning|Moving model to device|"
    r"Wrapping provided model|Started training worker group|execution finished"
)
# Ray 2.60's driver core worker logs this for every Ray Data actor pool (github.com/ray-project/ray/issues/57733):
# a quiet job routes it to its native log file (engine/runtime/console.py)
RAY_ISSUE_57733 = "has constructor arguments in the object store and max_restarts > 0"
# The jobs run with the display's cadence forced (JOB_CADENCE of tests/conftest.py), so that every machine prints the
# same kinds of lines, however fast: rank 0 sends an event at every batch, the driver a progress line at every event.
EPOCH_LINE = re.compile(r"^epoch (\d+)/2 train_loss \d+\.\d+ val_loss \d+\.\d+ val_auc (\d+\.\d+|nan) ")


def test_progress_line_gives_count_share_rate_and_time_left() -> None:
    assert progress_line("cam", 100, 400, 10.0, "images") == "cam: 100/400 images (25%), 10.0 images/s, 30s left"
    assert progress_line("qc", 50, None, 5.0, "images") == "qc: 50 images, 10.0 images/s, 5s elapsed"
    assert progress_line("cam", 0, 400, 0.0, "images").endswith("0.0 images/s, ? left")
    assert done_line("cam", 400, 400, 40.0, "images") == "cam: 400/400 images, 10.0 images/s in 40s"


def test_format_duration_reads_as_seconds_minutes_hours() -> None:
    assert [format_duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


def test_epoch_line_shows_the_epoch_counted_from_one_and_marks_the_best() -> None:
    metrics = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "val_auc": 0.75, "img_per_s": 12.34, "is_best": True}
    assert epoch_line(metrics, 6) == "epoch 1/6 train_loss 0.5000 val_loss 0.2500 val_auc 0.7500 12.3 img/s *best"
    seg = {**metrics, "val_dice": 0.125, "is_best": False}
    del seg["val_auc"]  # make segtrain reports its val Dice instead
    assert epoch_line(seg, 2) == "epoch 1/2 train_loss 0.5000 val_loss 0.2500 val_dice 0.1250 12.3 img/s"


class FakeClock:
    """A clock the test moves by hand: Progress's cadence never depends on the machine's speed."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_without_a_terminal_writes_few_plain_lines() -> None:
    clock = FakeClock()
    stream = io.StringIO()  # not a TTY: no tqdm, plain lines at most every interval_s
    bar = Progress("cam", 1000, "images", stream=stream, interval_s=30, clock=clock)
    for _ in range(1000):
        clock.now += 0.01  # 10 s in all: under one interval
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["cam: 1000/1000 images, 100.0 images/s in 10s"] and "\r" not in stream.getvalue()
    stream = io.StringIO()
    bar = Progress("cam", 10, "images", stream=stream, interval_s=5, clock=clock)
    for _ in range(10):
        clock.now += 2.0
        bar.update(1)
    bar.close()
    # a line once 5 s have passed since the last one (at 3, 6 and 9 of 10, after 6, 12, 18 s), then the closing one
    assert stream.getvalue().splitlines() == [
        "cam: 3/10 images (30%), 0.5 images/s, 14s left",
        "cam: 6/10 images (60%), 0.5 images/s, 8s left",
        "cam: 9/10 images (90%), 0.5 images/s, 2s left",
        "cam: 10/10 images, 0.5 images/s in 20s",
    ]


def test_progress_at_interval_zero_writes_every_update_but_the_last() -> None:
    stream = io.StringIO()
    bar = Progress("train epoch 1/2", 4, "batches", stream=stream, interval_s=0, clock=FakeClock())
    for _ in range(4):
        bar.update(1)
    assert [line.split(" batches")[0] for line in stream.getvalue().splitlines()] == [
        f"train epoch 1/2: {k}/4" for k in (1, 2, 3)
    ]


def test_the_driver_shows_rank_zeros_events_as_a_bar_then_one_epoch_line(capsys: pytest.CaptureFixture) -> None:
    from engine.config_sections import LogConfig
    from engine.runtime.console import configure
    from engine.runtime.fit import _show_event

    configure(LogConfig(progress_s=0))
    try:
        bar = None
        for done in (0, 2, 4):
            bar = _show_event(("batches", 1, done), bar, 2, 6)
        metrics = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.25, "val_auc": 0.75, "img_per_s": 1.0, "is_best": True}
        assert _show_event(("epoch", metrics), bar, 2, 6) is None
    finally:
        configure(LogConfig())
    out = capsys.readouterr()
    bars = [line for line in out.err.splitlines() if line.startswith("train epoch 1/2: ")]
    assert [line.split(" batches")[0] for line in bars] == [
        "train epoch 1/2: 0/6",
        "train epoch 1/2: 2/6",
        "train epoch 1/2: 4/6",
    ]
    assert out.out.splitlines() == [epoch_line(metrics, 2)]  # no closing bar line: the epoch line says it all


def test_native_stderr_goes_to_the_log_and_python_stderr_stays_on_the_terminal() -> None:
    script = (
        "import os, sys\n"
        "from engine.runtime.console import route_native_stderr\n"
        "path = route_native_stderr('probe')\n"
        "os.write(2, b'native line\\n')\n"
        "print('python line', file=sys.stderr)\n"
        "print(path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert done.stderr == "python line\n"
    assert path.read_text() == "native line\n"
    path.unlink()


@pytest.fixture(scope="module")
def quiet_runs(scored_run: Path, session_jobs: dict) -> dict:
    """The session's 2-epoch train, threshold and cam, each a real job process (tests/conftest.py): their runs.

    They made `trained_run` and `scored_run`, so the suite trains this model once, not again here.
    """
    return {"run_dir": scored_run, **{stage: session_jobs[stage] for stage in ("train", "threshold", "cam")}}


def _report(capsys: pytest.CaptureFixture, name: str, lines: list[str], seconds: float) -> None:
    with capsys.disabled():
        print(f"\n{name}: {len(lines)} lines in {seconds:.1f} s")


@pytest.mark.parametrize("stage", ["train", "threshold", "cam"])
def test_jobs_print_no_ray_internal_lines(quiet_runs: dict, stage: str, capsys: pytest.CaptureFixture) -> None:
    code, lines, seconds, _ = astuple(quiet_runs[stage])
    _report(capsys, stage, lines, seconds)
    assert code == 0, "\n".join(lines[-40:])
    assert [line for line in lines if RAY_INTERNAL.search(line)] == []
    assert lines[0].startswith(f"-> {stage}: run ") and any(line.startswith(f"== {stage}: ") for line in lines)


def test_train_prints_each_epoch_once_counted_from_one_with_batch_progress(quiet_runs: dict) -> None:
    lines = quiet_runs["train"].lines
    assert [EPOCH_LINE.match(line).group(1) for line in lines if EPOCH_LINE.match(line)] == ["1", "2"]
    assert [line for line in lines if line.startswith("epoch ")] == [line for line in lines if EPOCH_LINE.match(line)]
    assert any(re.match(r"train epoch [12]/2: \d+/\d+ batches \(\d+%\), [\d.]+ batches/s, ", line) for line in lines)
    assert "best_epoch: " in "\n".join(lines)


def test_rays_native_actor_line_goes_to_the_jobs_native_log_not_the_terminal(quiet_runs: dict) -> None:
    cam = quiet_runs["cam"]
    assert not any(RAY_ISSUE_57733 in line for line in cam.lines)
    log = Path(native_log_path("cam")).parent / f"cam-{cam.pid}.log"  # that job's own log (console.native_log_path)
    assert log.is_file() and RAY_ISSUE_57733 in log.read_text(), "the line went neither to the terminal nor a log"


def test_cam_prints_its_image_progress(quiet_runs: dict) -> None:
    lines = quiet_runs["cam"].lines
    assert any(re.match(r"cam: \d+/\d+ images, [\d.]+ images/s in \d+", line) for line in lines)


def test_verbose_brings_rays_own_lines_back(
    quiet_runs: dict, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(quiet_runs["run_dir"], run_dir)  # the session's scored run stays as it is
    code, lines, seconds, _ = astuple(run_job("cam", data_root, run_dir, "run.overwrite=true", "--verbose"))
    _report(capsys, "cam --verbose", lines, seconds)
    assert code == 0, "\n".join(lines[-40:])
    assert any(RAY_INTERNAL.search(line) and RAY_ISSUE_57733 not in line for line in lines)


def test_help_keys_come_from_the_dataclass_fields_and_their_comments() -> None:
    from engine.config_help import config_keys, stage_help

    keys = dict((key, (default, meaning)) for key, default, meaning in config_keys(("seed", "threshold", "log")))
    assert keys["seed"] == ("42", "seeds splits, training and sampling")
    assert keys["threshold.mode"][0] == "youden" and keys["threshold.mode"][1].startswith("youden: max sens")
    assert keys["log.level"][0] == "info" and list(keys)[-2:] == ["log.progress_s", "log.events_s"]
    assert "split.duplicate_groups = [[828, 2244], " in stage_help("split")  # a default spread over several lines
