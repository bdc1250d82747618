"""Score maps and scores of the mask methods on tiny arrays: the network's pooled probability, the pseudo masks' CAM
inside the mask, the SAM family's confidence from its own logits, and mask boxes on Normal (physiological) GT boxes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.masks.sam import mask_probability, masks_from_probabilities
from engine.core.masks.scoremaps import masked_score, pool_probability, pooled_shape, unpool_probability
from engine.core.metrics.masks import boxes_on_normal, pxap


def test_pooling_keeps_block_means_and_unpooling_restores_a_smooth_block() -> None:
    prob = np.zeros((16, 16), dtype=np.float32)
    prob[4:12, 4:12] = 1.0  # four whole 4 x 4 blocks
    prob[12:14, 0:4] = 1.0  # half of another block
    pooled = pool_probability(prob, 4)
    assert pooled.shape == (4, 4) == pooled_shape(16, 16, 4) and pooled.dtype == np.uint8
    assert (pooled[1:3, 1:3] == 255).all() and pooled[3, 0] == 128 and pooled.sum() == 4 * 255 + 128
    back = unpool_probability(pooled, 16, 16)
    assert back.shape == (16, 16) and back.min() >= 0.0 and back.max() <= 1.0
    assert (back[6:10, 6:10] == 1.0).all()  # between the centres of sure blocks: sure
    assert back[0, 15] == 0.0 and 0.0 < back[14, 1] < 1.0  # far from any mass: 0; the half block: in between
    # A size that is no multiple of the stride still pools (ceil), and junk (NaN, > 1) is cleaned.
    odd = pool_probability(np.full((5, 3), np.nan, dtype=np.float32), 4)
    assert odd.shape == (2, 1) and not odd.any()
    assert pool_probability(np.full((4, 4), 7.0), 4).tolist() == [[255]]
    with pytest.raises(ValueError):
        pool_probability(np.zeros((2, 2, 2)))


def test_a_network_map_ranks_pixels_where_its_thresholded_mask_cannot() -> None:
    # Truth: the two left pixels of a 1 x 4 row. The network is surer of the first one (0.9) than of a false
    # second spot (0.6), and hesitant on the true second pixel (0.4): thresholded at 0.5, its mask {0, 2} has
    # precision 1/2 at every threshold it reaches, while its continuous map ranks pixel 0 first.
    truth = np.array([[True, True, False, False]])
    prob = np.array([[0.9, 0.4, 0.6, 0.0]])
    binary = (prob >= 0.5).astype(np.float64)
    assert pxap([prob], [truth]) > pxap([binary], [truth])
    assert pxap([binary], [truth]) == pytest.approx(0.5)  # one operating point: recall 1/2 at precision 1/2


def test_masked_score_keeps_the_cam_inside_the_masks_only() -> None:
    heat = np.array([[0.2, 0.9, 0.5], [0.7, np.nan, 1.5]])
    masks = [np.array([[False, True, False], [False, False, False]]), np.array([[False, False, False], [True] * 3])]
    score = masked_score(heat, masks)
    assert score.tolist() == [[0.0, 0.9, 0.0], [0.7, 0.0, 1.0]]  # NaN -> 0, above 1 -> 1, outside -> 0
    assert not masked_score(heat, []).any()
    with pytest.raises(ValueError):
        masked_score(heat, [np.zeros((3, 3), dtype=bool)])


def test_sam_scores_come_from_the_mask_logits_not_the_binary_mask() -> None:
    assert mask_probability(np.array([0.0, 1000.0, -1000.0])).tolist() == [0.5, 1.0, 0.0]  # no overflow
    logits = np.full((2, 6, 6), -8.0, dtype=np.float32)
    logits[0, 1:4, 1:4] = 6.0  # a confident spot
    logits[1, 1:4, 1:4] = 0.5  # the same spot, barely above the mask threshold
    logits[1, 2, 2] = 2.0
    prompts = np.array([[0, 0, 5, 5], [0, 0, 5, 5]], dtype=np.float32)
    peaks = np.array([[2, 2], [2, 2]], dtype=np.float32)
    masks, scores = masks_from_probabilities(mask_probability(logits), prompts, peaks)
    assert masks[0].sum() == masks[1].sum() == 9 and np.array_equal(masks[0], masks[1])
    prob = mask_probability(logits)
    assert scores[0] == pytest.approx(prob[0, 1:4, 1:4].mean()) and scores[0] > 0.99
    assert scores[1] == pytest.approx(prob[1, 1:4, 1:4].mean()) and 0.5 < scores[1] < 0.7  # unsure: scored low
    binary_scores = masks_from_probabilities((logits >= 0).astype(np.float32), prompts, peaks)[1]
    assert binary_scores.tolist() == [1.0, 1.0]  # what a thresholded mask scored before: always 1
    # Outside the prompt box nothing counts; an empty mask scores 0.
    empty, none = masks_from_probabilities(mask_probability(logits[:1]), np.array([[4, 4, 5, 5]]), peaks[:1])
    assert not empty.any() and none.tolist() == [0.0]


def test_boxes_on_normal_count_boxes_touching_physiology_but_no_lesion() -> None:
    abnormal = np.array([[0, 0, 4, 4]])
    normal = np.array([[10, 0, 14, 4], [0, 10, 4, 14]])
    boxes = np.array(
        [
            [12, 1, 16, 3],  # on the first Normal box only: counted
            [3, 3, 11, 11],  # touches the lesion and a Normal box: a hit, not counted
            [20, 20, 24, 24],  # on nothing: not counted
            [2, 12, 3, 13],  # inside the second Normal box: counted
            [14, 0, 18, 4],  # right of the first Normal box (x2 exclusive): no shared pixel, not counted
        ]
    )
    assert boxes_on_normal(boxes, abnormal, normal) == 2
    assert boxes_on_normal(boxes, abnormal, np.zeros((0, 4))) == 0
    assert boxes_on_normal(np.zeros((0, 4)), abnormal, normal) == 0
