"""Image or DICOM bytes -> 8-bit grayscale array, with a specific reason for every image it refuses (pure).

16-bit counts become grey levels through one rule, engine/core/scans/counts.py (`data.count_scale`).
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from engine.core.scans.counts import MAX_SCALE, CountScale, counts_to_gray8
from engine.core.scans.dicom import DicomError, has_dicom_preamble, read_frame_counts

MAX_SIDE_PX = 16384  # refuse larger images (decompression bombs); BS-80K images are 256 x 1024


class DecodeError(ValueError):
    """An image that cannot be used; the message starts with a reason code."""


def decode_gray8(data: bytes, scale: CountScale = MAX_SCALE) -> np.ndarray:
    """Returns the image as a 2-D uint8 array (H, W).

    Accepts 8- or 16-bit, gray, RGB or RGBA JPEG/PNG/TIFF/BMP, whatever the file's extension.
    16-bit images become grey levels under `scale` (default: their own maximum -> 255; bone-scan
    counts have no fixed range).

    Raises:
        DecodeError: `empty_file`, `truncated_jpeg`, `undecodable`, `unsupported_dtype`, `image_too_large`.
    """
    return counts_to_gray8(decode_counts(data), scale)[0]


def decode_scan(data: bytes, frame: int | None = None, scale: CountScale = MAX_SCALE) -> tuple[np.ndarray, float]:
    """Returns (uint8 (H, W), counts per grey level used) of image bytes or of one frame of a DICOM file.

    The counts of `scan_counts`, through `scale` (engine/core/scans/counts.py).

    Raises:
        DecodeError: the codes of scan_counts.
    """
    return counts_to_gray8(scan_counts(data, frame), scale)


def scan_counts(data: bytes, frame: int | None = None) -> np.ndarray:
    """Returns the counts of image bytes or of one frame of a DICOM file, not yet scaled to grey levels.

    DICOM is recognised by its `DICM` preamble, or by `frame` being given (frame None means frame 0): its counts
    are engine.core.scans.dicom.read_frame_counts' (rescaled, MONOCHROME1 reflected; uint8, uint16 or float32).
    Image files give decode_counts' uint8 grey levels or uint16 counts.

    Raises:
        DecodeError: the image codes of decode_gray8, or the DICOM ones (`unreadable_dicom`, `bad_frames`,
            `color_image`, `palette_color`, `bad_rescale`, `undecodable`).
    """
    if frame is None and not has_dicom_preamble(data):
        return decode_counts(data)
    if len(data) == 0:
        raise DecodeError("empty_file: 0 bytes")
    try:
        counts = read_frame_counts(io.BytesIO(data), frame or 0)
    except DicomError as exc:
        raise DecodeError(str(exc)) from exc
    _check_side(counts)
    return counts


def _check_side(image: np.ndarray) -> None:
    """Raises image_too_large past MAX_SIDE_PX."""
    if max(image.shape[:2]) > MAX_SIDE_PX:
        raise DecodeError(f"image_too_large: {image.shape[1]}x{image.shape[0]} px > {MAX_SIDE_PX}")


def decode_counts(data: bytes) -> np.ndarray:
    """Returns image bytes as a 2-D uint8 or uint16 array (H, W): grey levels or counts, not yet scaled.

    Raises:
        DecodeError: as decode_gray8.
    """
    if len(data) == 0:
        raise DecodeError("empty_file: 0 bytes")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise DecodeError(f"truncated_jpeg: no end-of-image marker in {len(data)} bytes")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises, not returns None, past CV_IO_MAX_IMAGE_PIXELS (2**30)
        code = "image_too_large" if "MAX_IMAGE_PIXELS" in str(exc) else "undecodable"
        raise DecodeError(f"{code}: OpenCV refused the image: {str(exc).strip()}") from exc
    if image is None or image.size == 0:
        raise DecodeError(f"undecodable: not an image OpenCV can read ({data[:8]!r}...)")
    _check_side(image)
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] in (3, 4) else image[..., 0]
    if image.dtype not in (np.uint8, np.uint16):
        raise DecodeError(f"unsupported_dtype: {image.dtype}")
    return np.ascontiguousarray(image)
