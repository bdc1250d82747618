"""The model carries its contract: a trained run records what scoring needs (model/best.json), `make cam` and
`make infer` adopt it or refuse a contradicting config (one `error:` line, exit 2), score only the model's view
unless told otherwise, and a run re-scored with another model takes that model's threshold."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from engine.config import CanvasConfig, Config, load_config
from engine.contract import CAM_KEYS, CONTRACT_KEYS, ContractError, apply_contract, contract_info
from engine.io.tables import read_table, write_part
from engine.preflight import preflight
from engine.stages._rows import trained_view_only
from engine.stages._scoring import adopt_threshold
from engine.stages.cam import run_cam
from engine.stages.infer import run_infer
from tests.conftest import REPO, importtime_job, test_config

TRAINED = load_config(  # a model trained at stride 8, which no default or demo setting gives
    REPO / "conf" / "demo.yaml", ["canvas.height=512", "cam.target_layer=layer3", "model.output_stride=8"]
)


def test_a_config_at_its_defaults_adopts_the_models_contract() -> None:
    cfg, notes = apply_contract(Config(), contract_info(TRAINED), "run/model/best.json")
    assert (cfg.canvas.height, cfg.canvas.width) == (512, 256)
    assert (cfg.model.name, cfg.model.output_stride, cfg.data.view) == ("test_resnet", 8, "BOTH")  # the demo's
    assert cfg.cam.target_layer == "layer3"  # a CAM setting left at its default is the model run's
    adopted = {"canvas.height", "canvas.width", "model.name", "model.output_stride", "cam.target_layer", "data.view"}
    assert set(notes) == adopted


def test_a_contradicting_key_is_one_error_naming_both_values_unless_overridden() -> None:
    passed = load_config(REPO / "conf" / "demo.yaml", ["canvas.height=256", "data.count_scale=p99"])
    with pytest.raises(ContractError) as refused:
        apply_contract(passed, contract_info(TRAINED), "run/model/best.json")
    message = str(refused.value)
    assert "\n" not in message and "run/model/best.json" in message and "model.override_contract=true" in message
    assert "canvas.height=256 but the model was trained with canvas.height=512" in message
    assert "data.count_scale=p99 but the model was trained with data.count_scale=max" in message
    forced = load_config(
        REPO / "conf" / "demo.yaml", ["canvas.height=256", "model.override_contract=true", "model.output_stride=16"]
    )
    cfg, notes = apply_contract(forced, contract_info(TRAINED), "run/model/best.json")
    assert cfg.canvas.height == 256 and "override_contract" in notes["canvas.height"]
    assert cfg.model.output_stride == 8  # the weights' architecture is the checkpoint's, overridden or not
    chosen = load_config(REPO / "conf" / "demo.yaml", ["canvas.height=512", "cam.method=gradcam"])
    cfg, notes = apply_contract(chosen, contract_info(TRAINED), "run/model/best.json")
    assert cfg.cam.method == "gradcam" and "as configured" in notes["cam.method"]  # how to read the CAM: as set


def test_a_checkpoint_written_before_the_contract_is_read_from_its_flat_keys() -> None:
    legacy = {"model": "test_resnet", "output_stride": 8, "canvas_h": 512, "canvas_w": 256, "view": "ANT"}
    cfg, _ = apply_contract(Config(), legacy, "old/model/best.json")
    assert (cfg.canvas.height, cfg.data.view, cfg.model.name) == (512, "ANT", "test_resnet")
    assert cfg.data.count_scale == "max" and cfg.cam == Config().cam  # not recorded: the config's own


def test_a_trained_run_records_its_contract_and_where_its_threshold_is(trained_run: Path) -> None:
    info = json.loads((trained_run / "model" / "best.json").read_text())
    assert set(info["contract"]) == set(CONTRACT_KEYS) and set(info["cam_settings"]) == set(CAM_KEYS)
    assert info["contract"]["canvas.height"] == 256 and info["contract"]["canvas.width"] == 128
    assert info["contract"]["data.view"] == "POST" and info["contract"]["data.count_scale"] == "max"
    assert info["contract"]["model.name"] == "test_resnet" and info["contract"]["model.output_stride"] == 32
    assert (trained_run / info["threshold"]).is_file()
    # the training images' QC reference travels with the model: domain_shift of new scans is judged by it
    reference = json.loads((trained_run / "model" / "qc_reference.json").read_text())
    train_ids = read_table(str(trained_run), "splits").query("split == 'train'")["image_id"]
    index = read_table(str(trained_run), "index").set_index("image_id")
    assert 0 < reference["images"] <= int((index.loc[train_ids, "view"] == "POST").sum())


def test_a_limit_keeps_that_many_scored_rows_and_counts_the_other_views_before_them() -> None:
    rows = pd.DataFrame(
        {"image_id": list("abcdefgh"), "view": ["ANT", "ANT", "POST", "ANT", "POST", "POST", "unknown", "POST"]}
    )
    cfg = load_config(None, [])  # data.view=POST
    for limit, kept, skipped in ((0, "cefh", 4), (1, "c", 2), (3, "cef", 3), (9, "cefh", 4)):
        scored = trained_view_only(cfg, rows, limit)
        assert "".join(scored["image_id"]) == kept and scored.attrs["skipped"] == {"view_mismatch": skipped}
    flagged = trained_view_only(load_config(None, ["model.other_views=score"]), rows, 3)
    assert "".join(flagged["image_id"]) == "abc" and not flagged.attrs.get("skipped")


@pytest.mark.parametrize("stage", ["cam", "infer"])
def test_a_mismatched_canvas_exits_2_with_one_line_before_ray(stage, trained_run, data_root, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("train_state"))
    code, output, imported = importtime_job(stage, data_root, run_dir, "canvas.height=192")
    assert code == 2 and len(output.splitlines()) == 1 and output.startswith("error: "), output[-3000:]
    assert "canvas.height=192" in output and "canvas.height=256" in output and "model.override_contract" in output
    assert "ray" not in imported.split() and "torch" not in imported.split()
    cfg = test_config(data_root, run_dir, "canvas.height=192")
    with pytest.raises(ContractError, match="canvas.height=192 but"):
        preflight(stage, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, from_run=str(trained_run))))
    preflight(stage, test_config(data_root, run_dir, "canvas.height=192", "model.override_contract=true"))


# --- New scans of several views, scored with a trained run's model (model.from_run) ---------------------------------

POST, ANT, UNKNOWN = 4, 3, 1


@pytest.fixture(scope="module")
def mixed_views(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run without splits whose index holds 4 POST, 3 ANT and 1 unknown-view whole-body rows of the session data."""
    index = read_table(str(trained_run), "index")
    post = index[index["folder"] == "wholeBodyPOST"].head(POST)
    ant = index[index["folder"] == "wholeBodyANT"].head(ANT)
    odd = ant.tail(UNKNOWN).assign(image_id=lambda f: "odd/" + f["image_id"], folder="odd", view="unknown")
    run_dir = tmp_path_factory.mktemp("mixed") / "run"
    write_part(str(run_dir), "index", pd.concat([post, ant, odd], ignore_index=True), "part")
    return run_dir


