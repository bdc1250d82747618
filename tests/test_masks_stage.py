"""`make masks` end to end on a real local Ray: train -> threshold -> cam -> masks on generated data."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pytest
from pycocotools import mask as coco_mask

import schemas
from engine.config import Config
from engine.masks import MasksConfig
from engine.masks_stage import run_masks
from engine.tables import read_table
from jobs.masks import main as masks_main
from tests.conftest import TEST_OVERRIDES, test_config

pytestmark = pytest.mark.slow
QC_CODES = {"empty", "area_small", "area_large", "peak_outside", "leak", "low_contrast", "cam_not_above_ring",
            "disagree", "below_threshold"}  # fmt: skip


@pytest.fixture(scope="module")
def cam_run(scored_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's run after `make cam` (trained 2 epochs, thresholded) that masks may add to."""
    run_dir = tmp_path_factory.mktemp("masks") / "run"
    shutil.copytree(scored_run, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def masks_run(cam_run: Path, data_root: Path) -> tuple[Path, object]:
    """The cam run after `make masks` with the default threshold segmenter."""
    return cam_run, run_masks(test_config(data_root, cam_run))


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
