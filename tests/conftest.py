"""Shared fixtures: one local Ray per session, a small generated dataset, an indexed and split run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# The demo config scaled down for tests: tiny canvas, stride 32, tiny timm model, CPU (also passed to job CLIs).
TEST_OVERRIDES = (
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


@pytest.fixture(scope="session")
def trained_run(ray_session, data_root: Path, split_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The split run trained for 2 epochs with a selected threshold: trained once per session; copy to modify."""
    import shutil

    from engine.stages.threshold import run_threshold
    from engine.stages.train import run_train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(split_run, run_dir)
    cfg = test_config(data_root, run_dir)
    run_train(cfg)
    run_threshold(cfg)
    return run_dir


@pytest.fixture(scope="session")
def scored_run(data_root: Path, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of `trained_run` after `make cam` over its test split (once per session; copy to modify)."""
    import shutil

    from engine.stages.cam import run_cam

    run_dir = tmp_path_factory.mktemp("scored") / "run"
    shutil.copytree(trained_run, run_dir)
    run_cam(test_config(data_root, run_dir))
    return run_dir
