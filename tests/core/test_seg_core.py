"""The segmentation network's pure parts on tiny arrays: targets from RLE, val Dice, components -> RLE rows."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from engine.config import load_config
from engine.config_sections import SegTrainConfig
from engine.core.masks.segmenters import encode_rle
from engine.core.segnet.arrays import (
    SegDiceAccumulator,
    component_masks,
    component_rows,
    pack_rles,
    target_canvas,
    unpack_rles,
)
from engine.runtime.segtrain_loop import augment_pair
from engine.runtime.udfs.segment import image_rows, row_columns
from engine.stages.segtrain import decode_with_targets
from tests.conftest import REPO


def _rect(h: int, w: int, y1: int, y2: int, x1: int, x2: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_packed_rles_round_trip_and_empty_packs_to_nothing() -> None:
    rles = [encode_rle(_rect(40, 20, 2, 6, 3, 9)), encode_rle(_rect(40, 20, 30, 33, 0, 20))]
    assert unpack_rles(pack_rles(rles)) == rles
    assert pack_rles([]) == "" and unpack_rles("") == []


def test_target_is_the_union_letterboxed_onto_the_canvas() -> None:
    # 40 x 20 image on an 80 x 80 canvas: scale 2, new 80 x 40, pad_left 20, pad_top 0.
    packed = pack_rles([encode_rle(_rect(40, 20, 5, 10, 2, 6)), encode_rle(_rect(40, 20, 30, 35, 10, 20))])
    target = target_canvas(packed, 40, 20, 80, 80)
    expected = _rect(80, 80, 10, 20, 24, 32) | _rect(80, 80, 60, 70, 40, 60)
    assert target.dtype == np.uint8 and np.array_equal(target.astype(bool), expected)
    assert not target_canvas("", 40, 20, 80, 80).any()  # a normal image: an empty target


def test_target_of_a_mask_of_another_size_raises() -> None:
    with pytest.raises(ValueError, match="size"):
        target_canvas(pack_rles([encode_rle(_rect(30, 20, 0, 5, 0, 5))]), 40, 20, 80, 80)


def test_dice_accumulator_pools_lesion_images_and_counts_normal_false_positives() -> None:
    pred = np.stack([_rect(4, 4, 0, 2, 0, 2), _rect(4, 4, 0, 1, 0, 1), np.zeros((4, 4), bool)])
    target = np.stack([_rect(4, 4, 0, 2, 0, 1), np.zeros((4, 4), bool), np.zeros((4, 4), bool)])
    acc = SegDiceAccumulator()
    acc.update(pred[:1], target[:1])
    acc.merge(SegDiceAccumulator()).update(pred[1:], target[1:])
    out = acc.compute()
    # image 0: |A|=4, |B|=2, |A and B|=2 -> Dice 4/6; image 1 adds 1 false-positive pixel to the pool.
    assert out["val_dice"] == pytest.approx(4 / 7) and out["val_dice_lesion"] == pytest.approx(4 / 6)
    assert out["val_fp_normal"] == pytest.approx(1 / 2)
    assert SegDiceAccumulator().compute()["val_dice"] == 1.0


def test_components_are_ranked_by_mean_probability_and_small_ones_dropped() -> None:
    prob = np.zeros((20, 20), dtype=np.float32)
    prob[2:6, 2:6] = 0.6  # 16 px, mean 0.6
    prob[10:14, 10:14] = 0.9  # 16 px, mean 0.9
    prob[18, 18] = 0.99  # 1 px: below min_area
    comps = component_masks(prob, 0.5, 2, 8)
    assert [round(s, 2) for _, s in comps] == [0.9, 0.6]
    assert np.array_equal(comps[0][0], _rect(20, 20, 10, 14, 10, 14))
    assert len(component_masks(prob, 0.5, 1, 2)) == 2 and component_masks(prob, 0.995, 1, 8) == []


def test_component_rows_map_to_original_pixels_as_coco_rle() -> None:
    prob = np.zeros((80, 80), dtype=np.float32)
    prob[10:20, 24:32] = 0.8  # canvas px of original rows 5:10, cols 2:6 (scale 2, pad_left 20)
    meta = {"orig_h": 40, "orig_w": 20, "new_h": 80, "new_w": 40, "pad_left": 20, "pad_top": 0}
    (row,) = component_rows(prob, meta, SegTrainConfig(threshold=0.5, min_area_px=2))
    decoded = coco_mask.decode({"size": [row["rle_h"], row["rle_w"]], "counts": row["rle_counts"].encode()})
    assert np.array_equal(decoded.astype(bool), _rect(40, 20, 5, 10, 2, 6))
    assert (row["mask_x1"], row["mask_y1"], row["mask_x2"], row["mask_y2"]) == (2, 5, 6, 10)
    assert row["area"] == 20 and row["rank"] == 0 and row["score"] == pytest.approx(0.8)


def test_image_rows_mark_images_without_components_and_errors_with_rank_minus_one() -> None:
    probs = np.zeros((3, 8, 8), dtype=np.float32)
    probs[0, 2:5, 2:5] = 0.9
    probs[2, 2:5, 2:5] = 0.9  # an undecodable row: its map is ignored
    meta = {
        "orig_h": [8] * 3,
        "orig_w": [8] * 3,
        "new_h": [8] * 3,
        "new_w": [8] * 3,
        "pad_left": [0] * 3,
        "pad_top": [0] * 3,
    }
    batch = {
        "image_id": np.array(["a", "b", "c"], dtype=object),
        "split": np.array(["test"] * 3, dtype=object),
        "folder": np.array(["f"] * 3, dtype=object),
        "path": np.array(["pa", "pb", "pc"], dtype=object),
        "error": np.array(["", "", "missing_file: pc"], dtype=object),
        **{k: np.array(v) for k, v in meta.items()},
    }
    columns = row_columns(image_rows(batch, probs, SegTrainConfig(), "v"))
    assert list(columns["image_id"]) == ["a", "b", "c"] and list(columns["rank"]) == [0, -1, -1]
    assert list(columns["error"]) == ["", "", "missing_file: pc"] and columns["area"][0] == 9
    assert set(columns["segmenter"]) == {"segnet"} and np.isnan(columns["cam_inside"]).all()


def test_augment_moves_the_target_with_the_image() -> None:
    cfg = load_config(REPO / "conf" / "demo.yaml", ["train.affine_p=1.0", "train.jitter_p=0.0", "train.rotate_deg=20"])
    target = torch.zeros(2, 1, 32, 16)
    target[:, :, 8:20, 4:10] = 1.0
    x, moved = augment_pair(target.clone(), target.clone(), cfg.train, torch.Generator().manual_seed(0))
    assert not torch.equal(moved, target)  # the affine did something
    assert torch.equal(moved, (x >= 0.5).float())  # and the same thing to both
    assert set(moved.unique().tolist()) <= {0.0, 1.0}


def test_decode_with_targets_turns_a_mask_of_the_wrong_size_into_an_error(tmp_path: Path) -> None:
    image = np.full((40, 20), 100, dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    good = pack_rles([encode_rle(_rect(40, 20, 5, 10, 2, 6))])
    bad = pack_rles([encode_rle(_rect(30, 20, 5, 10, 2, 6))])
    batch = {"path": np.array(["a.png", "b.png"], dtype=object), "target_rles": np.array([good, bad], dtype=object)}
    out = decode_with_targets(batch, str(tmp_path), 80, 80, "max")
    assert out["error"][0] == "" and out["error"][1].startswith("bad_pseudo_mask")
    assert np.array_equal(out["target"][0].astype(bool), _rect(80, 80, 10, 20, 24, 32)) and not out["target"][1].any()
    assert "target_rles" not in out and "target_rles" in batch


def test_mask_quality_counts_false_positive_masks_on_normal_images() -> None:
    from engine.io.evaluate_masks import MaskQualityAccumulator

    empty = np.zeros((0, 4))
    acc = MaskQualityAccumulator(iou_threshold=0.3)
    acc.update([_rect(8, 8, 0, 2, 0, 2), _rect(8, 8, 4, 6, 4, 6)], empty, None, None, normal=True)
    other = MaskQualityAccumulator(iou_threshold=0.3)
    other.update([], empty, None, None, normal=True)
    other.update([_rect(8, 8, 0, 2, 0, 2)], np.array([[0, 0, 2, 2]]), None, None)  # abnormal: not counted
    out = acc.merge(other).compute()
    assert out["mask_fp_per_normal"] == (1.0, 2, 2) and out["mask_fp_image_rate"] == (0.5, 1, 2)
    assert "mask_fp_per_normal" not in MaskQualityAccumulator(0.3).compute()


def test_each_ok_image_gets_one_seg_probs_row_with_its_pooled_map_across_batches() -> None:
    from engine.core.masks.scoremaps import PROB_STRIDE, unpool_probability
    from engine.runtime.udfs.segment import prob_column
    from engine.stages.segment import prob_rows

    size = 4 * PROB_STRIDE
    probs = np.zeros((3, size, size), dtype=np.float32)
    probs[0, :PROB_STRIDE, :PROB_STRIDE] = 1.0  # image a: one hot block, top left
    probs[1, -PROB_STRIDE:, -PROB_STRIDE:] = 0.5  # image b: a half-sure block, bottom right
    rows = np.array(["a", "a", "b", "c"], dtype=object)  # two components of a, one row each of b and c
    column = prob_column(np.array(["a", "b", "c"], dtype=object), rows, probs)
    assert column.shape == (4, 4, 4) and column.dtype == np.uint8
    assert column[0, 0, 0] == column[1, 0, 0] == 255 and column[0].sum() == 255  # a's map on both of its rows
    assert column[2, 3, 3] == 128 and column[2].sum() == 128 and not column[3].any()
    out = {
        "image_id": rows,
        "error": np.array(["", "", "", "missing_file: c"], dtype=object),
        "prob": column,
        "canvas_h": np.full(4, size),
        "canvas_w": np.full(4, size),
        "split": np.array(["test"] * 4, dtype=object),
        "folder": np.array(["f"] * 4, dtype=object),
    }
    written: set[str] = set()
    first = prob_rows({k: v[:1] for k, v in out.items()}, written)  # a's first row in one stream batch ...
    rest = prob_rows({k: v[1:] for k, v in out.items()}, written)  # ... its second row in the next: not again
    assert first["image_id"] == ["a"] and rest["image_id"] == ["b"]  # c failed: no map
    assert written == {"a", "b"} and list(rest["prob_h"]) == [4] and list(rest["canvas_w"]) == [size]
    stored = np.asarray(rest["prob"][0].as_py(), dtype=np.uint8).reshape(4, 4)
    back = unpool_probability(stored, size, size)
    assert back[-1, -1] == pytest.approx(128 / 255) and back[0, 0] == 0.0  # the half-sure block, back on the canvas
