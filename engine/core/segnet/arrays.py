"""Segmentation-network arrays: pseudo-mask targets on the canvas, val Dice, and probability map -> mask rows.

Pure numpy (with the RLE and letterbox helpers of engine/core/: masks.py, mask_qc.py and letterbox.py):
* targets: the kept pseudo masks of an image (COCO RLE, original px) travel as one packed string
  (``pack_rles``) and become a (canvas_h, canvas_w) uint8 0/1 target through the one letterbox
  (``target_canvas``): the union is letterboxed as a 0/255 image and thresholded at half.
* val metrics: ``SegDiceAccumulator`` pools Dice over all val images (a false positive on a normal scan costs),
  and keeps the mean Dice of the images with a target and the share of empty-target images with a prediction.
* outputs: ``component_masks`` splits a probability map into 8-connected components at a threshold, scored by
  their mean probability; ``component_rows`` maps each to original px and COCO RLE (``segmenters.encode_rle``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from engine.core.masks.crops import mask_bbox, mask_to_original
from engine.core.masks.segmenters import decode_rle, encode_rle
from engine.core.scans.letterbox import letterbox

_EIGHT = np.ones((3, 3), dtype=bool)
SEGMENTER = "segnet"  # the `segmenter` value of the network's mask rows


def pack_rles(rles: Iterable[tuple[str, int, int]]) -> str:
    """Returns one string of COCO RLEs (counts, h, w): `h:w:counts` joined by spaces (counts never hold either)."""
    return " ".join(f"{int(h)}:{int(w)}:{counts}" for counts, h, w in rles)


def unpack_rles(packed: str) -> list[tuple[str, int, int]]:
    """Returns the (counts, h, w) RLEs of a ``pack_rles`` string ("" -> none)."""
    out = []
    for item in packed.split():
        h, w, counts = item.split(":", 2)
        out.append((counts, int(h), int(w)))
    return out


def target_canvas(packed: str, orig_h: int, orig_w: int, canvas_h: int, canvas_w: int) -> np.ndarray:
    """Returns the (canvas_h, canvas_w) uint8 0/1 union of an image's packed RLE masks, letterboxed like the image.

    Raises:
        ValueError: an RLE whose size is not the image's (orig_h, orig_w).
    """
    union = np.zeros((orig_h, orig_w), dtype=np.uint8)
    for counts, h, w in unpack_rles(packed):
        if (h, w) != (orig_h, orig_w):
            raise ValueError(f"pseudo mask of size {(h, w)} on an image of size {(orig_h, orig_w)}")
        union |= decode_rle(counts, h, w).astype(np.uint8)
    canvas, _ = letterbox(union * np.uint8(255), canvas_h, canvas_w)
    return (canvas >= 128).astype(np.uint8)


@dataclass
class SegDiceAccumulator:
    """Val quality of predicted masks vs targets: pooled Dice, mean lesion-image Dice, normal-image FP share."""

    intersection: int = 0
    total: int = 0  # |pred| + |target| summed over images
    lesion_dices: list[float] = field(default_factory=list)
    normal_images: int = 0
    normal_with_prediction: int = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Adds a batch: pred and target (B, H, W) bool (or 0/1)."""
        pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
        inter = (pred & target).sum(axis=(1, 2))
        sizes = pred.sum(axis=(1, 2)) + target.sum(axis=(1, 2))
        self.intersection += int(inter.sum())
        self.total += int(sizes.sum())
        has_target = target.any(axis=(1, 2))
        self.lesion_dices += [2.0 * i / s for i, s in zip(inter[has_target], sizes[has_target], strict=True)]
        self.normal_images += int((~has_target).sum())
        self.normal_with_prediction += int(pred[~has_target].any(axis=(1, 2)).sum())

    def merge(self, other: SegDiceAccumulator) -> SegDiceAccumulator:
        """Adds another accumulator's images; returns self."""
        self.intersection += other.intersection
        self.total += other.total
        self.lesion_dices += other.lesion_dices
        self.normal_images += other.normal_images
        self.normal_with_prediction += other.normal_with_prediction
        return self

    def compute(self) -> dict[str, float]:
        """Returns val_dice (pooled; 1.0 when nothing is predicted nor expected), val_dice_lesion, val_fp_normal."""
        return {
            "val_dice": 1.0 if self.total == 0 else 2.0 * self.intersection / self.total,
            "val_dice_lesion": float(np.mean(self.lesion_dices)) if self.lesion_dices else float("nan"),
            "val_fp_normal": self.normal_with_prediction / self.normal_images if self.normal_images else float("nan"),
        }


def component_masks(prob: np.ndarray, threshold: float, min_area_px: int, max_components: int) -> list[tuple]:
    """Returns [(mask (H, W) bool, score)] of the 8-connected components of `prob >= threshold`, best first.

    The score is the component's mean probability; components under `min_area_px` pixels are dropped, and at
    most `max_components` are kept.
    """
    prob = np.asarray(prob, dtype=np.float32)
    labels, count = ndimage.label(prob >= threshold, structure=_EIGHT)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(prob), labels, index)
    scores = ndimage.mean(prob, labels, index)
    order = [k for k in np.argsort(-scores, kind="stable") if areas[k] >= max(min_area_px, 1)]
    return [(labels == index[k], float(scores[k])) for k in order[:max_components]]


def component_rows(prob: np.ndarray, meta: dict[str, Any], settings: Any) -> list[dict[str, Any]]:
    """Returns the mask rows (masks-table columns but split/folder/image_id) of one canvas probability map.

    Args:
        prob: (canvas_h, canvas_w) float pixel probabilities.
        meta: letterbox meta (orig_h, orig_w, new_h, new_w, pad_left, pad_top).
        settings: threshold, min_area_px and max_components (a SegTrainConfig).
    """
    y_prob = float(np.max(prob)) if prob.size else 0.0
    rows: list[dict[str, Any]] = []
    comps = component_masks(prob, settings.threshold, settings.min_area_px, settings.max_components)
    for mask, score in comps:
        orig = mask_to_original(mask, (0, 0), meta)
        if not orig.any():  # a sliver no original pixel centre maps into (or one on the letterbox padding)
            continue
        counts, h, w = encode_rle(orig)
        bbox = mask_bbox(orig) or (np.nan,) * 4
        rows.append(
            {
                "rank": len(rows),
                "rle_counts": counts,
                "rle_h": h,
                "rle_w": w,
                "area": int(orig.sum()),
                "mask_x1": bbox[0],
                "mask_y1": bbox[1],
                "mask_x2": bbox[2],
                "mask_y2": bbox[3],
                "score": score,
                "y_prob": y_prob,
            }
        )
    return rows
