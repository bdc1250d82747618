"""Spot boxes on stored rows: cases from heatmap rows, the physiology map, tuning a ranker on one split, scoring.

Rows are stored `heatmaps` rows joined with their letterbox meta (and, for scoring, the index's view, label and
path), as ``engine.core.localization.box_methods`` uses them. `make boxes` tunes the run's ranker here and
`make evaluate` tunes each ablation the same way; both score through ``box_methods.score_method``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from engine.core.localization.box_methods import ORIG_COLUMNS, MethodRun, heatmap_of, meta_of, score_method
from engine.core.localization.boxes import BoxParams
from engine.core.localization.columns import body_boxes
from engine.core.localization.spots import (
    FEATURES,
    SPOT_COLUMNS,
    PhysiologyMap,
    SpotRanker,
    body_coordinates,
    fit_weights,
    image_boxes,
    inside_any,
    spot_features,
    spots_of,
)
from engine.core.metrics.localization import LocSettings, iou_matrix, matched_rows, pixel_boxes
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original, canvas_to_original_batch, original_to_canvas

Gt = dict[str, tuple[np.ndarray, np.ndarray]]
_EMPTY = np.zeros((0, 4))


@dataclass
class SpotCase:
    """One image's spots and what ranking and scoring need."""

    image_id: str
    meta: LetterboxMeta
    body: np.ndarray  # (4,) canvas body box
    spots: np.ndarray  # (K, 6) SPOT_COLUMNS
    heatmap: np.ndarray  # (h, w) stored CAM
    y_prob: float
    abnormal: np.ndarray  # (M, 4) Abnormal GT boxes, canvas px
    normal: np.ndarray  # (L, 4) Normal GT boxes, canvas px
    features: np.ndarray | None = None  # (K, len(FEATURES)) once a physiology map is chosen


@dataclass(frozen=True)
class TuneGrid:
    """What tuning tries (conf ``boxes.tune_*``) and what it optimises."""

    size_factors: tuple[float, ...] = (2.5, 3.5, 4.5)
    max_boxes: tuple[int, ...] = (1, 2, 3, 5)
    score_quantiles: tuple[float, ...] = (0.0, 0.5, 0.8, 0.9, 0.95)  # min_score candidates: quantiles of the scores
    cutoffs: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)  # classifier cutoffs, plus the run's selected threshold
    iou: float = 0.3  # objective: F1 of box precision / recall at this IoU
    nms_iou: float = 0.0


def has_spots(frame: pd.DataFrame) -> bool:
    """Returns whether stored rows carry spot columns with at least one spot (`make cam` with ``cam.spots`` > 0)."""
    return all(c in frame for c in SPOT_COLUMNS) and any(len(spots_of(v)) for v in _spot_values(frame))


def _spot_values(frame: pd.DataFrame) -> list[tuple[Any, ...]]:
    return list(zip(*(frame[c].to_numpy() for c in SPOT_COLUMNS), strict=True))


