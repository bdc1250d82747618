"""Letterbox geometry, content placement and the canvas <-> original box mapping."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.scans.letterbox import (
    LetterboxError,
    canvas_to_original,
    canvas_to_original_batch,
    letterbox,
    letterbox_meta,
    original_to_canvas,
)

sizes = st.integers(min_value=1, max_value=2000)


def test_small_landscape_image_on_square_canvas_is_padded_top_and_bottom():
    image = np.arange(1, 9, dtype=np.uint8).reshape(2, 4)
    canvas, meta = letterbox(image, 4, 4)
    assert (meta.scale, meta.pad_left, meta.pad_top, meta.new_h, meta.new_w) == (1.0, 0, 1, 2, 4)
    assert meta.body_box() == (0, 1, 4, 3)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1:3] = image
    np.testing.assert_array_equal(canvas, expected)
    box_orig = np.array([[0.0, 0.0, 4.0, 2.0]])
    box_canvas = original_to_canvas(box_orig, meta)
    np.testing.assert_array_equal(box_canvas, [[0.0, 1.0, 4.0, 3.0]])
    np.testing.assert_array_equal(canvas_to_original(box_canvas, meta), box_orig)


def test_portrait_scan_on_default_canvas_keeps_native_resolution():
    meta = letterbox_meta(orig_h=1024, orig_w=256, canvas_h=1024, canvas_w=512)
    assert (meta.scale, meta.pad_left, meta.pad_top, meta.new_h, meta.new_w) == (1.0, 128, 0, 1024, 256)
    assert meta.body_box() == (128, 0, 384, 1024)


def test_seed_landscape_canvas_halves_the_scan_and_pads_448_columns():
    meta = letterbox_meta(orig_h=1024, orig_w=256, canvas_h=512, canvas_w=1024)
    assert (meta.scale, meta.pad_left, meta.pad_top, meta.new_h, meta.new_w) == (0.5, 448, 0, 512, 128)
    box = canvas_to_original(np.array([[448.0, 0.0, 496.0, 48.0]]), meta)
    np.testing.assert_allclose(box, [[0.0, 0.0, 96.0, 96.0]])  # 48 canvas px = 96 original px


def test_identity_letterbox_returns_a_copy():
    image = np.ones((8, 4), dtype=np.uint8)
    canvas, _ = letterbox(image, 8, 4)
    canvas[0, 0] = 7
    assert image[0, 0] == 1


def test_canvas_boxes_in_the_padding_are_clipped_to_the_image():
    meta = letterbox_meta(1024, 256, 1024, 512)
    boxes = canvas_to_original(np.array([[0.0, -10.0, 140.0, 2000.0]]), meta)
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 12.0, 1024.0]])


@pytest.mark.parametrize("dtype", [np.bool_, np.int64, np.float32])
def test_letterbox_accepts_dtypes_opencv_cannot_resize(dtype):
    canvas, meta = letterbox(np.ones((10, 5), dtype=dtype), 6, 6)
    assert canvas.dtype == dtype and canvas.shape == (6, 6)
    x1, y1, x2, y2 = meta.body_box()
    assert np.all(canvas[y1:y2, x1:x2] == 1) and canvas.sum() == (x2 - x1) * (y2 - y1)


@pytest.mark.parametrize("shape", [(3, 4, 5), (0, 4), (5,)])
def test_letterbox_rejects_non_2d_or_empty_images(shape):
    with pytest.raises(LetterboxError, match="2-D"):
        letterbox(np.zeros(shape, dtype=np.uint8), 8, 8)


def test_letterbox_meta_rejects_non_positive_sizes():
    with pytest.raises(LetterboxError, match=r"canvas_w must be a positive integer, got 0"):
        letterbox_meta(10, 10, 10, 0)


def test_box_mapping_rejects_wrong_shapes():
    meta = letterbox_meta(10, 10, 10, 10)
    with pytest.raises(LetterboxError, match=r"\(N, 4\)"):
        canvas_to_original(np.zeros((3, 5)), meta)
    with pytest.raises(LetterboxError, match=r"shape \(2,\)"):
        canvas_to_original_batch(np.zeros((2, 4)), np.ones(3), 0, 0, 10, 10)


@settings(max_examples=60, deadline=None)
@given(
    orig_h=st.integers(1, 300), orig_w=st.integers(1, 300), canvas_h=st.integers(1, 300), canvas_w=st.integers(1, 300)
)
def test_letterbox_output_has_canvas_shape_with_content_only_in_body_box(orig_h, orig_w, canvas_h, canvas_w):
    rng = np.random.default_rng(orig_h * 1000 + orig_w)
    image = rng.integers(1, 256, size=(orig_h, orig_w), dtype=np.uint8)  # no zero pixels
    canvas, meta = letterbox(image, canvas_h, canvas_w)
    assert canvas.shape == (canvas_h, canvas_w) and canvas.dtype == np.uint8
    x1, y1, x2, y2 = meta.body_box()
    assert 0 <= x1 < x2 <= canvas_w and 0 <= y1 < y2 <= canvas_h
    assert np.all(canvas[y1:y2, x1:x2] > 0)
    padding = canvas.copy()
    padding[y1:y2, x1:x2] = 0
    assert not padding.any()
    assert x2 - x1 == canvas_w or y2 - y1 == canvas_h  # the image touches the canvas on one axis


@settings(max_examples=200, deadline=None)
@given(orig_h=sizes, orig_w=sizes, canvas_h=sizes, canvas_w=sizes, data=st.data())
def test_box_round_trip_stays_within_one_original_pixel(orig_h, orig_w, canvas_h, canvas_w, data):
    meta = letterbox_meta(orig_h, orig_w, canvas_h, canvas_w)
    xs = sorted(data.draw(st.lists(st.floats(0, orig_w), min_size=2, max_size=2)))
    ys = sorted(data.draw(st.lists(st.floats(0, orig_h), min_size=2, max_size=2)))
    boxes_orig = np.array([[xs[0], ys[0], xs[1], ys[1]], [0, 0, orig_w, orig_h]], dtype=np.float64)
    boxes_canvas = original_to_canvas(boxes_orig, meta)
    x1, y1, x2, y2 = meta.body_box()
    np.testing.assert_allclose(boxes_canvas[1], [x1, y1, x2, y2], atol=1e-6)
    back = canvas_to_original(boxes_canvas, meta)
    assert np.abs(back - boxes_orig).max() <= 1.0
    np.testing.assert_allclose(back, boxes_orig, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(metas=st.lists(st.tuples(sizes, sizes, sizes, sizes), min_size=1, max_size=6), data=st.data())
def test_batch_inverse_equals_per_row_inverse(metas, data):
    metas = [letterbox_meta(*m) for m in metas]
    coords = data.draw(st.lists(st.floats(-50, 2100), min_size=4 * len(metas), max_size=4 * len(metas)))
    boxes = np.array(coords, dtype=np.float64).reshape(-1, 4)
    per_row = np.concatenate([canvas_to_original(box[None], meta) for box, meta in zip(boxes, metas, strict=True)])
    scale, pad_left, pad_top, orig_w, orig_h, new_w, new_h = (
        np.array([getattr(m, k) for m in metas])
        for k in ("scale", "pad_left", "pad_top", "orig_w", "orig_h", "new_w", "new_h")
    )
    np.testing.assert_array_equal(canvas_to_original_batch(boxes, scale, pad_left, pad_top, orig_w, orig_h), per_row)
    # A float32 scale column (meta table) is exact when the stored new_w / new_h come along.
    batch = canvas_to_original_batch(
        boxes, scale.astype(np.float32), pad_left, pad_top, orig_w, orig_h, new_w=new_w, new_h=new_h
    )
    np.testing.assert_array_equal(batch, per_row)


def test_float32_scale_without_new_size_can_be_off_by_one_resized_pixel():
    meta = letterbox_meta(486, 369, 783, 675)  # new_w 594; round(369 * float32(scale)) gives 595
    box = np.array([[meta.pad_left + 594.0, 0.0, meta.pad_left + 594.0, 1.0]])
    exact = canvas_to_original_batch(box, meta.scale, meta.pad_left, meta.pad_top, 369, 486)
    assert exact[0, 0] == pytest.approx(369.0)
    approx = canvas_to_original_batch(box, np.float32(meta.scale), meta.pad_left, meta.pad_top, 369, 486)
    assert abs(approx[0, 0] - 369.0) < 1.0


@pytest.mark.parametrize("shape", [(300, 70), (128, 64), (40, 100), (128, 20)])
def test_letterbox_drawn_into_a_used_batch_row_equals_a_fresh_canvas_and_rejects_a_wrong_out(shape):
    image = np.random.default_rng(1).integers(1, 256, size=shape, dtype=np.uint8)
    fresh, meta = letterbox(image, 128, 64)
    batch = np.full((3, 128, 64), 7, np.uint8)  # a reused buffer: whatever the last batch left in it
    drawn, drawn_meta = letterbox(image, 128, 64, out=batch[1])
    assert drawn_meta == meta and np.shares_memory(drawn, batch)
    np.testing.assert_array_equal(batch[1], fresh)  # the padding is zero again, the image where a fresh one is
    assert (batch[[0, 2]] == 7).all()  # the other rows untouched
    with pytest.raises(LetterboxError, match="out must be"):
        letterbox(image, 128, 64, out=np.zeros((128, 64), np.uint16))
