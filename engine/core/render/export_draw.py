"""What `make export` draws into a clinic's Secondary Capture: the scored frame with its pseudo boxes and kept masks.

Pure functions on arrays (no file I/O, no DICOM): the frame is the grey image the model scored (original px, the
count rule of `data.count_scale`), boxes and masks are in the same original px.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np

BOX_RGB = (255, 0, 0)  # pseudo boxes: red, as in the report's gallery
MASK_RGB = (255, 0, 255)  # kept pseudo-mask outlines: magenta, as in the report's gallery
LINE_PER_PX = 512  # line width: the frame's longer side / this, rounded, at least 1 px (2 px on a 1024-px scan)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def line_width(shape: tuple[int, ...]) -> int:
    """Returns the line width, px, of the boxes and outlines drawn on a frame of `shape` (1 px on small frames)."""
    return max(1, int(round(max(shape[:2]) / LINE_PER_PX)))


def draw_findings(gray: np.ndarray, boxes: np.ndarray, masks: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Returns the (H, W, 3) uint8 RGB frame with the pseudo boxes outlined in red and the kept masks' outer contours
    in magenta (drawn last, on top).

    Args:
        gray: (H, W) uint8 grey frame.
        boxes: (K, 4) x1, y1, x2, y2 in the frame's px (x2/y2 exclusive); boxes are clipped to the frame.
        masks: (H, W) bool masks in the frame's px.

    Raises:
        ValueError: `gray` is not a 2-D uint8 array, or a mask's shape differs from the frame's.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 frame, got {gray.shape} {gray.dtype}")
    height, width = gray.shape
    width_px = line_width(gray.shape)
    out = np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
        x2, y2 = min(max(x2 - 1, x1), width - 1), min(max(y2 - 1, y1), height - 1)
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_RGB, width_px)
    for mask in masks:
        if mask.shape != gray.shape:
            raise ValueError(f"mask of shape {mask.shape} on a frame of shape {gray.shape}")
        found, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, found, -1, MASK_RGB, width_px)
    return out


def safe_name(text: str, fallback: str = "scan") -> str:
    """Returns `text` reduced to letters, digits, `_`, `.` and `-` (other runs become `_`), for a file name."""
    name = _UNSAFE_NAME.sub("_", text).strip("._")
    return name or fallback


def boxes_text(boxes: np.ndarray) -> str:
    """Returns boxes (K, 4) as plain text: `x1 y1 x2 y2` per box (one decimal), boxes separated by `; `."""
    return "; ".join(" ".join(f"{v:.1f}" for v in box) for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
