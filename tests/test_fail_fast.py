"""Fail fast, in one line: what the driver can check before Ray starts is one `error:` line and exit code 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.preflight import host_reachable, hub_repo
from tests.conftest import REPO, importtime_job


def _assert_one_error(code: int, output: str, *needles: str) -> None:
    assert code == 2 and len(output.splitlines()) == 1 and output.startswith("error: "), output[-3000:]
    for needle in needles:
        assert needle in output, output


@pytest.fixture
def split_copy(split_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's indexed and split run, without a model."""
    run_dir = tmp_path / "run"
    shutil.copytree(split_run, run_dir)
    return run_dir


def test_cam_without_a_model_is_one_line_naming_make_train(data_root: Path, split_copy: Path) -> None:
    code, output, imported = importtime_job("cam", data_root, split_copy)
    _assert_one_error(code, output, "model/best.pt missing", "make train")
    assert "ray" not in imported.split() and "torch" not in imported.split()  # refused before the heavy imports


def test_train_without_splits_is_one_line_naming_make_split(data_root: Path, split_copy: Path) -> None:
    shutil.rmtree(split_copy / "tables" / "splits")
    code, output, imported = importtime_job("train", data_root, split_copy)
    _assert_one_error(code, output, "tables/splits missing", "make split")
    assert "ray" not in imported.split()


def test_segtrain_without_masks_and_segment_without_a_network_name_the_commands(data_root, split_copy) -> None:
    code, output, imported = importtime_job("segtrain", data_root, split_copy)
    _assert_one_error(code, output, "tables/masks missing", "make masks")
    assert "ray" not in imported.split() and "torch" not in imported.split()
    code, output, imported = importtime_job("segment", data_root, split_copy)
    _assert_one_error(code, output, "segnet/best.pt missing", "make segtrain")
    assert "ray" not in imported.split() and "torch" not in imported.split()


def test_a_bad_enum_value_is_refused_before_ray_torch_or_timm_load(data_root: Path, split_copy: Path) -> None:
    code, output, imported = importtime_job("cam", data_root, split_copy, "cam.scope=everything")
    _assert_one_error(code, output, "cam.scope", "split, all")
    assert not {"ray", "torch", "timm"} & set(imported.split()), imported


def test_pretrained_weights_out_of_reach_name_the_offline_settings(
    data_root: Path, split_copy: Path, tmp_path: Path
) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, and the hub declared offline
    code, output, imported = importtime_job(
        "train", data_root, split_copy, "model.pretrained=true", "model.name=hf_hub:timm/resnet18.a1_in1k", env=env
    )
    _assert_one_error(code, output, "model.pretrained=false", "model.weights=", "resnet18.a1_in1k")
    assert "ray" not in imported.split()


def test_help_lists_the_stage_keys_with_defaults_and_meanings() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobs", "cam", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    scope = next(line for line in lines if line.strip().startswith("cam.scope = "))
    assert scope.split()[2] == "split" and "whole index" in scope
    assert any(line.strip().startswith("boxes.nms_iou = 0.15 ") for line in lines)
    assert "--verbose" in done.stdout and not any(line.strip().startswith("browse.") for line in lines)


def test_hub_repo_and_an_unreachable_host() -> None:
    assert hub_repo("hf_hub:timm/resnetrs50.tf_in1k") == "timm/resnetrs50.tf_in1k" and hub_repo("resnet18") == ""
    assert not host_reachable("https://127.0.0.1:9", timeout_s=0.5)  # the discard port: nothing listens


def test_cam_with_model_from_run_looks_for_the_model_there_and_needs_no_splits(tmp_path: Path) -> None:
    from engine.config import load_config
    from engine.preflight import PreflightError, check_inputs

    new_scans, trained = tmp_path / "clinic", tmp_path / "trained"
    (new_scans / "tables" / "index").mkdir(parents=True)
    (new_scans / "tables" / "index" / "part-0.parquet").write_bytes(b"x")  # indexed, never split
    cfg = load_config(REPO / "conf" / "demo.yaml", [f"run.dir={new_scans}", f"model.from_run={trained}"])
    with pytest.raises(PreflightError, match=rf"{trained}/model/best\.pt missing: run `make train` first"):
        check_inputs("cam", cfg)
    (trained / "model").mkdir(parents=True)
    (trained / "model" / "best.pt").write_bytes(b"x")
    check_inputs("cam", cfg)  # the model is the trained run's; no splits needed here
    own = load_config(REPO / "conf" / "demo.yaml", [f"run.dir={new_scans}"])
    with pytest.raises(PreflightError, match="tables/splits missing"):
        check_inputs("cam", own)
