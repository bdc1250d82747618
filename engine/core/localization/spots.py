"""Hot spots at full resolution, ranked by what a reader uses: the CAM, the contrast, the asymmetry, the site.

A bone scan's metastases are small count maxima; the CAM (8-16 canvas px per cell) says which region drives the
classifier but not where the spot is. So the candidates come from the scan and the CAM only ranks them:

* ``find_spots``: difference-of-Gaussian blobs of the letterboxed scan inside the body (``skimage.feature.blob_dog``),
  each with its scale (sigma), its smoothed peak, its contrast to the local background and its asymmetry to the
  mirrored point across the body midline (metastases are usually one-sided, bladder and kidneys are not).
* ``spot_features``: the features a ranker reads, adding the CAM value at the spot and the density of physiological
  uptake (``PhysiologyMap``: where the tune split's ``Normal`` boxes lie, in body coordinates).
* ``SpotRanker``: a logistic regression over a chosen subset of those features, fitted on the tune split's boxes
  (a spot is positive when its centre lies in an ``Abnormal`` box), with the box rule (side = ``size_factor`` x
  sigma, boxes per image, minimum score, classifier cutoff) chosen on the same split.
* ``spot_boxes``: the ranked spots of one image as ``x1, y1, x2, y2, score`` boxes (canvas px), after greedy NMS.

Coordinates are canvas px (``engine.core.scans.letterbox``); boxes are x2/y2 exclusive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from engine.core.localization.boxes import BoxParams, greedy_nms

SPOT_COLUMNS = ("spot_x", "spot_y", "spot_sigma", "spot_peak", "spot_contrast", "spot_asym")
FEATURES = ("cam", "peak", "contrast", "asym", "physiology", "size", "prob")


@dataclass(frozen=True)
class SpotSettings:
    """Hot-spot detection on the canvas (conf ``cam.spots``, ``cam.spot_*``)."""

    limit: int = 48  # spots kept per image, by excess over the local background (0: no spots)
    min_sigma: float = 0.7  # smallest blob sigma, canvas px
    max_sigma: float = 6.0  # largest blob sigma, canvas px
    threshold: float = 0.02  # DoG response floor on the scan scaled to its body's 99th percentile
    background_sigma: float = 5.0  # Gaussian sigma of the local background, px of the detection grid
    detect_height: int = 512  # a taller canvas is block-averaged by an integer factor down to at most this height
    # first (the 1024 x 512 canvas: by 2, still ~2 original px per pixel); sigmas and positions come back in canvas px


def _body_slices(body_box: Any, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in np.asarray(body_box, dtype=np.float64).reshape(4))
    h, w = shape
    x1, y1 = int(np.clip(np.floor(x1), 0, w)), int(np.clip(np.floor(y1), 0, h))
    return x1, y1, int(np.clip(np.ceil(x2), x1, w)), int(np.clip(np.ceil(y2), y1, h))


def find_spots(canvas: np.ndarray, body_box: Any, settings: SpotSettings) -> np.ndarray:
    """Returns (K, 6) float32 spots of one canvas, columns as SPOT_COLUMNS, best excess first, K <= limit.

    Args:
        canvas: (H, W) letterboxed grey scan (uint8 or float).
        body_box: (4,) canvas box x1, y1, x2, y2 the spots must lie in (the QC body box or the image region).
        settings: detection settings.

    peak, background: the scan smoothed (sigma 1 px) at the spot and at ``background_sigma``, both divided by the
    body's 99th percentile; contrast = (peak - background) / (peak + background); asym = (peak - mirror) /
    (peak + mirror), mirror = the brightest smoothed value within 2 px of the point mirrored across the body's
    count-weighted midline. An empty or flat body gives no spot.
    """
    from skimage.feature import blob_dog

    canvas = np.asarray(canvas, dtype=np.float32)
    factor = max(1, -(-canvas.shape[0] // max(int(settings.detect_height), 1)))
    if factor > 1:  # block means: blob_dog's pruning grows with the square of the blobs a fine grid finds
        h, w = canvas.shape[0] // factor * factor, canvas.shape[1] // factor * factor
        canvas = canvas[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        body_box = np.asarray(body_box, dtype=np.float64).reshape(4) / factor
    x1, y1, x2, y2 = _body_slices(body_box, canvas.shape)
    body = canvas[y1:y2, x1:x2]
    if settings.limit <= 0 or min(body.shape) < 3 or float(body.max()) <= float(body.min()):
        return np.zeros((0, len(SPOT_COLUMNS)), dtype=np.float32)
    smooth = ndimage.gaussian_filter(body, 1.0)
    positive = smooth[smooth > 0]
    scale = max(float(np.percentile(positive, 99)) if positive.size else 1.0, 1e-3)
    blobs = blob_dog(
        body / scale,
        min_sigma=settings.min_sigma,
        max_sigma=settings.max_sigma,
        sigma_ratio=1.6,
        threshold=settings.threshold,
        overlap=0.5,
    )
    if not len(blobs):
        return np.zeros((0, len(SPOT_COLUMNS)), dtype=np.float32)
    rows, cols = blobs[:, 0].astype(np.int64), blobs[:, 1].astype(np.int64)
    peak = smooth[rows, cols] / scale
    background = ndimage.gaussian_filter(body, settings.background_sigma)[rows, cols] / scale
    column_mass = smooth.sum(axis=0)
    midline = float((column_mass * np.arange(len(column_mass))).sum() / max(float(column_mass.sum()), 1e-6))
    nearby_max = ndimage.maximum_filter(smooth, size=5, mode="nearest")
    mirror_cols = np.rint(2 * midline - cols).astype(np.int64)
    inside = (mirror_cols >= 0) & (mirror_cols < body.shape[1])
    mirror = np.zeros(len(rows), dtype=np.float64)
    mirror[inside] = nearby_max[rows[inside], mirror_cols[inside]] / scale
    contrast = (peak - background) / (peak + background + 1e-6)
    asym = (peak - mirror) / (peak + mirror + 1e-6)
    spots = np.stack([cols + x1 + 0.5, rows + y1 + 0.5, blobs[:, 2], peak, contrast, asym], axis=1)
    spots[:, :3] *= factor  # back to canvas px
    order = np.lexsort((np.arange(len(spots)), -(peak - background)))[: settings.limit]
    return spots[order].astype(np.float32)


# descriptors kept at float16 precision (3 significant digits, ample for ranking): ~60 % fewer bytes per image
HALF_PRECISION = ("spot_peak", "spot_contrast", "spot_asym")


def spot_columns(canvases: np.ndarray, bodies: np.ndarray, settings: SpotSettings) -> dict[str, np.ndarray]:
    """Returns SPOT_COLUMNS as (N, limit) float32 arrays padded with NaN: ``find_spots`` of each canvas.

    Args:
        canvases: (N, H, W) letterboxed scans.
        bodies: (N, 4) canvas body boxes (``engine.core.localization.columns.body_boxes``).
        settings: detection settings.
    """
    limit = max(int(settings.limit), 0)
    out = {name: np.full((len(canvases), limit), np.nan, dtype=np.float32) for name in SPOT_COLUMNS}
    for row, (canvas, body) in enumerate(zip(canvases, bodies, strict=True)):
        spots = find_spots(canvas, body, settings)
        for j, name in enumerate(SPOT_COLUMNS):
            out[name][row, : len(spots)] = spots[:, j]
    for name in HALF_PRECISION:  # the ranker reads them as the table keeps them
        out[name] = out[name].astype(np.float16).astype(np.float32)
    return out


def spots_of(values: tuple[Any, ...]) -> np.ndarray:
    """Returns one row's stored spots (K, 6) from its SPOT_COLUMNS values (lists, padded arrays or nulls)."""
    if any(v is None or isinstance(v, float) for v in values):  # a null list cell reads back as None or NaN
        return np.zeros((0, len(SPOT_COLUMNS)), dtype=np.float32)
    spots = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in values], axis=1)
    return spots[np.isfinite(spots).all(axis=1)]


