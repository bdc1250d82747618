"""Image bytes -> 8-bit grayscale array, with a specific reason for every image it refuses (pure)."""

from __future__ import annotations

import cv2
import numpy as np

MAX_SIDE_PX = 16384  # refuse larger images (decompression bombs); BS-80K images are 256 x 1024


class DecodeError(ValueError):
    """An image that cannot be used; the message starts with a reason code."""


def decode_gray8(data: bytes) -> np.ndarray:
    """Returns the image as a 2-D uint8 array (H, W).

    Accepts 8- or 16-bit, gray, RGB or RGBA JPEG/PNG/TIFF/BMP, whatever the file's extension.
    16-bit images are scaled by their own maximum to 0..255 (bone-scan counts have no fixed range).

    Raises:
        DecodeError: `empty_file`, `truncated_jpeg`, `undecodable`, `unsupported_dtype`, `image_too_large`.
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
    if max(image.shape[:2]) > MAX_SIDE_PX:
        raise DecodeError(f"image_too_large: {image.shape[1]}x{image.shape[0]} px > {MAX_SIDE_PX}")
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code) if image.shape[2] in (3, 4) else image[..., 0]
    if image.dtype == np.uint16:
        peak = max(int(image.max()), 1)
        image = (image.astype(np.float32) * (255.0 / peak)).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DecodeError(f"unsupported_dtype: {image.dtype}")
    return np.ascontiguousarray(image)
