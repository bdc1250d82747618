"""Letterbox: the one resize-and-pad of a scan onto a fixed canvas, and the canvas <-> original box mapping.

Conventions (stated once for the whole engine):

* Arrays are (H, W), or (N, H, W) in batches. Row index = y, column index = x.
* Boxes are ``x1, y1, x2, y2`` in float pixels, x2/y2 exclusive (a box covering pixel columns 0..3 is
  ``x1=0, x2=4``). Every box array lives in exactly one frame: canvas or original image. Name it
  ``boxes_canvas`` / ``boxes_orig`` accordingly.
* VOC XML boxes (1-based, inclusive) are converted to this convention once, in the parser.

Letterbox rule (the original pipeline's ``letterbox_pil``, with an OpenCV resampler instead of Pillow):
``scale = min(canvas_w / w, canvas_h / h)``, ``new_w = max(1, round(w * scale))`` (likewise ``new_h``),
the resized image is centred with ``pad = (canvas - new) // 2`` and the padding is 0. The project's default
canvas is 1024 tall x 512 wide (README.md "What changed"): a 256 x 1024 portrait scan gets scale 1, pad_left 128.

Mapping: ``x_canvas = x_orig * (new_w / orig_w) + pad_left`` and likewise for y. Because new_w and new_h are
rounded, the exact per-axis factors (not ``scale``) are used both ways, so the round trip is exact up to
float error.

Views: the canvas is never mirrored. The model alone sees an ANT canvas flipped left-right (column ``c`` ->
``W - 1 - c``), so that the patient's left lies on the viewer's left as in POST; its CAM is flipped back before it
is stored, and every box and heatmap on disk is in the image's own pixels (``engine.core.scans.views``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


class LetterboxError(ValueError):
    """Invalid letterbox input: sizes, image rank or box array shape."""


@dataclass(frozen=True)
class LetterboxMeta:
    """Where the original image sits on the canvas; travels with every row (table ``meta``, ``schemas/meta.py``)."""

    orig_h: int  # original image height, px
    orig_w: int  # original image width, px
    canvas_h: int  # canvas height, px (conf canvas.height)
    canvas_w: int  # canvas width, px (conf canvas.width)
    scale: float  # min(canvas_w / orig_w, canvas_h / orig_h)
    pad_left: int  # canvas columns left of the image
    pad_top: int  # canvas rows above the image
    new_h: int  # height of the resized image inside the canvas, px
    new_w: int  # width of the resized image inside the canvas, px

    def body_box(self) -> tuple[int, int, int, int]:
        """Returns the canvas box (x1, y1, x2, y2), x2/y2 exclusive, covered by the image (not padding)."""
        return (self.pad_left, self.pad_top, self.pad_left + self.new_w, self.pad_top + self.new_h)


def _check_size(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise LetterboxError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def letterbox_meta(orig_h: int, orig_w: int, canvas_h: int, canvas_w: int) -> LetterboxMeta:
    """Returns the letterbox geometry of an orig_h x orig_w image on a canvas_h x canvas_w canvas.

    Raises:
        LetterboxError: a size is not a positive integer.
    """
    orig_h, orig_w = _check_size("orig_h", orig_h), _check_size("orig_w", orig_w)
    canvas_h, canvas_w = _check_size("canvas_h", canvas_h), _check_size("canvas_w", canvas_w)
    scale = min(canvas_w / orig_w, canvas_h / orig_h)
    # Python round() halves to even, as the seed did (orig * scale never exceeds canvas by 0.5).
    new_w = max(1, round(orig_w * scale))
    new_h = max(1, round(orig_h * scale))
    return LetterboxMeta(
        orig_h=orig_h,
        orig_w=orig_w,
        canvas_h=canvas_h,
        canvas_w=canvas_w,
        scale=float(scale),
        pad_left=(canvas_w - new_w) // 2,
        pad_top=(canvas_h - new_h) // 2,
        new_h=new_h,
        new_w=new_w,
    )


def resize_image(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Returns a 2-D image resized to (out_h, out_w), same dtype: the engine's one resampling rule.

    INTER_AREA when shrinking (antialiased, like the seed's Pillow BILINEAR), INTER_LINEAR when enlarging,
    a copy when the size does not change. Dtypes OpenCV cannot resize go through float64 and back
    (integer and bool results are rounded).
    """
    out_h, out_w = _check_size("out_h", out_h), _check_size("out_w", out_w)
    if image.ndim != 2:
        raise LetterboxError(f"image must be 2-D (H, W), got shape {image.shape}")
    h, w = image.shape
    if (h, w) == (out_h, out_w):
        return image.copy()
    interpolation = cv2.INTER_AREA if out_h * out_w < h * w else cv2.INTER_LINEAR
    if image.dtype.type in _CV2_DTYPES:
        return cv2.resize(image, (out_w, out_h), interpolation=interpolation)
    resized = cv2.resize(image.astype(np.float64), (out_w, out_h), interpolation=interpolation)
    if image.dtype.kind in "biu":
        resized = np.rint(resized)
    return resized.astype(image.dtype)


