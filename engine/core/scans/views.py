"""The two views of one patient: the anterior image mirrored for the model, and a place in one view found in the other.

Mirroring (stated once for the whole engine): a whole-body ANT image shows the patient from the front, so the
patient's left lies on the viewer's right; a POST image shows the patient from behind, the patient's left on the
viewer's left. The model sees every ANT canvas flipped left-right (column ``c`` -> ``W - 1 - c``), so that the
patient's left lies on the viewer's left in both views. Only the model's input is flipped: its CAM (and refined
peaks) are flipped back before anything is stored, so every heatmap, spot and box on disk stays in the image's own
canvas and original pixels. In continuous pixel coordinates (pixel ``c`` covers ``[c, c + 1)``) the flip is
``x -> W - x``.

Matching place across views: a point ``(x, y)`` of view A (original px) lies at ``(W_B - x * W_B / W_A, y + dy)``
in view B, where ``dy`` is the vertical offset of the two bodies, estimated per patient from their body boxes (the
mean of the top and bottom offsets). A pseudo box of one view is *confirmed* when the other view holds a pseudo box
whose centre lies inside the mapped box, grown by ``tolerance`` of its side each way (``cross_view_matches``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIRRORED_VIEWS = ("ANT",)  # index `view` values whose canvas the model sees flipped left-right


def mirrored(views: np.ndarray) -> np.ndarray:
    """Returns the bool mask of the rows whose view the model sees mirrored (ANT)."""
    return np.isin(np.asarray(views, dtype=object), MIRRORED_VIEWS)


def mirror_rows(maps: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Returns (N, ..., W) arrays with the rows of `flip` reversed along the last axis (a copy; the input is kept).

    Works on numpy arrays and on torch tensors (``torch.flip`` of the selected rows)."""
    flip = np.asarray(flip, dtype=bool)
    if not flip.any():
        return maps
    if isinstance(maps, np.ndarray):
        out = maps.copy()
        out[flip] = maps[flip][..., ::-1]
        return out
    import torch

    index = torch.as_tensor(np.nonzero(flip)[0], device=maps.device)
    out = maps.clone()
    out[index] = torch.flip(maps[index], dims=(-1,))
    return out


def unmirror_centres(centres: np.ndarray, flip: np.ndarray, width: int) -> np.ndarray:
    """Returns (N, h, w, 2) canvas (x, y) cell centres of mirrored rows in the unmirrored canvas: the grid reversed
    along w and ``x -> width - x``. Rows not in `flip` are returned as they are."""
    flip = np.asarray(flip, dtype=bool)
    if not flip.any():
        return centres
    out = centres.copy()
    turned = centres[flip][:, :, ::-1].copy()
    turned[..., 0] = width - turned[..., 0]
    out[flip] = turned
    return out


@dataclass(frozen=True)
class ViewPlacement:
    """Where one view's body lies in its original image: image width and the body's top and bottom rows (px)."""

    width: float
    top: float
    bottom: float


def vertical_offset(a: ViewPlacement, b: ViewPlacement) -> float:
    """Returns dy (px) such that row y of view A lies at row y + dy of view B: the mean of the bodies' top and
    bottom offsets (0 when either body box is unknown)."""
    values = (a.top, a.bottom, b.top, b.bottom)
    if not all(np.isfinite(values)):
        return 0.0
    return ((b.top - a.top) + (b.bottom - a.bottom)) / 2.0


