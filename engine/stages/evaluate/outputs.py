"""Files `make evaluate` writes beside its table: strict JSON documents and the COCO exports, one pair per split.

Per scored split (every split of the run's `heatmaps`, e.g. test and val), under ``<run.dir>/prompts/``:

* ``coco_<split>.json``: the pseudo boxes as COCO detections (``score``; ``bbox`` [x, y, w, h] in original px;
  ``segmentation`` the kept pseudo mask's COCO RLE from the `masks` table, ``[]`` without one). When `make
  evaluate` tuned the boxes (``peaks_tuned``), they are the tuned boxes on the images with y_prob >= the tuned
  cutoff; otherwise the run's `boxes` table. ``info`` says which, with the data root, box parameters, run dir, date.
* ``coco_<split>_gt.json``: the `gt_boxes` of the same images (categories Abnormal = 1, Normal = 2).

Both files list the same images with the same ids (``split``, ``y_prob``, ``image_key`` = image_id), so
``COCO(gt).loadRes(predictions["annotations"])`` and ``COCOeval`` pair them directly.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow.dataset as pads

from engine.config import Config
from engine.core.localization.box_methods import ORIG_COLUMNS, recompute_boxes, valid_heatmaps
from engine.core.localization.boxes import BoxParams
from engine.io.fs import write_run_json
from engine.io.tables import read_table
from engine.stages._population import scored_frame

CATEGORIES = [
    {"id": 1, "name": "Abnormal", "supercategory": "uptake"},
    {"id": 2, "name": "Normal", "supercategory": "uptake"},
]
CATEGORY_IDS = {c["name"]: c["id"] for c in CATEGORIES}  # pseudo boxes are Abnormal candidates
LICENSES = [{"id": 1, "name": "unspecified: the licence of the source data set applies", "url": ""}]


def _number(value: Any, digits: int = 4) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), digits)


def coco_images(images: pd.DataFrame) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Returns the COCO `images` list (ids 1.. in image_id order) and image_id -> id.

    Args:
        images: image_id, path (relative to data.root), orig_w, orig_h, split, y_prob.
    """
    images = images.drop_duplicates("image_id").sort_values("image_id").reset_index(drop=True)
    ids = {str(image_id): n + 1 for n, image_id in enumerate(images["image_id"])}
    listed = [
        {
            "id": ids[str(r.image_id)],
            "file_name": r.path,
            "width": int(r.orig_w),
            "height": int(r.orig_h),
            "license": 1,
            "image_key": r.image_id,
            "split": r.split,
            "y_prob": _number(r.y_prob, 6),
        }
        for r in images.itertuples(index=False)
    ]
    return listed, ids


def _xywh(x1: float, y1: float, x2: float, y2: float) -> tuple[list[float | None], float | None]:
    width, height = float(x2 - x1), float(y2 - y1)
    return [_number(x1, 2), _number(y1, 2), _number(width, 2), _number(height, 2)], _number(width * height, 2)


def prediction_annotations(boxes: pd.DataFrame, ids: dict[str, int], segments: dict) -> list[dict[str, Any]]:
    """Returns one COCO detection per pseudo box (category Abnormal), in original px, rank order per image.

    Args:
        boxes: image_id, rank, x1_orig..y2_orig (x2/y2 exclusive), score, score_raw, y_prob.
        ids: image_id -> COCO image id (`coco_images`).
        segments: (image_id, rank) -> {"segmentation": RLE, "mask_area": int} (`mask_segments`).
    """
    out = []
    for r in boxes.sort_values(["image_id", "rank"], kind="stable").itertuples(index=False):
        bbox, area = _xywh(r.x1_orig, r.y1_orig, r.x2_orig, r.y2_orig)
        out.append(
            {
                "id": len(out) + 1,
                "image_id": ids[str(r.image_id)],
                "category_id": CATEGORY_IDS["Abnormal"],
                "iscrowd": 0,
                "bbox": bbox,
                "area": area,
                "score": _number(r.score),
                "score_raw": _number(r.score_raw),
                "rank": int(r.rank),
                "y_prob": _number(r.y_prob),
                "segmentation": [],
                **segments.get((str(r.image_id), int(r.rank)), {}),
            }
        )
    return out


def gt_annotations(gt: pd.DataFrame, ids: dict[str, int]) -> list[dict[str, Any]]:
    """Returns one COCO annotation per `gt_boxes` row of the listed images (Abnormal 1, Normal 2), original px."""
    rows = gt[gt["image_id"].astype(str).isin(ids.keys()) & gt["cls"].isin(CATEGORY_IDS.keys())]
    out = []
    for r in rows.sort_values(["image_id", "cls", "x1", "y1"], kind="stable").itertuples(index=False):
        bbox, area = _xywh(r.x1, r.y1, r.x2, r.y2)
        out.append(
            {
                "id": len(out) + 1,
                "image_id": ids[str(r.image_id)],
                "category_id": CATEGORY_IDS[r.cls],
                "iscrowd": 0,
                "bbox": bbox,
                "area": area,
                "segmentation": [],
            }
        )
    return out