def _canvas_boxes(boxes: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return original_to_canvas(boxes, meta) if len(boxes) else _EMPTY


def spot_cases(frame: pd.DataFrame, gt: Gt) -> list[SpotCase]:
    """Returns one SpotCase per row of `frame` (stored heatmap + meta rows), GT boxes moved to the canvas."""
    if frame.empty:
        return []
    bodies = body_boxes({c: frame[c].to_numpy() for c in frame.columns})
    cases = []
    for row, body, values in zip(frame.itertuples(index=False), bodies, _spot_values(frame), strict=True):
        meta = meta_of(row)
        abnormal, normal = gt.get(str(row.image_id), (_EMPTY, _EMPTY))
        prob = float(row.y_prob) if row.y_prob is not None and np.isfinite(row.y_prob) else float("nan")
        cases.append(
            SpotCase(
                str(row.image_id),
                meta,
                np.asarray(body, dtype=np.float64),
                spots_of(values),
                heatmap_of(row),
                prob,
                _canvas_boxes(abnormal, meta),
                _canvas_boxes(normal, meta),
            )
        )
    return cases


def physiology_of(cases: list[SpotCase]) -> PhysiologyMap:
    """Returns the physiology map of the cases' Normal GT box centres (in their body coordinates)."""
    us, ts = [], []
    for case in cases:
        if len(case.normal):
            centre = (case.normal[:, :2] + case.normal[:, 2:]) / 2
            u, t = body_coordinates(centre[:, 0], centre[:, 1], case.body)
            us.append(u)
            ts.append(t)
    return PhysiologyMap.fit(np.concatenate(us) if us else np.zeros(0), np.concatenate(ts) if ts else np.zeros(0))


def with_features(cases: list[SpotCase], physiology: PhysiologyMap) -> list[SpotCase]:
    """Returns the cases with their spot features computed against `physiology` (in place; returned for chaining)."""
    for case in cases:
        meta = case.meta
        case.features = spot_features(
            case.spots, case.heatmap, case.body, meta.canvas_h, meta.canvas_w, physiology, meta.scale, case.y_prob
        )
    return cases


def _features(case: SpotCase) -> np.ndarray:
    """Returns the case's spot features, (0, len(FEATURES)) before `with_features` has run."""
    return case.features if case.features is not None else np.zeros((0, len(FEATURES)))


def _scores(case: SpotCase, ranker: SpotRanker) -> np.ndarray:
    features = _features(case)
    return ranker.score(features) if len(features) else np.zeros(0)


def case_boxes(case: SpotCase, ranker: SpotRanker) -> np.ndarray:
    """Returns (K, 5) canvas boxes of one case by `ranker`; none when its probability is below the cutoff."""
    return image_boxes(case.spots, _features(case), case.body, case.y_prob, ranker)


def case_peaks(cases: list[SpotCase], ranker: SpotRanker) -> list[tuple[int, int] | None]:
    """Returns each case's best-scoring spot in original px (its pointing-game peak; None without spots), clipped
    to the image."""
    found = []
    for i, case in enumerate(cases):
        scores = _scores(case, ranker)
        if len(scores):
            found.append((i, case.spots[int(np.argmax(scores)), :2]))
    out: list[tuple[int, int] | None] = [None] * len(cases)
    if not found:
        return out
    names = ("scale", "pad_left", "pad_top", "orig_w", "orig_h", "new_w", "new_h")
    meta = {k: np.array([float(getattr(cases[i].meta, k)) for i, _ in found]) for k in names}
    xy = np.array([point for _, point in found], dtype=np.float64)
    points = canvas_to_original_batch(np.concatenate([xy, xy], axis=1), **meta)
    for (i, _), x, y, w, h in zip(found, points[:, 0], points[:, 1], meta["orig_w"], meta["orig_h"], strict=True):
        out[i] = int(min(max(x, 0), w - 1)), int(min(max(y, 0), h - 1))
    return out


def ranked_boxes(cases: list[SpotCase], ranker: SpotRanker) -> pd.DataFrame:
    """Returns the cases' boxes as `image_id, rank, x1_orig, y1_orig, x2_orig, y2_orig` rows (original px)."""
    found = [(case, case_boxes(case, ranker)[:, :4]) for case in cases]
    found = [(case, boxes) for case, boxes in found if len(boxes)]
    if not found:
        return pd.DataFrame(columns=["image_id", "rank", *ORIG_COLUMNS])
    counts = np.array([len(boxes) for _, boxes in found])
    names = ("scale", "pad_left", "pad_top", "orig_w", "orig_h", "new_w", "new_h")
    meta = {k: np.repeat([float(getattr(case.meta, k)) for case, _ in found], counts) for k in names}
    orig = canvas_to_original_batch(np.concatenate([boxes for _, boxes in found]).astype(np.float64), **meta)
    frame = pd.DataFrame(orig, columns=list(ORIG_COLUMNS))
    frame.insert(0, "rank", np.concatenate([np.arange(n) for n in counts]))
    frame.insert(0, "image_id", np.repeat([case.image_id for case, _ in found], counts))
    return frame


def score_ranker(
    method: str,
    frame: pd.DataFrame,
    cases: list[SpotCase],
    ranker: SpotRanker,
    gt: Gt,
    settings: LocSettings,
    source: str,
) -> MethodRun:
    """Returns `ranker`'s boxes and peaks scored on `frame` (cases[i] belongs to row i)."""
    boxes, peaks = ranked_boxes(cases, ranker), case_peaks(cases, ranker)
    params = BoxParams(size=1, max_boxes=ranker.max_boxes, nms_iou=ranker.nms_iou, min_score=ranker.min_score)
    return score_method(method, frame, boxes, peaks, gt, params, ranker.cutoff, settings, source)


def f1_of(run: MethodRun, iou: float) -> float:
    """Returns the F1 of a scored run's box precision and recall at `iou` (0 when undefined)."""
    metrics = run.overall()
    precision, recall = metrics[f"precision@iou{iou:g}"].value, metrics[f"recall@iou{iou:g}"].value
    if not (np.isfinite(precision) and np.isfinite(recall)) or precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _prefix_matches(case: SpotCase, ranker: SpotRanker, gt: Gt, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns (box scores (K,), true positives of the first k boxes for k = 0..K (K + 1,)) of one case's boxes
    under `ranker` with no score floor, no box cap and no cutoff: every cap and floor keeps a prefix of them
    (greedy NMS in score order never depends on later boxes), matched as ``score_image`` matches them."""
    loose = replace(ranker, min_score=-np.inf, cutoff=-np.inf)
    boxes = case_boxes(case, loose)
    orig = canvas_to_original(boxes[:, :4].reshape(-1, 4), case.meta) if len(boxes) else _EMPTY
    meta = case.meta
    abnormal = pixel_boxes(gt.get(case.image_id, (_EMPTY,))[0], meta.orig_w, meta.orig_h)
    overlap = iou_matrix(pixel_boxes(orig, meta.orig_w, meta.orig_h), abnormal)
    matched = matched_rows(overlap[None], iou)[0]  # the first k rows match as greedy_match(overlap[:k]) does
    return boxes[:, 4].astype(np.float64), np.concatenate([[0], np.cumsum(matched)]).astype(np.int64)


def tune_ranker(
    features: tuple[str, ...],
    frame: pd.DataFrame,
    cases: list[SpotCase],
    gt: Gt,
    grid: TuneGrid,
    threshold: float,
    settings: LocSettings,
    seed: int = 0,
) -> tuple[SpotRanker, dict[str, Any]]:
    """Returns the ranker over `features` fitted and tuned on one split's cases, and the record of the choice.

    Weights: a logistic regression of "spot centre inside an Abnormal box" (``spots.fit_weights``; a single
    feature is used as it is). Box rule: the grid's size factor, boxes per image, minimum score (quantiles of the
    split's spot scores) and classifier cutoff with the best F1 at ``grid.iou`` on the same split; ties keep the
    first in grid order. The F1 counts as ``score_ranker`` does (every scored image's boxes; GT Abnormal boxes of
    `gt`), from each case's matched prefixes; the record also holds the chosen ranker scored by ``score_ranker``.
    """
    physiology = physiology_of(cases)
    with_features(cases, physiology)
    base = SpotRanker(features=tuple(features), physiology=physiology, nms_iou=grid.nms_iou)
    if len(features) > 1:
        labels = [inside_any(c.spots[:, 0], c.spots[:, 1], c.abnormal) for c in cases]
        base = fit_weights(base, [c.features for c in cases], labels, seed)
    scores = np.concatenate([_scores(c, base) for c in cases] + [np.zeros(0)])
    floors = sorted({round(float(q), 6) for q in np.quantile(scores, grid.score_quantiles)} if len(scores) else {0.0})
    cutoffs = sorted(set(grid.cutoffs) | {round(float(threshold), 6)})
    probs = np.array([c.y_prob for c in cases], dtype=np.float64)
    gt_total = sum(len(gt.get(c.image_id, (_EMPTY,))[0]) for c in cases)
    best: tuple[float, SpotRanker] | None = None
    for size in grid.size_factors:
        sized = replace(base, size_factor=float(size), max_boxes=max(grid.max_boxes))
        prefixes = [_prefix_matches(case, sized, gt, grid.iou) for case in cases]
        for most, floor, cutoff in itertools.product(grid.max_boxes, floors, cutoffs):
            kept = [
                min(int(most), int((s >= floor).sum())) if p >= cutoff else 0
                for (s, _), p in zip(prefixes, probs, strict=True)
            ]
            boxes = sum(kept)
            hits = sum(int(m[k]) for (_, m), k in zip(prefixes, kept, strict=True))
            f1 = 2 * hits / (boxes + gt_total) if boxes + gt_total else 0.0
            if best is None or f1 > best[0] + 1e-12:
                best = (f1, replace(sized, max_boxes=int(most), min_score=float(floor), cutoff=float(cutoff)))
    assert best is not None  # the grid is never empty
    chosen = best[1]
    record = {
        "features": list(features),
        "objective": f"F1 of box precision/recall at IoU {grid.iou:g} on the tune split",
        "f1": round(best[0], 6),
        "f1_scored": round(f1_of(score_ranker("tune", frame, cases, chosen, gt, settings, ""), grid.iou), 6),
        "grid_size": len(grid.size_factors) * len(grid.max_boxes) * len(floors) * len(cutoffs),
        "images": len(cases),
        "normal_boxes": int(sum(len(c.normal) for c in cases)),
        "weights": dict(zip(chosen.features, chosen.coef, strict=True)) if chosen.coef else "unfitted",
    }
    return chosen, record
