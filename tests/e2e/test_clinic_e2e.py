"""A clinic's own scans through `make index` -> `make cam` with a trained run's model (`model.from_run`)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.io.tables import read_table
from engine.stages.cam import run_cam
from engine.stages.evaluate.run import run_evaluate
from engine.stages.index import run_index
from engine.stages.infer import run_infer
from engine.stages.report import run_report
from tests.conftest import test_config
from tests.io.test_dicom import write_nm


def whole_body_counts(seed: int, height: int = 512, width: int = 128) -> np.ndarray:
    """Returns sparse uint16 counts with a body-shaped blob: mean a few counts, a hot spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    body = np.exp(-(((xx - width / 2) / (width / 4)) ** 2)) * ((yy > height * 0.1) & (yy < height * 0.9))
    counts = rng.poisson(6 * body + 0.05).astype(np.uint16)
    counts[200:206, 60:66] += 120
    return counts


def typical_training_image(trained_run: Path) -> str:
    """Returns the image_id of the trained run's train image whose mean grey level is the median one."""
    qc = read_table(str(trained_run), "qc").drop(columns=["split"], errors="ignore")
    train = qc.merge(read_table(str(trained_run), "splits")[["image_id", "split"]], on="image_id")
    train = train[(train["split"] == "train") & (train["folder"] == "wholeBodyPOST")].sort_values("mean_grey")
    return str(train["image_id"].iloc[len(train) // 2])


@pytest.fixture(scope="module")
def clinic_roots(
    tmp_path_factory: pytest.TempPathFactory, trained_run: Path, data_root: Path
) -> dict[str, tuple[Path, int, int, int]]:
    """Returns layout -> (root, images or frames expected as preds rows, bad files expected as errors, rows of
    another or unknown view than the model's POST, skipped as view_mismatch)."""
    base = tmp_path_factory.mktemp("clinic")
    dicom = base / "dicom"
    write_nm(dicom / "s1.dcm", [whole_body_counts(1), whole_body_counts(2)], ["AN", "PO"])
    write_nm(dicom / "ward" / "s2.dcm", [whole_body_counts(3)], ["PO"], PatientID="ANONYMOUS")
    write_nm(dicom / "ct.dcm", [whole_body_counts(4)], Modality="CT")
    (dicom / "broken.dcm").write_bytes(b"\x00" * 10 + b"not a DICOM file")
    images = base / "images"
    (images / "2024" / "posterior").mkdir(parents=True)
    cv2.imwrite(str(images / "p7_ANT.png"), whole_body_counts(5))  # 16-bit counts
    cv2.imwrite(str(images / "p7_POST.jpg"), np.clip(whole_body_counts(6) * 4, 0, 255).astype(np.uint8))
    cv2.imwrite(str(images / "2024" / "posterior" / "p9.png"), whole_body_counts(7).astype(np.uint8))
    (images / "2024" / "scan.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "p8_POST.jpg").write_bytes((data_root / typical_training_image(trained_run)).read_bytes())
    return {"dicom": (dicom, 2, 2, 1), "images": (images, 3, 0, 2)}  # ANT frame; p7_ANT.png, 2024/scan.jpg


@pytest.mark.parametrize("layout", ["dicom", "images"])
def test_new_scans_are_scored_with_a_trained_runs_model_and_threshold(
    ray_session, trained_run: Path, clinic_roots, layout: str, tmp_path: Path
) -> None:
    root, scored, bad_files, other_view = clinic_roots[layout]
    run_dir = tmp_path / "clinic_run"
    cfg = test_config(root, run_dir, f"data.layout={layout}", f"model.from_run={trained_run}", "cam.overlays=2")
    index = run_index(cfg)
    assert index.balanced and index.rows_ok == scored + other_view  # images: a bad JPEG row (of unknown view)
    summary = run_cam(cfg)  # no split: the whole index, cam.scope=all implied
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'")
    errors = read_table(str(run_dir), "errors")
    assert summary.balanced and summary.extra["scope"] == "all"
    assert len(preds) + int((errors["stage"] == "cam").sum()) + other_view == len(read_table(str(run_dir), "index"))
    assert dict(summary.skipped) == {"view_mismatch": other_view} and set(preds["view"]) == {"POST"}
    assert len(preds) == scored and preds["y_true"].isna().all() and set(preds["split"]) == {"all"}
    assert int((errors["stage"] == "index").sum()) == bad_files
    trained_thr = json.loads((trained_run / "threshold.json").read_text())["thr"]
    adopted = json.loads((run_dir / "threshold.json").read_text())
    assert adopted["thr"] == pytest.approx(trained_thr) and adopted["from_run"] == str(trained_run)
    assert len(read_table(str(run_dir), "heatmaps")) == scored and not (run_dir / "model").exists()
    shifted = preds[preds["qc_flags"].map(lambda f: f is not None and "domain_shift" in list(f))]
    assert summary.extra["domain_shift"] == f"{len(shifted)} of {scored} images outside the training images' range"
    assert len(shifted) >= 1  # the drawn blobs are far brighter than the calibrated training scans
    if layout == "images":
        assert "p8_POST.jpg" not in set(shifted["image_id"])  # a copy of a typical training image is in range
    infer = run_infer(cfg)
    assert infer.extra["metrics"].startswith(f"skipped: none of the {scored} scored images has a label")
    assert run_evaluate(cfg).extra["skipped"].startswith("this run has no splits table")
    run_report(cfg)
    assert (run_dir / "report" / "index.html").is_file()
