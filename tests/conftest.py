"""Shared fixtures: one local Ray per session, a small generated dataset, an indexed and split run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# The demo config scaled down for tests: tiny canvas, stride 32, tiny timm model, CPU (also passed to job CLIs).
TEST_OVERRIDES = (
    "data.view=POST",  # one view, as the seed: tests/e2e/test_both_views_e2e.py trains the demo's BOTH
    "split.train=0.8",  # the default split, not the demo's
    "split.val=0.1",
    "canvas.height=256",
    "canvas.width=128",
    "boxes.size=12",
    "model.output_stride=32",
    "train.epochs=2",
    "train.batch_size=8",
    "ray.decode_batch_size=8",
    "infer.batch_size=8",
    "cam.overlays=2",
)
# More overrides from the environment, applied last to every test config and job: e.g.
# ENGINE_TEST_OVERRIDES="train.torch_threads=1" runs the suite with other summation orders, as on another CPU.
ENV_OVERRIDES = tuple(os.environ.get("ENGINE_TEST_OVERRIDES", "").split())
TEST_OVERRIDES = (*TEST_OVERRIDES, *ENV_OVERRIDES)


def test_config(data_root: Path, run_dir: Path, *overrides: str) -> Config:
    """Returns the demo config scaled down for tests (TEST_OVERRIDES), then `overrides`."""
    return load_config(
        REPO / "conf" / "demo.yaml",
        [f"data.root={data_root}", f"run.dir={run_dir}", *TEST_OVERRIDES, *overrides, *ENV_OVERRIDES],
    )


test_config.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (2 CPUs) shared by every Ray test of the session."""
    import ray

    from engine.config import RayConfig
    from engine.runtime.pipeline import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated BS-80K-shaped dataset of 60 patients."""
    from engine.io.synth import generate_dataset

    root = tmp_path_factory.mktemp("bs80k") / "data"
    generate_dataset(root, patients=60, seed=3)
    return root


@pytest.fixture(scope="session")
def split_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with the index and splits tables of `data_root`."""
    from engine.stages.index import run_index
    from engine.stages.split import run_split

    run_dir = tmp_path_factory.mktemp("runs") / "base"
    cfg = test_config(data_root, run_dir)
    run_index(cfg)
    run_split(cfg)
    return run_dir


# The display's cadence forced, so that every machine prints the same kinds of lines, however fast: rank 0 sends
# an event at every batch and the driver writes a progress line at every event (tests/runtime/test_terminal.py).
JOB_CADENCE = ("log.events_s=0", "log.progress_s=0")


@dataclass(frozen=True)
class JobRun:
    """A finished `python -m jobs <stage>` process: exit code, stdout+stderr lines, wall seconds, process id."""

    code: int
    lines: list[str]
    seconds: float
    pid: int


def importtime_job(
    stage: str, data_root: Path, run_dir: Path, *extra: str, env: dict | None = None
) -> tuple[int, str, str]:
    """Runs `python -X importtime -m jobs <stage>` on the test config, then `extra`; returns the exit code, its output
    lines (the import timings left out) and the top-level modules it imported (a refusal must come before Ray)."""
    command = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "jobs",
        stage,
        "--config",
        "conf/demo.yaml",
        f"data.root={data_root}",
        f"run.dir={run_dir}",
        *TEST_OVERRIDES,
        *extra,
    ]
    started = time.monotonic()
    env = {**os.environ, **(env or {})}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    print(f"{stage} {' '.join(extra)}: exit {done.returncode} after {time.monotonic() - started:.2f} s")
    lines = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("import time:")]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    return done.returncode, "\n".join(lines), " ".join(sorted(imported))


def run_job(stage: str, data_root: Path | str, run_dir: Path | str, *extra: str, timeout_s: float = 900) -> JobRun:
    """Runs `python -m jobs <stage>` on the test config (TEST_OVERRIDES, 2 CPUs, JOB_CADENCE), then `extra`."""
    command = [
        sys.executable,
        "-m",
        "jobs",
        stage,
        "--config",
        "conf/demo.yaml",
        f"data.root={data_root}",
        f"run.dir={run_dir}",
        *TEST_OVERRIDES,
        "ray.num_cpus=2",
        *JOB_CADENCE,
        *extra,
    ]
    started = time.monotonic()
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    return JobRun(proc.returncode, out.splitlines(), time.monotonic() - started, proc.pid)


def _check(job: JobRun, stage: str) -> None:
    assert job.code == 0, f"jobs {stage} failed:\n" + "\n".join(job.lines[-40:])


@pytest.fixture(scope="session")
def session_jobs() -> dict[str, JobRun]:
    """The job processes that made `trained_run` and `scored_run`, by stage, for tests of what a job prints."""
    return {}


@pytest.fixture(scope="session")
def trained_run(session_trained_run: Path) -> Path:
    """The split run trained for 2 epochs with a selected threshold: trained once per session; copy to modify.

    A module may override this name (tests/e2e/test_pipeline_e2e.py: with its own copy); `scored_run` builds on
    `session_trained_run`, which none overrides.
    """
    return session_trained_run


@pytest.fixture(scope="session")
def session_trained_run(
    ray_session, data_root: Path, split_run: Path, session_jobs: dict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """`trained_run`: `make train` and `make threshold` run as job processes (recorded in `session_jobs`), so the
    same training serves the tests of a trained model and the tests of what a job prints."""
    import shutil

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(split_run, run_dir)
    for stage in ("train", "threshold"):
        session_jobs[stage] = run_job(stage, data_root, run_dir)
        _check(session_jobs[stage], stage)
    return run_dir


@pytest.fixture(scope="session")
def scored_run(
    data_root: Path, session_trained_run: Path, session_jobs: dict, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of `trained_run` after `make cam` over its test split, as a job process (once per session; copy to
    modify)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("scored") / "run"
    shutil.copytree(session_trained_run, run_dir)
    session_jobs["cam"] = run_job("cam", data_root, run_dir)
    _check(session_jobs["cam"], "cam")
    return run_dir
