"""`make segtrain` -> `make segment` -> `make evaluate` end to end on a real local Ray and generated data."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from pycocotools import mask as coco_mask

import schemas
from engine.core.masks.scoremaps import PROB_STRIDE
from engine.core.model.classifier import ModelError
from engine.core.segnet.network import build_segnet, segnet_arch
from engine.io.checkpoints import init_encoder_from_classifier, load_segnet
from engine.io.pause import PAUSE_AT_ENV, PAUSE_DIR_ENV
from engine.io.tables import read_table
from engine.stages.cam import run_cam
from engine.stages.evaluate.run import run_evaluate
from engine.stages.masks import run_masks
from engine.stages.segment import run_segment
from engine.stages.segtrain import run_segtrain
from tests.conftest import REPO, TEST_OVERRIDES, test_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the fixture chain trains twice on 2 shared CPUs
# Masks as in tests/e2e/test_masks_stage.py (the 2-epoch model's masks all leak otherwise); 2 small epochs.
SEG_OVERRIDES = (
    "masks.leak_sides=4",
    "masks.min_prob=all",
    "segtrain.epochs=2",
    "segtrain.batch_size=8",
    "segtrain.decoder_channels=[16,16,8,8,8]",
    "cam.overlays=0",
    "evaluate.tune=false",
)


def masks_on_every_split(scored_run: Path, data_root: Path, run_dir: Path) -> None:
    """Copies the scored run (cam over test) to `run_dir`, runs `make cam` on train and val, then `make masks`."""
    shutil.copytree(scored_run, run_dir)
    for split in ("train", "val"):
        run_cam(test_config(data_root, run_dir, *SEG_OVERRIDES, f"cam.split={split}"))
    run_masks(test_config(data_root, run_dir, *SEG_OVERRIDES))


@pytest.fixture(scope="module")
def masked_run(scored_run: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's trained run with heatmaps, boxes and kept pseudo masks on every split (copy to modify)."""
    run_dir = tmp_path_factory.mktemp("segmasked") / "run"
    masks_on_every_split(scored_run, data_root, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def seg_run(masked_run: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The masked run after segtrain, segment (test split) and evaluate; returns (run dir, the three summaries)."""
    run_dir = tmp_path_factory.mktemp("segnet") / "run"
    shutil.copytree(masked_run, run_dir)
    cfg = test_config(data_root, run_dir, *SEG_OVERRIDES)
    return run_dir, {"segtrain": run_segtrain(cfg), "segment": run_segment(cfg), "evaluate": run_evaluate(cfg)}


def test_segtrain_writes_one_epoch_row_per_epoch_and_the_best_network(seg_run) -> None:
    run_dir, summaries = seg_run
    epochs = read_table(str(run_dir), "seg_epochs").sort_values("epoch")
    assert epochs["epoch"].tolist() == [1, 2]
    assert np.isfinite(epochs["train_loss"]).all() and epochs["val_images"].gt(0).all()
    best = epochs.loc[epochs["val_dice"].idxmax()]
    model, info = load_segnet(str(run_dir))
    assert info["epoch"] == int(best["epoch"]) and info["val_dice"] == pytest.approx(float(best["val_dice"]))
    summary = summaries["segtrain"]
    assert summary.balanced and summary.extra["best_epoch"] == int(best["epoch"])
    assert model(torch.zeros(1, 3, 256, 128)).shape == (1, 1, 256, 128)


def test_segtrain_trains_on_normal_images_and_abnormal_ones_with_a_kept_mask(seg_run, masked_run: Path) -> None:
    run_dir, summaries = seg_run
    summary = summaries["segtrain"]
    masks = read_table(str(masked_run), "masks")
    index = read_table(str(masked_run), "index").merge(read_table(str(masked_run), "splits")[["image_id", "split"]])
    noise = set(read_table(str(masked_run), "qc").query("noise_frame")["image_id"])  # qc.exclude of the demo config
    rows = index[index["split"].isin(["train", "val"]) & (index["folder"] == "wholeBodyPOST")]
    rows = rows[~rows["image_id"].isin(noise)]
    with_mask = set(masks.loc[masks["kept"], "image_id"])
    usable = rows[(rows["label"] == 0) | rows["image_id"].isin(with_mask)]
    left_out = rows[(rows["label"] == 1) & ~rows["image_id"].isin(with_mask)]
    assert len(left_out) and summary.skipped.get("no_kept_pseudo_mask") == len(left_out)
    last = read_table(str(run_dir), "seg_epochs").sort_values("epoch").iloc[-1]
    n_train = int((usable["split"] == "train").sum())
    assert int(last["val_images"]) == int((usable["split"] == "val").sum())
    assert int(last["images"]) + summary.skipped.get("equal_split", 0) == n_train


def test_segment_writes_segnet_rows_as_coco_rle_in_original_pixels(seg_run) -> None:
    run_dir, summaries = seg_run
    rows = read_table(str(run_dir), "seg_masks")
    meta = read_table(str(run_dir), "meta").set_index("image_id")
    summary = summaries["segment"]
    test_images = read_table(str(run_dir), "splits").query("split == 'test'")["image_id"]
    assert summary.balanced and summary.rows_in == summary.rows_ok > 0 and set(rows["split"]) <= {"test"}
    assert set(rows["image_id"]) <= set(test_images) and set(rows["segmenter"]) <= {"segnet"}
    for row in rows.itertuples():
        assert (row.rle_h, row.rle_w) == (meta.loc[row.image_id, "orig_h"], meta.loc[row.image_id, "orig_w"])
        mask = coco_mask.decode({"size": [row.rle_h, row.rle_w], "counts": row.rle_counts.encode()}).astype(bool)
        assert mask.sum() == row.area and 0 <= row.score <= 1 and row.kept
    table = pads.dataset(str(run_dir / "tables" / "seg_masks"), format="parquet", partitioning="hive").to_table()
    assert set(table.schema.names) == set(schemas.TABLES["seg_masks"].SCHEMA.names)
    # The network's continuous map: one pooled probability row per segmented image, covering the canvas.
    probs = read_table(str(run_dir), "seg_probs")
    assert len(probs) == probs["image_id"].nunique() == summary.rows_ok and set(probs["split"]) == {"test"}
    for row in probs.itertuples():
        assert (row.canvas_h, row.canvas_w) == (meta.loc[row.image_id, "canvas_h"], meta.loc[row.image_id, "canvas_w"])
        assert len(row.prob) == row.prob_h * row.prob_w and row.prob_h == -(-row.canvas_h // PROB_STRIDE)
    with_masks = probs[probs["image_id"].isin(rows["image_id"])]
    assert len(with_masks) and all(max(p) > 0 for p in with_masks["prob"])  # a component: pixels >= 0.5 in its map


def test_evaluate_puts_segnet_rows_beside_the_pseudo_masks(seg_run) -> None:
    run_dir, summaries = seg_run
    metrics = read_table(str(run_dir), "loc_metrics")
    table = metrics[(metrics["folder"] == "*") & metrics["method"].isin(["masks", "segnet"])]
    wide = table.pivot_table(index="metric", columns="method", values="value", aggfunc="first")
    for metric in ("mask_dice", "mask_pxap", "mask_box_iou", "mask_hit_rate", "mask_fp_per_normal"):
        assert metric in wide.index and not wide.loc[metric].isna().all(), (metric, wide)
    normals = table[(table["metric"] == "mask_fp_per_normal")]
    heat = read_table(str(run_dir), "heatmaps").query("split == 'test' and folder == 'wholeBodyPOST'")
    scored = heat.merge(read_table(str(run_dir), "index")[["image_id", "label"]])
    assert set(normals["denominator"]) == {int((scored["label"] == 0).sum())}
    assert "segnet" in summaries["evaluate"].extra and "segnet:" in summaries["evaluate"].extra["masks_note"]
    assert "PxAP on the network's probability map" in summaries["evaluate"].extra["masks_note"]
    pxap = table[table["metric"] == "mask_pxap"].set_index("method")
    assert pxap.loc["segnet", "denominator"] == pxap.loc["masks", "denominator"] > 0


def test_encoder_starts_from_the_classifier_backbone(trained_run: Path, data_root: Path) -> None:
    cfg = test_config(data_root, trained_run)
    segnet = build_segnet(segnet_arch(cfg.segtrain, cfg.model.name))
    copied = init_encoder_from_classifier(segnet, str(trained_run))
    state = torch.load(trained_run / "model" / "best.pt", map_location="cpu", weights_only=True)["model"]
    encoder = segnet.encoder.model.state_dict()
    shared = [k for k in state if k in encoder]
    assert copied == len(shared) > 10 and all(torch.equal(encoder[k], state[k]) for k in shared)


def test_missing_classifier_or_segnet_is_a_clear_model_error(tmp_path: Path, data_root: Path) -> None:
    cfg = test_config(data_root, tmp_path)
    with pytest.raises(ModelError, match="make train"):
        init_encoder_from_classifier(build_segnet(segnet_arch(cfg.segtrain, cfg.model.name)), str(tmp_path))
    with pytest.raises(ModelError, match="make segtrain"):
        load_segnet(str(tmp_path))


def _segtrain_command(data_root: Path, run_dir: Path) -> list[str]:
    overrides = [f"data.root={data_root}", f"run.dir={run_dir}", *TEST_OVERRIDES, *SEG_OVERRIDES, "ray.num_cpus=2"]
    return [sys.executable, "-m", "jobs", "segtrain", "--config", "conf/demo.yaml", *overrides]


def _wait_for(path: Path, timeout_s: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.5)
    return path.exists()


def test_killed_segtrain_resumes_from_its_last_checkpoint(
    seg_run, masked_run: Path, data_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(masked_run, run_dir)
    command = _segtrain_command(data_root, run_dir)
    # rank 0 stops after reporting epoch 1's checkpoint (engine/io/pause.py): the kill lands part-way on any machine
    pause = {PAUSE_AT_ENV: "segtrain_epoch_1", PAUSE_DIR_ENV: str(tmp_path / "pause")}
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **pause},
    )
    try:  # a checkpoint counts once Ray Train has registered it in its snapshot
        assert _wait_for(tmp_path / "pause" / "segtrain_epoch_1", 300, proc)
        assert _wait_for(run_dir / "segtrain_state" / "checkpoint_manager_snapshot.json", 300, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    first_epoch_file = run_dir / "tables" / "seg_epochs" / "epoch-001-0.parquet"
    assert read_table(str(run_dir), "seg_epochs")["epoch"].tolist() == [1], "the first run should die part-way"
    first_mtime = first_epoch_file.stat().st_mtime_ns
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    epochs = read_table(str(run_dir), "seg_epochs").sort_values("epoch")
    assert epochs["epoch"].tolist() == [1, 2] and (run_dir / "segnet" / "best.pt").exists()
    assert first_epoch_file.stat().st_mtime_ns == first_mtime, "epoch 1 ran again: the run started over"
    uninterrupted = read_table(str(seg_run[0]), "seg_epochs").sort_values("epoch")
    for column in ("train_loss", "val_loss", "val_dice"):  # same seed, same batches: the resumed run ends the same
        assert np.allclose(epochs[column], uninterrupted[column], atol=1e-5), (column, epochs, uninterrupted)
