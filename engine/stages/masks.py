"""`make masks`: pseudo boxes + stored heatmaps + the images -> one pseudo mask (COCO RLE) per box, with QC.

The images stream through ``engine.runtime.pipeline.image_stream`` (the decode + letterbox of `make cam`), so boxes,
heatmaps and images share the canvas frame; each mask is segmented on a crop around its box and mapped back
to original px. A box whose image is bad or missing becomes an `errors` row: boxes in = masks + errors.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.config_sections import MasksConfig
from engine.core.localization.columns import META_COLUMNS
from engine.core.masks.crops import CropBatch, crop_boxes, mask_bbox, mask_to_original, measure_mask, qc_flags
from engine.core.masks.segmenters import MODEL_SEGMENTERS, Segmenter, build_segmenter, check_segmenter, encode_rle
from engine.core.metrics.masks import mask_iou
from engine.core.model.cam import upsample_heatmap
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import TableWriter, read_table
from engine.stages._run import StageRun
from engine.stages._scoring import model_run_dir, selected_threshold

log = logging.getLogger(__name__)

FLOAT_COLUMNS = ("mask_x1", "mask_y1", "mask_x2", "mask_y2", "contrast", "cam_inside", "cam_ring",
                 "agreement_iou", "score")  # fmt: skip
Lookup = dict[str, dict[str, Any]]  # image_id -> boxes (K, 4) canvas, rank (K,), y_prob, heatmap, meta, split, folder


def _error_rows(entry: dict[str, Any], image_id: str, path: str, reason: str) -> list[dict[str, Any]]:
    """Returns one error row per box of an image."""
    return [{"image_id": image_id, "rank": int(r), "path": path, "error": reason, "split": entry["split"],
             "folder": entry["folder"]} for r in entry["rank"]]  # fmt: skip


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
        rows.append({
            "image_id": entry["image_id"], "rank": int(entry["rank"][k]), "rle_counts": counts, "rle_h": h,
            "rle_w": w, "area": int(orig.sum()), **dict(zip(FLOAT_COLUMNS[:4], bbox, strict=True)),
            "contrast": measures.contrast, "cam_inside": measures.cam_inside, "cam_ring": measures.cam_ring,
            "agreement_iou": np.nan if agreement is None else agreement, "score": float(scores[k]),
            "y_prob": entry["y_prob"], "segmenter": ctx["name"], "segmenter_version": ctx["version"],
            "qc_flags": ";".join(flags), "kept": not flags, "split": entry["split"], "folder": entry["folder"],
            "path": "", "error": "",
        })  # fmt: skip
    return rows


def segment_batch(batch: dict[str, np.ndarray], lookup: Lookup, segmenters: list[Segmenter], cfg: MasksConfig,
                  thr: float) -> dict[str, np.ndarray]:  # fmt: skip
    """Returns one row per box of the batch's images: a mask row, or an error row (`error` != "").

    Args:
        batch: image_stream output (image_id, path, canvas (B, H, W) uint8, error).
        lookup: the boxes, heatmap, letterbox meta and y_prob of each image (``run_masks``).
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
    names = ("image_id", "rank", "rle_counts", "rle_h", "rle_w", "area", *FLOAT_COLUMNS, "y_prob", "segmenter",
             "segmenter_version", "qc_flags", "kept", "split", "folder", "path", "error")  # fmt: skip
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


def segment_with(batch: dict[str, np.ndarray], lookup: Lookup, cfg: MasksConfig, thr: float) -> dict[str, np.ndarray]:
    """Ray Data task UDF for the classical segmenters (built per call: they hold no state)."""
    names = [cfg.segmenter, *([cfg.second] if cfg.second else [])]
    return segment_batch(batch, lookup, [build_segmenter(n, cfg) for n in names], cfg, thr)


class MaskStage:
    """Ray Data actor UDF for model segmenters: loads them once, then segments each batch's box crops."""

    def __init__(self, cfg: MasksConfig, lookup: Lookup, thr: float) -> None:
        """Builds the configured segmenters (model weights load here, once per actor)."""
        self.cfg, self.lookup, self.thr = cfg, lookup, thr
        self.segmenters = [build_segmenter(n, cfg) for n in (cfg.segmenter, *([cfg.second] if cfg.second else []))]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Returns ``segment_batch`` of the batch."""
        return segment_batch(batch, self.lookup, self.segmenters, self.cfg, self.thr)


def _inputs(cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Returns (boxes, heatmaps joined with meta, index rows) of the run."""
    boxes = read_table(cfg.run.dir, "boxes")
    heat = read_table(cfg.run.dir, "heatmaps")
    if heat.empty:
        raise ValueError(f"{cfg.run.dir}: no heatmaps table; run `make cam` first")
    meta = read_table(cfg.run.dir, "meta").drop(columns=["split", "folder"])
    frame = heat.merge(meta, on="image_id", how="inner")
    canvases = set(zip(frame["canvas_h"], frame["canvas_w"], strict=True))
    if canvases - {(cfg.canvas.height, cfg.canvas.width)}:
        expected = (cfg.canvas.height, cfg.canvas.width)
        raise ValueError(f"heatmaps were made on canvas {sorted(canvases)}, but canvas is {expected}: "
                         "run `make masks` with the config of `make cam`")  # fmt: skip
    return boxes.sort_values(["image_id", "rank"], kind="stable"), frame, read_table(cfg.run.dir, "index")


