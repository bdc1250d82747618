"""`data.view=BOTH` end to end, as `make demo` runs it: one model trained on both views of the train split, a
patient fusion rule and threshold chosen on val, patient-level rows beside the per-view ones, and every box of a
patient with both views scored placed in the other view (job processes on the session's generated data)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from engine.core.metrics.patients import FUSION_RULES
from engine.io.tables import read_table
from engine.stages.cam import run_cam
from engine.stages.index import run_index
from tests.conftest import run_job, test_config
from tests.io.test_dicom import clinic_folder, counts_image, write_nm  # noqa: F401 - the fixture

# half of the patients train (both views: ~60 images, one epoch); a quarter each for val (the spot ranker and the
# patient rule are chosen there) and test
BOTH = ("data.view=BOTH", "train.epochs=1", "split.train=0.5", "split.val=0.25")
STEPS = (
    ("split", "run.overwrite=true"),
    ("train",),
    ("threshold",),
    ("infer",),
    ("cam",),
    ("cam", "cam.split=val", "run.overwrite=true"),
    ("boxes",),
    ("evaluate",),
)


@pytest.fixture(scope="module")
def both_run(split_run: Path, data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("both") / "run"
    shutil.copytree(split_run, run_dir)
    for stage, *extra in STEPS:
        job = run_job(stage, data_root, run_dir, *BOTH, *extra)
        assert job.code == 0, f"jobs {stage} failed:\n" + "\n".join(job.lines[-40:])
    return run_dir


def test_one_model_learns_from_both_views_and_a_patient_rule_is_chosen_on_val(both_run: Path) -> None:
    best = json.loads((both_run / "model" / "best.json").read_text())
    assert best["view"] == "BOTH"
    val = read_table(str(both_run), "preds", pads.field("stage") == "train")
    assert set(val["view"]) == {"ANT", "POST"}
    record = json.loads((both_run / "threshold.json").read_text())
    point = record["patient"]
    assert point["fusion"] in FUSION_RULES and set(point["auc_by_rule"]) == set(FUSION_RULES)
    val_patients = read_table(str(both_run), "patient_preds", pads.field("stage") == "threshold")
    assert set(val_patients["split"]) == {"val"} and val_patients["patient_id"].is_unique
    assert (val_patients["fusion"] == point["fusion"]).all()


def test_each_patient_is_scored_once_beside_the_per_view_figures(both_run: Path) -> None:
    preds = read_table(str(both_run), "preds", pads.field("stage") == "infer")
    patients = read_table(str(both_run), "patient_preds", pads.field("stage") == "infer")
    assert patients["patient_id"].is_unique and set(patients["patient_id"]) == set(preds["patient_id"])
    by_patient = preds.groupby("patient_id")
    expected = by_patient["y_true"].max().reindex(patients["patient_id"]).to_numpy()
    assert np.array_equal(patients["y_true"].to_numpy(), expected)  # abnormal when any view is
    fusion = patients["fusion"].iloc[0]
    fused = by_patient["y_prob"].agg(fusion).reindex(patients["patient_id"]).to_numpy()
    assert np.allclose(patients["y_prob"].to_numpy(), fused, atol=1e-6)
    two = by_patient["view"].nunique().reindex(patients["patient_id"]).to_numpy() == 2
    assert (patients["views"].to_numpy()[two] == "ANT+POST").all() and (patients["n_views"].to_numpy()[two] == 2).all()
    metrics = read_table(str(both_run), "metrics")
    test = metrics[metrics["split"] == "test"]
    assert test["view"].tolist() == ["BOTH", "ANT", "POST", "patient"]
    assert test["n"].tolist() == [
        len(preds),
        (preds["view"] == "ANT").sum(),
        (preds["view"] == "POST").sum(),
        len(patients),
    ]


def test_the_boxes_of_a_patient_with_both_views_are_placed_in_the_other_view(both_run: Path) -> None:
    boxes = read_table(str(both_run), "boxes", pads.field("split") == "test")
    assert set(boxes["folder"]) == {"wholeBodyANT", "wholeBodyPOST"} and set(boxes["box_method"]) == {"spots"}
    index = read_table(str(both_run), "index")[["image_id", "patient_id"]]
    boxes = boxes.merge(index, on="image_id")
    heat = read_table(str(both_run), "heatmaps", pads.field("split") == "test")[["image_id"]].merge(
        index, on="image_id"
    )
    paired = set(heat.groupby("patient_id").filter(lambda g: len(g) == 2)["patient_id"])
    on_pairs = boxes["patient_id"].isin(paired).to_numpy()
    assert on_pairs.any()
    assert np.isfinite(boxes["cross_view"].to_numpy()[on_pairs]).all()
    assert np.isnan(boxes["cross_view"].to_numpy()[~on_pairs]).all()
    confirmed = boxes[boxes["cross_view"] > 0]
    for row in confirmed.itertuples():  # the named box exists in the patient's other view, with that score
        other = boxes[(boxes["patient_id"] == row.patient_id) & (boxes["image_id"] != row.image_id)]
        match = other[other["rank"] == row.cross_rank]
        assert len(match) == 1 and match["score"].iloc[0] == pytest.approx(row.cross_view)
    cam = read_table(str(both_run), "patient_preds", pads.field("stage") == "cam")
    assert cam["patient_id"].is_unique and len(cam)


def test_evaluate_scores_the_confirmed_boxes_beside_all_and_each_view_against_its_own_boxes(both_run: Path) -> None:
    loc = read_table(str(both_run), "loc_metrics")
    test = loc[(loc["split"] == "test") & (loc["folder"] == "*")]
    boxes = read_table(str(both_run), "boxes", pads.field("split") == "test")

    def value(method: str, view: str, metric: str) -> float:
        return test.query("method == @method and view == @view and metric == @metric")["value"].iloc[0]

    assert value("peaks", "all", "n_boxes") == len(boxes)
    assert value("peaks_confirmed", "all", "n_boxes") == int((boxes["cross_view"] > 0).sum())
    for view in ("ANT", "POST"):  # each view scored on its own images against its own XML boxes
        mine = boxes[boxes["folder"] == f"wholeBody{view}"]
        assert value("peaks", view, "n_boxes") == len(mine)


def test_a_clinic_study_is_scored_per_patient_from_its_two_frames_and_a_one_view_patient_says_so(
    ray_session,
    both_run: Path,
    clinic_folder: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    write_nm(clinic_folder / "ward" / "p9_post.dcm", [counts_image(9)], ["PO"], PatientID="P09")  # one view only
    run_dir = tmp_path / "clinic"
    cfg = test_config(clinic_folder, run_dir, "data.layout=dicom", f"model.from_run={both_run}", "cam.overlays=0")
    run_index(cfg)
    summary = run_cam(cfg)
    assert summary.balanced
    index = read_table(str(run_dir), "index").set_index("image_id")
    preds = read_table(str(run_dir), "preds", pads.field("stage") == "cam")
    patients = read_table(str(run_dir), "patient_preds", pads.field("stage") == "cam").set_index("patient_id")
    assert patients.index.is_unique
    scored = preds.assign(patient=index.loc[preds["image_id"], "patient_id"].to_numpy())
    views = scored.groupby("patient")["view"].agg(lambda v: "+".join(sorted(set(v))))
    assert patients["views"].to_dict() == views.to_dict()  # each patient once, from the views it has
    study = index.loc[index["path"] == "raw/s01.dcm#0", "patient_id"].iloc[0]  # a raw ANT + POST study
    assert patients.loc[study, "views"] == "ANT+POST" and patients.loc[study, "n_views"] == 2
    mine = scored[scored["patient"] == study]["y_prob"]
    assert patients.loc[study, "y_prob"] == pytest.approx(mine.agg(patients.loc[study, "fusion"]), abs=1e-6)
    alone = index.loc[index["path"] == "ward/p9_post.dcm#0", "patient_id"].iloc[0]
    assert patients.loc[alone, "views"] == "POST" and patients.loc[alone, "n_views"] == 1  # one view, and says so
    assert patients.loc[alone, "y_prob"] == pytest.approx(scored.loc[scored["patient"] == alone, "y_prob"].iloc[0])
