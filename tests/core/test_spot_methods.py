"""Spot rankers on stored-row frames: cases, the physiology map, tuning on one split and scoring (no Ray, no model)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.core.localization import spot_methods as sm
from engine.core.localization.spots import SPOT_COLUMNS, SpotRanker
from engine.core.metrics.localization import LocSettings

SETTINGS = LocSettings(ks=(1, 5), iou_thresholds=(0.3, 0.5), iogt_thresholds=(), tolerance_px=0.0)
META = {"orig_h": 400, "orig_w": 100, "canvas_h": 200, "canvas_w": 100, "scale": 0.5}
META |= {"pad_left": 25, "pad_top": 0, "new_h": 200, "new_w": 50}


def _row(image_id: str, spots: list[tuple[float, ...]], label: int, y_prob: float, hot: tuple[int, int]) -> dict:
    """A stored row: a 25 x 10 CAM hot at cell `hot`, the given spots (x, y, sigma, peak, contrast, asym)."""
    heat = np.zeros((25, 10), dtype=np.float32)
    heat[hot] = 1.0
    values = np.asarray(spots, dtype=np.float32).reshape(-1, len(SPOT_COLUMNS))
    return {
        "image_id": image_id,
        "heatmap": heat.ravel(),
        "heatmap_h": 25,
        "heatmap_w": 10,
        "y_prob": y_prob,
        "label": label,
        "view": "POST",
        "folder": "wholeBodyPOST",
        "split": "val",
        **META,
        **{name: values[:, j] for j, name in enumerate(SPOT_COLUMNS)},
    }


def _corpus(seed: int, n: int = 24) -> tuple[pd.DataFrame, dict]:
    """Abnormal images hold a lesion spot (asymmetric, where the CAM is hot) among bright symmetric decoys; normal
    images hold decoys only, one of them on the 'bladder' (a Normal box at the same body site in every image)."""
    rng = np.random.default_rng(seed)
    rows, gt = [], {}
    for i in range(n):
        abnormal = i % 2 == 0
        decoys = [
            (40.0, 150.0, 3.0, 1.0, 0.6, 0.0),
            (float(rng.uniform(30, 70)), float(rng.uniform(20, 120)), 1.5, 0.7, 0.3, 0.05),
        ]
        spots, boxes_abnormal = list(decoys), np.zeros((0, 4))
        hot = (int(rng.integers(0, 25)), int(rng.integers(0, 10)))
        if abnormal:
            x, y = float(rng.uniform(30, 70)), float(rng.uniform(20, 130))
            spots.append((x, y, 1.5, 0.6, 0.5, 0.8))
            hot = (int(y * 25 / 200), int(x * 10 / 100))
            ox, oy = (x - 25) * 2, y * 2  # original px (scale 0.5, pad_left 25)
            boxes_abnormal = np.array([[ox - 5, oy - 5, ox + 5, oy + 5]])
        bladder = np.array([[(40 - 25) * 2 - 10, 150 * 2 - 10, (40 - 25) * 2 + 10, 150 * 2 + 10]])
        rows.append(_row(f"img{seed}_{i}", spots, int(abnormal), 0.8 if abnormal else 0.3, hot))
        gt[f"img{seed}_{i}"] = (boxes_abnormal, bladder)
    return pd.DataFrame(rows), gt


def test_cases_carry_spots_and_gt_on_the_canvas() -> None:
    frame, gt = _corpus(0, n=2)
    cases = sm.spot_cases(frame, gt)
    assert [len(c.spots) for c in cases] == [3, 2]
    np.testing.assert_allclose(cases[1].normal, [[35.0, 145.0, 45.0, 155.0]])  # original px -> canvas
    assert sm.has_spots(frame) and not sm.has_spots(frame.drop(columns=["spot_x"]))


def test_physiology_map_marks_the_normal_boxes_site() -> None:
    frame, gt = _corpus(0)
    phys = sm.physiology_of(sm.spot_cases(frame, gt))
    u, t = abs(40 - 50) / 50, 150 / 200  # the bladder's body coordinates
    assert phys.density(np.array([u]), np.array([t]))[0] > 0.9
    assert phys.density(np.array([0.3]), np.array([0.2]))[0] < 0.05


def test_tuned_ranker_finds_the_lesions_and_its_f1_is_the_scorers() -> None:
    val, gt = _corpus(1)
    test, test_gt = _corpus(2)
    gt |= test_gt
    features = ("cam", "peak", "contrast", "asym", "physiology", "size", "prob")
    ranker, record = sm.tune_ranker(features, val, sm.spot_cases(val, gt), gt, sm.TuneGrid(), 0.5, SETTINGS)
    assert record["f1"] == record["f1_scored"]  # the prefix search counts as score_method does
    assert record["weights"]["asym"] > 0 and record["weights"]["physiology"] < 0
    cases = sm.with_features(sm.spot_cases(test, gt), ranker.physiology)
    metrics = sm.score_ranker("spots", test, cases, ranker, gt, SETTINGS, "").overall()
    assert metrics["recall@iou0.3"].value > 0.9 and metrics["precision@iou0.3"].value > 0.9
    assert metrics["pointing_game"].value == 1.0
    peak_only, _ = sm.tune_ranker(
        ("peak",), val, sm.spot_cases(val, gt), gt, sm.TuneGrid(cutoffs=(0.0,)), 0.0, SETTINGS
    )
    plain = sm.score_ranker(
        "peak", test, sm.with_features(sm.spot_cases(test, gt), peak_only.physiology), peak_only, gt, SETTINGS, ""
    )
    assert plain.overall()["pointing_game"].value == 0.0  # the brightest spot is always a decoy here


def test_cutoff_keeps_normal_images_free_of_boxes() -> None:
    frame, gt = _corpus(3)
    cases = sm.with_features(sm.spot_cases(frame, gt), sm.physiology_of(sm.spot_cases(frame, gt)))
    ranker = SpotRanker(features=("asym",), max_boxes=3, cutoff=0.5)
    boxes = sm.ranked_boxes(cases, ranker)
    normal_ids = {c.image_id for c in cases if c.y_prob < 0.5}
    assert len(boxes) and not set(boxes["image_id"]) & normal_ids
    assert (boxes.groupby("image_id").size() <= 3).all()
