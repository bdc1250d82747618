"""`make masks` end to end on a real local Ray: train -> threshold -> cam -> masks on generated data."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

import schemas
from engine.config import Config
from engine.config_sections import MasksConfig
from engine.core.masks.segmenters import decode_rle
from engine.io.overlays import MASK_COLOUR
from engine.io.synth import lesion_mask_path
from engine.io.tables import read_table
from engine.stages._rows import view_folders
from engine.stages.evaluate.run import run_evaluate
from engine.stages.masks import run_masks
from engine.stages.report import run_report
from jobs import stage_main
from tests.conftest import TEST_OVERRIDES, test_config

masks_main = stage_main("masks")
pytestmark = pytest.mark.slow
QC_CODES = {
    "empty",
    "area_small",
    "area_large",
    "peak_outside",
    "leak",
    "low_contrast",
    "cam_not_above_ring",
    "disagree",
    "below_threshold",
}


@pytest.fixture(scope="module")
def cam_run(scored_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's run after `make cam` (trained 2 epochs, thresholded) that masks may add to."""
    run_dir = tmp_path_factory.mktemp("masks") / "run"
    shutil.copytree(scored_run, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def masks_run(cam_run: Path, data_root: Path) -> tuple[Path, object]:
    """The cam run after `make masks` with the default threshold segmenter.

    The 2-epoch test model's boxes on the calibrated (sparse) scans all leak with the default QC and sit below its
    threshold, so nothing would be kept: the leak check needs all four sides here and no probability check, so that
    the kept path (tight boxes, COCO segmentation, contours) is exercised too.
    """
    return cam_run, run_masks(test_config(data_root, cam_run, "masks.leak_sides=4", "masks.min_prob=all"))


def test_masks_writes_one_row_per_pseudo_box_in_original_pixels(masks_run) -> None:
    run_dir, summary = masks_run
    boxes, masks = read_table(str(run_dir), "boxes"), read_table(str(run_dir), "masks")
    meta = read_table(str(run_dir), "meta").set_index("image_id")
    assert len(boxes) > 0 and summary.balanced and summary.rows_in == len(boxes) == summary.rows_ok
    assert sorted(zip(masks["image_id"], masks["rank"], strict=True)) == sorted(
        zip(boxes["image_id"], boxes["rank"], strict=True)
    )
    assert (masks["rle_h"].to_numpy() == meta.loc[masks["image_id"], "orig_h"].to_numpy()).all()
    assert (masks["rle_w"].to_numpy() == meta.loc[masks["image_id"], "orig_w"].to_numpy()).all()
    assert set(masks["segmenter"]) == {"threshold"} and masks["agreement_iou"].isna().all()


def test_masks_decode_with_pycocotools_inside_their_box_and_image(masks_run) -> None:
    run_dir, _ = masks_run
    boxes = read_table(str(run_dir), "boxes").set_index(["image_id", "rank"])
    scale = read_table(str(run_dir), "meta").set_index("image_id")["scale"]
    for row in read_table(str(run_dir), "masks").itertuples():
        rle = {"size": [row.rle_h, row.rle_w], "counts": row.rle_counts.encode()}
        mask = coco_mask.decode(rle).astype(bool)
        assert mask.sum() == row.area == coco_mask.area(rle)
        assert set(row.qc_flags) <= QC_CODES and row.kept == (len(row.qc_flags) == 0)
        if row.area == 0:
            assert "empty" in row.qc_flags and np.isnan(row.mask_x1)
            continue
        ys, xs = np.nonzero(mask)
        assert (row.mask_x1, row.mask_y1, row.mask_x2, row.mask_y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        box = boxes.loc[(row.image_id, row.rank)]
        # the mask stays in its box, give or take the canvas pixel a fractional box edge cuts (1 / scale orig px)
        slack = 1.0 / scale[row.image_id] + 1e-3
        assert box.x1_orig - slack <= row.mask_x1 and row.mask_x2 <= box.x2_orig + slack
        assert box.y1_orig - slack <= row.mask_y1 and row.mask_y2 <= box.y2_orig + slack


def test_masks_keep_some_masks_and_count_images_without_boxes(masks_run) -> None:
    run_dir, summary = masks_run
    masks = read_table(str(run_dir), "masks")
    heat = read_table(str(run_dir), "heatmaps")
    assert masks["kept"].any()
    extra = summary.extra
    assert extra["images_with_boxes"] == masks["image_id"].nunique()
    assert extra["images_with_boxes"] + extra["images_without_boxes"] == len(heat)


def test_masks_table_opens_in_plain_pyarrow_and_duckdb(masks_run) -> None:
    run_dir, _ = masks_run
    path = str(run_dir / "tables" / "masks")
    table = pads.dataset(path, format="parquet", partitioning="hive").to_table()
    assert set(schemas.TABLES["masks"].SCHEMA.names) == set(table.schema.names)
    kept = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}/**/*.parquet', hive_partitioning=1) WHERE kept")
    assert kept.fetchall()[0][0] == int(read_table(str(run_dir), "masks")["kept"].sum())


def test_missing_image_becomes_one_error_row_per_box_and_the_job_exits_zero(
    masks_run, data_root: Path, tmp_path: Path
) -> None:
    run_dir, _ = masks_run
    copy_root, copy_run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(data_root, copy_root)
    shutil.copytree(run_dir, copy_run)
    boxes = read_table(str(copy_run), "boxes")
    victim = boxes["image_id"].iloc[0]
    path = read_table(str(copy_run), "index").set_index("image_id").loc[victim, "path"]
    (copy_root / path).unlink()
    args = [f"data.root={copy_root}", f"run.dir={copy_run}", *TEST_OVERRIDES]
    assert masks_main(["--config", "conf/demo.yaml", *args]) == 0
    masks, errors = read_table(str(copy_run), "masks"), read_table(str(copy_run), "errors")
    errors = errors[errors["stage"] == "masks"]
    assert len(masks) + len(errors) == len(boxes)
    assert errors["image_id"].tolist() == [victim] * int((boxes["image_id"] == victim).sum())
    assert errors["reason"].str.startswith("missing_file").all() and victim not in set(masks["image_id"])


def test_masks_with_a_second_segmenter_record_agreement(masks_run, data_root: Path, tmp_path: Path) -> None:
    run_dir, _ = masks_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    pair = MasksConfig(segmenter="watershed", second="threshold")
    summary = run_masks(_with_masks(test_config(data_root, copy), pair))
    masks = read_table(str(copy), "masks")
    assert summary.balanced and set(masks["segmenter"]) == {"watershed"}
    assert masks["agreement_iou"].between(0, 1).all()


def _with_masks(cfg: Config, masks: MasksConfig) -> Config:
    """Returns `cfg` with its `masks` section replaced (a stand-in while engine.config has no such section)."""
    if hasattr(cfg, "masks"):
        return dataclasses.replace(cfg, masks=masks)

    class WithMasks:
        def __getattr__(self, name: str) -> object:
            return masks if name == "masks" else getattr(cfg, name)

    return WithMasks()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def evaluated_masks_run(masks_run, data_root: Path):
    """The masks run through `make evaluate` (tight boxes, mask metrics, COCO) and `make report`."""
    run_dir, _ = masks_run
    cfg = test_config(data_root, run_dir)
    return run_dir, run_evaluate(cfg), run_report(cfg)


def _loc(run_dir: Path, method: str) -> pd.DataFrame:
    loc = read_table(str(run_dir), "loc_metrics")
    return loc[(loc["method"] == method) & (loc["split"] == "test") & (loc["folder"] == "*")].set_index("metric")


def test_evaluate_scores_tight_boxes_and_writes_the_mask_metrics(evaluated_masks_run, data_root: Path) -> None:
    run_dir, summary, _ = evaluated_masks_run
    table = read_table(str(run_dir), "masks").query("split == 'test'")
    # No classifier gate: a mask counts when it passes its own QC, a below_threshold flag alone notwithstanding.
    gated = np.array([list(flags) == ["below_threshold"] for flags in table["qc_flags"]], dtype=bool)
    kept = table[(table["kept"].to_numpy() | gated) & table["mask_x1"].notna().to_numpy()]
    tight, peaks, quality = _loc(run_dir, "masks_tight"), _loc(run_dir, "peaks"), _loc(run_dir, "masks")
    # One tight box per counted mask; the CAM peak is the one `peaks` uses.
    assert tight.loc["n_boxes", "numerator"] == len(kept) > 0 and quality.loc["n_masks", "numerator"] == len(kept)
    below = int((kept["y_prob"] < _threshold(run_dir)).sum())
    assert quality.loc["n_masks_below_cutoff", "numerator"] == below
    assert quality.loc["boxes_on_normal_gt", "value"] == tight.loc["boxes_on_normal_gt", "value"]
    assert tight.loc["pointing_game", "value"] == peaks.loc["pointing_game", "value"]
    assert tight.loc["recall@iou0.3", "denominator"] == peaks.loc["recall@iou0.3", "denominator"]
    # Denominators recounted from the tables and the generator's files: GT boxes, kept masks on GT images, and
    # the scored images with a true lesion mask file.
    gt = read_table(str(run_dir), "gt_boxes")
    on_gt = kept["image_id"].isin(gt.loc[gt["cls"] == "Abnormal", "image_id"]).sum()
    heat = read_table(str(run_dir), "heatmaps")
    scored = heat.loc[heat["folder"].isin(view_folders(test_config(data_root, run_dir).data.view)), "image_id"]
    lesion_files = sum((data_root / lesion_mask_path(i)).exists() for i in scored)
    gt_boxes = peaks.loc["recall@iou0.3", "denominator"]
    expected = {
        "mask_box_iou": gt_boxes,
        "mask_hit_rate": gt_boxes,
        "mask_inside_fraction": on_gt,
        "mask_dice": lesion_files,
        "mask_pxap": lesion_files,
    }
    for key, count in expected.items():
        assert quality.loc[key, "denominator"] == count > 0 or key == "mask_inside_fraction", key
        assert 0.0 <= quality.loc[key, "value"] <= 1.0 or count == 0, key
    assert "true lesion masks for" in summary.extra["masks_note"] and "mask_dice=" in summary.extra["masks"]
    assert "Classifier gate: none" in summary.extra["masks_note"]
    # PxAP per method on its own map, over the same images: the CAM itself, and the CAM inside the masks.
    cam = _loc(run_dir, "cam")
    assert cam.loc["mask_pxap", "denominator"] == lesion_files and 0.0 < cam.loc["mask_pxap", "value"] <= 1.0
    assert quality.loc["mask_pxap", "value"] != cam.loc["mask_pxap", "value"]  # the masks' map is not the CAM
    groups = json.loads((run_dir / "evaluate.json").read_text())["methods"]["masks/test"]["groups"]
    assert all("mask_pxap" in metrics for name, metrics in groups.items() if name.endswith("/*"))


def _threshold(run_dir: Path) -> float:
    from engine.stages._scoring import selected_threshold

    return selected_threshold(str(run_dir))


def test_coco_export_carries_the_kept_masks_and_loads_in_pycocotools(evaluated_masks_run) -> None:
    run_dir, _, _ = evaluated_masks_run
    coco = COCO(str(run_dir / "prompts" / "coco_test.json"))  # masks and boxes of the test split only
    masks = read_table(str(run_dir), "masks").set_index(["image_id", "rank"])
    keys = {image["id"]: image["image_key"] for image in coco.dataset["images"]}
    anns = coco.loadAnns(coco.getAnnIds())
    assert "licenses" in coco.dataset and len(anns) == len(masks)
    with_mask = [a for a in anns if a["segmentation"]]
    assert len(with_mask) == int(masks["kept"].sum()) > 0
    for ann in with_mask[:5]:
        row = masks.loc[(keys[ann["image_id"]], ann["rank"])]
        truth = decode_rle(row["rle_counts"], row["rle_h"], row["rle_w"])
        assert np.array_equal(coco.annToMask(ann).astype(bool), truth)
    assert all(a["segmentation"] == [] for a in anns if not masks.loc[(keys[a["image_id"]], a["rank"]), "kept"])


def test_evaluate_without_true_masks_or_without_masks_says_so(masks_run, data_root: Path, tmp_path: Path) -> None:
    run_dir, _ = masks_run
    real = tmp_path / "data"
    shutil.copytree(data_root, real, ignore=shutil.ignore_patterns("lesion_masks"))  # real data: no true masks
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("loc_metrics", "report", "prompts"))
    summary = run_evaluate(test_config(real, copy))
    assert "no true lesion masks" in summary.extra["masks_note"] and "mask_dice" not in summary.extra["masks"]
    quality = _loc(copy, "masks")
    assert "mask_dice" not in quality.index and "mask_pxap" not in quality.index and "mask_box_iou" in quality.index
    shutil.rmtree(copy / "tables" / "masks")
    summary = run_evaluate(test_config(real, copy))
    assert summary.extra["masks_note"].startswith("no masks of split=test") and "masks" not in summary.extra
    assert not {"masks", "masks_tight"} & set(read_table(str(copy), "loc_metrics")["method"])


def test_report_gallery_draws_the_kept_mask_contours(evaluated_masks_run) -> None:
    run_dir, _, report = evaluated_masks_run
    page = (run_dir / "report" / "index.html").read_text()
    shown = re.findall(r'<img src="(gallery/[^"]+)" alt="([^"]+)"', page)
    masks = read_table(str(run_dir), "masks")
    with_masks = set(masks.loc[masks["kept"], "image_id"])
    assert report.balanced and shown and "kept pseudo masks" in page
    drawn = {}
    for source, image_id in shown:
        picture = cv2.imread(str(run_dir / "report" / source), cv2.IMREAD_COLOR)
        drawn[image_id] = bool(np.all(picture == MASK_COLOUR, axis=2).any())
    assert not any(drawn[i] for i in drawn if i not in with_masks)  # magenta only where a mask was kept
    assert any(drawn[i] for i in drawn if i in with_masks) == bool(with_masks & set(drawn))
