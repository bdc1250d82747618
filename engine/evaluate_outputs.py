"""Files `make evaluate` writes beside its table: strict JSON documents and the COCO export of the pseudo boxes."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.evaluate_methods import coco_document
from engine.tables import read_table, resolve_fs


def write_json(run_dir: str, relative: str, document: dict) -> str:
    """Writes `document` as strict JSON to `<run_dir>/<relative>`; returns the path."""
    fs, root = resolve_fs(run_dir)
    path = f"{root}/{relative}"
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(json_safe(document), indent=1, allow_nan=False).encode())
    return path


def json_safe(value: Any) -> Any:
    """Returns `value` with numpy scalars as Python numbers and NaN/inf as null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def export_coco(cfg: Config, index: pd.DataFrame) -> dict[str, Any]:
    """Writes every image of the run's heatmaps and every row of its `boxes` table as COCO JSON (box prompts).

    Boxes with a kept mask in the run's `masks` table carry it as `segmentation`; the result says how many.
    """
    meta = read_table(cfg.run.dir, "meta")[["image_id", "orig_w", "orig_h"]]
    images = meta.merge(index[["image_id", "path"]], on="image_id", how="inner")
    boxes = read_table(cfg.run.dir, "boxes")
    masks = read_table(cfg.run.dir, "masks")
    document = coco_document(images, boxes[boxes["image_id"].isin(images["image_id"])], cfg.run.dir, masks)
    path = write_json(cfg.run.dir, "prompts/coco_boxes.json", document)
    with_mask = sum(bool(a["segmentation"]) for a in document["annotations"])
    return {"path": path, "images": len(document["images"]), "annotations": len(document["annotations"]),
            "with_segmentation": with_mask}  # fmt: skip
