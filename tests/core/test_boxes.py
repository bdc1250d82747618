"""Peak finding, pseudo boxes on the body, NMS, batching, and the seed's top-pixel rule for contrast."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.core.localization.boxes import (
    BoxError,
    BoxParams,
    box_iou,
    boxes_for_batch,
    extract_pseudo_boxes,
    find_peaks,
    greedy_nms,
    nms_keep,
    refined_peaks,
    stack_peaks,
    top_pixel_boxes,
)
from engine.core.model.cam import upsample_heatmap

DEFAULT_BODY = (128, 0, 384, 1024)  # 256 x 1024 scan on the 1024 x 512 canvas


def test_find_peaks_orders_by_value_and_keeps_one_cell_per_plateau():
    heatmap = np.array([[0.5, 0.5, 0.0, 0.0], [0.5, 0.2, 0.0, 0.9], [0.0, 0.0, 0.0, 0.0]])
    rows, cols = find_peaks(heatmap, np.ones_like(heatmap, dtype=bool))
    assert list(zip(rows, cols, strict=True)) == [(1, 3), (0, 0)]


def test_find_peaks_ignores_invalid_cells_and_zero_values():
    heatmap = np.array([[0.9, 0.6, 0.0], [0.0, 0.0, 0.0]])
    valid = np.array([[False, True, True], [True, True, True]])
    rows, cols = find_peaks(heatmap, valid)  # 0.9 is off the body, so 0.6 peaks at the body edge
    assert list(zip(rows, cols, strict=True)) == [(0, 1)]
    assert len(find_peaks(np.zeros((3, 3)), np.ones((3, 3), dtype=bool))[0]) == 0


def test_find_peaks_breaks_value_ties_in_row_major_order():
    heatmap = np.zeros((3, 5))
    heatmap[2, 0] = heatmap[0, 4] = 0.7
    rows, cols = find_peaks(heatmap, np.ones_like(heatmap, dtype=bool))
    assert list(zip(rows, cols, strict=True)) == [(0, 4), (2, 0)]


def test_hot_cell_at_body_corner_gives_a_full_box_shifted_onto_the_body():
    heatmap = np.zeros((32, 16), dtype=np.float32)
    heatmap[0, 4] = 1.0  # first body column (centre x = 144), top row (centre y = 16)
    heatmap[10, 1] = 1.0  # padding column: never a peak
    boxes = extract_pseudo_boxes(heatmap, DEFAULT_BODY, 1024, 512, BoxParams())
    np.testing.assert_array_equal(boxes, [[128, 0, 176, 48, 1.0]])


def test_two_separated_blobs_give_two_boxes_but_the_seed_rule_stacks_all_on_the_brightest():
    heatmap = np.zeros((32, 16), dtype=np.float32)
    heatmap[3:8, 6] = 1.0  # bright vertical ridge (a plateau: one peak, its first cell (3, 6))
    heatmap[3:8, 5] = heatmap[3:8, 7] = 0.9
    heatmap[25, 9] = 0.6  # second, fainter lesion far below
    params = BoxParams()
    ours = extract_pseudo_boxes(heatmap, DEFAULT_BODY, 1024, 512, params)
    np.testing.assert_allclose(ours, [[184, 88, 232, 136, 1.0], [280, 792, 328, 840, 0.6]], rtol=1e-6)
    seed = top_pixel_boxes(upsample_heatmap(heatmap, 1024, 512), params)
    assert len(seed) >= 2
    centres_y = (seed[:, 1] + seed[:, 3]) / 2
    assert np.all((centres_y >= 96) & (centres_y <= 256))  # every seed box sits on the ridge (rows 3..7)
    assert not np.any(box_iou(seed[:, :4], ours[1:, :4]) > 0)  # and none on the second lesion


def test_seed_rule_truncates_boxes_at_the_right_edge_and_uses_padding():
    heatmap = np.zeros((20, 20), dtype=np.float32)
    heatmap[10, 19] = 1.0
    boxes = top_pixel_boxes(heatmap, BoxParams(size=8, max_boxes=1))
    np.testing.assert_array_equal(boxes, [[15, 6, 20, 14, 1.0]])  # 5 px wide, not 8


def test_box_iou_uses_exclusive_ends():
    a = np.array([[0, 0, 2, 2], [0, 0, 0, 0]])
    b = np.array([[1, 1, 3, 3], [2, 0, 4, 2]])
    np.testing.assert_allclose(box_iou(a, b), [[1 / 7, 0.0], [0.0, 0.0]])


def test_min_score_drops_weak_peaks_and_max_boxes_caps_the_count():
    heatmap = np.zeros((8, 8))
    heatmap[1, 1], heatmap[1, 6], heatmap[6, 1], heatmap[6, 6] = 0.9, 0.5, 0.3, 0.2
    params = BoxParams(size=2, max_boxes=2, min_score=0.25)
    boxes = extract_pseudo_boxes(heatmap, (0, 0, 8, 8), 8, 8, params)
    np.testing.assert_allclose(boxes[:, 4], [0.9, 0.5])
    boxes = extract_pseudo_boxes(heatmap, (0, 0, 8, 8), 8, 8, BoxParams(size=2, max_boxes=5, min_score=0.25))
    np.testing.assert_allclose(boxes[:, 4], [0.9, 0.5, 0.3])


def test_invalid_settings_and_inputs_raise_box_errors():
    with pytest.raises(BoxError, match=r"boxes.nms_iou must be in \[0, 1\], got 1.5"):
        BoxParams(nms_iou=1.5)
    with pytest.raises(BoxError, match="boxes.size"):
        BoxParams(size=0)
    with pytest.raises(BoxError, match="inside the 8x8 canvas"):
        extract_pseudo_boxes(np.zeros((2, 2)), (0, 0, 9, 8), 8, 8, BoxParams())
    with pytest.raises(BoxError, match="finite"):
        extract_pseudo_boxes(np.full((2, 2), np.nan), (0, 0, 8, 8), 8, 8, BoxParams())
    with pytest.raises(BoxError, match=r"body_boxes \(N, 4\)"):
        boxes_for_batch(np.zeros((2, 2, 2)), np.zeros((3, 4)), 8, 8, BoxParams())


@st.composite
def scenes(draw, batch: int = 1):
    """A batch of (h, w) heatmaps with ties and zeros, a canvas, body boxes inside it, and box params."""
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 8))
    canvas_h, canvas_w = draw(st.integers(h, 400)), draw(st.integers(w, 300))
    values = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0, 1, width=32))
    heatmaps = draw(hnp.arrays(np.float32, (batch, h, w), elements=values))
    bodies = []
    for _ in range(batch):
        x1, x2 = sorted(draw(st.lists(st.integers(0, canvas_w), min_size=2, max_size=2, unique=True)))
        y1, y2 = sorted(draw(st.lists(st.integers(0, canvas_h), min_size=2, max_size=2, unique=True)))
        bodies.append((x1, y1, x2, y2))
    params = BoxParams(
        size=draw(st.integers(1, 120)),
        max_boxes=draw(st.integers(0, 6)),
        nms_iou=draw(st.floats(0, 1)),
        min_score=draw(st.sampled_from([0.0, 0.3])),
    )
    return heatmaps, np.array(bodies, dtype=np.float64), canvas_h, canvas_w, params


@settings(max_examples=150, deadline=None)
@given(scene=scenes())
def test_pseudo_boxes_are_few_separated_full_sized_and_on_the_body(scene):
    heatmaps, bodies, canvas_h, canvas_w, params = scene
    body = bodies[0]
    boxes = extract_pseudo_boxes(heatmaps[0], tuple(body), canvas_h, canvas_w, params)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 5 and len(boxes) <= params.max_boxes
    tolerance = 1e-3
    assert np.all(boxes[:, 0] >= body[0] - tolerance) and np.all(boxes[:, 2] <= body[2] + tolerance)
    assert np.all(boxes[:, 1] >= body[1] - tolerance) and np.all(boxes[:, 3] <= body[3] + tolerance)
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], min(params.size, body[2] - body[0]), atol=tolerance)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], min(params.size, body[3] - body[1]), atol=tolerance)
    iou = box_iou(boxes[:, :4], boxes[:, :4])
    np.fill_diagonal(iou, 0.0)
    assert np.all(iou <= params.nms_iou + 1e-5)
    assert np.all(boxes[:, 4] > params.min_score) and np.all(np.diff(boxes[:, 4]) <= 0)
    assert set(boxes[:, 4].tolist()) <= set(heatmaps[0].ravel().tolist())


@settings(max_examples=40, deadline=None)
@given(scene=scenes())
def test_all_zero_heatmap_gives_no_box(scene):
    _, bodies, canvas_h, canvas_w, params = scene
    h, w = scene[0].shape[1:]
    assert extract_pseudo_boxes(np.zeros((h, w)), tuple(bodies[0]), canvas_h, canvas_w, params).shape == (0, 5)


@settings(max_examples=40, deadline=None)
@given(scene=scenes(batch=8))
def test_batch_of_one_equals_batch_of_eight(scene):
    heatmaps, bodies, canvas_h, canvas_w, params = scene
    boxes, counts = boxes_for_batch(heatmaps, bodies, canvas_h, canvas_w, params)
    assert boxes.shape == (8, params.max_boxes, 5) and counts.dtype == np.int32
    for index in range(8):
        single, single_count = boxes_for_batch(
            heatmaps[index : index + 1], bodies[index : index + 1], canvas_h, canvas_w, params
        )
        np.testing.assert_array_equal(boxes[index], single[0])
        assert counts[index] == single_count[0]
        assert np.all(np.isnan(boxes[index, counts[index] :]))


@settings(max_examples=100, deadline=None)
@given(scene=scenes(), data=st.data())
def test_single_hot_cell_gives_one_box_centred_on_it_or_shifted_onto_the_body(scene, data):
    _, bodies, canvas_h, canvas_w, params = scene
    h, w = scene[0].shape[1:]
    body = bodies[0]
    centre_x, centre_y = (np.arange(w) + 0.5) * canvas_w / w, (np.arange(h) + 0.5) * canvas_h / h
    cols = np.flatnonzero((centre_x >= body[0]) & (centre_x < body[2]))
    rows = np.flatnonzero((centre_y >= body[1]) & (centre_y < body[3]))
    heatmap = np.zeros((h, w))
    if len(cols) and len(rows):
        heatmap[data.draw(st.sampled_from(list(rows))), data.draw(st.sampled_from(list(cols)))] = 0.8
    boxes = extract_pseudo_boxes(heatmap, tuple(body), canvas_h, canvas_w, BoxParams(size=params.size))
    if not (len(cols) and len(rows)):
        assert len(boxes) == 0  # no cell centre on the body: nothing to propose
        return
    (row,), (col,) = np.nonzero(heatmap)
    side_w, side_h = min(params.size, body[2] - body[0]), min(params.size, body[3] - body[1])
    x1 = np.clip(centre_x[col] - side_w / 2, body[0], body[2] - side_w)
    y1 = np.clip(centre_y[row] - side_h / 2, body[1], body[3] - side_h)
    np.testing.assert_allclose(boxes, [[x1, y1, x1 + side_w, y1 + side_h, 0.8]], rtol=1e-6, atol=1e-4)


def test_refined_peaks_hold_the_best_body_peaks_moved_onto_their_evidence_and_clipped_to_the_body():
    heatmap = np.zeros((32, 16), dtype=np.float32)
    heatmap[5, 6], heatmap[20, 9], heatmap[12, 1] = 1.0, 0.5, 0.9  # (12, 1) lies in the padding: no peak
    centres = np.full((32, 16, 2), np.nan)
    centres[5, 6] = (190.0, 150.0)  # evidence 14 px right of / 26 px below the cell centre (208, 176)
    centres[20, 9] = (100.0, 650.0)  # left of the body (x1 = 128): clipped onto it
    index, xy = refined_peaks(heatmap, DEFAULT_BODY, 1024, 512, centres, limit=8)
    assert index.tolist() == [5 * 16 + 6, 20 * 16 + 9]
    np.testing.assert_allclose(xy, [[190.0, 150.0], [128.0, 650.0]])
    assert refined_peaks(heatmap, DEFAULT_BODY, 1024, 512, centres, limit=1)[0].tolist() == [86]
    centres[5, 6] = np.nan  # no refined value: the cell centre
    np.testing.assert_allclose(refined_peaks(heatmap, DEFAULT_BODY, 1024, 512, centres, 1)[1], [[208.0, 176.0]])
    with pytest.raises(BoxError):
        refined_peaks(heatmap, DEFAULT_BODY, 1024, 512, centres[:, :8], 1)


def test_boxes_sit_on_refined_centres_and_unrefined_peaks_keep_their_cell_centre():
    heatmap = np.zeros((32, 16), dtype=np.float32)
    heatmap[5, 6], heatmap[20, 9] = 1.0, 0.5
    params = BoxParams(size=40)
    plain = extract_pseudo_boxes(heatmap, DEFAULT_BODY, 1024, 512, params)
    refined = (np.array([5 * 16 + 6, 3]), np.array([[190.0, 150.0], [0.0, 0.0]]))  # cell 3 is no peak: unused
    moved = extract_pseudo_boxes(heatmap, DEFAULT_BODY, 1024, 512, params, refined)
    np.testing.assert_allclose(moved[0], [170, 130, 210, 170, 1.0])
    np.testing.assert_allclose(moved[1], plain[1])  # (20, 9) has no refined centre
    batch, counts = boxes_for_batch(
        np.stack([heatmap, heatmap]), np.array([DEFAULT_BODY] * 2), 1024, 512, params, [refined, None]
    )
    np.testing.assert_allclose(batch[0, :2], moved)
    np.testing.assert_allclose(batch[1, :2], plain)
    with pytest.raises(BoxError):
        boxes_for_batch(heatmap[None], np.array([DEFAULT_BODY]), 1024, 512, params, [refined, None])


def brute_force_iou(a, b) -> float:
    """IoU of two x2/y2-exclusive boxes from the definition (0 when both are empty)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force_nms(boxes: np.ndarray, nms_iou: float, max_boxes: int) -> list[int]:
    """Greedy NMS in the given order by explicit loops: keep a box whose IoU with every kept box is <= nms_iou."""
    kept: list[int] = []
    for index, box in enumerate(boxes):
        if len(kept) < max_boxes and all(brute_force_iou(box, boxes[k]) <= nms_iou for k in kept):
            kept.append(index)
    return kept


