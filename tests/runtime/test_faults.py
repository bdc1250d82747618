"""Faults: a killed model actor, a killed driver, unwritable outputs — nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.core.model.classifier import arch_info, build_classifier
from engine.io.checkpoints import save_model
from engine.io.pause import PAUSE_AT_ENV, PAUSE_DIR_ENV
from engine.io.summary import AccountError
from engine.io.tables import OutputError, TableWriter, read_table, write_part
from engine.runtime.pipeline import iter_results, scored_stream, use_gpu
from engine.stages._scoring import cam_settings, scoring_feed
from engine.stages.boxes import run_boxes
from engine.stages.cam import cam_rows, run_cam
from tests.conftest import REPO, test_config


@pytest.fixture(scope="module")
def untrained_run(data_root: Path, split_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The split run with an untrained tiny model stored as its best model (enough for cam)."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    shutil.copytree(split_run, run_dir)
    cfg = test_config(data_root, run_dir)
    save_model(str(run_dir), build_classifier(cfg.model), {**arch_info(cfg.model), "epoch": 0, "val_auc": None})
    return run_dir


def _model_actor_pids() -> list[int]:
    """Returns the PIDs of this session's model actors (descendants of this process only)."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmdline.startswith("ray::MapWorker") and "ClassifyCamStage" in cmdline:
            pids.append(proc.pid)
    return pids


def test_killed_model_actor_is_restarted_and_every_image_arrives_once(ray_session, untrained_run, data_root) -> None:
    cfg = test_config(
        data_root, untrained_run, "cam.scope=all", "cam.limit=48", "infer.batch_size=4", "infer.call_batches=1"
    )  # 12 batches: the kill lands mid-stream
    rows = cam_rows(cfg)
    gpu = use_gpu(cfg.train.use_gpu)
    stream = iter_results(scored_stream(rows, cam_settings(cfg, True, gpu), scoring_feed(cfg, gpu)), batch_size=4)
    seen: list[str] = list(next(stream)["image_id"])
    killed = _model_actor_pids()
    assert killed, "no model actor process found"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    scored_after: set[int] = set()
    for batch in stream:
        seen.extend(batch["image_id"])
        scored_after.update(int(pid) for pid in batch["actor_pid"])
    assert len(seen) == len(set(seen)), "an image came out twice"
    assert sorted(seen) == sorted(rows["image_id"]), "an image was lost"
    assert scored_after - set(killed), "no new actor process scored a row after the kill"


def test_killed_cam_driver_commits_nothing_and_a_rerun_completes(untrained_run: Path, data_root: Path) -> None:
    args = [
        f"data.root={data_root}",
        f"run.dir={untrained_run}",
        "canvas.height=256",
        "canvas.width=128",
        "boxes.size=12",
        "model.output_stride=32",
        "cam.scope=all",
        "cam.limit=24",
        "infer.batch_size=4",
        "ray.num_cpus=2",
        "data.view=POST",  # the model's view, as test_config's (conf/demo.yaml reads both)
    ]
    command = [sys.executable, "-m", "jobs", "cam", "--config", "conf/demo.yaml", *args]
    # the driver stops after staging its first of 6 batches (engine/io/pause.py): killed mid-run on any machine
    marker = untrained_run.parent / "pause" / "cam_staged"
    pause = {PAUSE_AT_ENV: "cam_staged", PAUSE_DIR_ENV: str(marker.parent)}
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **pause},
    )
    staging = untrained_run / "_staging"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert any(staging.glob("cam-*")), "the run should have been killed while staging"
    assert not (untrained_run / "tables" / "heatmaps").exists(), "a killed run must not commit tables"
    assert read_table(str(untrained_run), "preds").query("stage == 'cam'").empty
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    preds = read_table(str(untrained_run), "preds").query("stage == 'cam'")
    errors = read_table(str(untrained_run), "errors").query("stage == 'cam'")
    expected = cam_rows(test_config(data_root, untrained_run, "cam.scope=all", "cam.limit=24"))["image_id"]
    assert sorted(preds["image_id"].tolist() + errors["image_id"].tolist()) == sorted(expected)
    assert not any(staging.glob("cam-*")), "the rerun should clear the interrupted run's staging"


