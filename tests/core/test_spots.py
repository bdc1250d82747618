"""Hot spots on arrays: detection, features, the physiology map, the ranker and its boxes (no Ray, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core.localization import spots as sp


def _canvas(spots: list[tuple[float, float, float, float]], shape=(200, 100), level=20.0) -> np.ndarray:
    """A flat body (columns 20..80, rows 10..190) at `level` plus Gaussian spots (x, y, sigma, amplitude)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    canvas = np.zeros(shape)
    canvas[10:190, 20:80] = level
    for x, y, sigma, amp in spots:
        canvas += amp * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
    return np.clip(canvas, 0, 255).astype(np.uint8)


BODY = (20.0, 10.0, 80.0, 190.0)


def _nearest(spots: np.ndarray, x: float, y: float) -> np.ndarray:
    return spots[np.argmin(np.hypot(spots[:, 0] - x, spots[:, 1] - y))]


def test_find_spots_locates_a_spot_and_sizes_it():
    small, large = _canvas([(35, 50, 1.5, 120)]), _canvas([(35, 50, 4.0, 120)])
    found_small = sp.find_spots(small, BODY, sp.SpotSettings())
    found_large = sp.find_spots(large, BODY, sp.SpotSettings())
    best_small, best_large = found_small[0], found_large[0]
    assert abs(best_small[0] - 35.5) <= 1.5 and abs(best_small[1] - 50.5) <= 1.5
    assert abs(best_large[0] - 35.5) <= 1.5 and abs(best_large[1] - 50.5) <= 1.5
    assert best_large[2] > 1.5 * best_small[2]  # sigma follows the spot's size
    assert best_small[4] > 0.3  # contrast to the flat body


def test_asymmetry_separates_a_lone_spot_from_a_mirrored_pair():
    # midline of the body at x = 50: a pair at x = 35 / 65 (y = 120) and a lone spot at x = 35, y = 60
    canvas = _canvas([(35, 120, 2.0, 120), (65, 120, 2.0, 120), (35, 60, 2.0, 120)])
    found = sp.find_spots(canvas, BODY, sp.SpotSettings())
    lone, paired = _nearest(found, 35.5, 60.5), _nearest(found, 35.5, 120.5)
    assert lone[5] > 0.5
    assert abs(paired[5]) < 0.2


def test_spots_stay_in_the_body_box_and_a_flat_body_has_none():
    canvas = _canvas([(35, 50, 2.0, 120), (90, 100, 2.0, 200)])  # the second lies outside the body box
    canvas[100, 90] = 255
    found = sp.find_spots(canvas, BODY, sp.SpotSettings())
    assert len(found) and (found[:, 0] >= 20).all() and (found[:, 0] <= 80).all()
    assert not len(sp.find_spots(_canvas([]), BODY, sp.SpotSettings()))
    assert not len(sp.find_spots(_canvas([(35, 50, 2.0, 120)]), BODY, sp.SpotSettings(limit=0)))


def test_limit_keeps_the_strongest_spots_first():
    canvas = _canvas([(30 + 10 * k, 40 + 30 * k, 2.0, 40 + 40 * k) for k in range(5)])
    found = sp.find_spots(canvas, BODY, sp.SpotSettings(limit=2))
    assert len(found) == 2
    assert abs(found[0][1] - 160.5) <= 1.5  # the brightest (k = 4) first


def test_spot_columns_pad_with_nan_and_read_back():
    canvases = np.stack([_canvas([(35, 50, 2.0, 120)]), _canvas([])])
    columns = sp.spot_columns(canvases, np.array([BODY, BODY]), sp.SpotSettings(limit=4))
    assert set(columns) == set(sp.SPOT_COLUMNS) and columns["spot_x"].shape == (2, 4)
    first = sp.spots_of(tuple(columns[name][0] for name in sp.SPOT_COLUMNS))
    second = sp.spots_of(tuple(columns[name][1] for name in sp.SPOT_COLUMNS))
    assert 1 <= len(first) <= 4 and np.isfinite(first).all()
    assert second.shape == (0, len(sp.SPOT_COLUMNS))
    assert sp.spots_of((None,) * len(sp.SPOT_COLUMNS)).shape == (0, len(sp.SPOT_COLUMNS))
    for name in sp.HALF_PRECISION:  # what the table keeps, and what the ranker reads in the actor
        kept = columns[name][np.isfinite(columns[name])]
        assert len(kept) and np.array_equal(kept, kept.astype(np.float16).astype(np.float32))


def test_physiology_map_is_high_where_normal_boxes_were():
    rng = np.random.default_rng(0)
    u, t = np.abs(rng.normal(0.0, 0.02, 50)), rng.normal(0.6, 0.01, 50)  # a bladder-like site
    phys = sp.PhysiologyMap.fit(u, t)
    assert phys.density(np.array([0.01]), np.array([0.6]))[0] > 0.8
    assert phys.density(np.array([0.3]), np.array([0.2]))[0] < 0.05
    assert phys.density(np.array([0.01]), np.array([1.5]))[0] == 0.0  # below the body
    assert not sp.PhysiologyMap.fit(np.zeros(0), np.zeros(0)).density(np.array([0.0]), np.array([0.6])).any()


