"""End to end on a real local Ray: train -> threshold -> infer -> cam -> boxes on generated data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import torch
from sklearn.metrics import roc_auc_score

import schemas
from engine.io.checkpoints import load_model
from engine.io.tables import read_table
from engine.stages._rows import select_rows
from engine.stages.boxes import run_boxes
from engine.stages.cam import CAM_TABLES, run_cam
from engine.stages.infer import run_infer
from tests.conftest import run_job, test_config


@pytest.fixture(scope="module")
def trained_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's trained run (2 epochs, threshold selected) that this module may add to."""
    run_dir = tmp_path_factory.mktemp("trained_e2e") / "run"
    shutil.copytree(trained_run, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def cam_run(scored_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the session's trained run after `make cam` over the test split, and that cam's saved summary."""
    run_dir = tmp_path_factory.mktemp("cam_e2e") / "run"
    shutil.copytree(scored_run, run_dir)  # scored once per session (tests/conftest.py); boxes tests rewrite it
    return run_dir, json.loads((run_dir / "summaries" / "cam.json").read_text())


def test_training_writes_epochs_val_preds_checkpoints_and_best_model(trained_run: Path, data_root: Path) -> None:
    epochs = read_table(str(trained_run), "epochs").sort_values("epoch")
    assert epochs["epoch"].tolist() == [1, 2]  # counted from 1
    assert (epochs["images"] > 0).all() and epochs["val_auc"].between(0, 1).all()
    preds = read_table(str(trained_run), "preds")
    val = preds[(preds["stage"] == "train") & (preds["split"] == "val")]
    n_val = len(select_rows(test_config(data_root, trained_run), ("val",)))
    assert sorted(val.groupby("epoch").size().tolist()) == [n_val, n_val]
    best_epoch = int(epochs.loc[epochs["val_auc"].idxmax(), "epoch"])
    best_val = val[val["epoch"] == best_epoch]
    assert roc_auc_score(best_val["y_true"], best_val["y_prob"]) == pytest.approx(epochs["val_auc"].max(), abs=1e-6)
    assert list((trained_run / "train_state").glob("checkpoint_*")), "Ray Train checkpoints missing"
    model, info = load_model(str(trained_run), test_config(data_root, trained_run).model)
    assert info["epoch"] == best_epoch
    assert model(torch.zeros(1, 3, 64, 32)).shape == (1, 1)


def test_threshold_is_chosen_on_the_best_epochs_val_preds(trained_run: Path) -> None:
    chosen = read_table(str(trained_run), "thresholds")
    assert len(chosen) == 1 and chosen["mode"].iloc[0] == "youden"
    assert 0 < chosen["thr"].iloc[0] < 1
    assert (trained_run / "threshold.json").exists()


def test_infer_scores_the_test_split_and_saves_sklearn_metrics(trained_run: Path, data_root: Path) -> None:
    cfg = test_config(data_root, trained_run)
    summary = run_infer(cfg)
    test_rows = select_rows(cfg, ("test",), qc_exclude=False)  # infer scores QC-flagged images too
    assert summary.rows_in == len(test_rows) and summary.balanced
    preds = read_table(str(trained_run), "preds")
    preds = preds[preds["stage"] == "infer"]
    assert sorted(preds["image_id"]) == sorted(test_rows["image_id"])
    metrics = read_table(str(trained_run), "metrics")
    row = metrics[metrics["split"] == "test"].iloc[0]
    thr = float(read_table(str(trained_run), "thresholds")["thr"].iloc[0])
    predicted = preds["y_prob"] >= np.float32(thr)
    assert row["tp"] == int((predicted & (preds["y_true"] == 1)).sum())
    assert row["n"] == len(preds)


def test_cam_writes_one_pred_or_error_per_selected_image(cam_run, data_root: Path) -> None:
    run_dir, summary = cam_run
    selected = select_rows(test_config(data_root, run_dir), ("test",), qc_exclude=False)  # cam scores flagged ones
    preds = read_table(str(run_dir), "preds")
    preds = preds[preds["stage"] == "cam"]
    errors = read_table(str(run_dir), "errors")
    errors = errors[errors["stage"] == "cam"]
    assert sorted(preds["image_id"].tolist() + errors["image_id"].tolist()) == sorted(selected["image_id"])
    assert summary["balanced"] and summary["rows_in"] == len(selected)
    heatmaps = read_table(str(run_dir), "heatmaps")
    assert sorted(heatmaps["image_id"]) == sorted(preds["image_id"])
    first = heatmaps.iloc[0]
    assert len(first["heatmap"]) == first["heatmap_h"] * first["heatmap_w"] == 8 * 4
    assert set(heatmaps["cam_method"]) == {"fused"}
    meta = read_table(str(run_dir), "meta")
    assert np.allclose(meta["scale"], 0.25) and (meta["pad_left"] == 32).all()


def test_cam_preds_carry_the_qc_flags_and_meta_the_qc_body_box(cam_run) -> None:
    run_dir, _ = cam_run
    qc = read_table(str(run_dir), "qc").set_index("image_id")
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'").set_index("image_id")
    for image_id, flags in preds["qc_flags"].items():
        raised = [f for f in ("noise_frame", "low_count", "small_body", "body_cut") if qc.loc[image_id, f]]
        assert list(flags) == raised
    noisy = duckdb.sql(
        f"SELECT image_id FROM read_parquet('{run_dir}/tables/preds/**/*.parquet', "
        "hive_partitioning=true) WHERE stage = 'cam' AND list_contains(qc_flags, 'noise_frame')"
    ).df()
    assert set(noisy["image_id"]) == {i for i in preds.index if qc.loc[i, "noise_frame"]}
    meta = read_table(str(run_dir), "meta").set_index("image_id")
    body = qc.loc[meta.index]
    assert meta["body_x1_canvas"].isna().equals(body["noise_frame"].astype(bool))
    has_body = ~body["noise_frame"].astype(bool)
    assert np.allclose(meta.loc[has_body, "body_y2_canvas"], body.loc[has_body, "body_y2"] * 0.25)
    boxes = read_table(str(run_dir), "boxes").merge(meta.reset_index(), on="image_id")
    on_body = boxes[boxes["body_x1_canvas"].notna()]
    assert len(on_body) and (on_body["y1"] >= on_body["body_y1_canvas"] - 1e-3).all()
    assert (on_body["y2"] <= on_body["body_y2_canvas"] + 1e-3).all()


def test_cam_stores_refined_peaks_near_their_cells_and_on_the_body(cam_run) -> None:
    run_dir, _ = cam_run
    meta = read_table(str(run_dir), "meta").drop(columns=["split", "folder"])
    heatmaps = read_table(str(run_dir), "heatmaps").merge(meta, on="image_id")
    refined = 0
    for row in heatmaps.itertuples(index=False):
        grid = np.asarray(row.heatmap, dtype=np.float32).reshape(row.heatmap_h, row.heatmap_w)
        # peaks may sit on cells whose centre (16 + 32 c) lies in the QC body box, else on the image strip [32, 96)
        x1, y1, x2, y2 = (row.body_x1_canvas, row.body_y1_canvas, row.body_x2_canvas, row.body_y2_canvas)
        if np.isnan(x1):
            x1, y1, x2, y2 = 32.0, 0.0, 96.0, 256.0
        cx, cy = 16 + 32 * np.arange(row.heatmap_w), 16 + 32 * np.arange(row.heatmap_h)
        on_body = ((cy >= y1) & (cy < y2))[:, None] & ((cx >= x1) & (cx < x2))[None, :]
        body = np.where(on_body, grid, 0)
        index, xs, ys = (np.asarray(getattr(row, k)) for k in ("peak_index", "peak_x", "peak_y"))
        assert len(index) == len(xs) == len(ys) <= 32
        if body.max() <= 0:
            assert len(index) == 0
            continue
        refined += 1
        rows, cols = np.divmod(index, row.heatmap_w)
        assert grid[rows[0], cols[0]] == body.max() and (np.diff(grid[rows, cols]) <= 0).all()  # best first
        assert ((xs >= 32) & (xs <= 96) & (ys >= 0) & (ys <= 256)).all()
        # within the refinement window: 2 cells (64 canvas px) from the cell centre
        assert (np.abs(xs - (cols + 0.5) * 32) <= 64).all() and (np.abs(ys - (rows + 0.5) * 32) <= 64).all()
    assert refined > 0


BODY = ("body_y1_canvas", "body_y2_canvas")


def test_cam_without_refinement_stores_no_peaks_and_centres_boxes_on_cells(trained_run, data_root, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns(*CAM_TABLES))
    run_cam(test_config(data_root, run_dir, "cam.refine=false", "cam.overlays=0"))
    heatmaps = read_table(str(run_dir), "heatmaps")
    assert heatmaps["peak_index"].isna().all()
    meta = read_table(str(run_dir), "meta")[["image_id", *BODY]]
    boxes = read_table(str(run_dir), "boxes").merge(meta, on="image_id")
    centre_y = (boxes["y1"] + boxes["y2"]) / 2
    top, bottom = boxes["body_y1_canvas"].fillna(0), boxes["body_y2_canvas"].fillna(256)
    inside = (boxes["y1"] > top) & (boxes["y2"] < bottom)  # not shifted at the body box's top/bottom edge
    assert len(boxes) and np.allclose((centre_y[inside] - 16) % 32, 0)


def test_cam_boxes_lie_on_the_body_and_map_back_to_original_pixels(cam_run) -> None:
    run_dir, _ = cam_run
    boxes = read_table(str(run_dir), "boxes")
    assert len(boxes) > 0
    assert (boxes["x1"] >= 32).all() and (boxes["x2"] <= 96).all()  # body strip of a 64-px-wide image at pad 32
    assert np.allclose(boxes["x2"] - boxes["x1"], 12) and np.allclose(boxes["y2"] - boxes["y1"], 12)
    assert np.allclose(boxes["x1_orig"], (boxes["x1"] - 32) * 4, atol=1e-3)
    assert np.allclose(boxes["y2_orig"], boxes["y2"] * 4, atol=1e-3)
    assert boxes.groupby("image_id")["rank"].max().max() < 5


def test_make_boxes_with_equal_parameters_reproduces_cam_boxes(cam_run, data_root: Path) -> None:
    run_dir, _ = cam_run
    key = ["image_id", "rank"]
    before = read_table(str(run_dir), "boxes").sort_values(key).reset_index(drop=True)
    run_boxes(test_config(data_root, run_dir))
    after = read_table(str(run_dir), "boxes").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)
    run_boxes(test_config(data_root, run_dir, "boxes.max=1"))
    assert read_table(str(run_dir), "boxes").groupby("image_id").size().max() == 1
    run_boxes(test_config(data_root, run_dir))


def test_cam_stores_the_scans_hot_spots_on_the_body(cam_run) -> None:
    run_dir, _ = cam_run
    heat = read_table(str(run_dir), "heatmaps").merge(read_table(str(run_dir), "meta")[["image_id", "pad_left"]])
    counts = heat["spot_x"].map(len)
    assert counts.gt(0).all() and counts.le(48).all()
    assert (heat["spot_sigma"].map(len) == counts).all() and (heat["spot_asym"].map(len) == counts).all()
    for row in heat.itertuples():
        xs = np.asarray(row.spot_x)
        assert (xs >= row.pad_left).all() and (xs <= 128 - row.pad_left).all()  # inside the letterboxed image
        assert (np.asarray(row.spot_sigma) > 0).all()


def test_make_boxes_tunes_a_spot_ranker_that_cam_then_uses(scored_run: Path, data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(scored_run, run_dir)
    cam_boxes = read_table(str(run_dir), "boxes")
    assert (cam_boxes["box_method"] == "cam_peaks").all()  # no ranker yet: the actors put boxes on CAM peaks
    summary = run_boxes(test_config(data_root, run_dir, "boxes.tune_split=test"))
    assert summary.extra["box_method"] == "spots" and summary.balanced
    ranker = json.loads((run_dir / "spot_ranker.json").read_text())["ranker"]
    boxes = read_table(str(run_dir), "boxes")
    heat = read_table(str(run_dir), "heatmaps").set_index("image_id")
    assert len(boxes) and (boxes["box_method"] == "spots").all()
    assert boxes.groupby("image_id").size().max() <= ranker["max_boxes"]
    assert (boxes["y_prob"] >= ranker["cutoff"]).all() and (boxes["score"] >= ranker["min_score"] - 1e-6).all()
    for box in boxes.itertuples():  # centred on one of its image's stored spots, side = size_factor x its sigma
        spots = heat.loc[box.image_id]
        near = np.hypot(
            np.asarray(spots["spot_x"]) - (box.x1 + box.x2) / 2, np.asarray(spots["spot_y"]) - (box.y1 + box.y2) / 2
        )
        side = max(ranker["min_side"], ranker["size_factor"] * float(np.asarray(spots["spot_sigma"])[np.argmin(near)]))
        assert near.min() < 0.5 * side + 1e-3 and abs((box.x2 - box.x1) - side) < 1e-3 + (side > 64) * side
    job = run_job("cam", data_root, run_dir, "run.overwrite=true")  # the actors now rank the spots themselves
    assert job.code == 0, "\n".join(job.lines[-20:])
    again = read_table(str(run_dir), "boxes")
    assert (again["box_method"] == "spots").all()
    key, coords = ["image_id", "rank"], ["x1", "y1", "x2", "y2", "score"]
    first, second = (b.sort_values(key).reset_index(drop=True) for b in (boxes, again))
    assert first[key].equals(second[key])
    np.testing.assert_allclose(first[coords], second[coords], atol=1e-3)


def test_cam_tables_open_in_plain_pyarrow_pandas_and_duckdb(cam_run) -> None:
    run_dir, _ = cam_run
    for name in ("preds", "heatmaps", "boxes", "meta", "errors"):
        path = run_dir / "tables" / name
        dataset = pads.dataset(path, format="parquet", partitioning="hive")
        assert set(dataset.schema.names) == set(schemas.TABLES[name].SCHEMA.names)
        assert not any(f.metadata and any(b"ray" in k for k in f.metadata) for f in dataset.schema)
        frame = pd.read_parquet(path)
        count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}/**/*.parquet', hive_partitioning=true)")
        assert count.fetchall()[0][0] == len(frame)
    heatmaps = f"read_parquet('{run_dir}/tables/heatmaps/**/*.parquet')"
    maps = duckdb.sql(f"SELECT len(heatmap) AS n, heatmap_h * heatmap_w AS hw FROM {heatmaps}").df()
    assert (maps["n"] == maps["hw"]).all()


def test_cam_renders_the_overlays_it_references(cam_run) -> None:
    run_dir, summary = cam_run
    heatmaps = read_table(str(run_dir), "heatmaps")
    refs = heatmaps["overlay_canvas"].dropna().tolist() + heatmaps["overlay_orig"].dropna().tolist()
    assert len(refs) == 4 and summary["overlays_rendered"] == 2
    for ref in refs:
        assert (run_dir / ref).stat().st_size > 0


def test_two_calls_per_actor_give_the_same_tables(cam_run, data_root: Path, tmp_path: Path) -> None:
    """infer.calls_per_actor=2 runs two batches at once on threads of one actor: same rows, same values."""
    run_dir, _ = cam_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(*CAM_TABLES))
    args = ("infer.calls_per_actor=2", "infer.batch_size=4", "cam.overlays=0")
    summary = run_cam(test_config(data_root, copy, *args))
    assert summary.balanced
    for name, key in (("heatmaps", ["image_id"]), ("boxes", ["image_id", "rank"]), ("preds", ["image_id"])):
        before = read_table(str(run_dir), name).query("split == 'test'")
        after = read_table(str(copy), name)
        if name == "preds":
            before, after = before[before["stage"] == "cam"], after[after["stage"] == "cam"]
        before = before.sort_values(key).reset_index(drop=True)
        after = after.sort_values(key).reset_index(drop=True)
        assert before["image_id"].tolist() == after["image_id"].tolist()
        numeric = [c for c in ("y_prob", "x1", "y1", "x2", "y2", "raw_max") if c in before]
        np.testing.assert_allclose(after[numeric].to_numpy(float), before[numeric].to_numpy(float), atol=1e-4)
    maps_before = np.stack(read_table(str(run_dir), "heatmaps").sort_values("image_id")["heatmap"])
    maps_after = np.stack(read_table(str(copy), "heatmaps").sort_values("image_id")["heatmap"])
    np.testing.assert_allclose(maps_after.astype(float), maps_before.astype(float), atol=2e-3)
