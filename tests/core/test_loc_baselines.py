"""Baselines on hand-made arrays: centre prior, brightness prior, largest component, MaxBoxAcc counts."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.localization.boxes import BoxParams
from engine.core.localization.priors import (
    BoxAccuracyAccumulator,
    box_accuracy_hits,
    box_accuracy_thresholds,
    brightness_prior_map,
    centre_prior,
    largest_component_box,
)
from engine.core.scans.letterbox import letterbox_meta


def test_centre_prior_stacks_boxes_on_the_midline_outward_from_the_centre():
    meta = letterbox_meta(orig_h=100, orig_w=20, canvas_h=50, canvas_w=10)  # scale 0.5: 5 canvas px = 10 px
    boxes, peak = centre_prior(meta, BoxParams(size=5, max_boxes=4))
    assert peak == (10, 50)
    assert boxes.tolist() == [[5, 45, 15, 55], [5, 55, 15, 65], [5, 35, 15, 45], [5, 65, 15, 75]]


def test_centre_prior_keeps_only_boxes_inside_the_image():
    meta = letterbox_meta(orig_h=30, orig_w=10, canvas_h=30, canvas_w=10)
    boxes, _ = centre_prior(meta, BoxParams(size=10, max_boxes=5))
    assert boxes.tolist() == [[0, 10, 10, 20], [0, 20, 10, 30], [0, 0, 10, 10]]


def test_brightness_prior_peaks_at_the_bright_spot_and_is_zero_in_the_padding():
    meta = letterbox_meta(orig_h=40, orig_w=20, canvas_h=40, canvas_w=40)  # 10 px padding left and right
    canvas = np.zeros((40, 40), dtype=np.uint8)
    canvas[:, 10:30] = 50
    canvas[30, 14] = 255  # one hot pixel on the body
    canvas[5, 2] = 255  # padding: ignored
    prior = brightness_prior_map(canvas, meta, sigma_px=1.0)
    assert np.unravel_index(np.argmax(prior), prior.shape) == (30, 14)
    assert prior.max() == 1.0 and prior[:, :10].max() == 0.0 and prior[:, 30:].max() == 0.0


def test_largest_component_box_is_exclusive_and_picks_the_biggest_8_connected_blob():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0, 0] = True
    mask[3, 3] = mask[4, 4] = mask[5, 5] = True  # diagonal: one 8-connected component of 3
    mask[7, 0:2] = True
    assert largest_component_box(mask).tolist() == [3, 3, 6, 6]
    assert largest_component_box(np.zeros((3, 3), dtype=bool)) is None


def test_box_accuracy_hits_per_threshold_and_iou():
    meta = letterbox_meta(orig_h=20, orig_w=20, canvas_h=20, canvas_w=20)
    heat = np.zeros((20, 20))
    heat[2:12, 2:12] = 0.5  # wide low blob: box 10 x 10
    heat[4:8, 4:8] = 1.0  # its core: box 4 x 4
    gt = np.array([[4, 4, 8, 8]])
    hits = box_accuracy_hits(heat, meta, gt, np.array([0.0, 0.6]), (0.3, 0.5))
    assert hits.tolist() == [[False, False], [True, True]]  # IoU 16/100 at 0, 1.0 at 0.6


def test_max_box_acc_is_the_best_threshold_over_target_images_and_merges_exactly():
    settings = ((0.0, 0.5), (0.5,))
    first = BoxAccuracyAccumulator(settings).update(np.array([[True], [False]]))
    second = BoxAccuracyAccumulator(settings).update(np.array([[False], [True]])).update(np.array([[False], [True]]))
    total = first.merge(second)
    assert total.compute()["max_box_acc@iou0.5"][1:] == (2, 3)
    assert total.best_thresholds() == {"max_box_acc@iou0.5": 0.5}
    assert BoxAccuracyAccumulator(settings).compute()["max_box_acc@iou0.5"][1:] == (0, 0)
    assert box_accuracy_thresholds(0.25).tolist() == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="box_acc_step"):
        box_accuracy_thresholds(0.0)