def test_sample_heatmap_reads_cell_centres():
    heat = np.arange(8, dtype=np.float64).reshape(4, 2)  # cells of 25 x 50 canvas px on a 100 x 100 canvas
    values = sp.sample_heatmap(heat, np.array([25.0, 75.0, 75.0]), np.array([12.5, 12.5, 87.5]), 100, 100)
    np.testing.assert_allclose(values, [0.0, 1.0, 7.0])


def _features(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Spots whose label is driven by contrast (column 2) and against physiology (column 4)."""
    x = rng.uniform(0, 1, (n, len(sp.FEATURES)))
    return x, (x[:, 2] - x[:, 4] + rng.normal(0, 0.1, n)) > 0.2


def test_fitted_ranker_orders_spots_by_the_features_that_matter():
    rng = np.random.default_rng(1)
    x, y = _features(400, rng)
    ranker = sp.fit_weights(sp.SpotRanker(features=("cam", "contrast", "physiology")), [x], [y])
    coef = dict(zip(ranker.features, ranker.coef, strict=True))
    assert coef["contrast"] > 1.0 and coef["physiology"] < -1.0 and abs(coef["cam"]) < coef["contrast"] / 3
    test_x, test_y = _features(400, np.random.default_rng(2))
    scores = ranker.score(test_x)
    assert scores[test_y].mean() > scores[~test_y].mean() + 0.3
    again = sp.SpotRanker.from_dict(ranker.to_dict())
    np.testing.assert_allclose(again.score(test_x), scores)


def test_unfitted_ranker_scores_by_its_first_feature():
    x = np.random.default_rng(3).uniform(0, 1, (10, len(sp.FEATURES)))
    ranker = sp.fit_weights(sp.SpotRanker(features=("cam", "contrast")), [x], [np.zeros(10, dtype=bool)])
    assert ranker.coef == ()
    np.testing.assert_allclose(ranker.score(x), x[:, 0])


def test_spot_boxes_follow_the_spot_size_score_and_body():
    spots = np.array(
        [
            [30.0, 50.0, 2.0, 1.0, 0.5, 0.5],  # score 0.9
            [31.0, 51.0, 2.0, 1.0, 0.5, 0.5],  # score 0.8, overlaps the first
            [22.0, 150.0, 4.0, 1.0, 0.5, 0.5],  # score 0.7, near the body's left edge
            [60.0, 100.0, 2.0, 1.0, 0.5, 0.5],  # score 0.1: below min_score
        ]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    ranker = sp.SpotRanker(size_factor=3.0, min_side=3.0, max_boxes=5, min_score=0.5, nms_iou=0.0)
    boxes = sp.spot_boxes(spots, scores, BODY, ranker)
    assert len(boxes) == 2  # the overlapping spot and the low score are gone
    np.testing.assert_allclose(boxes[0], [27.0, 47.0, 33.0, 53.0, 0.9], atol=1e-5)
    np.testing.assert_allclose(boxes[1], [20.0, 144.0, 32.0, 156.0, 0.7], atol=1e-5)  # shifted onto the body
    assert len(sp.spot_boxes(spots, scores, BODY, sp.SpotRanker(max_boxes=1, min_score=0.0))) == 1


@pytest.mark.parametrize("bad", [np.zeros((0, 6)), np.zeros((3, 6)) * np.nan])
def test_spot_boxes_of_no_spot_is_empty(bad):
    boxes = sp.spot_boxes(bad[np.isfinite(bad).all(axis=1)], np.zeros(0), BODY, sp.SpotRanker())
    assert boxes.shape == (0, 5)


def test_a_tall_canvas_is_searched_on_a_coarser_grid_and_answers_in_canvas_px():
    small = _canvas([(35, 50, 1.5, 120), (60, 140, 3.0, 90)])
    tall = np.kron(small, np.ones((4, 4), dtype=np.uint8))  # 800 x 400, the same scan 4x larger
    body = tuple(4 * v for v in BODY)
    found_small = sp.find_spots(small, BODY, sp.SpotSettings())
    found_tall = sp.find_spots(tall, body, sp.SpotSettings(detect_height=200))  # block means by 4: the small grid
    np.testing.assert_allclose(found_tall[:, :3], 4 * found_small[:, :3], atol=1e-4)
    np.testing.assert_allclose(found_tall[:, 3:], found_small[:, 3:], atol=1e-4)
    direct = sp.find_spots(tall, body, sp.SpotSettings(detect_height=800))  # searched at full size
    best = direct[np.argmin(np.hypot(direct[:, 0] - 4 * 35.5, direct[:, 1] - 4 * 50.5))]
    assert abs(best[0] - found_tall[0, 0]) <= 4 and abs(best[1] - found_tall[0, 1]) <= 4