def letterbox(
    image: np.ndarray, canvas_h: int, canvas_w: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, LetterboxMeta]:
    """Returns the image resized (aspect kept) and centred on a zero canvas, with its letterbox meta.

    Args:
        image: 2-D (H, W) array of any dtype (uint8 scans in practice).
        canvas_h: canvas height, px.
        canvas_w: canvas width, px.
        out: a (canvas_h, canvas_w) array of ``image``'s dtype to draw on (e.g. one row of a reused batch buffer)
            instead of a new one, whatever it holds: every pixel is written once, the padding as 0.

    Returns:
        canvas: (canvas_h, canvas_w) array, dtype of ``image``; the image sits exactly in ``meta.body_box()``.
        meta: the geometry needed to map boxes and heatmaps back (``canvas_to_original``).
    """
    if image.ndim != 2 or image.size == 0:
        raise LetterboxError(f"image must be a non-empty 2-D (H, W) array, got shape {image.shape}")
    meta = letterbox_meta(image.shape[0], image.shape[1], canvas_h, canvas_w)
    x1, y1, x2, y2 = meta.body_box()
    if out is None:
        canvas = np.zeros((meta.canvas_h, meta.canvas_w), dtype=image.dtype)
    elif out.shape != (meta.canvas_h, meta.canvas_w) or out.dtype != image.dtype:
        raise LetterboxError(f"out must be a ({canvas_h}, {canvas_w}) {image.dtype} array, got {out.shape} {out.dtype}")
    else:
        canvas = out
        canvas[:y1], canvas[y2:], canvas[y1:y2, :x1], canvas[y1:y2, x2:] = 0, 0, 0, 0
    same_size = (meta.new_h, meta.new_w) == image.shape
    canvas[y1:y2, x1:x2] = image if same_size else resize_image(image, meta.new_h, meta.new_w)
    return canvas, meta


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise LetterboxError(f"boxes must have shape (N, 4) as x1, y1, x2, y2; got {boxes.shape}")
    return boxes


def original_to_canvas(boxes: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    """Returns (N, 4) float64 canvas-frame boxes for (N, 4) original-frame boxes (not clipped)."""
    boxes = _as_boxes(boxes)
    factor_x, factor_y = meta.new_w / meta.orig_w, meta.new_h / meta.orig_h
    out = np.empty_like(boxes)
    out[:, 0::2] = boxes[:, 0::2] * factor_x + meta.pad_left
    out[:, 1::2] = boxes[:, 1::2] * factor_y + meta.pad_top
    return out


def canvas_to_original(boxes: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    """Returns (N, 4) float64 original-frame boxes, clipped to [0, orig_w] x [0, orig_h]."""
    n = len(_as_boxes(boxes))
    fields = (meta.scale, meta.pad_left, meta.pad_top, meta.orig_w, meta.orig_h, meta.new_w, meta.new_h)
    scale, pad_left, pad_top, orig_w, orig_h, new_w, new_h = (np.full(n, value) for value in fields)
    return canvas_to_original_batch(boxes, scale, pad_left, pad_top, orig_w, orig_h, new_w=new_w, new_h=new_h)


def _per_row(n: int, **arrays: np.ndarray | None) -> dict[str, np.ndarray]:
    """Returns the non-None arrays as float64 (n,) columns (scalars broadcast); raises LetterboxError."""
    try:
        return {k: np.broadcast_to(np.asarray(a, dtype=np.float64), (n,)) for k, a in arrays.items() if a is not None}
    except ValueError as err:
        raise LetterboxError(f"meta arrays must have shape ({n},) to match boxes: {err}") from err


def canvas_to_original_batch(
    boxes: np.ndarray,
    scale: np.ndarray,
    pad_left: np.ndarray,
    pad_top: np.ndarray,
    orig_w: np.ndarray,
    orig_h: np.ndarray,
    new_w: np.ndarray | None = None,
    new_h: np.ndarray | None = None,
) -> np.ndarray:
    """Returns (N, 4) float64 original-frame boxes; each row uses its own letterbox meta (meta table columns).

    ``x_orig = (x_canvas - pad_left) / (new_w / orig_w)``, likewise for y, clipped to the image. Pass the stored
    new_w/new_h if available; else they are recomputed as ``max(1, round(orig * scale))`` like ``letterbox_meta``,
    exact only for a float64 ``scale`` (float32: off by one new_w for ~0.06% of random geometries).

    Args:
        boxes: (N, 4) canvas-frame boxes.
        scale: (N,) letterbox scale of each box's image (scalars broadcast here and below).
        pad_left: (N,) canvas columns left of the image.
        pad_top: (N,) canvas rows above the image.
        orig_w: (N,) original image width, px.
        orig_h: (N,) original image height, px.
        new_w: (N,) width of the resized image on the canvas, px (optional, preferred).
        new_h: (N,) height of the resized image on the canvas, px (optional, preferred).
    """
    boxes = _as_boxes(boxes)
    meta = _per_row(
        len(boxes),
        scale=scale,
        pad_left=pad_left,
        pad_top=pad_top,
        orig_w=orig_w,
        orig_h=orig_h,
        new_w=new_w,
        new_h=new_h,
    )
    orig_w, orig_h = meta["orig_w"], meta["orig_h"]
    if np.any(meta["scale"] <= 0) or np.any(orig_w < 1) or np.any(orig_h < 1):
        raise LetterboxError("scale must be > 0 and orig_w, orig_h >= 1 for every row")
    # np.round halves to even like Python round(): the same new_w/new_h as letterbox_meta.
    new_w = meta.get("new_w", np.maximum(1.0, np.round(orig_w * meta["scale"])))
    new_h = meta.get("new_h", np.maximum(1.0, np.round(orig_h * meta["scale"])))
    factor_x, factor_y = (new_w / orig_w)[:, None], (new_h / orig_h)[:, None]
    out = np.empty_like(boxes)
    out[:, 0::2] = np.clip((boxes[:, 0::2] - meta["pad_left"][:, None]) / factor_x, 0.0, orig_w[:, None])
    out[:, 1::2] = np.clip((boxes[:, 1::2] - meta["pad_top"][:, None]) / factor_y, 0.0, orig_h[:, None])
    return out
