"""QC in the pipeline: `make index` writes the qc table, `qc.exclude` keeps flagged images out of the training
selection, `make cam` copies the flags into preds, and pseudo boxes stay on the QC body box."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.batch_columns import BODY_CANVAS_COLUMNS, META_COLUMNS, body_canvas_columns, pseudo_boxes
from engine.core.boxes import BoxParams
from engine.core.letterbox import letterbox_meta
from engine.io.tables import read_table, write_part
from engine.stages.common import select_rows
from engine.stages.threshold import run_threshold
from tests.conftest import test_config


def truth(data_root: Path) -> pd.DataFrame:
    lines = (data_root / "synth_truth.jsonl").read_text().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines])


def test_index_writes_one_qc_row_per_image_and_flags_exactly_the_generated_noise_frames(split_run, data_root):
    index = read_table(str(split_run), "index")
    qc = read_table(str(split_run), "qc")
    errors = read_table(str(split_run), "errors")
    assert len(qc) + int((errors["stage"] == "qc").sum()) == len(index)
    assert set(qc["image_id"]) <= set(index["image_id"]) and qc["image_id"].is_unique
    drawn = truth(data_root).set_index("image_id")["noise_frame"]
    # region crops are cut from their whole-body view (engine/io/synth.py): a crop of a noise frame is noise too
    folder, name = qc["image_id"].str.split("/", n=1).str[0], qc["image_id"].str.split("/", n=1).str[1]
    source = "wholeBody" + folder.str.extract("(ANT|POST)$", expand=False) + "/" + name
    expected = set(qc.loc[source.map(drawn).fillna(False).astype(bool).to_numpy(), "image_id"])
    flagged = set(qc.loc[qc["noise_frame"], "image_id"])
    assert flagged == expected
    assert set(drawn[drawn].index) <= flagged and drawn.any(), "the generated data holds noise frames"
    bodies = qc[~qc["noise_frame"]]
    assert bodies[["body_x1", "body_y1", "body_x2", "body_y2"]].notna().all().all()
    assert qc.loc[qc["noise_frame"], "body_x1"].isna().all()
    summary = json.loads((split_run / "summaries" / "index.json").read_text())
    assert summary["qc"]["noise_frame"] == len(flagged) and summary["qc"]["images"] == len(qc)
    crops = ~qc["folder"].str.startswith("wholeBody")
    assert crops.any() and not qc.loc[crops, ["low_count", "small_body", "body_cut"]].astype(bool).any().any()
    assert qc.loc[crops, "noise_frame"].any()  # crops of noise frames are still flagged


def test_select_rows_leaves_flagged_images_out_and_counts_them(split_run, data_root):
    cfg = test_config(data_root, split_run)
    qc = read_table(str(split_run), "qc").set_index("image_id")
    everything = select_rows(cfg, ("train", "val"), qc_exclude=False)
    noisy = everything[everything["image_id"].map(qc["noise_frame"])]
    assert len(noisy), "some selected images are noise frames"
    rows = select_rows(cfg, ("train", "val"))
    assert not set(rows["image_id"]) & set(noisy["image_id"])
    assert len(rows) + len(noisy) == len(everything)
    assert rows.attrs["skipped"] == {"qc_noise_frame": len(noisy)}
    kept = select_rows(test_config(data_root, split_run, "qc.exclude=[]"), ("train", "val"))
    assert len(kept) == len(everything) and kept.attrs["skipped"] == {}


def test_runs_indexed_before_qc_select_everything_without_flags(split_run, data_root, tmp_path):
    old = tmp_path / "old"
    for name in ("index", "splits"):
        (old / "tables").mkdir(parents=True, exist_ok=True)
        (old / "tables" / name).symlink_to(split_run / "tables" / name)
    cfg = test_config(data_root, old)
    rows = select_rows(cfg, ("train", "val"))
    assert len(rows) == len(select_rows(test_config(data_root, split_run), ("train", "val"), qc_exclude=False))
    assert rows["noise_frame"].isna().all() and rows["qc_body_x1"].isna().all()


def _batch(orig_h: int, orig_w: int, canvas_h: int, canvas_w: int, body_orig: tuple) -> dict[str, np.ndarray]:
    lb = letterbox_meta(orig_h, orig_w, canvas_h, canvas_w)
    batch = {k: np.asarray([getattr(lb, k)]) for k in META_COLUMNS}
    for name, value in zip(("qc_body_x1", "qc_body_y1", "qc_body_x2", "qc_body_y2"), body_orig, strict=True):
        batch[name] = np.asarray([value], dtype=np.float64)
    return batch


@settings(max_examples=60, deadline=None)
@given(
    orig=st.tuples(st.integers(20, 300), st.integers(10, 120)),
    corners=st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.05, 1), st.floats(0.05, 1)),
    seed=st.integers(0, 2**16),
    size=st.integers(4, 40),
)
def test_pseudo_boxes_never_leave_the_qc_body_box(orig, corners, seed, size):
    orig_h, orig_w = orig
    x1, y1 = int(corners[0] * orig_w), int(corners[1] * orig_h)
    x2 = min(orig_w, x1 + max(1, int(corners[2] * orig_w)))
    y2 = min(orig_h, y1 + max(1, int(corners[3] * orig_h)))
    batch = _batch(orig_h, orig_w, 256, 128, (x1, y1, x2, y2))
    batch.update(body_canvas_columns(batch))
    heat = np.random.default_rng(seed).random((1, 8, 4)).astype(np.float16)
    boxes, counts = pseudo_boxes(heat, batch, BoxParams(size=size, max_boxes=5, nms_iou=0.3, min_score=0.0))
    body = np.asarray([batch[k][0] for k in BODY_CANVAS_COLUMNS], dtype=np.float64)
    found = boxes[0, : counts[0], :4].astype(np.float64)
    assert (found[:, 0] >= body[0] - 1e-3).all() and (found[:, 2] <= body[2] + 1e-3).all()
    assert (found[:, 1] >= body[1] - 1e-3).all() and (found[:, 3] <= body[3] + 1e-3).all()


def test_without_a_qc_body_box_boxes_may_use_the_whole_letterboxed_image():
    batch = _batch(100, 50, 256, 128, (np.nan, np.nan, np.nan, np.nan))  # a noise frame: no body box
    batch.update(body_canvas_columns(batch))
    assert np.isnan([batch[k][0] for k in BODY_CANVAS_COLUMNS]).all()
    heat = np.zeros((1, 8, 4), np.float16)
    heat[0, 0, 0] = 1.0  # a peak in the top-left cell, inside the letterboxed image (pad_left 14)
    boxes, counts = pseudo_boxes(heat, batch, BoxParams(size=8, max_boxes=5, nms_iou=0.3, min_score=0.0))
    assert counts[0] == 1 and tuple(boxes[0, 0, :4]) == (12.0, 12.0, 20.0, 20.0)


def test_threshold_is_chosen_without_the_flagged_val_images_and_counts_them(split_run, data_root, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(split_run, run_dir)
    cfg = test_config(data_root, run_dir)
    # every selected image scored as a val image of epoch 1 (the generated data's noise frame may be in train)
    val = select_rows(cfg, ("train", "val"), qc_exclude=False).assign(split="val")
    n_noisy = int(val["noise_frame"].sum())
    assert n_noisy, "some selected images are noise frames"
    probs = np.random.default_rng(0).random(len(val)).astype(np.float32)
    preds = val.assign(y_true=val["label"], y_prob=probs, logit=None, epoch=1, run_id="r", model="m", stage="train",
                       qc_flags=None)  # fmt: skip
    write_part(str(run_dir), "preds", preds, "epoch-001")
    (run_dir / "model").mkdir()
    (run_dir / "model" / "best.json").write_text(json.dumps({"epoch": 1}))
    summary = run_threshold(cfg)
    assert summary.skipped == {"qc_noise_frame": n_noisy} and summary.balanced
    assert summary.rows_ok == len(val) - n_noisy == int(read_table(str(run_dir), "thresholds")["n"].iloc[0])
