"""Bad input end to end: a messy BS-80K copy through index -> split -> train -> cam -> boxes.

Every stage finishes, every bad case is one `errors` row with a specific reason, and each stage's
accounting holds (rows in = rows ok + error rows).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.io.checkpoints import load_model
from engine.io.tables import read_table
from engine.stages.boxes import run_boxes
from engine.stages.cam import run_cam
from engine.stages.index import run_index
from engine.stages.split import run_split
from engine.stages.train import run_train
from tests.conftest import test_config

POST = "wholeBodyPOST"


def _mess_images(post: Path) -> None:
    good = cv2.imread(str(post / "1.jpg"), cv2.IMREAD_GRAYSCALE)
    (post / "1.jpg").write_bytes(b"")  # zero bytes
    (post / "2.jpg").write_bytes((post / "2.jpg").read_bytes()[:1500])  # truncated
    (post / "3.jpg").write_text("<html>not an image</html>")  # not an image
    (post / "4.jpg").write_bytes(cv2.imencode(".png", good)[1].tobytes())  # PNG named .jpg
    (post / "5.jpg").write_bytes(cv2.imencode(".png", good.astype(np.uint16) * 257)[1].tobytes())  # 16-bit
    (post / "7.jpg").write_bytes(cv2.imencode(".jpg", cv2.cvtColor(good, cv2.COLOR_GRAY2BGR))[1].tobytes())  # RGB
    (post / "8.jpg").write_bytes(cv2.imencode(".jpg", cv2.resize(good, (301, 777)))[1].tobytes())  # odd size
    (post / "9.jpg").rename(post / "9.JPG")  # uppercase extension, listed as such below


def _mess_labels(post: Path) -> None:
    lines = (post / f"{POST}.txt").read_text().splitlines()
    lines = [line.replace("9.jpg", "9.JPG") for line in lines]
    lines[10] = lines[10].replace("\t", "    ")  # spaces instead of a tab
    extra = ["", "12.jpg\t2", "13.jpg", lines[14], "999.jpg\t0", "../x.jpg\t1", "/etc/passwd\t0", "  "]
    text = "\ufeff" + "\r\n".join(lines + extra) + "\r\n"  # BOM + CRLF
    (post / f"{POST}.txt").write_bytes(text.encode("utf-8"))


def _mess_xml(root: Path) -> None:
    xml_dir = root / POST / "post"
    # Not the images whose label lines _mess_labels renames ("9.jpg" -> "9.JPG" also hits 19, 29, ...).
    xmls = sorted((p for p in xml_dir.glob("*.xml") if not p.stem.endswith("9")), key=lambda p: int(p.stem))
    xmls[-1].write_text("<annotation><object><name>Abnormal</name>")  # malformed
    xmls[-2].write_text("<annotation><size><width>256</width><height>1024</height></size></annotation>")  # empty
    text = xmls[-3].read_text()
    start = text.index("<xmin>") + len("<xmin>")
    xmls[-3].write_text(text[:start] + "999" + text[text.index("</xmin>") :])  # xmin > image width: outside/inverted


@pytest.fixture(scope="module")
def messy(data_root: Path, split_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """Runs index -> split -> train -> cam -> boxes on a messy copy; returns (run_dir, summaries)."""
    root = tmp_path_factory.mktemp("messy_e2e") / "data"
    shutil.copytree(data_root, root)
    _mess_images(root / POST)
    _mess_labels(root / POST)
    _mess_xml(root)
    for folder in (POST, "wholeBodyANT"):  # byte-identical duplicate patient 21 == 20
        shutil.copyfile(root / folder / "20.jpg", root / folder / "21.jpg")
    run_dir = tmp_path_factory.mktemp("messy_run") / "run"
    cfg = test_config(root, run_dir, "train.epochs=1", "cam.scope=all", "split.duplicate_groups=[[20, 21]]")
    summaries = {stage.__name__: stage(cfg) for stage in (run_index, run_split, run_train, run_cam, run_boxes)}
    return run_dir, summaries


def test_every_stage_finishes_with_balanced_accounting(ray_session, messy) -> None:
    _, summaries = messy
    for name, summary in summaries.items():
        assert summary.balanced, f"{name}: {summary.to_dict()}"


def test_each_bad_label_line_is_one_specific_error_row(ray_session, messy) -> None:
    run_dir, summaries = messy
    errors = read_table(str(run_dir), "errors")
    index_errors = errors[errors["stage"] == "index"]
    reasons = index_errors["reason"].str.split(":").str[0].value_counts().to_dict()
    for code in ("bad_label", "missing_label", "duplicate_line", "missing_file", "unsafe_path"):
        assert reasons.get(code, 0) >= 1, f"no {code} row in {reasons}"
    assert reasons["unsafe_path"] == 2
    index = read_table(str(run_dir), "index")
    assert "wholeBodyPOST/9.JPG" in set(index["image_id"])
    assert "wholeBodyPOST/11.jpg" in set(index["image_id"])  # the spaces-instead-of-tab line is kept
    xml_reasons = set(index_errors["reason"].str.split(":").str[0])
    assert {"malformed_xml", "no_objects"} <= xml_reasons
    assert summaries["run_index"].rows_in == summaries["run_index"].rows_ok + sum(
        summaries["run_index"].errors.values()
    )


def test_bad_images_are_error_rows_in_train_and_cam_and_odd_images_are_scored(ray_session, messy) -> None:
    run_dir, _ = messy
    errors = read_table(str(run_dir), "errors")
    cam_errors = errors[errors["stage"] == "cam"].set_index("image_id")["reason"].str.split(":").str[0]
    assert cam_errors.to_dict() == {
        "wholeBodyPOST/1.jpg": "empty_file",
        "wholeBodyPOST/2.jpg": "truncated_jpeg",
        "wholeBodyPOST/3.jpg": "undecodable",
    }
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'")
    for ok_image in ("4.jpg", "5.jpg", "7.jpg", "8.jpg", "9.JPG"):
        assert f"wholeBodyPOST/{ok_image}" in set(preds["image_id"]), ok_image
    meta = read_table(str(run_dir), "meta").set_index("image_id")
    assert tuple(meta.loc["wholeBodyPOST/8.jpg", ["orig_h", "orig_w"]]) == (777, 301)
    train_errors = errors[errors["stage"] == "train"]
    assert set(train_errors["image_id"]) <= set(cam_errors.index)


def test_duplicate_patients_share_a_split_and_training_produced_a_model(ray_session, messy, data_root) -> None:
    run_dir, _ = messy
    splits = read_table(str(run_dir), "splits")
    assert splits[splits["patient_id"].isin(["20", "21"])]["split"].nunique() == 1
    model, info = load_model(str(run_dir), test_config(data_root, run_dir).model)
    assert info["epoch"] == 1  # the only epoch, counted from 1