def mask_segments(masks: pd.DataFrame, boxes: pd.DataFrame, stored: pd.DataFrame) -> dict:
    """Returns (image_id, rank of `boxes`) -> COCO RLE `segmentation` + `mask_area` of each kept mask.

    A mask belongs to the stored pseudo box (`stored`, the `boxes` table) it was segmented in. A box of `boxes`
    carries it when it is that box (same rank, same centre) or, for recomputed (tuned) boxes, a box around the
    same peak: the same centre within 0.5 px.
    """
    if masks.empty or boxes.empty:
        return {}
    kept = masks[masks["kept"].fillna(False).astype(bool)][["image_id", "rank", "rle_counts", "rle_h", "rle_w", "area"]]
    with_box = kept.merge(stored[["image_id", "rank", *ORIG_COLUMNS]], on=["image_id", "rank"], how="inner")
    centres = {}
    for r in with_box.itertuples(index=False):
        key = (str(r.image_id), round((r.x1_orig + r.x2_orig) / 2 * 2), round((r.y1_orig + r.y2_orig) / 2 * 2))
        centres[key] = {
            "segmentation": {"size": [int(r.rle_h), int(r.rle_w)], "counts": str(r.rle_counts)},
            "mask_area": int(r.area),
        }
    out = {}
    for r in boxes.itertuples(index=False):
        key = (str(r.image_id), round((r.x1_orig + r.x2_orig) / 2 * 2), round((r.y1_orig + r.y2_orig) / 2 * 2))
        if key in centres:
            out[(str(r.image_id), int(r.rank))] = centres[key]
    return out


def _export_boxes(cfg: Config, frame: pd.DataFrame, stored: pd.DataFrame, tuning: dict) -> tuple[pd.DataFrame, dict]:
    """Returns the boxes to export for one split's scored frame and the `info` lines on where they come from.

    `box_params` lists the parameter sets of the boxes (the `boxes` table's columns, or the tuned choice).
    """
    chosen = tuning.get("chosen")
    if not chosen:
        found = [c for c in ("box_size", "nms_iou", "boxes_max", "min_score") if c in stored]
        return stored, {
            "boxes_from": "the run's boxes table (make cam / make boxes), every box",
            "box_params": stored[found].drop_duplicates().to_dict("records"),
            "cutoff": None,
            "tuned_on": None,
        }
    params = BoxParams(
        size=chosen["size"], max_boxes=cfg.boxes.max, nms_iou=chosen["nms_iou"], min_score=chosen["min_score"]
    )
    boxes = recompute_boxes(valid_heatmaps(frame)[0], params)
    boxes = boxes[boxes["y_prob"].astype(float) >= chosen["cutoff"]] if len(boxes) else boxes
    return boxes, {
        "boxes_from": f"peaks_tuned: box settings and probability cutoff chosen by make evaluate on "
        f"split {tuning['split']} ({tuning['objective']}); boxes only on images with y_prob >= cutoff",
        "box_params": [asdict(params)],
        "cutoff": chosen["cutoff"],
        "tuned_on": tuning["split"],
    }


def export_coco(cfg: Config, tuning: dict[str, Any]) -> dict[str, Any]:
    """Writes `coco_<split>.json` and `coco_<split>_gt.json` per split of the run's heatmaps (module doc).

    Args:
        cfg: the run's config (data.root, run.dir, boxes.max).
        tuning: `make evaluate`'s tuning note; with a "chosen" entry the tuned boxes and cutoff are exported.

    Returns:
        split -> the two paths and the counts of images, annotations and annotations with a segmentation.
    """
    index, gt = read_table(cfg.run.dir, "index"), read_table(cfg.run.dir, "gt_boxes")
    splits = sorted(set(read_table(cfg.run.dir, "meta")["split"].astype(str)))
    created = datetime.now(UTC).isoformat(timespec="seconds")
    out = {}
    for split in splits:
        frame = scored_frame(cfg.run.dir, split, index)
        stored = read_table(cfg.run.dir, "boxes", pads.field("split") == split)
        stored = stored[stored["image_id"].isin(frame["image_id"])]
        boxes, origin = _export_boxes(cfg, frame, stored, tuning)
        images, ids = coco_images(frame)
        masks = read_table(cfg.run.dir, "masks", pads.field("split") == split)
        info = {
            "description": f"BS-80K CAM pseudo boxes, split {split}, original-image px, bbox [x, y, w, h]",
            "version": "1",
            "year": int(created[:4]),
            "contributor": "",
            "url": "",
            "date_created": created,
            "data_root": cfg.data.root,
            "run_dir": cfg.run.dir,
            "split": split,
            **origin,
            "segmentation": "kept pseudo masks of make masks (COCO RLE) where they exist, else []",
        }
        predictions = prediction_annotations(boxes, ids, mask_segments(masks, boxes, stored))
        documents = {
            "predictions": (f"prompts/coco_{split}.json", predictions),
            "ground_truth": (f"prompts/coco_{split}_gt.json", gt_annotations(gt, ids)),
        }
        out[split] = {
            "images": len(images),
            "annotations": len(predictions),
            "with_segmentation": sum(bool(a["segmentation"]) for a in predictions),
        }
        for kind, (relative, listed) in documents.items():
            document = {
                "info": {**info, "kind": kind},
                "licenses": LICENSES,
                "images": images,
                "annotations": listed,
                "categories": CATEGORIES,
            }
            out[split][kind] = write_run_json(cfg.run.dir, relative, document)
    return out
