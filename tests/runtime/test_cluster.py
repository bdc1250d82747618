"""A real two-node Ray cluster on this machine: `make train` (2 workers) and `make cam` attach via RAY_ADDRESS.

The head (1 CPU) and a worker node (2 CPUs) are `ray start --block` processes with their own temp dir and
auth token, so nothing else on the machine can attach to them by accident; the jobs run as subprocesses,
so the session's embedded Ray (`ray_session`) never meets the cluster. `make cam` also runs embedded (the
same command without RAY_ADDRESS, `ray.num_cpus=3`, the same model) as the reference; timings are printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from engine.config import load_config
from engine.io.tables import read_table
from engine.stages._rows import select_rows
from tests.conftest import REPO, TEST_OVERRIDES, test_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NODE_CPUS = (1, 2)  # head, worker node: 3 logical CPUs on a 2-core machine
EMBEDDED_CPUS = 3  # the embedded reference gets as many logical CPUs as the cluster
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 300
STOP_TIMEOUT_S = 45
JOB_OVERRIDES = ("train.epochs=1", "train.num_workers=2", "cam.split=train")  # cam: 48 whole-body POST images
# Exec'd with prctl(PR_SET_PDEATHSIG=1, SIGTERM=15): a node goes down with the test process whatever kills it.
FATE_SHARED = "import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 15); os.execv(sys.argv[1], sys.argv[1:])"
NODE_CHECK = """
import json, time, ray
ray.init()
deadline = time.monotonic() + {timeout}
while time.monotonic() < deadline:
    cpus = sorted(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    if len(cpus) >= {nodes}:
        break
    time.sleep(0.2)
print(json.dumps(cpus))
"""


@dataclass
class LocalCluster:
    """A head and a worker node started by this test, and what a driver needs to attach."""

    temp_dir: Path
    env: dict[str, str]  # driver environment: RAY_ADDRESS plus the cluster's auth token
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> list[psutil.Process]:
        """Stops the nodes and every process they started (by pid); returns the ones that had to be killed."""
        spawned = []
        for node in self.nodes:
            try:
                spawned += psutil.Process(node.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its processes
        for node in self.nodes:
            try:
                node.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(timeout=STOP_TIMEOUT_S)
        _, survivors = psutil.wait_procs(spawned, timeout=STOP_TIMEOUT_S)
        for proc in survivors:
            proc.kill()
        psutil.wait_procs(survivors, timeout=STOP_TIMEOUT_S)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return survivors


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _clean_env() -> dict[str, str]:
    """Returns this process's environment without Ray settings (the session's own Ray sets some)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"RAY_USAGE_STATS_ENABLED": "0"}


def _start_node(cluster: LocalCluster, args: list[str], log: Path) -> None:
    launcher = [sys.executable, "-c", FATE_SHARED] if sys.platform.startswith("linux") else []
    command = [
        *launcher,
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        f"--temp-dir={cluster.temp_dir}",
        "--object-store-memory=300000000",
        *args,
    ]
    with open(log, "wb") as out:
        cluster.nodes.append(subprocess.Popen(command, env=cluster.env, stdout=out, stderr=subprocess.STDOUT))


def _wait_for_file(path: Path, cluster: LocalCluster, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if any(node.poll() is not None for node in cluster.nodes):
            break
        time.sleep(0.1)  # polling a condition with a deadline, not a fixed wait
    raise AssertionError(f"the head node did not come up:\n{log.read_text()[-3000:]}")


def _run_job(stage: str, cfg_args: list[str], env: dict[str, str], log: Path) -> float:
    """Runs `python -m jobs <stage>` to completion; returns its wall-clock seconds."""
    started = time.monotonic()
    with open(log, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "jobs", stage, "--config", "conf/demo.yaml", *cfg_args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=JOB_TIMEOUT_S,
        )
    assert done.returncode == 0, f"jobs {stage} failed:\n{log.read_text()[-4000:]}"
    return time.monotonic() - started


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head (1 CPU) and a worker node (2 CPUs) on this machine; stopped, with all they started, at the end."""
    logs = tmp_path_factory.mktemp("cluster_logs")
    # A fresh token of its own (Ray 2.60 clusters use token auth); no 30-s drain on SIGTERM for a test cluster.
    env = _clean_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    local = LocalCluster(temp_dir=Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")), env=env)  # short: socket paths
    try:
        port = _free_port()
        _start_node(
            local,
            [
                "--head",
                f"--port={port}",
                f"--num-cpus={NODE_CPUS[0]}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            logs / "head.log",
        )
        address = _wait_for_file(local.temp_dir / "ray_current_cluster", local, logs / "head.log")
        _start_node(local, [f"--address={address}", f"--num-cpus={NODE_CPUS[1]}"], logs / "worker.log")
        local.env = env | {"RAY_ADDRESS": address}
        yield local
    finally:
        survivors = local.stop()
    assert not [p for p in survivors if p.is_running()], "cluster processes survived SIGKILL"


def test_the_cluster_has_a_head_and_a_worker_node(cluster: LocalCluster, tmp_path: Path) -> None:
    check = NODE_CHECK.format(timeout=START_TIMEOUT_S, nodes=len(NODE_CPUS))
    done = subprocess.run(
        [sys.executable, "-c", check], env=cluster.env, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == sorted(float(c) for c in NODE_CPUS)


@pytest.fixture(scope="module")
def runs(cluster: LocalCluster, data_root: Path, split_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Trains (2 workers) on the cluster; then cam with that model on the cluster and embedded. Timed."""
    base = tmp_path_factory.mktemp("cluster_runs")
    logs = tmp_path_factory.mktemp("cluster_job_logs")
    embedded_env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    where = {"cluster": (cluster.env, []), "embedded": (embedded_env, [f"ray.num_cpus={EMBEDDED_CPUS}"])}
    train_dir = base / "train_cluster"
    shutil.copytree(split_run, train_dir)
    args = [f"data.root={data_root}", f"run.dir={train_dir}", *TEST_OVERRIDES, *JOB_OVERRIDES]
    out: dict = {"dirs": {"train_cluster": train_dir}, "wall_s": {}}
    out["wall_s"]["train_cluster"] = _run_job("train", args, cluster.env, logs / "train_cluster.log")
    for kind, (env, extra) in where.items():
        run_dir = base / f"cam_{kind}"
        shutil.copytree(out["dirs"]["train_cluster"], run_dir)  # the same trained model for both
        args = [f"data.root={data_root}", f"run.dir={run_dir}", *TEST_OVERRIDES, *JOB_OVERRIDES, *extra]
        out["wall_s"][f"cam_{kind}"] = _run_job("cam", args, env, logs / f"cam_{kind}.log")
        out["dirs"][f"cam_{kind}"] = run_dir
    return out


def _summary(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "summaries" / f"{stage}.json").read_text())


