"""Owns image quality control: count statistics, the body blob and the QC flags of one uint8 scan.

Pure functions on arrays (no file I/O, no Ray, no pyarrow). The statistics are the ones measured on 17 public
real whole-body ANT/POST pairs (BS-80K naming and size, measured 2026-12-01; `REAL_SCAN_MEDIANS`), where several
frames were pure detector noise (> 95 % zero pixels, sparse bright specks, no body).

The body is the largest 8-connected blob of a Gaussian blur (sigma `QcThresholds.blur_sigma_px`, cv2 kernel
truncated at 4 sigma, reflected border) above `level_factor * mean(image) + level_offset`. Boxes are
x1, y1, x2, y2 in original px, x2/y2 exclusive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

BodyBox = tuple[int, int, int, int]  # x1, y1, x2, y2, original px, x2/y2 exclusive


@dataclass(frozen=True)
class QcThresholds:
    """Parameters of the body blob and the thresholds of the QC flags."""

    blur_sigma_px: float = 6.0  # Gaussian sigma of the body blob's blur, px (the real-scan measurement's)
    level_factor: float = 0.25  # body blob: blur > level_factor * mean grey + level_offset
    level_offset: float = 0.5  # grey levels; keeps an almost empty frame from making a blob of its specks
    noise_zero_fraction: float = 0.95  # noise_frame: more zero pixels than this (real noise frames: > 95 %)
    low_count_total: float = 300_000.0  # low_count: total grey below this (real median ~1.0e6: mean 3.9 x 256 x 1024)
    small_body_height: float = 0.45  # small_body: body height fraction below this (real adults 0.67, children ~0.36)
    cut_margin_px: int = 0  # body_cut: body box within this many px of the top or bottom edge


@dataclass(frozen=True)
class ImageQc:
    """QC statistics and flags of one image; body fields are None / 0 for noise frames."""

    total_counts: int  # sum of grey levels
    mean_grey: float
    zero_fraction: float  # share of pixels exactly 0
    p99_grey: float  # 99th percentile grey level (linear interpolation)
    body_box: BodyBox | None  # the body blob's box, original px; None for noise frames
    body_height_fraction: float  # body box height / image height (0 without a body)
    body_width_fraction: float  # body box width / image width (0 without a body)
    roughness: float | None  # std(image - blur) / mean(blur) over the body blob; None without a body
    noise_frame: bool  # no body blob, or more than noise_zero_fraction zero pixels
    low_count: bool  # total_counts < low_count_total
    small_body: bool  # a body shorter than small_body_height of the frame
    body_cut: bool  # the body box touches the top or bottom edge (within cut_margin_px)


def check_image(image: np.ndarray) -> np.ndarray:
    """Returns `image` if it is a non-empty 2-D uint8 array; raises ValueError naming shape and dtype otherwise."""
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8 or image.size == 0:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"QC needs a non-empty 2-D uint8 image (H, W), got shape {shape} dtype {dtype}")
    return image


def total_counts(image: np.ndarray) -> int:
    """Returns the sum of the grey levels of a uint8 image (counts, for count-level scans)."""
    return int(check_image(image).sum(dtype=np.int64))


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


def image_qc(image: np.ndarray, thresholds: QcThresholds = QcThresholds(), whole_body: bool = True) -> ImageQc:
    """Returns the QC statistics and flags of one uint8 (H, W) image.

    low_count, small_body and body_cut judge a whole-body frame; a region crop (`whole_body=False`: a joint, the
    chest) holds a fraction of the counts and is cut by design, so only noise_frame applies to it.
    """
    zeros, total = zero_fraction(image), total_counts(image)
    blur = body_blur(image, thresholds)
    mask = body_mask(image, thresholds, blur)
    is_noise = mask is None or zeros > thresholds.noise_zero_fraction
    box = None if is_noise else mask_box(mask)
    height, width = image.shape
    box_h, box_w = (0, 0) if box is None else (box[3] - box[1], box[2] - box[0])
    margin = thresholds.cut_margin_px
    return ImageQc(
        total_counts=total,
        mean_grey=float(total / image.size),
        zero_fraction=zeros,
        p99_grey=float(np.percentile(image, 99)),
        body_box=box,
        body_height_fraction=box_h / height,
        body_width_fraction=box_w / width,
        roughness=None if box is None else roughness(image, mask, blur),
        noise_frame=is_noise,
        low_count=whole_body and total < thresholds.low_count_total,
        small_body=whole_body and box is not None and box_h / height < thresholds.small_body_height,
        body_cut=whole_body and box is not None and (box[1] <= margin or box[3] >= height - margin),
    )


def qc_row(image_id: str, folder: str, qc: ImageQc) -> dict:
    """Returns one `qc` table row (schemas/qc.py columns) of an image's QC result."""
    row = asdict(qc)
    box = row.pop("body_box") or (None, None, None, None)
    row.update(dict(zip(("body_x1", "body_y1", "body_x2", "body_y2"), box, strict=True)))
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


SHIFT_STATS = ("mean_grey", "zero_fraction", "p99_grey", "body_height_fraction")  # compared by `domain_shift`


def domain_shift(
    stats: dict[str, np.ndarray], reference: dict[str, np.ndarray], quantiles: tuple[float, float] = (0.01, 0.99)
) -> np.ndarray:
    """Returns a bool per image: True where any SHIFT_STATS value lies outside the reference's quantile range.

    `stats` / `reference`: column -> values (NaN = not measured: never a shift). The reference is the training
    set of the model that scores the images; an image outside its range is one the model never saw the like of.
    """
    n = len(next(iter(stats.values()))) if stats else 0
    shifted = np.zeros(n, dtype=bool)
    for name in SHIFT_STATS:
        ref = np.asarray(reference.get(name, []), dtype=np.float64)
        ref = ref[np.isfinite(ref)]
        if ref.size == 0 or name not in stats:
            continue
        low, high = np.quantile(ref, quantiles)
        values = np.asarray(stats[name], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            shifted |= np.isfinite(values) & ((values < low) | (values > high))
    return shifted
