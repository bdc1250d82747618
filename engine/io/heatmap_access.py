"""One call from a table row to pixels: `load_heatmap(run_dir, image_id)` -> the scan and its CAM, same frame.

The stored heatmap (`heatmaps` table, feature resolution over the whole canvas) is upsampled with
``engine.core.model.cam.upsample_heatmap`` and, in the original frame, cropped to the image body and resized back with
``core.model.cam.heatmap_to_original`` (the letterbox inverse of ``core.scans.letterbox``). The scan is read from the
data root of the run's saved config (`<run.dir>/config/<stage>.yaml`) unless `data_root` is given.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pyarrow.dataset as pads

from engine.core.localization.columns import META_COLUMNS
from engine.core.model.cam import heatmap_to_original, upsample_heatmap
from engine.core.scans.counts import parse_count_scale
from engine.core.scans.letterbox import LetterboxMeta, letterbox
from engine.io.fs import load_scan, read_saved_config, resolve_fs
from engine.io.tables import read_table

SPACES = ("orig", "canvas")
CONFIG_ORDER = ("cam", "boxes", "evaluate", "train", "split", "index")  # saved configs tried for data.root


class HeatmapNotFoundError(LookupError):
    """The run holds no heatmap, meta or index row for an image, or no saved config naming its data root."""


class ImageHeatmap(NamedTuple):
    """A scan and its CAM in one frame: `image, heatmap = load_heatmap(...)`."""

    image: np.ndarray  # (H, W) uint8 gray scan: the original image, or its letterboxed canvas
    heatmap: np.ndarray  # (H, W) float32 in [0, 1], same frame and shape as `image`


def saved_data_setting(run_dir: str, key: str) -> str | None:
    """Returns `data.<key>` from the run's saved config (`config/cam.yaml` first, then the other stages'), or None."""
    for stage in CONFIG_ORDER:
        value = (read_saved_config(run_dir, stage).get("data") or {}).get(key)
        if value:
            return str(value)
    return None


def saved_data_root(run_dir: str) -> str:
    """Returns `data.root` from the run's saved config.

    Raises:
        HeatmapNotFoundError: no saved config holds a `data.root`.
    """
    data_root = saved_data_setting(run_dir, "root")
    if data_root is None:
        raise HeatmapNotFoundError(f"{run_dir}: no saved config under config/ names data.root; pass data_root=")
    return data_root


def _one_row(run_dir: str, table: str, image_id: str) -> dict:
    """Returns the last row of `table` for `image_id`, reading only its folder's partition when the id starts with it
    (`<folder>/<filename>`: one partition's files instead of the whole table at the full index)."""
    match = pads.field("image_id") == image_id
    folder = image_id.split("/", 1)[0] if "/" in image_id else None
    frame = read_table(run_dir, table, match & (pads.field("folder") == folder)) if folder else None
    if frame is None or frame.empty:  # a folder name holding "/" (or no folder prefix): the whole table
        frame = read_table(run_dir, table, match)
    if frame.empty:
        raise HeatmapNotFoundError(f"{run_dir} (image_id={image_id}): no row in table {table}; run `make cam` first")
    return frame.iloc[-1].to_dict()


def stored_heatmap(run_dir: str, image_id: str) -> tuple[np.ndarray, LetterboxMeta, str]:
    """Returns (feature-resolution heatmap (h, w) float32, letterbox meta, path relative to the data root)."""
    heat = _one_row(run_dir, "heatmaps", image_id)
    meta_row = _one_row(run_dir, "meta", image_id)
    path = _one_row(run_dir, "index", image_id)["path"]
    values = np.asarray(heat["heatmap"], dtype=np.float32).reshape(int(heat["heatmap_h"]), int(heat["heatmap_w"]))
    meta = LetterboxMeta(**{k: float(meta_row[k]) if k == "scale" else int(meta_row[k]) for k in META_COLUMNS})
    return values, meta, str(path)


def read_scan(data_root: str, relative: str, count_scale: str = "max") -> np.ndarray:
    """Returns the gray uint8 scan at `relative` under `data_root` (never outside it), read as the model stream
    reads it: image files and `<file>#<frame>` DICOM frames through the `data.count_scale` rule.

    Raises:
        OSError: the file is missing or cannot be decoded.
    """
    fs, root = resolve_fs(data_root)
    image, _, error = load_scan(fs, root, relative, parse_count_scale(count_scale))
    if image is None:
        raise OSError(f"{relative}: {error}")
    return image


def load_heatmap(
    run_dir: str, image_id: str, space: str = "orig", data_root: str | None = None, count_scale: str | None = None
) -> ImageHeatmap:
    """Returns the scan of `image_id` and its CAM resized to the same frame.

    Args:
        run_dir: the run directory (path or URI) holding `heatmaps`, `meta` and `index`.
        image_id: `<folder>/<filename>`, as in every table.
        space: "orig": the original image (orig_h, orig_w) and the map brought back through the letterbox
            inverse; "canvas": the letterboxed canvas (canvas_h, canvas_w) and the map upsampled onto it.
        data_root: where the scans are; default: `data.root` of the run's saved config.
        count_scale: the run's count rule (`data.count_scale`); default: the run's saved one (a caller that renders
            many images reads it once).

    Raises:
        ValueError: an unknown `space`.
        HeatmapNotFoundError: the run has no heatmap for `image_id`.
    """
    if space not in SPACES:
        raise ValueError(f"space={space!r}: expected one of {SPACES}")
    heatmap, meta, relative = stored_heatmap(run_dir, image_id)
    count_scale = count_scale or saved_data_setting(run_dir, "count_scale") or "max"
    image = read_scan(data_root or saved_data_root(run_dir), relative, count_scale)
    canvas_heat = np.clip(upsample_heatmap(heatmap, meta.canvas_h, meta.canvas_w), 0.0, 1.0)
    if space == "canvas":
        canvas, _ = letterbox(image, meta.canvas_h, meta.canvas_w)
        return ImageHeatmap(canvas, canvas_heat)
    return ImageHeatmap(image, np.clip(heatmap_to_original(canvas_heat, meta), 0.0, 1.0))