@st.composite
def box_sets(draw):
    """(N, 4) boxes with integer or float corners (duplicates and empty boxes included) and NMS settings."""
    n = draw(st.integers(0, 25))
    corner = st.one_of(st.integers(0, 40).map(float), st.floats(0, 40, width=32))
    xs = draw(hnp.arrays(np.float64, (n, 2), elements=corner))
    ys = draw(hnp.arrays(np.float64, (n, 2), elements=corner))
    boxes = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
    if n and draw(st.booleans()):
        boxes[-1] = boxes[0]  # an exact duplicate: IoU 1
    return boxes, draw(st.sampled_from([0.0, 0.15, 0.5, 1.0]) | st.floats(0, 1)), draw(st.integers(0, 8))


@settings(max_examples=200, deadline=None)
@given(case=box_sets())
def test_greedy_nms_and_box_iou_equal_a_brute_force_numpy_loop(case):
    boxes, nms_iou, max_boxes = case
    kept = greedy_nms(boxes, BoxParams(max_boxes=max_boxes, nms_iou=nms_iou))
    assert kept.dtype == np.int64 and kept.tolist() == brute_force_nms(boxes, nms_iou, max_boxes)
    expected = np.array([[brute_force_iou(a, b) for b in boxes] for a in boxes]).reshape(len(boxes), len(boxes))
    np.testing.assert_allclose(box_iou(boxes, boxes), expected, rtol=1e-12, atol=1e-12)


