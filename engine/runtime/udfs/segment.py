"""SegmentStage: the actor UDF of `make segment` — the trained segmentation network's component mask rows per batch.

Each canvas becomes a probability map, its components COCO RLE rows in original px
(``engine.core.segnet.arrays.component_rows``); an image without a component, or with an error, one `rank = -1` row.
Every row also carries its image's probability map, pooled to uint8 (``engine.core.masks.scoremaps.pool_probability``,
column `prob`): the stage writes it once per image to table `seg_probs`, the network's continuous map for PxAP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.config_sections import SegTrainConfig
from engine.core.masks.scoremaps import pool_probability
from engine.core.segnet.arrays import SEGMENTER, component_rows

MASK_COLUMNS = ("rank", "rle_h", "rle_w", "area", "mask_x1", "mask_y1", "mask_x2", "mask_y2", "score", "y_prob")
NULL_COLUMNS = ("contrast", "cam_inside", "cam_ring", "agreement_iou")  # no box prompt, no CAM
META = ("orig_h", "orig_w", "new_h", "new_w", "pad_left", "pad_top")


@dataclass(frozen=True)
class SegmentSettings:
    """What a segment actor needs (built by the stage from `run.dir`, `segtrain.*`, `train.*` and `infer.num_cpus`)."""

    run_dir: str
    seg: SegTrainConfig
    use_gpu: bool = False
    amp: bool = True
    cpu_threads: int = 1


def image_rows(batch: dict[str, np.ndarray], probs: np.ndarray, seg: SegTrainConfig, version: str) -> list[dict]:
    """Returns one row per component of each ok image, one `rank = -1` row per image without one or with an error.

    Args:
        batch: image_stream output (image_id, split, folder, path, error, letterbox meta).
        probs: (B, H, W) float pixel probabilities (rows with an error are ignored).
        seg: threshold, min_area_px, max_components.
        version: the segmenter version recorded with the rows.
    """
    out = []
    for i, image_id in enumerate(batch["image_id"]):
        base = {
            "image_id": str(image_id),
            "split": str(batch["split"][i]),
            "folder": str(batch["folder"][i]),
            "path": str(batch["path"][i]),
            "error": str(batch["error"][i]),
            "segmenter": SEGMENTER,
            "segmenter_version": version,
        }
        rows = [] if base["error"] else component_rows(probs[i], {k: int(batch[k][i]) for k in META}, seg)
        out += [{**base, **row} for row in rows] or [{**base, "rank": -1}]
    return out


def row_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Returns the rows as numpy columns of the seg_masks table (+ path, error); missing values NaN / ""."""
    ints = {"rank": np.int16, "rle_h": np.int32, "rle_w": np.int32, "area": np.int64}
    out: dict[str, np.ndarray] = {}
    for name in (*MASK_COLUMNS, *NULL_COLUMNS):
        dtype = ints.get(name, np.float32)
        out[name] = np.array([row.get(name, 0 if name in ints else np.nan) for row in rows], dtype=dtype)
    for name in ("image_id", "rle_counts", "segmenter", "segmenter_version", "split", "folder", "path", "error"):
        out[name] = np.array([row.get(name, "") for row in rows], dtype=object)
    out["kept"] = np.ones(len(rows), dtype=bool)
    return out


def prob_column(image_ids: np.ndarray, row_ids: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Returns the (N, h, w) uint8 pooled probability map of each of N rows' image (rows name their image by id).

    Args:
        image_ids: (B,) the batch's image ids, in the order of `probs`.
        row_ids: (N,) the image id of each output row (``image_rows``).
        probs: (B, H, W) float pixel probabilities (zeros for an image with an error).
    """
    pooled = np.stack([pool_probability(p) for p in probs]) if len(probs) else np.zeros((0, 1, 1), np.uint8)
    where = {str(image_id): i for i, image_id in enumerate(image_ids)}
    return pooled[[where[str(image_id)] for image_id in row_ids]] if len(row_ids) else pooled[:0]


class SegmentStage:
    """Ray Data actor UDF: uint8 canvases -> the network's component mask rows (see ``image_rows``)."""

    def __init__(self, settings: SegmentSettings) -> None:
        """Loads the run's best segnet once per actor."""
        import torch

        from engine.io.checkpoints import load_segnet

        self.torch, self.settings = torch, settings
        self.device = torch.device("cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, settings.cpu_threads))
        model, info = load_segnet(settings.run_dir)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.version = f"{info['arch']}/{info['encoder']}/epoch-{info['epoch']}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Returns ``row_columns`` of ``image_rows`` of the batch, with each row's pooled map (``prob_column``)."""
        from engine.core.model.classifier import bf16_autocast, normalize_canvas

        torch = self.torch
        ok = np.asarray(batch["error"]) == ""
        probs = np.zeros(batch["canvas"].shape, dtype=np.float32)
        if ok.any():
            canvas = torch.from_numpy(np.ascontiguousarray(batch["canvas"][ok])).to(self.device)
            with torch.inference_mode(), bf16_autocast(self.device.type == "cuda" and self.settings.amp):
                logits = self.model(normalize_canvas(canvas))
            probs[ok] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        columns = row_columns(image_rows(batch, probs, self.settings.seg, self.version))
        n, (canvas_h, canvas_w) = len(columns["image_id"]), batch["canvas"].shape[1:]
        return columns | {
            "prob": prob_column(batch["image_id"], columns["image_id"], probs),
            "canvas_h": np.full(n, canvas_h, dtype=np.int16),
            "canvas_w": np.full(n, canvas_w, dtype=np.int16),
        }