def second_model(trained_run: Path, where: Path, thr: float) -> Path:
    """Returns a copy of `trained_run` whose selected threshold is `thr` (another model, as far as a run can tell)."""
    shutil.copytree(trained_run, where, ignore=shutil.ignore_patterns("train_state"))
    chosen = read_table(str(where), "thresholds").assign(thr=thr)
    shutil.rmtree(where / "tables" / "thresholds")
    write_part(str(where), "thresholds", chosen, "part")
    record = json.loads((where / "threshold.json").read_text())
    (where / "threshold.json").write_text(json.dumps({**record, "thr": thr}))
    return where


def test_new_scans_adopt_the_models_contract_and_skip_other_views(
    ray_session, mixed_views: Path, trained_run: Path, data_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(mixed_views, run_dir)
    cfg = test_config(data_root, run_dir, f"model.from_run={trained_run}", "cam.overlays=0")
    cfg = dataclasses.replace(cfg, canvas=CanvasConfig())  # left at the defaults (1024 x 512): the model's is used
    summary = run_cam(cfg)
    assert summary.balanced and (summary.rows_in, summary.rows_ok) == (POST + ANT + UNKNOWN, POST)
    assert dict(summary.skipped) == {"view_mismatch": ANT + UNKNOWN}
    assert set(read_table(str(run_dir), "preds")["view"]) == {"POST"}
    assert set(read_table(str(run_dir), "meta")["canvas_h"]) == {256}  # the model's 256 x 128
    assert summary.extra["model_contract"]["canvas.height"].startswith("256 (the model's")
    assert load_config(run_dir / "config" / "cam.yaml").canvas.height == 256  # the config it scored with
    record = json.loads((run_dir / "threshold.json").read_text())
    assert record["from_run"] == str(trained_run) and summary.extra["threshold"].endswith(f"from {trained_run}")
    infer = run_infer(cfg)
    assert infer.balanced and dict(infer.skipped) == {"view_mismatch": ANT + UNKNOWN} and infer.rows_ok == POST
    assert "adopted" not in infer.extra["threshold"]  # the same model: its threshold is kept
    with pytest.raises(ContractError, match="canvas.height=192 but the model was trained with canvas.height=256"):
        run_cam(test_config(data_root, run_dir, f"model.from_run={trained_run}", "canvas.height=192"))


def test_rescoring_with_another_model_adopts_its_threshold_and_other_views_are_flagged_on_request(
    ray_session, mixed_views: Path, trained_run: Path, data_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(mixed_views, run_dir)
    assert adopt_threshold(test_config(data_root, run_dir, f"model.from_run={trained_run}")).startswith("thr ")
    first = json.loads((run_dir / "threshold.json").read_text())  # as a first `make cam` with trained_run left it
    other = second_model(trained_run, tmp_path / "other", thr=0.123)
    cfg = test_config(
        data_root,
        run_dir,
        f"model.from_run={other}",
        "model.other_views=score",
        "canvas.height=192",
        "model.override_contract=true",
        "cam.overlays=0",
    )
    summary = run_cam(cfg)
    record = json.loads((run_dir / "threshold.json").read_text())
    assert record["from_run"] == str(other) and record["thr"] == pytest.approx(0.123)
    assert read_table(str(run_dir), "thresholds")["thr"].tolist() == pytest.approx([0.123])
    assert f"adopted from {other}, replacing thr {first['thr']:.4g} of {trained_run}" in summary.extra["threshold"]
    preds = read_table(str(run_dir), "preds").set_index("image_id")
    assert summary.balanced and summary.rows_ok == POST + ANT + UNKNOWN and not summary.skipped
    flagged = {i for i, flags in preds["qc_flags"].items() if flags is not None and "view_mismatch" in list(flags)}
    assert flagged == set(preds.index[preds["view"] != "POST"]) and len(flagged) == ANT + UNKNOWN
    assert summary.extra["view_mismatch"].startswith(f"{ANT + UNKNOWN} images of another or unknown view")
    assert set(read_table(str(run_dir), "meta")["canvas_h"]) == {192}  # overridden: scored at the passed canvas
    assert "override_contract" in summary.extra["model_contract"]["canvas.height"]


def test_a_run_scored_with_its_own_model_says_when_its_threshold_names_another(trained_run, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("train_state"))
    cfg = load_config(None, [f"run.dir={run_dir}"])
    assert adopt_threshold(cfg) == ""  # its own threshold, from `make threshold`
    record = json.loads((run_dir / "threshold.json").read_text())
    (run_dir / "threshold.json").write_text(json.dumps({**record, "from_run": "/elsewhere"}))
    assert "names the model of /elsewhere" in adopt_threshold(cfg)