def to_other_view(boxes: np.ndarray, a: ViewPlacement, b: ViewPlacement) -> np.ndarray:
    """Returns (N, 4) original-px boxes of view A placed in view B: mirrored left-right, scaled to B's width and
    shifted by the bodies' vertical offset (x2/y2 stay exclusive; x1 < x2 is kept)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = b.width / a.width
    dy = vertical_offset(a, b)
    x1 = b.width - boxes[:, 2] * scale
    x2 = b.width - boxes[:, 0] * scale
    return np.stack([x1, boxes[:, 1] + dy, x2, boxes[:, 3] + dy], axis=1)


def cross_view_matches(
    boxes_a: np.ndarray, boxes_b: np.ndarray, a: ViewPlacement, b: ViewPlacement, tolerance: float = 0.25
) -> np.ndarray:
    """Returns, per box of view A, the index of the box of view B that confirms it (-1: none).

    A box of B confirms a box of A when its centre lies inside A's box placed in B (``to_other_view``), grown by
    `tolerance` x its side on each side; among several, the one whose centre is nearest wins.
    """
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    out = np.full(len(boxes_a), -1, dtype=np.int64)
    if not len(boxes_a) or not len(boxes_b):
        return out
    placed = to_other_view(boxes_a, a, b)
    grow_x = tolerance * (placed[:, 2] - placed[:, 0])
    grow_y = tolerance * (placed[:, 3] - placed[:, 1])
    cx = (boxes_b[:, 0] + boxes_b[:, 2]) / 2
    cy = (boxes_b[:, 1] + boxes_b[:, 3]) / 2
    inside = (
        (cx[None, :] >= placed[:, :1] - grow_x[:, None])
        & (cx[None, :] < placed[:, 2:3] + grow_x[:, None])
        & (cy[None, :] >= placed[:, 1:2] - grow_y[:, None])
        & (cy[None, :] < placed[:, 3:4] + grow_y[:, None])
    )
    distance = np.hypot(
        cx[None, :] - (placed[:, :1] + placed[:, 2:3]) / 2, cy[None, :] - (placed[:, 1:2] + placed[:, 3:4]) / 2
    )
    distance = np.where(inside, distance, np.inf)
    nearest = distance.argmin(axis=1)
    found = np.isfinite(distance[np.arange(len(boxes_a)), nearest])
    out[found] = nearest[found]
    return out


CROSS_VIEW_FOLDERS = ("wholeBodyANT", "wholeBodyPOST")  # the folders whose images pair up by patient


def placement(image: dict) -> ViewPlacement:
    """Returns the ViewPlacement of one image row: its letterbox meta (orig_w, orig_h, new_h, pad_top) and its
    body box on the canvas (body_y1_canvas, body_y2_canvas; NaN when unknown), mapped to original rows."""
    per_row = float(image["orig_h"]) / float(image["new_h"])
    top = (float(image["body_y1_canvas"]) - float(image["pad_top"])) * per_row
    bottom = (float(image["body_y2_canvas"]) - float(image["pad_top"])) * per_row
    return ViewPlacement(width=float(image["orig_w"]), top=top, bottom=bottom)


def cross_view_columns(boxes: pd.DataFrame, images: pd.DataFrame, tolerance: float = 0.25) -> dict[str, np.ndarray]:
    """Returns the `boxes` columns cross_view (float32) and cross_rank (int16), aligned with `boxes`' rows.

    Args:
        boxes: box rows (image_id, rank, score, x1_orig, y1_orig, x2_orig, y2_orig).
        images: one row per scored image: image_id, patient_id, folder, and its letterbox meta and canvas body box
            (``placement``).
        tolerance: how far (a share of the box's side) a confirming box's centre may lie outside the placed box.

    cross_view is the score of the other view's box that confirms the box (``cross_view_matches``), 0 when the
    other view's boxes do not, NaN when the patient's other whole-body view was not scored (or the box is not on
    a whole-body image); cross_rank is that box's rank, -1 without one.
    """
    score = np.full(len(boxes), np.nan, dtype=np.float32)
    rank = np.full(len(boxes), -1, dtype=np.int16)
    if boxes.empty or images.empty:
        return {"cross_view": score, "cross_rank": rank}
    whole = images[images["folder"].isin(CROSS_VIEW_FOLDERS)].drop_duplicates("image_id")
    whole = whole.drop_duplicates(["patient_id", "folder"])  # a repeated view of a patient: its first image
    pairs = whole.groupby("patient_id").filter(lambda g: len(g) == 2)
    position = pd.Series(np.arange(len(boxes)), index=boxes.index)
    by_image = {image_id: rows.index for image_id, rows in boxes.groupby("image_id", sort=False)}
    coords = ["x1_orig", "y1_orig", "x2_orig", "y2_orig"]
    for _, pair in pairs.groupby("patient_id", sort=False):
        first, second = pair.iloc[0].to_dict(), pair.iloc[1].to_dict()
        for a, b in ((first, second), (second, first)):
            rows_a = by_image.get(a["image_id"])
            if rows_a is None:
                continue
            rows_b = by_image.get(b["image_id"], pd.Index([]))
            box_b = boxes.loc[rows_b]
            found = cross_view_matches(
                boxes.loc[rows_a, coords].to_numpy(), box_b[coords].to_numpy(), placement(a), placement(b), tolerance
            )
            at = position[rows_a].to_numpy()
            hit = found >= 0
            score[at] = 0.0
            score[at[hit]] = box_b["score"].to_numpy()[found[hit]]
            rank[at[hit]] = box_b["rank"].to_numpy()[found[hit]]
    return {"cross_view": score, "cross_rank": rank}