def test_existing_cam_outputs_are_not_replaced_without_overwrite(ray_session, untrained_run, data_root) -> None:
    cfg = test_config(data_root, untrained_run, "cam.limit=4")
    if not (untrained_run / "tables" / "preds" / "stage=cam").exists():
        run_cam(cfg)
    with pytest.raises(OutputError, match="run.overwrite=true"):
        run_cam(cfg)


def test_unwritable_run_dir_fails_fast_with_a_clear_message(untrained_run: Path, data_root: Path, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    command = [
        sys.executable,
        "-m",
        "jobs",
        "index",
        "--config",
        "conf/demo.yaml",
        f"data.root={data_root}",
        f"run.dir={blocker}/run",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "error:" in result.stderr and str(blocker) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


CAM_OUTPUTS = ("preds", "heatmaps", "boxes", "meta", "errors")


def _outputs(run_dir: Path) -> dict[str, list]:
    """Returns the sorted (image_id, split) pairs of every cam output table (boxes with their rank)."""
    out = {}
    for name in CAM_OUTPUTS:
        frame = read_table(str(run_dir), name)
        keys = ["image_id", "split", "rank"] if name == "boxes" else ["image_id", "split"]
        out[name] = sorted(map(tuple, frame[keys].astype(str).to_numpy()))
    return out


@pytest.fixture(scope="module")
def cam_test_run(ray_session, untrained_run: Path, data_root: Path, tmp_path_factory) -> Path:
    """A copy of the untrained run with `make cam` outputs of 4 test images."""
    run_dir = tmp_path_factory.mktemp("camtest") / "run"
    shutil.copytree(untrained_run, run_dir, ignore=shutil.ignore_patterns("tables"))
    shutil.copytree(untrained_run / "tables" / "index", run_dir / "tables" / "index")
    shutil.copytree(untrained_run / "tables" / "splits", run_dir / "tables" / "splits")
    run_cam(test_config(data_root, run_dir, "cam.split=test", "cam.limit=4"))
    return run_dir


def test_cam_on_an_empty_val_selection_leaves_the_test_outputs_intact(cam_test_run, data_root, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cam_test_run, run_dir)
    before = _outputs(run_dir)
    assert before["heatmaps"] and before["meta"]
    splits = read_table(str(run_dir), "splits").replace({"split": {"val": "train"}})  # a data set without val
    writer = TableWriter(str(run_dir), "split", overwrite=True)
    writer.write("splits", splits)
    writer.commit()
    summary = run_cam(test_config(data_root, run_dir, "cam.split=val", "run.overwrite=true"))
    assert (summary.rows_in, summary.rows_ok, summary.to_dict()["errors"]) == (0, 0, 0)
    assert _outputs(run_dir) == before
    assert (run_dir / "tables" / "heatmaps" / "split=val").is_dir()  # the val partitions it owns, empty


def test_boxes_reports_a_heatmap_without_meta_as_an_error_row(cam_test_run, data_root, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cam_test_run, run_dir)
    meta = read_table(str(run_dir), "meta").sort_values("image_id")
    writer = TableWriter(str(run_dir), "cam", overwrite=True, split="test")
    writer.write("meta", meta.iloc[1:])  # the first image loses its meta row
    writer.commit()
    summary = run_boxes(test_config(data_root, run_dir))
    assert (summary.rows_in, summary.rows_ok, dict(summary.errors)) == (4, 3, {"missing_meta": 1})
    errors = read_table(str(run_dir), "errors").query("stage == 'boxes'")
    assert errors["image_id"].tolist() == [meta["image_id"].iloc[0]]
    assert meta["image_id"].iloc[0] not in set(read_table(str(run_dir), "boxes")["image_id"])


def test_boxes_refuses_a_meta_row_stored_twice_and_keeps_the_old_boxes(cam_test_run, data_root, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cam_test_run, run_dir)
    before = _outputs(run_dir)
    meta = read_table(str(run_dir), "meta")
    write_part(str(run_dir), "meta", meta.iloc[:1], "copied-again")  # one image's meta twice
    with pytest.raises(AccountError, match=r"boxes: 4 rows in, but 5 ok \+ 0 errors"):
        run_boxes(test_config(data_root, run_dir))
    assert _outputs(run_dir)["boxes"] == before["boxes"]