def build_lookup(boxes: pd.DataFrame, frame: pd.DataFrame) -> Lookup:
    """Returns, per image with boxes and a heatmap, what segmenting its boxes needs."""
    heat = frame.set_index("image_id")
    lookup: Lookup = {}
    for image_id, group in boxes.groupby("image_id", sort=True):
        row = heat.loc[image_id]
        lookup[str(image_id)] = {
            "boxes": group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32), "rank": group["rank"].to_numpy(),
            "y_prob": float(group["y_prob"].iloc[0]), "split": group["split"].iloc[0],
            "folder": group["folder"].iloc[0], "meta": {c: int(row[c]) for c in META_COLUMNS if c != "scale"},
            "heatmap": np.asarray(row["heatmap"], dtype=np.float16).reshape(int(row["heatmap_h"]), -1),
        }  # fmt: skip
    return lookup


def _stream(cfg: Config, rows: pd.DataFrame, lookup: Lookup, thr: float) -> Any:
    from ray.data import ActorPoolStrategy

    from engine.runtime.pipeline import image_stream

    mcfg = cfg.masks
    images = image_stream(rows, cfg)
    if {mcfg.segmenter, mcfg.second} & set(MODEL_SEGMENTERS):
        return images.map_batches(MaskStage, fn_constructor_args=(mcfg, lookup, thr), batch_size=mcfg.batch_images,
                                  compute=ActorPoolStrategy(size=mcfg.actors), num_gpus=mcfg.num_gpus,
                                  batch_format="numpy")  # fmt: skip
    udf = partial(segment_with, lookup=lookup, cfg=mcfg, thr=thr)
    return images.map_batches(udf, batch_size=mcfg.batch_images, num_cpus=1, batch_format="numpy")


def _write(writer: TableWriter, out: dict[str, np.ndarray], summary: StageSummary) -> None:
    """Splits one stream batch into masks rows and errors rows."""
    bad = out["error"] != ""
    ok = {k: v[~bad] for k, v in out.items()}
    ok["qc_flags"] = [flags.split(";") if flags else [] for flags in ok["qc_flags"]]
    writer.write("masks", ok)
    summary.rows_ok += int((~bad).sum())
    errors = {k: v[bad] for k, v in out.items()}
    reasons = [f"{reason} (box rank {rank})" for reason, rank in zip(errors["error"], errors["rank"], strict=True)]
    write_errors(writer, errors["path"], errors["image_id"], reasons, errors["split"], summary)
    summary.extra.setdefault("qc_flags", Counter()).update(f for flags in ok["qc_flags"] for f in flags)


def _unmatched(writer: TableWriter, boxes: pd.DataFrame, known: set[str], summary: StageSummary) -> pd.DataFrame:
    """Writes an error row for each box whose image has no heatmap/meta or no index row; returns the others."""
    lost = ~boxes["image_id"].isin(known)
    reasons = [f"no_heatmap: image {i} has boxes but no heatmaps/meta/index row (box rank {r})"
               for i, r in zip(boxes.loc[lost, "image_id"], boxes.loc[lost, "rank"], strict=True)]  # fmt: skip
    write_errors(writer, [None] * len(reasons), boxes.loc[lost, "image_id"], reasons, boxes.loc[lost, "split"], summary)
    return boxes[~lost]


def run_masks(cfg: Config) -> StageSummary:
    """Segments every pseudo box of the run -> tables masks (one row per box) and errors; no model by default."""
    from engine.runtime.pipeline import init_ray, iter_results

    mcfg = cfg.masks
    for name in (mcfg.segmenter, *([mcfg.second] if mcfg.second else [])):
        check_segmenter(name, mcfg)  # fail fast: unknown name, missing package or checkpoint
    thr = selected_threshold(model_run_dir(cfg)) if mcfg.min_prob == "threshold" else float("-inf")
    boxes, frame, index = _inputs(cfg)
    with StageRun(cfg, "masks", ("masks", "errors"), replace=("masks", "errors")) as run:
        summary, writer = run.summary, run.writer
        summary.rows_in = len(boxes)
        boxes = _unmatched(writer, boxes, set(frame["image_id"]) & set(index["image_id"]), summary)
        lookup = build_lookup(boxes, frame)
        ids = sorted(lookup)
        rows = index[index["image_id"].isin(ids)].merge(boxes.groupby("image_id")["split"].first().reset_index())
        if len(rows):
            init_ray(cfg.ray)
        for start in range(0, len(rows), max(mcfg.chunk_images, 1)):
            chunk = rows.iloc[start : start + mcfg.chunk_images]
            part = {i: lookup[i] for i in chunk["image_id"]}
            for out in iter_results(_stream(cfg, chunk, part, thr)):
                _write(writer, out, summary)
        run.commit()
        summary.extra.update({"segmenter": mcfg.segmenter, "images_with_boxes": len(lookup),
                              "images_without_boxes": int((~frame["image_id"].isin(boxes["image_id"])).sum()),
                              "qc_flags": dict(summary.extra.get("qc_flags", {}))})  # fmt: skip
    return summary