def _print_timings(capsys: pytest.CaptureFixture, runs: dict, stage: str) -> None:
    with capsys.disabled():
        for kind in ("embedded", "cluster"):
            if f"{stage}_{kind}" not in runs["dirs"]:
                continue
            summary = _summary(runs["dirs"][f"{stage}_{kind}"], stage)
            wall = runs["wall_s"][f"{stage}_{kind}"]
            print(
                f"\n[cluster test] {stage:5s} {kind:8s}: {summary['rows_in']} rows, stage {summary['seconds']:.1f} s,"
                f" job wall {wall:.1f} s (with interpreter and Ray start/attach)"
            )


def test_job_arguments_are_the_test_config(data_root: Path, tmp_path: Path) -> None:
    args = [f"data.root={data_root}", f"run.dir={tmp_path}", *TEST_OVERRIDES, *JOB_OVERRIDES]
    assert load_config(REPO / "conf" / "demo.yaml", args) == test_config(data_root, tmp_path, *JOB_OVERRIDES)


def test_two_worker_training_on_the_cluster_sees_every_image_once_and_checkpoints(
    runs: dict, data_root: Path, capsys: pytest.CaptureFixture
) -> None:
    _print_timings(capsys, runs, "train")
    run_dir = runs["dirs"]["train_cluster"]
    cfg = test_config(data_root, run_dir, *JOB_OVERRIDES)
    n_train, val_ids = len(select_rows(cfg, ("train",))), sorted(select_rows(cfg, ("val",))["image_id"])
    epochs = read_table(str(run_dir), "epochs")
    dropped = n_train % 2  # an equal split over 2 workers drops the odd row, and counts it
    assert epochs["epoch"].tolist() == [1] and epochs["images"].tolist() == [n_train - dropped]  # both shards once
    assert epochs["val_auc"].between(0, 1).all() and np.isfinite(epochs["train_loss"]).all()
    preds = read_table(str(run_dir), "preds")
    assert sorted(preds.loc[preds["stage"] == "train", "image_id"]) == val_ids
    assert (run_dir / "model" / "best.pt").is_file() and list((run_dir / "train_state").glob("checkpoint_*"))
    summary = _summary(run_dir, "train")
    assert summary["epochs"] == 1 and summary["balanced"]
    assert summary.get("skipped", {}).get("equal_split", 0) == dropped


def test_cam_on_the_cluster_equals_the_embedded_cam_for_the_same_model(
    runs: dict, data_root: Path, capsys: pytest.CaptureFixture
) -> None:
    _print_timings(capsys, runs, "cam")
    cluster_dir, embedded_dir = str(runs["dirs"]["cam_cluster"]), str(runs["dirs"]["cam_embedded"])
    selected = select_rows(test_config(data_root, cluster_dir, *JOB_OVERRIDES), ("train",), qc_exclude=False)
    tables = {}
    for name, key in (
        ("preds", ["image_id"]),
        ("heatmaps", ["image_id"]),
        ("meta", ["image_id"]),
        ("boxes", ["image_id", "rank"]),
    ):
        frames = [read_table(d, name) for d in (cluster_dir, embedded_dir)]
        frames = [f[f["stage"] == "cam"] if "stage" in f else f for f in frames]  # the copied run's train preds
        tables[name] = [f.sort_values(key).reset_index(drop=True) for f in frames]
    cluster_preds, embedded_preds = tables["preds"]
    assert cluster_preds["image_id"].tolist() == sorted(selected["image_id"]) == embedded_preds["image_id"].tolist()
    np.testing.assert_allclose(cluster_preds["y_prob"], embedded_preds["y_prob"], atol=1e-5)
    pd.testing.assert_frame_equal(*tables["meta"])
    cluster_maps, embedded_maps = (np.stack(t["heatmap"].to_numpy()).astype(np.float32) for t in tables["heatmaps"])
    np.testing.assert_allclose(cluster_maps, embedded_maps, atol=2e-3)
    np.testing.assert_allclose(tables["heatmaps"][0]["raw_max"], tables["heatmaps"][1]["raw_max"], rtol=1e-4)
    cluster_boxes, embedded_boxes = tables["boxes"]
    assert cluster_boxes[["image_id", "rank"]].equals(embedded_boxes[["image_id", "rank"]])
    coords = ["x1", "y1", "x2", "y2", "x1_orig", "y1_orig", "x2_orig", "y2_orig"]
    np.testing.assert_allclose(cluster_boxes[coords], embedded_boxes[coords], atol=1e-3)
    for run_dir in (cluster_dir, embedded_dir):
        summary = _summary(Path(run_dir), "cam")
        assert summary["balanced"] and summary["rows_ok"] == len(selected)
