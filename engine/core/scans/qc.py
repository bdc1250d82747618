"""Owns image quality control: count statistics, the body blob, the QC flags of one scan, and `domain_shift`.

Pure functions on arrays (no file I/O, no Ray, no pyarrow). The statistics are the ones measured on 17 public
real whole-body ANT/POST pairs (BS-80K naming and size, measured 2026-12-01; `REAL_SCAN_MEDIANS`), where several
frames were pure detector noise (> 95 % zero pixels, sparse bright specks, no body).

Two images per scan: the uint8 grey image the model sees (`data.count_scale` applied), on which the body, the
shape statistics and the `*_grey` statistics are measured; and, where the input holds them (16-bit PNG/TIFF, NM
DICOM), the true counts, on which the count statistics (`total_counts`, `body_counts_per_px`, `low_count`) are
measured (`count_unit` says which: `counts`, or `grey` for 8-bit inputs, whose grey levels are all there is).

The body is the largest 8-connected component of a Gaussian blur (sigma `QcThresholds.blur_sigma_px`, cv2 kernel
truncated at 4 sigma, reflected border) above `level_factor * mean(image) + level_offset`, and only if it looks
like a body (`noise_frame` otherwise), judged by what pure detector noise lacks whatever its speck density:

- area: it covers at least `min_body_area` of the frame (a hot blob or a cluster of specks does not);
- shape: over it the blur varies at least `min_body_snr` times more than counting noise alone would make it vary,
  `shape_snr = cv(blur) / (roughness / (2 sqrt(pi) sigma))` (std / mean of the blur over the component, against
  the residual's relative std shrunk by the blur's noise gain `1 / (2 sqrt(pi) sigma)`). A field of specks or of
  Poisson counts, sparse or dense, is flat once smoothed: shape_snr ~1 (measured 0.0-1.1 at speck densities
  0.1-50 % and uniform Poisson means 0.5-20); generated bodies 17-26, region crops of bodies 6-30.

`low_count` judges the counts per body pixel (`body_counts_per_px`: the mean counts of the body's core,
`body_core`, scaled to a `REFERENCE_PIXEL_MM` square pixel where the pixel spacing is known): what sets a scan's
counting noise, and independent of the frame's size, its empty margins and the patient's size. Whole-body scans
hold, by estimate, ~3-5 counts per body pixel in BS-80K (mean grey 3.9 at one count per 2.2-3.6 grey levels)
and ~10 in a public set of 70 whole-body NM DICOM exports; below `low_count_per_px` (2.5) a pixel's Poisson
noise exceeds 60 % of its value (a 99 k-count study with an adult's body: ~1.8, the generator's scans ~10).
8-bit inputs carry count-scaled grey levels (grey = counts x 255 / peak, >= counts whenever the peak is <= 255
counts, as in BS-80K): judged on grey the flag never calls a scan low-count wrongly, but cannot see every
low-count one.

`domain_shift` compares an image's SHIFT_STATS with a reference fitted on the images a model was trained on
(`fit_shift_reference`, module section below). Boxes are x1, y1, x2, y2 in original px, x2/y2 exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

BodyBox = tuple[int, int, int, int]  # x1, y1, x2, y2, original px, x2/y2 exclusive
REFERENCE_PIXEL_MM = 2.4  # body_counts_per_px is per pixel of this side: whole-body NM matrices (BS-80K, NM DICOM)
BODY_CORE_LEVEL = 0.5  # body_counts_per_px counts over the body blob where its blur is >= this x its median blur


@dataclass(frozen=True)
class QcThresholds:
    """Parameters of the body blob and the thresholds of the QC flags."""

    blur_sigma_px: float = 6.0  # Gaussian sigma of the body blob's blur, px (the real-scan measurement's)
    level_factor: float = 0.25  # body blob: blur > level_factor * mean grey + level_offset
    level_offset: float = 0.5  # grey levels; keeps an almost empty frame from making a blob of its specks
    min_body_area: float = 0.02  # noise_frame unless the body blob covers this share of the frame (children ~0.11)
    min_body_snr: float = 3.0  # noise_frame unless the blob's shape_snr reaches this (noise <= 1.1, bodies >= 6)
    low_count_per_px: float = 2.5  # low_count: counts per body pixel (2.4 mm) below this (module docstring)
    small_body_height: float = 0.45  # small_body: body height fraction below this (real adults 0.67, children ~0.36)
    cut_margin_px: int = 0  # body_cut: body box within this many px of the top or bottom edge


@dataclass(frozen=True)
class ImageQc:
    """QC statistics and flags of one image; body fields are None / 0 for noise frames."""

    count_unit: str  # "counts" (true counts: 16-bit, DICOM) or "grey" (8-bit grey levels): what the counts count
    total_counts: int  # sum of the counts (count_unit)
    body_counts_per_px: float | None  # mean counts of the body's core per REFERENCE_PIXEL_MM pixel; None: no body
    mean_grey: float  # of the grey image the model sees, as are zero_fraction and p99_grey
    zero_fraction: float  # share of pixels exactly 0
    p99_grey: float  # 99th percentile grey level (linear interpolation)
    body_box: BodyBox | None  # the body blob's box, original px; None for noise frames
    body_height_fraction: float  # body box height / image height (0 without a body)
    body_width_fraction: float  # body box width / image width (0 without a body)
    body_area_fraction: float  # the largest blob's area / the frame's (0 without a blob), noise frames' included
    shape_snr: float | None  # the largest blob's shape_snr (module docstring); None without a blob
    roughness: float | None  # std(image - blur) / mean(blur) over the body blob; None without a body
    noise_frame: bool  # no blob that looks like a body (module docstring)
    low_count: bool  # a body holding fewer than low_count_per_px counts per body pixel
    small_body: bool  # a body shorter than small_body_height of the frame
    body_cut: bool  # the body box touches the top or bottom edge (within cut_margin_px)


def check_image(image: np.ndarray) -> np.ndarray:
    """Returns `image` if it is a non-empty 2-D uint8 array; raises ValueError naming shape and dtype otherwise."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8 or image.size == 0:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"QC needs a non-empty 2-D uint8 image (H, W), got shape {shape} dtype {dtype}")
    return image