def test_a_peak_equal_to_min_score_in_float32_is_dropped():
    # found by hypothesis on a fresh clone: float32(0.3) is above the float 0.3, but the stored float32 score is not
    heat = np.array([[0.3, 0.0]], dtype=np.float32)
    params = BoxParams(size=1, max_boxes=1, nms_iou=0.0, min_score=0.3)
    assert extract_pseudo_boxes(heat, (0.0, 0.0, 1.0, 1.0), 1, 2, params).shape == (0, 5)


def _plain_nms(boxes: np.ndarray, nms_iou: float, most: int) -> list[int]:
    """Greedy NMS box by box: keep a box when its IoU with every kept box is <= nms_iou (inverted sides: width 0)."""
    kept: list[int] = []
    for j, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        x2, y2 = max(x2, x1), max(y2, y1)
        drop = False
        for i in kept:
            a1, b1, a2, b2 = boxes[i].tolist()
            a2, b2 = max(a2, a1), max(b2, b1)
            inter = max(0.0, min(a2, x2) - max(a1, x1)) * max(0.0, min(b2, y2) - max(b1, y1))
            union = (a2 - a1) * (b2 - b1) + (x2 - x1) * (y2 - y1) - inter
            drop = drop or (union > 0 and inter / union > nms_iou)
        if not drop and len(kept) < most:
            kept.append(j)
    return kept


