"""The batch UDFs of `make masks`: each image's box crops -> one pseudo mask row per box (or an error row).

`segment_with` is the decode tasks' UDF for the classical segmenters (they hold no state); `MaskStage` the actor
UDF for the model segmenters (their weights load once per actor).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from engine.config_sections import MasksConfig
from engine.core.masks.crops import CropBatch, crop_boxes, mask_bbox, mask_to_original, measure_mask, qc_flags
from engine.core.masks.registry import build_segmenter
from engine.core.masks.segmenters import Segmenter, encode_rle
from engine.core.metrics.masks import mask_iou
from engine.core.model.cam import upsample_heatmap

log = logging.getLogger(__name__)

FLOAT_COLUMNS = (
    "mask_x1",
    "mask_y1",
    "mask_x2",
    "mask_y2",
    "contrast",
    "cam_inside",
    "cam_ring",
    "agreement_iou",
    "score",
)
Lookup = dict[str, dict[str, Any]]  # image_id -> boxes (K, 4) canvas, rank (K,), y_prob, heatmap, meta, split, folder


def _error_rows(entry: dict[str, Any], image_id: str, path: str, reason: str) -> list[dict[str, Any]]:
    """Returns one error row per box of an image."""
    return [
        {
            "image_id": image_id,
            "rank": int(r),
            "path": path,
            "error": reason,
            "split": entry["split"],
            "folder": entry["folder"],
        }
        for r in entry["rank"]
    ]


def _segment_all(segmenters: list[Segmenter], crops: CropBatch) -> list[tuple[np.ndarray, np.ndarray]]:
    return [s.segment(crops.images, crops.boxes, crops.peaks, crops.heat) for s in segmenters]


def _mask_rows(entry: dict, crops: CropBatch, results: list, cfg: MasksConfig, ctx: dict) -> list[dict[str, Any]]:
    """Returns the masks-table rows of one image's crops: RLE in original px, measures, QC flags."""
    (masks, scores), second = results[0], (results[1][0] if len(results) > 1 else None)
    rows = []
    for k, mask in enumerate(masks):
        orig = mask_to_original(mask, tuple(crops.origins[k]), entry["meta"])
        counts, h, w = encode_rle(orig)
        bbox = mask_bbox(orig) or (np.nan,) * 4
        measures = measure_mask(crops.images[k], crops.heat[k], mask, crops.boxes[k], crops.peaks[k], cfg)
        agreement = mask_iou(mask, second[k]) if second is not None else None
        flags = qc_flags(mask, crops.boxes[k], crops.peaks[k], measures, cfg, entry["y_prob"] < ctx["thr"], agreement)
        rows.append(
            {
                "image_id": entry["image_id"],
                "rank": int(entry["rank"][k]),
                "rle_counts": counts,
                "rle_h": h,
                "rle_w": w,
                "area": int(orig.sum()),
                **dict(zip(FLOAT_COLUMNS[:4], bbox, strict=True)),
                "contrast": measures.contrast,
                "cam_inside": measures.cam_inside,
                "cam_ring": measures.cam_ring,
                "agreement_iou": np.nan if agreement is None else agreement,
                "score": float(scores[k]),
                "y_prob": entry["y_prob"],
                "segmenter": ctx["name"],
                "segmenter_version": ctx["version"],
                "qc_flags": ";".join(flags),
                "kept": not flags,
                "split": entry["split"],
                "folder": entry["folder"],
                "path": "",
                "error": "",
            }
        )
    return rows


def segment_batch(
    batch: dict[str, np.ndarray], lookup: Lookup, segmenters: list[Segmenter], cfg: MasksConfig, thr: float
) -> dict[str, np.ndarray]:
    """Returns one row per box of the batch's images: a mask row, or an error row (`error` != "").

    Args:
        batch: image_stream output (image_id, path, canvas (B, H, W) uint8, error).
        lookup: the boxes, heatmap, letterbox meta and y_prob of each image (engine/stages/masks.py build_lookup).
        segmenters: the configured segmenter, then the optional second one (agreement check).
        cfg: masks settings.
        thr: probability threshold for the below_threshold flag (-inf: no check).
    """
    ctx = {"thr": thr, "name": segmenters[0].name, "version": segmenters[0].version}
    rows: list[dict[str, Any]] = []
    for i, image_id in enumerate(batch["image_id"]):
        entry = {**lookup[str(image_id)], "image_id": str(image_id)}
        if batch["error"][i] != "":
            rows += _error_rows(entry, str(image_id), str(batch["path"][i]), str(batch["error"][i]))
            continue
        canvas = batch["canvas"][i]
        heat = upsample_heatmap(entry["heatmap"].astype(np.float32), canvas.shape[0], canvas.shape[1])
        crops = crop_boxes(canvas, heat, entry["boxes"], cfg)
        try:
            rows += _mask_rows(entry, crops, _segment_all(segmenters, crops), cfg, ctx)
        except Exception as exc:  # a segmenter failing on one image must not end the stream
            log.warning("segmenting %s failed: %s", image_id, exc)
            reason = f"segment_failed: {type(exc).__name__}: {exc}"
            rows += _error_rows(entry, str(image_id), str(batch["path"][i]), reason)
    return _columns(rows)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Returns rows as numpy columns (strings as object arrays, missing values NaN / "")."""
    names = (
        "image_id",
        "rank",
        "rle_counts",
        "rle_h",
        "rle_w",
        "area",
        *FLOAT_COLUMNS,
        "y_prob",
        "segmenter",
        "segmenter_version",
        "qc_flags",
        "kept",
        "split",
        "folder",
        "path",
        "error",
    )
    numeric = {"rank": np.int16, "rle_h": np.int32, "rle_w": np.int32, "area": np.int64, "kept": bool}
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in numeric:
            out[name] = np.array([row.get(name, 0) for row in rows], dtype=numeric[name])
        elif name in FLOAT_COLUMNS or name == "y_prob":
            out[name] = np.array([row.get(name, np.nan) for row in rows], dtype=np.float32)
        else:
            out[name] = np.array([str(row.get(name, "")) for row in rows], dtype=object)
    return out


def segmenter_names(cfg: MasksConfig) -> tuple[str, ...]:
    """Returns the configured segmenter, then the optional second one (`masks.second`)."""
    return (cfg.segmenter, *([cfg.second] if cfg.second else []))


def segment_with(batch: dict[str, np.ndarray], lookup: Lookup, cfg: MasksConfig, thr: float) -> dict[str, np.ndarray]:
    """Ray Data task UDF for the classical segmenters (built per call: they hold no state)."""
    return segment_batch(batch, lookup, [build_segmenter(n, cfg) for n in segmenter_names(cfg)], cfg, thr)


class MaskStage:
    """Ray Data actor UDF for model segmenters: loads them once, then segments each batch's box crops."""

    def __init__(self, cfg: MasksConfig, lookup: Lookup, thr: float) -> None:
        """Builds the configured segmenters (model weights load here, once per actor)."""
        from engine.io.checkpoints import build_segmenter_from_files

        self.cfg, self.lookup, self.thr = cfg, lookup, thr
        self.segmenters = [build_segmenter_from_files(n, cfg) for n in segmenter_names(cfg)]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Returns ``segment_batch`` of the batch."""
        return segment_batch(batch, self.lookup, self.segmenters, self.cfg, self.thr)