def body_coordinates(x: np.ndarray, y: np.ndarray, body_box: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns (|u|, t): distance from the body box's vertical midline over its width, and height down the box."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(body_box, dtype=np.float64).reshape(4))
    u = np.abs(np.asarray(x, dtype=np.float64) - (x1 + x2) / 2) / max(x2 - x1, 1e-6)
    t = (np.asarray(y, dtype=np.float64) - y1) / max(y2 - y1, 1e-6)
    return u, t


@dataclass(frozen=True)
class PhysiologyMap:
    """Where physiological uptake lies: a smoothed histogram of `Normal` box centres in body coordinates (|u|, t).

    `density` is in [0, 1] (1 = the most common site); an empty map (no Normal box seen) is 0 everywhere.
    """

    grid: tuple[tuple[float, ...], ...] = ()  # (bins_t, bins_u) densities
    u_max: float = 0.6

    @classmethod
    def fit(cls, u: np.ndarray, t: np.ndarray, bins: tuple[int, int] = (40, 12), u_max: float = 0.6) -> PhysiologyMap:
        """Returns the map of box centres (|u|, t), histogrammed on (bins_t, bins_u) cells and smoothed by 1 cell."""
        u, t = np.asarray(u, dtype=np.float64), np.asarray(t, dtype=np.float64)
        if not len(u):
            return cls((), u_max)
        hist, _, _ = np.histogram2d(np.clip(t, 0, 1 - 1e-9), np.clip(u, 0, u_max - 1e-9), bins, [[0, 1], [0, u_max]])
        hist = ndimage.gaussian_filter(hist, 1.0, mode="constant")
        hist = hist / hist.max() if hist.max() > 0 else hist
        return cls(tuple(tuple(float(v) for v in r) for r in hist), u_max)

    def density(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Returns the density at body coordinates (|u|, t); outside the body (t < 0 or t > 1) it is 0."""
        u, t = np.asarray(u, dtype=np.float64), np.asarray(t, dtype=np.float64)
        if not self.grid:
            return np.zeros(np.shape(u))
        grid = np.asarray(self.grid)
        rows = np.clip((t * grid.shape[0]).astype(np.int64), 0, grid.shape[0] - 1)
        cols = np.clip((u / self.u_max * grid.shape[1]).astype(np.int64), 0, grid.shape[1] - 1)
        return np.where((t >= 0) & (t <= 1) & (u <= self.u_max), grid[rows, cols], 0.0)


def sample_heatmap(heatmap: np.ndarray, x: np.ndarray, y: np.ndarray, canvas_h: int, canvas_w: int) -> np.ndarray:
    """Returns the (h, w) CAM bilinearly interpolated at canvas points (cell (r, c) centred at (c + 0.5) W / w)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    h, w = heatmap.shape
    rows = np.asarray(y, dtype=np.float64) * h / canvas_h - 0.5
    cols = np.asarray(x, dtype=np.float64) * w / canvas_w - 0.5
    return ndimage.map_coordinates(heatmap, [rows, cols], order=1, mode="nearest")


def spot_features(
    spots: np.ndarray,
    heatmap: np.ndarray,
    body_box: Any,
    canvas_h: int,
    canvas_w: int,
    physiology: PhysiologyMap,
    scale: float = 1.0,
    y_prob: float = 0.0,
) -> np.ndarray:
    """Returns (K, len(FEATURES)) float64 features of one image's spots: cam, peak, contrast, asym, physiology,
    size (the blob sigma in original px: canvas sigma / the letterbox `scale`) and prob (the image's classifier
    probability, 0 when unknown: the same for every spot of the image)."""
    spots = np.asarray(spots, dtype=np.float64).reshape(-1, len(SPOT_COLUMNS))
    cam = sample_heatmap(heatmap, spots[:, 0], spots[:, 1], canvas_h, canvas_w) if len(spots) else np.zeros(0)
    u, t = body_coordinates(spots[:, 0], spots[:, 1], body_box)
    size = spots[:, 2] / max(float(scale), 1e-9)
    prob = np.full(len(spots), float(y_prob) if np.isfinite(y_prob) else 0.0)
    return np.stack([cam, spots[:, 3], spots[:, 4], spots[:, 5], physiology.density(u, t), size, prob], axis=1)


def inside_any(x: np.ndarray, y: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Returns (K,) bool: point k lies in at least one of the (M, 4) boxes (x2/y2 exclusive)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y = np.asarray(x, dtype=np.float64)[:, None], np.asarray(y, dtype=np.float64)[:, None]
    within = (x >= boxes[None, :, 0]) & (x < boxes[None, :, 2]) & (y >= boxes[None, :, 1]) & (y < boxes[None, :, 3])
    return within.any(axis=1) if len(boxes) else np.zeros(len(x), dtype=bool)


@dataclass(frozen=True)
class SpotRanker:
    """Scores spots from a subset of FEATURES (a logistic regression) and turns the best into boxes.

    With no fitted weights (`coef` empty) the score is the first feature alone (e.g. `("cam",)`: the CAM ranks).
    """

    features: tuple[str, ...] = ("cam",)
    coef: tuple[float, ...] = ()
    intercept: float = 0.0
    mean: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    physiology: PhysiologyMap = field(default_factory=PhysiologyMap)
    size_factor: float = 3.5  # box side = size_factor x spot sigma (a spot of sigma s spans ~ +-1.8 s)
    min_side: float = 3.0  # canvas px
    max_boxes: int = 5
    min_score: float = 0.0  # spots scoring below this get no box
    nms_iou: float = 0.0
    cutoff: float = 0.0  # classifier probability below which an image gets no box

    def columns(self) -> list[int]:
        """Returns the FEATURES indices this ranker reads."""
        return [FEATURES.index(name) for name in self.features]

    def score(self, features: np.ndarray) -> np.ndarray:
        """Returns (K,) scores in [0, 1] of (K, len(FEATURES)) spot features."""
        chosen = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))[:, self.columns()]
        if not self.coef:
            return np.clip(chosen[:, 0], 0.0, 1.0)
        z = (chosen - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready record (``from_dict`` reads it back)."""
        return asdict(self) | {"physiology": asdict(self.physiology)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> SpotRanker:
        """Returns the ranker a ``to_dict`` record describes."""
        record = dict(record)
        physiology = record.pop("physiology", {}) or {}
        grid = tuple(tuple(float(v) for v in row) for row in physiology.get("grid", ()))
        tuples = {k: tuple(record[k]) for k in ("features", "coef", "mean", "scale") if k in record}
        return cls(**(record | tuples), physiology=PhysiologyMap(grid, float(physiology.get("u_max", 0.6))))


def fit_weights(ranker: SpotRanker, features: list[np.ndarray], labels: list[np.ndarray], seed: int = 0) -> SpotRanker:
    """Returns `ranker` with logistic-regression weights over its features, fitted on spots labelled positive.

    ``sklearn.linear_model.LogisticRegression`` (balanced classes, L2, standardised features). Fewer than two
    classes among the labels: the ranker is returned unfitted (first feature alone).
    """
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1, len(FEATURES)) for f in features])
    y = np.concatenate([np.asarray(v, dtype=bool).reshape(-1) for v in labels])
    if len(np.unique(y)) < 2:
        return ranker
    chosen = x[:, ranker.columns()]
    mean, scale = chosen.mean(axis=0), chosen.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    model = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed)
    model.fit((chosen - mean) / scale, y)
    return SpotRanker(
        **(
            asdict(ranker)
            | {
                "coef": tuple(float(v) for v in model.coef_[0]),
                "intercept": float(model.intercept_[0]),
                "mean": tuple(float(v) for v in mean),
                "scale": tuple(float(v) for v in scale),
                "physiology": ranker.physiology,
                "features": ranker.features,
            }
        )
    )


def spot_boxes(spots: np.ndarray, scores: np.ndarray, body_box: Any, ranker: SpotRanker) -> np.ndarray:
    """Returns (K, 5) float32 boxes ``x1, y1, x2, y2, score`` (canvas px) of one image, best first, K <= max_boxes.

    Each spot scoring >= ``min_score`` gets a square of side max(min_side, size_factor x sigma) centred on it,
    shifted onto the body box; greedy NMS at ``nms_iou`` keeps the best ``max_boxes``.
    """
    spots = np.asarray(spots, dtype=np.float64).reshape(-1, len(SPOT_COLUMNS))
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keep = scores >= ranker.min_score
    spots, scores = spots[keep], scores[keep]
    order = np.lexsort((np.arange(len(scores)), -scores))
    spots, scores = spots[order], scores[order]
    x1, y1, x2, y2 = (float(v) for v in np.asarray(body_box, dtype=np.float64).reshape(4))
    side = np.maximum(ranker.min_side, ranker.size_factor * spots[:, 2])
    side_w, side_h = np.minimum(side, x2 - x1), np.minimum(side, y2 - y1)
    left = np.clip(spots[:, 0] - side_w / 2, x1, x2 - side_w)
    top = np.clip(spots[:, 1] - side_h / 2, y1, y2 - side_h)
    boxes = np.stack([left, top, left + side_w, top + side_h, scores], axis=1).reshape(-1, 5)
    params = BoxParams(size=1, max_boxes=ranker.max_boxes, nms_iou=ranker.nms_iou)
    return boxes[greedy_nms(boxes[:, :4], params)].astype(np.float32)


def image_boxes(
    spots: np.ndarray, features: np.ndarray, body_box: Any, y_prob: float, ranker: SpotRanker
) -> np.ndarray:
    """Returns (K, 5) canvas boxes of one image by `ranker` (``spot_boxes`` of its scores); none when the image's
    classifier probability is below ``ranker.cutoff`` (or NaN) or it has no spot."""
    if not y_prob >= ranker.cutoff or not len(spots):
        return np.zeros((0, 5), dtype=np.float32)
    return spot_boxes(spots, ranker.score(features), body_box, ranker)