def test_nms_keep_of_a_stack_equals_greedy_nms_box_by_box_per_image():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, p = int(rng.integers(1, 6)), int(rng.integers(0, 12))
        corner = rng.integers(0, 12, size=(n, p, 2))
        boxes = np.concatenate([corner, corner + rng.integers(0, 6, size=(n, p, 2))], axis=2).astype(np.float64)
        present = rng.random((n, p)) < 0.8
        nms_iou, most = float(rng.choice([0.0, 0.15, 0.25, 0.5, 1.0])), int(rng.integers(0, 6))
        keep = nms_keep(boxes, present, nms_iou, most)
        for i in range(n):
            rows = np.flatnonzero(present[i])
            assert rows[_plain_nms(boxes[i, rows], nms_iou, most)].tolist() == np.flatnonzero(keep[i]).tolist()


def _plain_peaks(heat: np.ndarray, valid: np.ndarray) -> list[tuple[int, int]]:
    """Peaks cell by cell: valid, > 0, >= every valid 8-neighbour; one per 8-connected plateau (its first cell)."""
    h, w = heat.shape
    near = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]

    def inside(r, c):
        return 0 <= r < h and 0 <= c < w

    peak = {
        (r, c)
        for r in range(h)
        for c in range(w)
        if valid[r, c]
        and heat[r, c] > 0
        and all(heat[r, c] >= heat[r + a, c + b] for a, b in near if inside(r + a, c + b) and valid[r + a, c + b])
    }
    firsts, seen = [], set()
    for cell in sorted(peak):
        if cell in seen:
            continue
        firsts.append(cell)
        stack = [cell]
        while stack:
            r, c = stack.pop()
            if (r, c) in seen:
                continue
            seen.add((r, c))
            stack += [(r + a, c + b) for a, b in near if (r + a, c + b) in peak]
    return sorted(firsts, key=lambda rc: (-heat[rc], rc))


def test_stack_peaks_equal_the_peaks_of_each_map_found_cell_by_cell():
    rng = np.random.default_rng(4)
    heat = np.round(rng.random((12, 6, 5)) * 3) / 3 * (rng.random((12, 6, 5)) < 0.7)
    valid = rng.random(heat.shape) < 0.85
    image, rows, cols = stack_peaks(heat, valid)
    for i in range(len(heat)):
        found = list(zip(rows[image == i].tolist(), cols[image == i].tolist(), strict=True))
        assert found == _plain_peaks(heat[i], valid[i])
    assert np.all(np.diff(image) >= 0)
