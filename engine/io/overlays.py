"""CAM overlays: colour-mapped heatmap + pseudo boxes on the letterboxed scan and on the original."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from engine.core.localization.columns import META_COLUMNS
from engine.core.model.cam import heatmap_to_original, upsample_heatmap
from engine.core.scans.counts import parse_count_scale
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original, letterbox
from engine.io.fs import load_scan, resolve_fs

log = logging.getLogger(__name__)

BOX_COLOUR = (0, 0, 255)  # BGR red: pseudo boxes
GT_ABNORMAL_COLOUR = (0, 255, 0)  # BGR green: GT Abnormal boxes (report gallery, browse)
GT_NORMAL_COLOUR = (255, 255, 0)  # BGR cyan: GT Normal boxes (report gallery, browse)
MASK_COLOUR = (255, 0, 255)  # BGR magenta: kept pseudo-mask contours (report gallery)
GT_PX = 2  # line width of GT boxes, drawn just outside the box so that the boxed pixels stay visible at 1x
DASH_PX = 3  # dash and gap length of Normal GT boxes
HEAT_ALPHA = 0.45  # heat share of the blend (seed: rgb*0.55 + heat*0.45)


def render_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    boxes: np.ndarray,
    caption: str,
    gt: tuple[np.ndarray, np.ndarray] | None = None,
    contours: tuple[np.ndarray, ...] = (),
) -> np.ndarray:
    """Returns a BGR uint8 overlay: `heatmap` (same size as `image`, [0, 1]) in JET, boxes in red.

    Args:
        image: (H, W) uint8 gray scan (canvas or original frame).
        heatmap: (H, W) float map in the same frame.
        boxes: (K, 4+) boxes x1, y1, x2, y2 in the same frame (x2/y2 exclusive).
        caption: text drawn at the top left (e.g. the probability).
        gt: (Abnormal, Normal) GT boxes (K, 4) in the same frame, drawn by `draw_gt_boxes` on top.
        contours: (H, W) bool masks in the same frame; their outer contours are drawn 1 px wide in magenta.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap(np.clip(heatmap * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(gray, 1 - HEAT_ALPHA, heat, HEAT_ALPHA, 0)
    for rank, box in enumerate(np.asarray(boxes)[:, :4]):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), BOX_COLOUR, 2)
        cv2.putText(out, str(rank), (x1 + 2, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    if gt is not None:
        draw_gt_boxes(out, *gt)
    for mask in contours:
        found, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, found, -1, MASK_COLOUR, 1)
    cv2.putText(out, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return out


def dashed_rectangle(image: np.ndarray, box: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draws the 1 px outline of box (x1, y1, x2, y2; x2/y2 exclusive) dashed onto a BGR image, in place."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    x2, y2 = x2 - 1, y2 - 1
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True), (y1, y2, x1, False), (y1, y2, x2, False)):
        for start in range(a, b + 1, 2 * DASH_PX):
            end = min(start + DASH_PX - 1, b)
            p, q = ((start, fixed), (end, fixed)) if horizontal else ((fixed, start), (fixed, end))
            cv2.line(image, p, q, colour, 1)


def draw_gt_boxes(image_bgr: np.ndarray, abnormal: np.ndarray, normal: np.ndarray) -> None:
    """Draws GT boxes (K, 4; x2/y2 exclusive) in place: Abnormal solid green, Normal dashed cyan, GT_PX wide.

    Each line lies just outside its box (the rings 1..GT_PX px out), so the lesion inside stays unmarked.
    """
    for boxes, colour, dashed in ((normal, GT_NORMAL_COLOUR, True), (abnormal, GT_ABNORMAL_COLOUR, False)):
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            for ring in range(1, GT_PX + 1):
                x1, y1, x2, y2 = (int(round(v)) for v in box + np.array([-ring, -ring, ring, ring]))
                if dashed:
                    dashed_rectangle(image_bgr, np.array([x1, y1, x2, y2]), colour)
                else:
                    cv2.rectangle(image_bgr, (x1, y1), (x2 - 1, y2 - 1), colour, 1)


@dataclass(frozen=True)
class OverlaySettings:
    """Which overlays `make cam` renders and where (built by the stage from `cam.overlays`, `seed`, `data.*`,
    `run.dir`)."""

    count: int  # images sampled (cam.overlays)
    seed: int  # seeds the sample
    data_root: str  # where the scans are read again for rendering
    run_dir: str  # the PNGs go under <run_dir>/overlays
    count_scale: str = "max"  # the grey-level rule the model stream used (data.count_scale)


class OverlayCollector:
    """Picks `settings.count` images (seeded), keeps their CAM rows while streaming, renders PNGs at the end."""

    def __init__(self, settings: OverlaySettings, image_ids: list[str]) -> None:
        self.settings = settings
        count = min(settings.count, len(image_ids))
        rng = np.random.default_rng(settings.seed)
        chosen = rng.choice(sorted(image_ids), size=count, replace=False) if count else []
        self.wanted = set(chosen)
        self.kept: dict[str, dict[str, Any]] = {}

    @staticmethod
    def paths(image_id: str) -> tuple[str, str]:
        """Returns the overlay PNG paths (canvas, original) relative to the run dir."""
        stem = image_id.rsplit(".", 1)[0]
        return f"overlays/{stem}_canvas.png", f"overlays/{stem}_orig.png"

    def take(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Returns the overlay reference columns of `batch`; keeps the sampled rows for `render`."""
        canvas_refs, orig_refs = [], []
        for i, image_id in enumerate(batch["image_id"]):
            if image_id in self.wanted:
                count = int(batch["box_count"][i])
                row = {k: batch[k][i] for k in ("path", "y_prob", *META_COLUMNS)}
                self.kept[image_id] = {**row, "heatmap": batch["heatmap"][i], "boxes": batch["boxes"][i][:count]}
                canvas_refs.append(self.paths(image_id)[0])
                orig_refs.append(self.paths(image_id)[1])
            else:
                canvas_refs.append(None)
                orig_refs.append(None)
        return {"overlay_canvas": canvas_refs, "overlay_orig": orig_refs}

    def render(self) -> int:
        """Writes the kept overlays as PNG files under the run dir; returns how many were written."""
        data_fs, data_root = resolve_fs(self.settings.data_root)
        run_fs, run_root = resolve_fs(self.settings.run_dir)
        scale = parse_count_scale(self.settings.count_scale)
        for image_id, row in sorted(self.kept.items()):
            image, _, error = load_scan(data_fs, data_root, str(row["path"]), scale)  # as the model stream read it
            if image is None:
                raise OSError(f"{row['path']}: scored a moment ago, now unreadable ({error})")
            canvas, meta = letterbox(image, int(row["canvas_h"]), int(row["canvas_w"]))
            heat = upsample_heatmap(row["heatmap"].astype(np.float32), meta.canvas_h, meta.canvas_w)
            caption = f"p={float(row['y_prob']):.3f}"
            views = (
                render_overlay(canvas, heat, row["boxes"], caption),
                render_overlay(image, heatmap_to_original(heat, meta), _boxes_orig(row["boxes"], meta), caption),
            )
            for relative, picture in zip(self.paths(image_id), views, strict=True):
                run_fs.create_dir(f"{run_root}/{relative.rsplit('/', 1)[0]}", recursive=True)
                with run_fs.open_output_stream(f"{run_root}/{relative}") as out:
                    out.write(cv2.imencode(".png", picture)[1].tobytes())
        return len(self.kept)


def _boxes_orig(boxes: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    return canvas_to_original(np.asarray(boxes, dtype=np.float32)[:, :4].reshape(-1, 4), meta)
