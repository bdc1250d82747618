"""QC in the pipeline: `make index` writes the qc table (true counts where the file has them), `qc.exclude` keeps
flagged images out of the training selection, `make cam` copies the flags into preds and judges new scans against the
model's training images (`domain_shift`, shown in the report and in `make browse`), and pseudo boxes stay on the QC
body box."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import ConfigError
from engine.core.localization.boxes import BoxParams
from engine.core.localization.columns import BODY_CANVAS_COLUMNS, META_COLUMNS, body_canvas_columns, pseudo_boxes
from engine.core.scans.counts import counts_to_gray8
from engine.core.scans.letterbox import letterbox_meta
from engine.core.scans.qc import SHIFT_STATS, QcThresholds, ShiftReference, domain_shift
from engine.io.browse_pages import ImageQuery, table_page
from engine.io.tables import read_table, write_part
from engine.runtime.decode import qc_batch
from engine.stages._rows import model_qc_reference, select_rows, training_qc_reference
from engine.stages.browse import RunCatalog
from engine.stages.cam import run_cam
from engine.stages.index import run_index
from engine.stages.report import run_report
from engine.stages.threshold import run_threshold
from tests.conftest import test_config
from tests.core.test_qc import body_counts
from tests.io.test_dicom import write_nm


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
    preds = val.assign(
        y_true=val["label"], y_prob=probs, logit=None, epoch=1, run_id="r", model="m", stage="train", qc_flags=None
    )
    write_part(str(run_dir), "preds", preds, "epoch-001")
    (run_dir / "model").mkdir()
    (run_dir / "model" / "best.json").write_text(json.dumps({"epoch": 1}))
    summary = run_threshold(cfg)
    assert summary.skipped == {"qc_noise_frame": n_noisy} and summary.balanced
    assert summary.rows_ok == len(val) - n_noisy == int(read_table(str(run_dir), "thresholds")["n"].iloc[0])


def test_qc_measures_the_true_counts_of_16_bit_files_and_dicom_frames(tmp_path: Path) -> None:
    low = body_counts(99_000, seed=1)  # a genuinely low-count study
    cv2.imwrite(str(tmp_path / "low_POST.png"), low)
    cv2.imwrite(str(tmp_path / "low_POST.jpg"), counts_to_gray8(low)[0])  # what an 8-bit export of it holds
    write_nm(tmp_path / "s.dcm", [low, body_counts(1_400_000, seed=2, hot=3000)], ["AN", "PO"])
    paths = ["low_POST.png", "low_POST.jpg", "s.dcm#0", "s.dcm#1"]
    batch = {
        "image_id": np.array(paths, object),
        "folder": np.full(4, ".", object),
        "path": np.array(paths, object),
        "part": np.full(4, None),
        "pixel_spacing_y_mm": np.array([np.nan, np.nan, 4.8, 2.4]),
        "pixel_spacing_x_mm": np.array([np.nan, np.nan, 2.4, 2.4]),
    }
    rows = pd.DataFrame(qc_batch(batch, str(tmp_path), QcThresholds())).set_index("image_id")
    assert (rows["error"] == "").all()
    assert rows["count_unit"].tolist() == ["counts", "grey", "counts", "counts"]
    assert rows.loc["low_POST.png", "total_counts"] == rows.loc["s.dcm#0", "total_counts"] == int(low.sum())
    assert rows["low_count"].tolist() == [True, False, True, False]  # the 8-bit copy cannot show it
    density = rows["body_counts_per_px"]
    assert density["s.dcm#0"] == pytest.approx(density["low_POST.png"] / 2)  # 4.8 x 2.4 mm pixels: per 2.4 mm
    assert not rows["noise_frame"].any()


def test_qc_exclude_refuses_domain_shift_with_the_reason(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"qc.exclude cannot hold domain_shift: it is judged when `make cam`"):
        test_config(data_root, tmp_path, "qc.exclude=[noise_frame,domain_shift]")


def test_the_domain_shift_reference_is_the_training_images_after_qc_exclude(split_run, data_root):
    cfg = test_config(data_root, split_run)
    record = training_qc_reference(cfg)
    train = select_rows(cfg, ("train",))  # the images `make train` trains on: noise frames left out
    assert record["images"] == len(train) and record["qc_exclude"] == ["noise_frame"] and record["view"] == "POST"
    assert record["left_out"] == train.attrs["skipped"] and record["left_out"]["qc_noise_frame"] >= 1
    qc = read_table(str(split_run), "qc").set_index("image_id").loc[train["image_id"]]
    flagged = domain_shift({k: qc[k].to_numpy() for k in SHIFT_STATS}, ShiftReference.from_dict(record))
    assert flagged.mean() <= 0.02 and int(flagged.sum()) == record["train_flagged"]
    kept = training_qc_reference(test_config(data_root, split_run, "qc.exclude=[]"))
    assert kept["images"] == len(train) + record["left_out"]["qc_noise_frame"]  # the noise frames come back in


def test_a_reference_recorded_with_the_model_is_the_one_scoring_uses(split_run, data_root, tmp_path: Path) -> None:
    record = training_qc_reference(test_config(data_root, split_run))
    model_run = tmp_path / "model_run"
    (model_run / "model").mkdir(parents=True)
    (model_run / "model" / "qc_reference.json").write_text(json.dumps({**record, "images": 12345}))
    cfg = test_config(data_root, tmp_path / "new", f"model.from_run={model_run}")
    assert model_qc_reference(cfg)["images"] == 12345  # recorded at train time: not refitted from tables
    (model_run / "model" / "best.json").write_text(json.dumps({"qc_reference": {**record, "images": 7}}))
    assert model_qc_reference(cfg)["images"] == 7  # the checkpoint's contract first
    shutil.rmtree(model_run / "model")
    assert model_qc_reference(cfg) is None  # no tables there either: nothing to compare with


@pytest.fixture(scope="module")
def clinic_run(ray_session, trained_run: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """New scans scored with the trained run's model: copies of its training scans and 16-bit studies unlike them
    (brighter, the body filling the frame); returns (run dir, config, cam summary, report summary)."""
    root = tmp_path_factory.mktemp("clinic_qc") / "scans"
    root.mkdir()
    train = select_rows(test_config(data_root, trained_run), ("train",))
    for image_id in train["image_id"].head(4):
        shutil.copy(data_root / image_id, root / f"copy_{Path(image_id).stem}_POST.jpg")
    for seed in range(2):
        cv2.imwrite(str(root / f"bright_{seed}_POST.png"), body_counts(2_000_000, seed=seed, shape=(512, 128)))
    run_dir = tmp_path_factory.mktemp("clinic_qc_run") / "run"
    cfg = test_config(root, run_dir, "data.layout=images", f"model.from_run={trained_run}", "report.gallery=8")
    run_index(cfg)
    return run_dir, cfg, run_cam(cfg), run_report(cfg)


def test_domain_shift_is_counted_in_the_cam_summary_and_recorded_in_the_run(clinic_run, trained_run, data_root):
    run_dir, _, summary, _ = clinic_run
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'").set_index("image_id")
    shifted = {i for i, flags in preds["qc_flags"].items() if "domain_shift" in list(flags)}
    assert {i for i in preds.index if i.startswith("bright_")} <= shifted  # unlike every training scan
    assert not {i for i in shifted if i.startswith("copy_")}  # the training scans themselves are in range
    assert summary.extra["domain_shift"] == f"{len(shifted)} of {len(preds)} images outside the training images' range"
    record = json.loads((run_dir / "qc_reference.json").read_text())
    trained = training_qc_reference(test_config(data_root, trained_run))
    assert record["model_run"] == str(trained_run) and record["images"] == trained["images"]
    assert (
        record["threshold"] == trained["threshold"]
        and str(run_dir / "qc_reference.json") in (summary.extra["domain_shift_reference"])
    )


def test_the_report_counts_the_qc_flags_and_marks_flagged_gallery_images(clinic_run) -> None:
    run_dir, _, cam, report = clinic_run
    page = (run_dir / "report" / "index.html").read_text()
    shifted = int(cam.extra["domain_shift"].split(" of ")[0])
    assert "<h2>Quality control</h2>" in page and f"<code>domain_shift</code>: {shifted} of " in page
    assert re.search(rf"<code>domain_shift</code></td><td>–</td><td>{shifted}</td>", page)  # the count column
    assert report.extra["qc_flags_scored"]["domain_shift"] == shifted
    figures = re.findall(r"<figure>.*?</figure>", page)
    marked = [f for f in figures if '<span class="qcmark">QC: ' in f and "domain_shift" in f]
    assert figures and len(marked) == sum("bright_" in f for f in figures) >= 1
    assert "Unlabeled, called" in page  # a clinic's scans have no labels: the gallery groups them by the call


def test_browse_shows_the_flag_and_filters_on_it(clinic_run) -> None:
    run_dir, _, _, _ = clinic_run
    catalog = RunCatalog(str(run_dir), None)
    rows = catalog.images(ImageQuery(), 10**6)[0].set_index("image_id")
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'").set_index("image_id")
    shifted = {i for i, flags in preds["qc_flags"].items() if "domain_shift" in list(flags)}
    assert shifted and {i for i, qc in rows["qc"].items() if isinstance(qc, str) and "domain_shift" in qc} == shifted
    filtered, total = catalog.images(ImageQuery(qc_flag="domain_shift"), 10**6)
    assert total == len(shifted) and set(filtered["image_id"]) == shifted
    assert "domain_shift" in catalog.qc_flags()
    html = table_page(
        filtered, total, ImageQuery(qc_flag="domain_shift"), catalog.choices(), 50, "", True, catalog.qc_flags()
    )
    assert '<option value="domain_shift" selected>' in html and html.count('class="c-qc qc-flagged"') == total
