"""Localisation metrics: hand-made cases, brute force on random boxes, accumulator merges, module purity."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.localization.boxes import box_iou
from engine.core.metrics.localization import (
    ImageCase,
    LocalizationAccumulator,
    LocSettings,
    brightest_pixel_original,
    cam_peak_original,
    greedy_match,
    iogt_matrix,
    iou_matrix,
    matched_rows,
    overlap_areas,
    pixel_boxes,
    point_hits_boxes,
    pointing_chance_pixels,
    points_hit_boxes,
    score_image,
    score_images,
)
from engine.core.scans.letterbox import letterbox_meta
from engine.stages.evaluate.run import f1_score

SIDE = 12  # brute-force image side, px
NONE = np.zeros((0, 4))


def case(boxes=NONE, abnormal=NONE, normal=NONE, peak=None, label=1, y_prob=0.9, cutoff=0.5) -> ImageCase:
    """Returns a 30 x 20 (h x w) image case."""
    return ImageCase(
        np.asarray(boxes, float), np.asarray(abnormal), np.asarray(normal), peak, 30, 20, label, y_prob, cutoff
    )


def mask(box, h: int = SIDE, w: int = SIDE) -> np.ndarray:
    out = np.zeros((h, w), dtype=bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    out[y1:y2, x1:x2] = True
    return out


def test_pixel_boxes_cover_the_pixels_whose_centre_is_inside_and_keep_integer_boxes():
    assert pixel_boxes(np.array([[0.4, 0.6, 3.5, 2.5]]), 10, 10).tolist() == [[0, 1, 3, 2]]
    assert pixel_boxes(np.array([[2, 3, 7, 9]]), 10, 10).tolist() == [[2, 3, 7, 9]]
    assert pixel_boxes(np.array([[-5, -5, 30, 4]]), 10, 8).tolist() == [[0, 0, 10, 4]]
    assert pixel_boxes(np.array([[12, 0, 20, 3]]), 10, 8).tolist() == [[10, 0, 10, 3]]  # off the image: empty


@pytest.mark.parametrize(
    ("pred", "gt", "inter", "iou", "iogt"),
    [
        ((2, 2, 4, 4), (0, 0, 10, 10), 4, 0.04, 0.04),  # box inside the GT box
        ((0, 0, 10, 10), (2, 2, 4, 4), 4, 0.04, 1.0),  # GT box inside the box
        ((0, 0, 5, 5), (5, 0, 10, 5), 0, 0.0, 0.0),  # touching edges share no pixel (x2 exclusive)
        ((0, 0, 4, 4), (2, 2, 6, 6), 4, 4 / 28, 0.25),  # partial overlap
        ((0, 0, 2, 2), (8, 8, 9, 9), 0, 0.0, 0.0),  # apart
        ((3, 3, 6, 6), (3, 3, 6, 6), 9, 1.0, 1.0),  # identical
    ],
)
def test_overlaps_of_hand_made_boxes(pred, gt, inter, iou, iogt):
    assert overlap_areas(np.array([pred]), np.array([gt]))[0][0, 0] == inter
    assert iou_matrix(np.array([pred]), np.array([gt]))[0, 0] == pytest.approx(iou)
    assert iogt_matrix(np.array([pred]), np.array([gt]))[0, 0] == pytest.approx(iogt)


def test_overlaps_with_no_boxes_have_empty_shapes():
    assert iou_matrix(NONE, np.array([[0, 0, 2, 2]])).shape == (0, 1)
    assert iogt_matrix(np.array([[0, 0, 2, 2]]), NONE).shape == (1, 0)


def test_greedy_matching_is_one_to_one():
    assert greedy_match(np.array([[0.6], [0.7]]), 0.5) == 1  # two boxes on one GT box: one match
    assert greedy_match(np.array([[0.6, 0.8]]), 0.5) == 1  # one box over two GT boxes: one match
    assert greedy_match(np.array([[0.8, 0.6], [0.0, 0.9]]), 0.5) == 2
    assert greedy_match(np.array([[0.6, 0.8], [0.0, 0.9]]), 0.5) == 1  # greedy in rank order: rank 0 took GT 1
    assert greedy_match(np.array([[0.4]]), 0.5) == 0
    assert greedy_match(np.zeros((0, 3)), 0.3) == 0


def test_pointing_hits_inside_and_within_tolerance_only():
    box = np.array([[0, 0, 5, 5]])
    assert point_hits_boxes((4, 4), box)
    assert not point_hits_boxes((5, 4), box)  # x2 is exclusive
    assert point_hits_boxes((5, 4), box, tolerance_px=1)
    assert not point_hits_boxes((7, 7), box, tolerance_px=4)  # distance sqrt(18) to pixel (4, 4)
    assert point_hits_boxes((7, 7), box, tolerance_px=4.25)
    assert not point_hits_boxes(None, box, tolerance_px=100)
    assert not point_hits_boxes((1, 1), NONE, tolerance_px=100)


def test_pointing_chance_counts_pixels_within_tolerance_clipped_to_the_image():
    assert pointing_chance_pixels(np.array([[0, 0, 2, 2]]), 10, 10) == 4
    assert pointing_chance_pixels(np.array([[0, 0, 2, 2]]), 10, 10, tolerance_px=1) == 8  # + 2 right, 2 below
    assert pointing_chance_pixels(np.array([[0, 0, 2, 2], [1, 1, 3, 3]]), 10, 10) == 7  # union, not sum
    assert pointing_chance_pixels(NONE, 10, 10, tolerance_px=5) == 0


def test_cam_peak_is_the_best_body_cell_centre_mapped_to_original_pixels():
    meta = letterbox_meta(orig_h=8, orig_w=2, canvas_h=8, canvas_w=4)  # pad_left 1: body = canvas x in [1, 3)
    heatmap = np.zeros((4, 2))
    heatmap[0, 1] = 1.0  # centre x = 3: padding, ignored
    heatmap[2, 0] = 0.5  # centre (1, 5) -> original (0, 5)
    assert cam_peak_original(heatmap, meta) == (0, 5)
    assert cam_peak_original(np.zeros((4, 2)), meta) is None
    # a refined centre of the peak cell (flat index 2 * 2 + 0) moves the point; one of another cell does not
    assert cam_peak_original(heatmap, meta, (np.array([4]), np.array([[2.5, 6.5]]))) == (1, 6)
    assert cam_peak_original(heatmap, meta, (np.array([1]), np.array([[2.5, 6.5]]))) == (0, 5)


def test_seed_peak_is_the_brightest_canvas_pixel_even_in_padding_clipped_into_the_image():
    meta = letterbox_meta(orig_h=8, orig_w=2, canvas_h=8, canvas_w=4)
    heat = np.zeros((8, 4))
    heat[2, 3] = 1.0  # padding on the right
    assert brightest_pixel_original(heat, meta) == (1, 2)
    assert brightest_pixel_original(np.zeros((8, 4)), meta) is None


def test_abnormal_image_without_boxes_counts_its_gt_but_no_hit():
    counts = score_image(case(abnormal=[[2, 2, 6, 6]], peak=(3, 3)), LocSettings())
    assert counts["target_images"] == 1 and counts["gt_abnormal"] == 1 and counts["pointing_hits"] == 1
    assert counts["hits@5"] == 0 and counts["boxes"] == 0 and counts["tp@iou0.3"] == 0


def test_several_gt_boxes_are_matched_one_to_one_and_hits_use_the_top_k_boxes():
    boxes = [[0, 0, 2, 2], [10, 10, 14, 14], [2, 2, 6, 6]]  # rank 0 misses; ranks 1 and 2 cover a GT box each
    exact = LocSettings(tolerance_px=0.0)
    counts = score_image(case(boxes, abnormal=[[2, 2, 6, 6], [10, 10, 14, 14]], peak=(0, 0)), exact)
    assert counts["hits@1"] == 0 and counts["hits@3"] == 1 and counts["pointing_hits"] == 0
    assert counts["tp@iou0.5"] == 2 and counts["boxes_target"] == 3 and counts["gt_abnormal"] == 2
    metrics = LocalizationAccumulator().update([case(boxes, abnormal=[[2, 2, 6, 6], [10, 10, 14, 14]])]).compute()
    assert metrics["precision@iou0.5"].value == pytest.approx(2 / 3) and metrics["recall@iou0.5"].value == 1.0


def test_normal_images_count_false_positive_boxes_and_boxes_on_normal_gt():
    normal = case([[0, 0, 4, 4], [5, 5, 7, 7]], normal=[[1, 1, 3, 3]], label=0, y_prob=0.2)
    metrics = LocalizationAccumulator().update([normal, case(label=0, y_prob=0.9)]).compute()
    assert metrics["fp_boxes_per_normal_image"].value == 1.0  # 2 boxes over 2 normal images
    assert metrics["fp_boxes_per_normal_image_at_cutoff"].value == 0.0  # its boxes are below the cutoff
    assert metrics["boxes_on_normal_gt"][1:] == (1, 2)
    assert math.isnan(metrics["pointing_game"].value) and metrics["n_target_images"].value == 0


def test_nan_probability_and_bad_boxes_are_counted_not_crashing():
    bad = case([[0, 0, 4, 4], [np.nan, 0, 2, 2]], abnormal=[[0, 0, 4, 4]], y_prob=float("nan"))
    counts = score_image(bad, LocSettings())
    assert counts["nan_prob"] == 1 and counts["bad_boxes"] == 1 and counts["boxes"] == 1
    assert counts["images_at_cutoff"] == 0 and counts["tp_at_cutoff@iou0.3"] == 0 and counts["tp@iou0.3"] == 1


def test_labels_that_disagree_with_the_gt_boxes_are_counted():
    counts = score_image(case(label=1), LocSettings()) + score_image(
        case(abnormal=[[0, 0, 2, 2]], label=0), LocSettings()
    )
    assert counts["abnormal_without_gt"] == 1 and counts["label_conflict"] == 1 and counts["target_images"] == 1


def test_merged_shards_equal_one_pass():
    rng = np.random.default_rng(0)
    cases = [
        case(
            rng.integers(0, 10, (3, 4)).cumsum(axis=1) % 20,
            abnormal=[[1, 1, 5, 5]],
            peak=(2, 2),
            y_prob=float(rng.random()),
        )
        for _ in range(6)
    ]
    whole = LocalizationAccumulator().update(cases)
    merged = LocalizationAccumulator().update(cases[:2]).merge(LocalizationAccumulator().update(cases[2:]))
    assert merged.counts == whole.counts
    assert str(merged.compute()) == str(whole.compute())  # NaN-safe equality of every metric
    with pytest.raises(ValueError, match="different settings"):
        LocalizationAccumulator().merge(LocalizationAccumulator(LocSettings(ks=(1,))))


def test_f1_is_zero_when_undefined():
    assert f1_score(0.5, 0.5) == 0.5
    assert f1_score(0.0, 0.0) == 0.0 and f1_score(float("nan"), 1.0) == 0.0


int_boxes = st.tuples(*[st.integers(0, SIDE)] * 4).map(
    lambda t: (min(t[0], t[2]), min(t[1], t[3]), max(t[0], t[2]), max(t[1], t[3]))
)


@settings(max_examples=200, deadline=None)
@given(st.lists(int_boxes, min_size=1, max_size=4), st.lists(int_boxes, min_size=1, max_size=4))
def test_overlaps_agree_with_pixel_masks_and_box_iou(preds, gts):
    inter, area_pred, area_gt = overlap_areas(np.array(preds), np.array(gts))
    iou, iogt = iou_matrix(np.array(preds), np.array(gts)), iogt_matrix(np.array(preds), np.array(gts))
    for i, p in enumerate(preds):
        assert area_pred[i] == mask(p).sum()
        for j, g in enumerate(gts):
            both, either = (mask(p) & mask(g)).sum(), (mask(p) | mask(g)).sum()
            assert inter[i, j] == both
            assert iou[i, j] == pytest.approx(both / either if either else 0.0)
            assert iogt[i, j] == pytest.approx(both / mask(g).sum() if mask(g).sum() else 0.0)
    np.testing.assert_allclose(iou, box_iou(np.array(preds), np.array(gts)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-3, SIDE + 3, allow_nan=False), min_size=4, max_size=4))
def test_pixel_boxes_agree_with_the_pixel_centre_rule(coords):
    x1, x2 = sorted(coords[0::2])
    y1, y2 = sorted(coords[1::2])
    centres = np.arange(SIDE) + 0.5
    expected = ((centres >= y1) & (centres < y2))[:, None] & ((centres >= x1) & (centres < x2))[None, :]
    assert (mask(pixel_boxes(np.array([[x1, y1, x2, y2]]), SIDE, SIDE)[0]) == expected).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(int_boxes, min_size=0, max_size=3), st.floats(0, 6), st.integers(0, SIDE - 1), st.integers(0, SIDE - 1))
def test_pointing_and_its_chance_agree_with_brute_force_distances(boxes, tolerance, x, y):
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    near = np.zeros((SIDE, SIDE), dtype=bool)
    for box in boxes:
        pixels = np.argwhere(mask(box))
        for py, px in pixels:
            near |= (ys - py) ** 2 + (xs - px) ** 2 <= tolerance**2
    arr = np.array(boxes).reshape(-1, 4)
    assert pointing_chance_pixels(arr, SIDE, SIDE, tolerance) == near.sum()
    assert point_hits_boxes((x, y), arr, tolerance) == near[y, x]


def test_headline_precision_counts_false_positive_boxes_on_normal_images():
    target = case([[2, 2, 6, 6], [10, 10, 12, 12]], abnormal=[[2, 2, 6, 6]])  # 1 of 2 boxes right
    normal = case([[0, 0, 4, 4], [5, 5, 9, 9]], label=0)  # 2 boxes, no lesion: both false positives
    metrics = LocalizationAccumulator(LocSettings(iou_thresholds=(0.5,))).update([target, normal]).compute()
    assert metrics["precision@iou0.5"][1:] == (1, 4)
    assert metrics["precision_on_target_images@iou0.5"][1:] == (1, 2)


def _plain_greedy_rows(overlap: np.ndarray, threshold: float) -> list[bool]:
    """Greedy one-to-one matching row by row: each row takes the free column of largest overlap >= threshold, > 0."""
    free, matched = [True] * overlap.shape[1], []
    for row in overlap.tolist():
        best = None
        for j, value in enumerate(row):
            if free[j] and value >= threshold and value > 0 and (best is None or value > row[best]):
                best = j
        if best is not None:
            free[best] = False
        matched.append(best is not None)
    return matched


def test_matched_rows_of_a_stack_equal_greedy_matching_row_by_row():
    rng = np.random.default_rng(5)
    overlap = np.round(rng.random((40, 5, 3)) * 4) / 4 * (rng.random((40, 5, 3)) < 0.6)
    for threshold in (0.0, 0.25, 0.5):
        rows = matched_rows(overlap, threshold)
        assert rows.tolist() == [_plain_greedy_rows(o, threshold) for o in overlap]
        assert [greedy_match(o, threshold) for o in overlap] == rows.sum(axis=1).tolist()


def test_points_hit_boxes_of_a_stack_equals_the_distance_to_each_box():
    rng = np.random.default_rng(6)
    corner = rng.integers(0, 30, size=(50, 4, 2))
    boxes = np.concatenate([corner, corner + rng.integers(0, 8, size=(50, 4, 2))], axis=2)
    points = rng.integers(0, 40, size=(50, 2))
    for tolerance in (0.0, 2.5, 6.0):
        expected = [
            any(
                (x2 > x1 and y2 > y1)
                and max(x1 - x, 0, x - x2 + 1) ** 2 + max(y1 - y, 0, y - y2 + 1) ** 2 <= tolerance**2
                for x1, y1, x2, y2 in b.tolist()
            )
            for (x, y), b in zip(points.tolist(), boxes, strict=True)
        ]
        assert points_hit_boxes(points, boxes, tolerance).tolist() == expected


def test_score_images_of_many_cases_sum_the_counts_of_each_case_alone():
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(60):
        corner = rng.uniform(-5, 90, (int(rng.integers(0, 6)), 2))
        boxes = np.concatenate([corner, corner + rng.uniform(0, 30, corner.shape)], 1)
        if len(boxes) and rng.random() < 0.2:
            boxes[0, 0] = np.nan
        gt = rng.integers(0, 80, (int(rng.integers(0, 3)), 2))
        abnormal = np.concatenate([gt, gt + rng.integers(1, 25, gt.shape)], 1)
        normal = np.zeros((int(rng.integers(0, 2)), 4), dtype=np.int64) + [10, 10, 20, 30]
        peak = None if rng.random() < 0.2 else (int(rng.integers(0, 100)), int(rng.integers(0, 100)))
        prob = float("nan") if rng.random() < 0.1 else float(rng.random())
        cases.append(ImageCase(boxes, abnormal, normal, peak, 100, 90, int(rng.integers(-1, 2)), prob, 0.4))
    settings = LocSettings()
    total = Counter()
    for case in cases:
        total.update(score_image(case, settings))
    assert +score_images(cases, settings) == +total