def check_counts(counts: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Returns `counts` if it is a real-valued array of the image's shape; raises ValueError otherwise."""
    if not isinstance(counts, np.ndarray) or counts.shape != image.shape or not np.isrealobj(counts):
        shape, dtype = getattr(counts, "shape", None), getattr(counts, "dtype", type(counts).__name__)
        raise ValueError(
            f"QC counts must be a real (H, W) array of the image's shape {image.shape}, got shape {shape} dtype {dtype}"
        )
    return counts


def total_counts(values: np.ndarray) -> int:
    """Returns the sum of an image's values (grey levels or counts), rounded to an integer."""
    if values.dtype.kind in "iub":
        return int(values.sum(dtype=np.int64))
    return int(round(float(values.sum(dtype=np.float64))))


def zero_fraction(image: np.ndarray) -> float:
    """Returns the share of pixels that are exactly 0, in [0, 1]."""
    return float(np.count_nonzero(check_image(image) == 0) / image.size)


def body_blur(image: np.ndarray, thresholds: QcThresholds = QcThresholds()) -> np.ndarray:
    """Returns the float32 Gaussian blur (sigma blur_sigma_px, reflected border) the body blob is cut from."""
    sigma = thresholds.blur_sigma_px
    return cv2.GaussianBlur(check_image(image).astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def body_mask(
    image: np.ndarray, thresholds: QcThresholds = QcThresholds(), blur: np.ndarray | None = None
) -> np.ndarray | None:
    """Returns the bool (H, W) mask of the largest blob of the blur above the body level, or None if there is none.

    Ties between equally large blobs go to the first in row-major order. `blur` may pass a `body_blur` result.
    The blob is a body only if `is_body` says so.
    """
    blur = body_blur(image, thresholds) if blur is None else blur
    level = thresholds.level_factor * float(image.mean()) + thresholds.level_offset
    above = (blur > level).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def mask_box(mask: np.ndarray) -> BodyBox:
    """Returns the x1, y1, x2, y2 (x2/y2 exclusive) box of the True pixels of a non-empty bool mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def body_box(image: np.ndarray, thresholds: QcThresholds = QcThresholds()) -> BodyBox | None:
    """Returns the body box (original px, x2/y2 exclusive), or None for a noise frame."""
    return image_qc(image, thresholds).body_box


def body_height_fraction(image: np.ndarray, thresholds: QcThresholds = QcThresholds()) -> float:
    """Returns the body box height over the image height, in [0, 1]; 0 for a noise frame."""
    return image_qc(image, thresholds).body_height_fraction


def roughness(image: np.ndarray, mask: np.ndarray, blur: np.ndarray) -> float:
    """Returns std(image - blur) / mean(blur) over the mask's pixels (population std); inf if the blur mean is 0."""
    residual = image[mask].astype(np.float64) - blur[mask]
    level = float(blur[mask].astype(np.float64).mean())
    return float(residual.std() / level) if level > 0 else float("inf")


def shape_snr(image: np.ndarray, mask: np.ndarray, blur: np.ndarray, sigma_px: float) -> float:
    """Returns how many times more the blur varies over the mask than counting noise alone would make it vary.

    cv(blur over the mask) / (roughness / (2 sqrt(pi) sigma_px)): a Gaussian blur of sigma s shrinks the std of
    pixel-independent noise by 2 sqrt(pi) s. inf for a varying blur over a noiseless mask, 0 for a flat one.
    """
    values = blur[mask].astype(np.float64)
    mean = float(values.mean())
    spread = float(values.std() / mean) if mean > 0 else 0.0
    noise = roughness(image, mask, blur) / (2.0 * math.sqrt(math.pi) * sigma_px)
    if noise > 0:
        return spread / noise
    return float("inf") if spread > 0 else 0.0


def is_body(area_fraction: float, snr: float | None, thresholds: QcThresholds = QcThresholds()) -> bool:
    """Returns whether a blob of this area share and shape_snr is a body (module docstring), not noise."""
    return snr is not None and area_fraction >= thresholds.min_body_area and snr >= thresholds.min_body_snr


def body_core(mask: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """Returns the body's core: the mask's pixels whose blur reaches BODY_CORE_LEVEL of the mask's median blur.

    Its edge is the body's own half-level contour, where the mask's edge lies a blur fringe further out (wider, in
    pixels, on a coarser matrix): counts per pixel over the core hardly depend on the matrix or the blur.
    """
    values = blur[mask]
    return mask & (blur >= BODY_CORE_LEVEL * float(np.median(values))) if values.size else mask


def counts_per_body_px(
    counts: np.ndarray, mask: np.ndarray, blur: np.ndarray, pixel_mm: tuple[float, float] | None = None
) -> float:
    """Returns the mean counts per pixel of the body's core (`body_core`), scaled to a REFERENCE_PIXEL_MM square
    pixel when the pixel spacing (row, column mm) is known; per stored pixel otherwise."""
    core = body_core(mask, blur)
    density = float(counts[core].sum(dtype=np.float64)) / max(int(core.sum()), 1)
    if pixel_mm is None or not all(np.isfinite(pixel_mm)) or min(pixel_mm) <= 0:
        return density
    return density * REFERENCE_PIXEL_MM**2 / (float(pixel_mm[0]) * float(pixel_mm[1]))


def image_qc(
    image: np.ndarray,
    thresholds: QcThresholds = QcThresholds(),
    whole_body: bool = True,
    counts: np.ndarray | None = None,
    pixel_mm: tuple[float, float] | None = None,
) -> ImageQc:
    """Returns the QC statistics and flags of one uint8 (H, W) image.

    Args:
        image: the grey levels the model sees (the body and the grey statistics are measured on it).
        counts: the image's true counts (16-bit, DICOM; any real dtype, same shape) when the input holds them;
            None: the grey levels are the counts (`count_unit` grey).
        whole_body: False for a region crop (a joint, the chest): it holds a fraction of the counts and is cut by
            design, so only noise_frame applies to it.
        pixel_mm: the (row, column) pixel spacing in mm when known (body_counts_per_px is scaled to 2.4 mm).
    """
    check_image(image)
    values = image if counts is None else check_counts(counts, image)
    blur = body_blur(image, thresholds)
    mask = body_mask(image, thresholds, blur)
    area = 0.0 if mask is None else float(mask.mean())
    snr = None if mask is None else shape_snr(image, mask, blur, thresholds.blur_sigma_px)
    has_body = is_body(area, snr, thresholds)
    box = mask_box(mask) if has_body else None
    height, width = image.shape
    box_h, box_w = (0, 0) if box is None else (box[3] - box[1], box[2] - box[0])
    density = counts_per_body_px(values, mask, blur, pixel_mm) if has_body else None
    margin = thresholds.cut_margin_px
    return ImageQc(
        count_unit="grey" if counts is None else "counts",
        total_counts=total_counts(values),
        body_counts_per_px=density,
        mean_grey=float(image.mean(dtype=np.float64)),
        zero_fraction=zero_fraction(image),
        p99_grey=float(np.percentile(image, 99)),
        body_box=box,
        body_height_fraction=box_h / height,
        body_width_fraction=box_w / width,
        body_area_fraction=area,
        shape_snr=snr,
        roughness=roughness(image, mask, blur) if has_body else None,
        noise_frame=not has_body,
        low_count=whole_body and density is not None and density < thresholds.low_count_per_px,
        small_body=whole_body and box is not None and box_h / height < thresholds.small_body_height,
        body_cut=whole_body and box is not None and (box[1] <= margin or box[3] >= height - margin),
    )


def qc_row(image_id: str, folder: str, qc: ImageQc) -> dict:
    """Returns one `qc` table row (schemas/qc.py columns) of an image's QC result."""
    row = asdict(qc)
    box = row.pop("body_box") or (None, None, None, None)
    row.update(dict(zip(("body_x1", "body_y1", "body_x2", "body_y2"), box, strict=True)))
    if row["shape_snr"] is not None and not math.isfinite(row["shape_snr"]):
        row["shape_snr"] = float(np.finfo(np.float64).max)  # a noiseless blob (hand-made images): Parquet-safe
    return {"image_id": image_id, "folder": folder, **row}


REAL_SCAN_MEDIANS = {  # medians over the body-bearing real frames (measured 2026-12-01, see the module docstring)
    "mean_grey": 3.9,
    "zero_fraction": 0.75,
    "p99_grey": 48.0,  # 40-61 across frames
    "body_height_fraction": 0.67,  # children ~0.36
    "body_width_fraction": 0.83,
    "roughness": 0.73,
}
SUMMARY_STATS = ("mean_grey", "zero_fraction", "p99_grey", "body_height_fraction", "body_width_fraction", "roughness")


def summarize_qc(results: Iterable[ImageQc]) -> dict[str, float | int]:
    """Returns the medians of SUMMARY_STATS over the body-bearing frames, the p25/p75 of p99 and body height,
    and the number of frames, noise frames, low-count and cut frames.

    Medians of an empty set are NaN.
    """
    results = list(results)
    bodies = [r for r in results if not r.noise_frame]
    summary: dict[str, float | int] = {"frames": len(results), "noise_frames": len(results) - len(bodies)}
    summary["low_count_frames"] = sum(r.low_count for r in results)
    summary["body_cut_frames"] = sum(r.body_cut for r in results)
    for name in SUMMARY_STATS:
        values = np.array([getattr(r, name) for r in bodies], dtype=np.float64)
        summary[name] = float(np.median(values)) if values.size else float("nan")
        if name in ("p99_grey", "body_height_fraction") and values.size:
            summary[f"{name}_p25"], summary[f"{name}_p75"] = (float(v) for v in np.percentile(values, (25, 75)))
    return summary


# ---- domain_shift: is an image like the images the model was trained on? ----
#
# Each SHIFT_STATS value (the grey image the model sees, and the body's height) becomes a one-sided deviation from
# the training images' median, in units of that side's spread (median to its 5th or 95th percentile), so that a
# skewed statistic (children make body height's lower tail long) is judged on each side by its own spread. An
# image's shift score is its largest deviation; it is flagged when the score exceeds the (1 - alpha) quantile of the
# training images' own scores ('higher': a training score, so at most alpha of them exceed it). Measured on 1,278
# generated POST training scans (2026-12-07): 0.9 % of them and 1.3 % of 1,272 held-out ones flagged (0 % and 1.3 %
# with 48 training scans); every body-cropped, max-scaled "clinic" scan, 82 % of max-scaled 16-bit exports of the
# same scans and 73 % of the same scans at twice the counts. The former rule (each statistic against its own 1-99 %
# range) flagged 5-10 % of the training scans themselves.
SHIFT_STATS = ("mean_grey", "zero_fraction", "p99_grey", "body_height_fraction")  # compared by `domain_shift`
SHIFT_ALPHA = 0.01  # share of the training images allowed above the threshold
SHIFT_SPREAD_QUANTILE = 0.05  # a side's spread: median to this quantile (lower side) or 1 - it (upper side)


@dataclass(frozen=True)
class ShiftReference:
    """What `domain_shift` compares with: per SHIFT_STATS name its training median and side quantiles, and the
    score threshold; `images` training images went into it, `train_flagged` of them score above the threshold."""

    stats: tuple[str, ...]
    median: tuple[float, ...]
    low: tuple[float, ...]  # SHIFT_SPREAD_QUANTILE quantile
    high: tuple[float, ...]  # 1 - SHIFT_SPREAD_QUANTILE quantile
    threshold: float
    images: int
    train_flagged: int
    alpha: float = SHIFT_ALPHA
    spread_quantile: float = SHIFT_SPREAD_QUANTILE

    def to_dict(self) -> dict:
        """Returns the reference as plain JSON-ready values (stat -> value mappings), with a one-line rule."""
        stats = list(self.stats)
        return {
            "rule": "flag when max over stats of (x - median) / (high - median) above the median, (median - x) /"
            " (median - low) below, exceeds threshold (the 1 - alpha quantile of the training images' scores)",
            "stats": stats,
            "median": dict(zip(stats, self.median, strict=True)),
            "low": dict(zip(stats, self.low, strict=True)),
            "high": dict(zip(stats, self.high, strict=True)),
            "threshold": self.threshold,
            "alpha": self.alpha,
            "spread_quantile": self.spread_quantile,
            "images": self.images,
            "train_flagged": self.train_flagged,
        }

    @classmethod
    def from_dict(cls, record: dict) -> ShiftReference:
        """Returns the reference `to_dict` wrote (extra keys ignored)."""
        stats = tuple(record["stats"])

        def values(key: str) -> tuple[float, ...]:
            return tuple(float(record[key][name]) for name in stats)

        return cls(
            stats=stats,
            median=values("median"),
            low=values("low"),
            high=values("high"),
            threshold=float(record["threshold"]),
            images=int(record["images"]),
            train_flagged=int(record["train_flagged"]),
            alpha=float(record.get("alpha", SHIFT_ALPHA)),
            spread_quantile=float(record.get("spread_quantile", SHIFT_SPREAD_QUANTILE)),
        )


def _side_spreads(median: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (lower, upper) spreads, never below 1 % of |median| (or 1e-9): a constant statistic still scales."""
    floor = np.maximum(0.01 * np.abs(median), 1e-9)
    return np.maximum(median - low, floor), np.maximum(high - median, floor)


def _scores(values: np.ndarray, median: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Returns each row's largest side-scaled deviation (N, stats) -> (N,); NaN where no value is finite."""
    below, above = _side_spreads(median, low, high)
    deviation = np.where(values >= median, (values - median) / above, (median - values) / below)
    deviation[~np.isfinite(values)] = -np.inf
    best = deviation.max(axis=1, initial=-np.inf) if deviation.size else np.full(len(values), -np.inf)
    return np.where(np.isfinite(best), best, np.nan)


def _matrix(stats: dict[str, np.ndarray], names: tuple[str, ...], n: int) -> np.ndarray:
    columns = [np.asarray(stats.get(name, np.full(n, np.nan)), dtype=np.float64) for name in names]
    return np.stack(columns, axis=1) if columns else np.zeros((n, 0))


def fit_shift_reference(
    stats: dict[str, np.ndarray], alpha: float = SHIFT_ALPHA, spread_quantile: float = SHIFT_SPREAD_QUANTILE
) -> ShiftReference | None:
    """Returns the ShiftReference of the training images' statistics (column -> values; NaN = not measured), or
    None when no SHIFT_STATS column has a finite value."""
    names = tuple(name for name in SHIFT_STATS if name in stats and np.isfinite(np.asarray(stats[name], float)).any())
    if not names:
        return None
    n = len(np.asarray(stats[names[0]]))
    values = _matrix(stats, names, n)
    median = np.nanmedian(values, axis=0)
    low, high = np.nanquantile(values, spread_quantile, axis=0), np.nanquantile(values, 1 - spread_quantile, axis=0)
    scores = _scores(values, median, low, high)
    finite = scores[np.isfinite(scores)]
    threshold = float(np.quantile(finite, 1 - alpha, method="higher"))
    return ShiftReference(
        stats=names,
        median=tuple(map(float, median)),
        low=tuple(map(float, low)),
        high=tuple(map(float, high)),
        threshold=threshold,
        images=int(len(finite)),
        train_flagged=int((finite > threshold).sum()),
        alpha=alpha,
        spread_quantile=spread_quantile,
    )


def shift_scores(stats: dict[str, np.ndarray], reference: ShiftReference) -> np.ndarray:
    """Returns each image's shift score against `reference` (NaN where none of its statistics is measured)."""
    n = len(next(iter(stats.values()))) if stats else 0
    values = _matrix(stats, reference.stats, n)
    return _scores(
        values, *(np.asarray(v, dtype=np.float64) for v in (reference.median, reference.low, reference.high))
    )


def domain_shift(stats: dict[str, np.ndarray], reference: ShiftReference | None) -> np.ndarray:
    """Returns a bool per image: True where its shift score exceeds the reference's threshold.

    `stats`: column -> values (NaN = not measured: never a shift). The reference is the training set of the model
    that scores the images; a flagged image is one unlike (nearly) every image the model was trained on.
    """
    n = len(next(iter(stats.values()))) if stats else 0
    if reference is None or n == 0:
        return np.zeros(n, dtype=bool)
    scores = shift_scores(stats, reference)
    with np.errstate(invalid="ignore"):
        return np.isfinite(scores) & (scores > reference.threshold)
