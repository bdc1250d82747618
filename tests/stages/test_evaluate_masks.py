"""Mask outputs of `make evaluate` on hand-made arrays: tight boxes, GT-box overlap, Dice, PxAP, COCO segmentation."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO

from engine.core.localization.boxes import BoxParams
from engine.core.masks.segmenters import encode_rle
from engine.io.evaluate_masks import MASK_BOX, MaskQualityAccumulator, gt_box_scores, read_truth, tight_boxes
from engine.io.overlays import MASK_COLOUR, render_overlay
from engine.io.synth import lesion_mask_path
from engine.stages.evaluate.outputs import CATEGORIES, coco_images, mask_segments, prediction_annotations


def square(h: int, w: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_gt_box_scores_take_the_best_mask_per_gt_box_and_the_best_box_per_mask() -> None:
    # Mask A = the 2 x 2 square at x 1..3, y 1..3 (bbox [1, 1, 3, 3]); mask B = x 4..6, y 0..2 (bbox [4, 0, 6, 2]).
    masks = [square(6, 8, 1, 1, 3, 3), square(6, 8, 4, 0, 6, 2)]
    # GT 0 = A's bbox exactly (IoU 1); GT 1 = [4, 0, 6, 4]: B covers 4 of its 8 px (IoU 4/8), A nothing.
    gt = np.array([[1, 1, 3, 3], [4, 0, 6, 4]])
    best, inside = gt_box_scores(masks, gt)
    assert best == pytest.approx([1.0, 0.5])
    assert inside == pytest.approx([1.0, 1.0])
    # A GT box covering half of mask A: 2 of its 4 px inside.
    assert gt_box_scores(masks[:1], np.array([[1, 1, 2, 3]]))[1] == pytest.approx([0.5])
    assert gt_box_scores([], gt) == ([0.0, 0.0], [])


def test_mask_quality_means_hit_rate_dice_and_pxap_by_hand() -> None:
    acc = MaskQualityAccumulator(iou_threshold=0.3)
    # Image 1: GT boxes as above, best IoUs 1.0 and 0.5 (both hits); no true mask (real data).
    masks = [square(6, 8, 1, 1, 3, 3), square(6, 8, 4, 0, 6, 2)]
    acc.update(masks, np.array([[1, 1, 3, 3], [4, 0, 6, 4]]), None, None)
    # Image 2 (1 x 4): the mask {0, 1} vs truth {0, 2}: Dice 2*1 / (2 + 2) = 0.5; GT box [0, 0, 4, 1] vs the
    # mask bbox [0, 0, 2, 1]: IoU 0.5 (a hit). CAM 0.955, 0.655, 0.355, 0.055 vs truth T F T F at t = 0, .01, ..:
    # recall 1 with precision 2/3 up to t=0.35, then recall 1/2 (precision 1 at t=0.95), then 0:
    # PxAP = (1 - 1/2) * 2/3 + (1/2 - 0) * 1 = 5/6.
    other = MaskQualityAccumulator(iou_threshold=0.3)
    truth = np.array([[True, False, True, False]])
    heat = np.array([[0.955, 0.655, 0.355, 0.055]])
    other.update([np.array([[True, True, False, False]])], np.array([[0, 0, 4, 1]]), heat, truth)
    out = acc.merge(other).compute()
    assert out["mask_box_iou"].value == pytest.approx((1.0 + 0.5 + 0.5) / 3) and out["mask_box_iou"].denominator == 3
    assert out["mask_hit_rate"][1:] == (3, 3)
    assert out["mask_inside_fraction"].value == pytest.approx(1.0) and out["mask_inside_fraction"].denominator == 3
    assert out["mask_dice"].value == pytest.approx(0.5) and out["mask_dice"].denominator == 1
    assert out["mask_pxap"].value == pytest.approx(5 / 6)


def test_mask_quality_without_true_masks_has_no_dice_or_pxap_and_a_miss_counts() -> None:
    acc = MaskQualityAccumulator(iou_threshold=0.5)
    # bbox [0, 0, 2, 2] vs GT [0, 0, 4, 2]: IoU 4 / 8 = 0.5 (a hit at 0.5); a GT box with no mask: IoU 0, a miss.
    acc.update([square(4, 4, 0, 0, 2, 2)], np.array([[0, 0, 4, 2]]), None, None)
    acc.update([], np.array([[0, 0, 1, 1]]), None, None)
    out = acc.compute()
    assert "mask_dice" not in out and "mask_pxap" not in out
    assert out["mask_hit_rate"][1:] == (1, 2) and out["mask_box_iou"].value == pytest.approx(0.25)


def test_tight_boxes_are_the_mask_bboxes_and_empty_masks_give_none() -> None:
    masks = pd.DataFrame(
        {
            "image_id": ["a", "a"],
            "rank": [0, 1],
            "mask_x1": [3.0, np.nan],
            "mask_y1": [4.0, np.nan],
            "mask_x2": [9.0, np.nan],
            "mask_y2": [7.0, np.nan],
            "score": [0.8, 0.1],
        }
    )
    out = tight_boxes(masks)
    assert out[["x1_orig", "y1_orig", "x2_orig", "y2_orig"]].to_numpy().tolist() == [[3, 4, 9, 7]]
    assert out["rank"].tolist() == [0]


def test_read_truth_unions_the_label_map_and_is_none_without_a_file(tmp_path: Path) -> None:
    labels = np.zeros((5, 6), dtype=np.uint8)
    labels[0, 0], labels[4, 5] = 1, 2
    path = tmp_path / lesion_mask_path("wholeBodyANT/7.jpg")
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), labels)
    truth = read_truth(str(tmp_path), "wholeBodyANT/7.jpg")
    assert truth.shape == (5, 6) and truth.sum() == 2 and truth[0, 0] and truth[4, 5]
    assert read_truth(str(tmp_path), "wholeBodyANT/8.jpg") is None


def test_coco_export_with_segmentation_loads_in_pycocotools(tmp_path: Path) -> None:
    images = pd.DataFrame(
        {"image_id": ["f/a.jpg"], "path": ["f/a.jpg"], "orig_w": [8], "orig_h": [6], "split": ["test"], "y_prob": [0.7]}
    )
    boxes = pd.DataFrame(
        {
            "image_id": ["f/a.jpg"] * 3,
            "rank": [0, 1, 2],
            "x1_orig": [1.0, 4, 0],
            "y1_orig": [1.0, 0, 0],
            "x2_orig": [3.0, 6, 2],
            "y2_orig": [3.0, 2, 2],
            "score": [0.9, 0.5, 0.2],
            "score_raw": [0.9, 0.5, 0.2],
            "y_prob": [0.7] * 3,
        }
    )
    mask = square(6, 8, 1, 1, 3, 3)
    counts, h, w = encode_rle(mask)
    rows = [
        {"image_id": "f/a.jpg", "rank": 0, "rle_counts": counts, "rle_h": h, "rle_w": w, "area": 4, "kept": True},
        {"image_id": "f/a.jpg", "rank": 1, "rle_counts": counts, "rle_h": h, "rle_w": w, "area": 4, "kept": False},
    ]
    listed, ids = coco_images(images)
    annotations = prediction_annotations(boxes, ids, mask_segments(pd.DataFrame(rows), boxes, boxes))
    document = {"licenses": [], "images": listed, "annotations": annotations, "categories": CATEGORIES}
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(document))
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert "licenses" in coco.dataset and [a["rank"] for a in anns] == [0, 1, 2]
    assert anns[0]["segmentation"]["size"] == [6, 8] and np.array_equal(coco.annToMask(anns[0]), mask)
    assert anns[1]["segmentation"] == [] and anns[2]["segmentation"] == []  # rejected by QC / no mask


def test_render_overlay_draws_mask_contours() -> None:
    image, heat = np.zeros((20, 20), dtype=np.uint8), np.zeros((20, 20))
    plain = render_overlay(image, heat, np.zeros((0, 4)), "")
    drawn = render_overlay(image, heat, np.zeros((0, 4)), "", contours=(square(20, 20, 8, 8, 14, 14),))
    changed = np.any(drawn != plain, axis=2)
    assert changed[8, 8:14].all() and not changed[10:12, 10:12].any()  # the outline, not the inside
    assert tuple(drawn[8, 10]) == MASK_COLOUR


def mask_row(image_id: str, rank: int, mask: np.ndarray, flags: list[str], segmenter: str = "threshold") -> dict:
    """Returns one row of table masks (or seg_masks) holding `mask` (original px) with QC `flags`."""
    counts, h, w = encode_rle(mask)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = dict(zip(MASK_BOX, (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1), strict=True))
    return {
        "image_id": image_id,
        "rank": rank,
        "rle_counts": counts,
        "rle_h": h,
        "rle_w": w,
        "area": int(mask.sum()),
        **{k: float(v) for k, v in box.items()},
        **dict.fromkeys(("contrast", "cam_inside", "cam_ring", "agreement_iou"), np.nan),
        "score": 0.8,
        "y_prob": 0.5,
        "segmenter": segmenter,
        "segmenter_version": "1",
        "qc_flags": flags,
        "kept": not flags,
        "split": "test",
        "folder": "wholeBodyPOST",
    }


def test_every_mask_method_is_scored_on_its_own_map_with_one_gate(tmp_path: Path) -> None:
    """`make evaluate`'s mask methods on a hand-made run of two 16 x 8 images (canvas = original, no letterbox)."""
    from engine.core.localization.box_methods import gt_by_image
    from engine.core.masks.scoremaps import masked_score, pool_probability, unpool_probability
    from engine.core.metrics.masks import pxap
    from engine.io.evaluate_masks import mask_methods, original_heat
    from engine.io.tables import write_part
    from engine.stages.evaluate.run import EvalContext, loc_settings
    from tests.conftest import test_config

    data_root, run_dir = tmp_path / "data", tmp_path / "run"
    sick, well = "wholeBodyPOST/1.jpg", "wholeBodyPOST/2.jpg"
    labels = np.zeros((16, 8), dtype=np.uint8)
    labels[0:4, 0:4] = 1  # image 1's one lesion: the top-left 4 x 4 px
    (data_root / "wholeBodyPOST" / "lesion_masks").mkdir(parents=True)
    cv2.imwrite(str(data_root / lesion_mask_path(sick)), labels)
    # CAM on a 4 x 2 grid: hot on the lesion (1.0) and on a lower spot (0.8) the pseudo mask leaves out.
    heat = np.zeros((4, 2), dtype=np.float32)
    heat[0, 0], heat[3, 1] = 1.0, 0.8
    meta = {"orig_h": 16, "orig_w": 8, "canvas_h": 16, "canvas_w": 8, "scale": 1.0}
    meta |= {"pad_left": 0, "pad_top": 0, "new_h": 16, "new_w": 8}
    frame = pd.DataFrame(
        {
            "image_id": [sick, well],
            "heatmap": [heat.ravel().tolist(), np.zeros(8).tolist()],
            "heatmap_h": [4, 4],
            "heatmap_w": [2, 2],
            "y_prob": [0.9, 0.2],  # the classifier calls image 2 (normal) normal: p < cutoff 0.5
            "label": [1, 0],
            "view": ["POST", "POST"],
            "folder": ["wholeBodyPOST"] * 2,
            "split": ["test"] * 2,
            **{k: [v, v] for k, v in meta.items()},
        }
    )
    gt = pd.DataFrame(
        {"image_id": [sick, well], "cls": ["Abnormal", "Normal"], "x1": [0, 4], "y1": [0, 8], "x2": [4, 8]}
        | {"y2": [4, 12]}
    )
    lesion = square(16, 8, 0, 0, 4, 4)
    bladder = square(16, 8, 4, 8, 8, 12)  # image 2's Normal GT box: physiological uptake
    masks = [
        mask_row(sick, 0, lesion, []),  # kept, on the lesion
        mask_row(well, 0, bladder, ["below_threshold"]),  # gated by make masks only: it counts here
        mask_row(well, 1, square(16, 8, 0, 14, 2, 16), ["leak", "below_threshold"]),  # failed its own QC
    ]
    write_part(str(run_dir), "masks", pd.DataFrame(masks), "hand")
    write_part(str(run_dir), "seg_masks", pd.DataFrame([mask_row(sick, 0, lesion, [], "segnet")]), "hand")
    prob = np.zeros((16, 8), dtype=np.float32)
    prob[0:4, 0:4], prob[12:16, 4:8] = 0.9, 0.6  # sure on the lesion, unsure on a false spot
    pooled = pool_probability(prob)
    probs = {"image_id": [sick], "prob": [pooled.ravel().tolist()], "prob_h": [pooled.shape[0]]}
    probs |= {"prob_w": [pooled.shape[1]], "canvas_h": [16], "canvas_w": [8], "split": ["test"]}
    write_part(str(run_dir), "seg_probs", pd.DataFrame(probs | {"folder": ["wholeBodyPOST"]}), "hand")
    cfg = test_config(data_root, run_dir)
    ctx = EvalContext(cfg, loc_settings(cfg), gt_by_image(gt), 0.5)

    runs, note = mask_methods(ctx, frame, BoxParams(4, 5, 0.15, 0.0), [None, None])
    by = {run.method: run.overall() for run in runs}
    assert list(by) == ["cam", "masks_tight", "masks", "segnet_tight", "segnet"]
    # PxAP: each method on its own map, over the one image with a true mask.
    cam_map = original_heat(next(frame.itertuples(index=False)))
    assert by["cam"]["mask_pxap"] == (pytest.approx(pxap([cam_map], [lesion])), 1, 1)
    own = masked_score(cam_map, [lesion])
    assert by["masks"]["mask_pxap"].value == pytest.approx(pxap([own], [lesion]))
    assert by["masks"]["mask_pxap"].value > by["cam"]["mask_pxap"].value  # the mask cuts the CAM's false spot
    network = unpool_probability(pooled, 16, 8)
    assert by["segnet"]["mask_pxap"].value == pytest.approx(pxap([network], [lesion]))
    assert by["segnet"]["mask_pxap"].value != pytest.approx(pxap([lesion.astype(float)], [lesion]))  # not painted
    # One gate (none): the mask flagged below_threshold counts, the leaking one does not.
    assert by["masks"]["n_masks"].value == 2 and by["masks"]["n_masks_below_cutoff"].value == 1
    assert by["masks"]["mask_fp_per_normal"][:3] == (1.0, 1, 1)
    assert by["masks"]["mask_fp_per_normal_at_cutoff"][:3] == (0.0, 0, 1)
    assert by["masks_tight"]["n_boxes"].value == 2 and by["segnet"]["n_masks_below_cutoff"].value == 0
    # Physiology: the bladder mask lies on the Normal box; the lesion masks do not.
    assert by["masks"]["boxes_on_normal_gt"][:3] == (0.5, 1, 2) == by["masks_tight"]["boxes_on_normal_gt"][:3]
    assert by["segnet"]["boxes_on_normal_gt"][:3] == (0.0, 0, 1)
    assert "classifier gate: none" in note.lower() and note.endswith("Cutoff: 0.500.")
    assert "PxAP on the network's probability map" in note and "PxAP on the CAM inside the masks" in note
