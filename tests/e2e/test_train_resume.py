"""Kill-and-resume: a training process killed after its first checkpoint finishes on re-run, not from zero."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from engine.io.pause import PAUSE_AT_ENV, PAUSE_DIR_ENV
from engine.io.tables import read_table
from tests.conftest import REPO, TEST_OVERRIDES

EPOCHS = 2


def _train_command(data_root: Path, run_dir: Path) -> list[str]:
    """The session's `trained_run` training (the test config, EPOCHS epochs) as a job process."""
    overrides = [
        f"data.root={data_root}",
        f"run.dir={run_dir}",
        *TEST_OVERRIDES,
        f"train.epochs={EPOCHS}",
        "ray.num_cpus=2",
    ]
    return [sys.executable, "-m", "jobs", "train", "--config", "conf/demo.yaml", *overrides]


def _wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.5)
    return False


def test_killed_training_resumes_from_its_last_checkpoint(
    data_root: Path, split_run: Path, trained_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(split_run, run_dir)
    command = _train_command(data_root, run_dir)
    first_epoch_file = run_dir / "tables" / "epochs" / "epoch-001-0.parquet"
    # rank 0 stops after reporting epoch 1's checkpoint (engine/io/pause.py): the kill lands part-way on any machine
    pause = {PAUSE_AT_ENV: "train_epoch_1", PAUSE_DIR_ENV: str(tmp_path / "pause")}
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **pause},
    )
    try:
        # A checkpoint counts once Ray Train has registered it in its snapshot, not when its folder appears.
        snapshot = run_dir / "train_state" / "checkpoint_manager_snapshot.json"
        paused = tmp_path / "pause" / "train_epoch_1"
        checkpoint_written = _wait_for(lambda: paused.exists() and snapshot.exists(), 300, proc)
        assert checkpoint_written, "no checkpoint before the first run ended"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    epochs_before = read_table(str(run_dir), "epochs")
    assert 1 <= len(epochs_before) < EPOCHS, "the first run should die part-way"
    first_mtime = first_epoch_file.stat().st_mtime_ns
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    epochs = read_table(str(run_dir), "epochs").sort_values("epoch")
    assert epochs["epoch"].tolist() == list(range(1, EPOCHS + 1))  # counted from 1
    assert first_epoch_file.stat().st_mtime_ns == first_mtime, "epoch 1 ran again: the run started over"
    assert (run_dir / "model" / "best.pt").exists()
    uninterrupted = read_table(str(trained_run), "epochs").sort_values("epoch")  # the same training, never killed
    for column in ("train_loss", "val_loss", "val_auc"):  # same seed, same batches: the resumed run ends the same
        assert np.allclose(epochs[column], uninterrupted[column], atol=1e-5), (column, epochs, uninterrupted)


def test_checkpoints_count_done_epochs_old_0_based_ones_included() -> None:
    from engine.runtime.training import epochs_done

    assert epochs_done({"epoch": 2, "epochs_done": 2}) == 2  # epoch 2 (counted from 1) done: resume at the third
    assert epochs_done({"epoch": 0}) == 1  # a run trained before epochs counted from 1 stored its 0-based index
