"""engine/core/scans/views.py: the model's mirrored ANT input, and a place of one view found in the other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from engine.core.scans.views import (
    ViewPlacement,
    cross_view_columns,
    cross_view_matches,
    mirror_rows,
    mirrored,
    to_other_view,
    unmirror_centres,
    vertical_offset,
)
from engine.core.synth.anatomy import IMAGE_H, IMAGE_W, view_x


def test_only_anterior_rows_are_mirrored_and_mirroring_twice_gives_the_input_back() -> None:
    views = np.array(["ANT", "POST", None, "ANT"], dtype=object)
    flip = mirrored(views)
    assert flip.tolist() == [True, False, False, True]
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 255, (4, 6, 5), dtype=np.uint8)
    once = mirror_rows(canvas, flip)
    assert np.array_equal(once[0], canvas[0][:, ::-1]) and np.array_equal(once[1], canvas[1])
    assert np.array_equal(mirror_rows(once, flip), canvas)
    tensor = torch.from_numpy(canvas.astype(np.float32))
    assert torch.equal(mirror_rows(mirror_rows(tensor, flip), flip), tensor)
    assert np.array_equal(mirror_rows(tensor, flip).numpy(), once.astype(np.float32))
    assert mirror_rows(canvas, np.zeros(4, bool)) is canvas  # nothing to flip: no copy


def test_a_peak_found_on_the_mirrored_canvas_is_stored_where_it_is_on_the_image() -> None:
    width = 16
    # cell centres (x, y) of a 2 x 4 grid on the mirrored canvas, each cell 4 px wide: the peak at mirrored column 2.5
    grid = np.zeros((1, 2, 4, 2), np.float32)
    grid[0, :, :, 0] = np.array([2.0, 6.0, 10.0, 14.0])
    grid[0, 0, 0, 0] = 2.5  # refined: pixel column 2 of the mirrored canvas = column 13 of the image (x 13.5)
    back = unmirror_centres(grid, np.array([True]), width)
    assert back[0, 0, 3, 0] == pytest.approx(13.5)
    assert back[0, 1, :, 0].tolist() == [2.0, 6.0, 10.0, 14.0]  # symmetric cell centres land on cell centres
    assert np.array_equal(unmirror_centres(back, np.array([True]), width), grid)
    assert unmirror_centres(grid, np.array([False]), width) is grid


def test_a_box_placed_in_the_other_view_and_back_is_the_same_box() -> None:
    a = ViewPlacement(width=256, top=30, bottom=990)
    b = ViewPlacement(width=256, top=36, bottom=994)
    assert vertical_offset(a, b) == 5.0 and vertical_offset(b, a) == -5.0
    boxes = np.array([[10.0, 100.0, 40.0, 130.0], [200.5, 500.25, 230.0, 512.0]])
    there = to_other_view(boxes, a, b)
    assert np.allclose(there[0], [216.0, 105.0, 246.0, 135.0])
    assert np.array_equal(to_other_view(there, b, a), boxes)
    unknown = ViewPlacement(width=256, top=np.nan, bottom=990)
    assert vertical_offset(unknown, b) == 0.0
    wider = ViewPlacement(width=512, top=30, bottom=990)
    assert np.allclose(to_other_view(boxes[:1], a, wider), [[432.0, 100.0, 492.0, 130.0]])


def _box(x: float, y: float, side: float = 24.0) -> list[float]:
    return [x - side / 2, y - side / 2, x + side / 2, y + side / 2]


def test_a_lesion_drawn_in_both_views_is_confirmed_and_one_drawn_in_one_view_is_not() -> None:
    # the generator's geometry (engine.core.synth.anatomy.view_x): ANT pixel column c is POST column W - 1 - c,
    # so a spot centred at continuous x in ANT is centred at W - x in POST
    both, ant_only, post_only = (60.0, 300.0), (180.0, 620.0), (90.0, 800.0)
    ant = np.array([_box(*both), _box(*ant_only)])
    post = np.array([_box(view_x(both[0] - 0.5, 1) + 0.5, both[1]), _box(*post_only)])
    place = ViewPlacement(width=IMAGE_W, top=20, bottom=IMAGE_H - 10)
    assert cross_view_matches(ant, post, place, place).tolist() == [0, -1]
    assert cross_view_matches(post, ant, place, place).tolist() == [0, -1]
    shifted = ViewPlacement(width=IMAGE_W, top=28, bottom=IMAGE_H - 2)  # POST's body 8 px lower
    lower = post + np.array([0, 8, 0, 8])
    assert cross_view_matches(ant, lower, place, shifted).tolist() == [0, -1]
    assert cross_view_matches(ant, np.zeros((0, 4)), place, place).tolist() == [-1, -1]


def _image(image_id: str, patient: str, folder: str, top: float = 40.0) -> dict:
    return {
        "image_id": image_id,
        "patient_id": patient,
        "folder": folder,
        "orig_w": 256,
        "orig_h": 1024,
        "new_h": 512,
        "pad_top": 0,
        "body_y1_canvas": top / 2,
        "body_y2_canvas": 500.0,
    }


def _rows(image_id: str, boxes: list[list[float]], scores: list[float]) -> list[dict]:
    coords = ("x1_orig", "y1_orig", "x2_orig", "y2_orig")
    return [
        {"image_id": image_id, "rank": k, "score": s, **dict(zip(coords, box, strict=True))}
        for k, (box, s) in enumerate(zip(boxes, scores, strict=True))
    ]


def test_the_boxes_columns_name_the_confirming_box_and_say_when_the_other_view_is_missing() -> None:
    images = pd.DataFrame(
        [
            _image("p1/ant", "p1", "wholeBodyANT"),
            _image("p1/post", "p1", "wholeBodyPOST"),
            _image("p2/post", "p2", "wholeBodyPOST"),  # p2 has one view
            _image("p1/knee", "p1", "kneeLANT"),  # a crop: never paired
        ]
    )
    boxes = pd.DataFrame(
        _rows("p1/ant", [_box(60, 300), _box(180, 620)], [0.9, 0.8])
        + _rows("p1/post", [_box(90, 800), _box(256 - 60, 300)], [0.7, 0.6])
        + _rows("p2/post", [_box(100, 100)], [0.5])
        + _rows("p1/knee", [_box(10, 10)], [0.4])
    )
    found = cross_view_columns(boxes, images)
    assert found["cross_view"].dtype == np.float32 and found["cross_rank"].dtype == np.int16
    assert found["cross_rank"].tolist() == [1, -1, -1, 0, -1, -1]
    assert found["cross_view"][:4].tolist() == pytest.approx([0.6, 0.0, 0.0, 0.9])
    assert np.isnan(found["cross_view"][4:]).all()  # no other view scored; a crop
