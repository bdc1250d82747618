"""Baseline methods of `make evaluate`: centre prior, image-brightness (body) prior and MaxBoxAcc of the run's CAM.

The priors use no model: ``centre_prior`` only the image size, ``body_prior`` the scan itself, read from
``data.root`` through the stream's own reader (``safe_relative_path`` + ``decode_gray8`` + ``letterbox``). Both
are scored like our boxes (``score_method``). ``max_box_acc`` is Choe et al.'s threshold-swept box accuracy of the
run's stored heatmaps (``engine.core.localization.priors``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.core.localization.box_methods import (
    ORIG_COLUMNS,
    MethodRun,
    group_metrics,
    heatmap_of,
    meta_of,
    score_method,
)
from engine.core.localization.boxes import BoxParams, extract_pseudo_boxes
from engine.core.localization.priors import (
    BoxAccuracyAccumulator,
    box_accuracy_hits,
    box_accuracy_thresholds,
    brightness_prior_map,
    centre_prior,
)
from engine.core.metrics.localization import LocSettings, cam_peak_original
from engine.core.model.cam import upsample_heatmap
from engine.core.scans.decode import DecodeError, decode_gray8
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original, letterbox
from engine.io.fs import resolve_fs, safe_relative_path

Gt = dict[str, tuple[np.ndarray, np.ndarray]]


def _box_rows(image_id: str, boxes: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"image_id": image_id, "rank": rank, **dict(zip(ORIG_COLUMNS, box, strict=True))}
        for rank, box in enumerate(boxes)
    ]


def centre_prior_method(
    frame: pd.DataFrame, gt: Gt, params: BoxParams, cutoff: float, settings: LocSettings, source: str
) -> MethodRun:
    """Returns the centre prior scored on `frame`: peak at the image centre, boxes along the vertical midline."""
    rows, peaks = [], []
    for row in frame.itertuples(index=False):
        boxes, peak = centre_prior(meta_of(row), params)
        rows += _box_rows(row.image_id, boxes)
        peaks.append(peak)
    boxes = pd.DataFrame(rows, columns=["image_id", "rank", *ORIG_COLUMNS])
    return score_method("centre_prior", frame, boxes, peaks, gt, params, cutoff, settings, source)


def _prior_of_image(cfg: Config, path: str, meta: LetterboxMeta) -> np.ndarray:
    fs, root = resolve_fs(cfg.data.root)
    with fs.open_input_file(safe_relative_path(root, path)) as handle:
        image = decode_gray8(handle.read())
    canvas, _ = letterbox(image, meta.canvas_h, meta.canvas_w)
    return brightness_prior_map(canvas, meta, cfg.evaluate.prior_sigma_px)


def body_prior_method(
    cfg: Config, frame: pd.DataFrame, gt: Gt, params: BoxParams, cutoff: float, settings: LocSettings
) -> tuple[MethodRun, dict[str, Any]]:
    """Returns the brightness prior scored on `frame` and its account (images read, unreadable by reason).

    The prior map replaces the CAM: peak = its best body peak (the brightest smoothed body pixel), boxes = the
    run's box rule on it. An image that cannot be read gets no peak and no box (a miss) and is counted.
    """
    rows, peaks, unreadable = [], [], {}
    for row in frame.itertuples(index=False):
        meta = meta_of(row)
        try:
            prior = _prior_of_image(cfg, str(row.path), meta)
        except (OSError, DecodeError) as exc:
            reason = str(exc).split(":", 1)[0] if isinstance(exc, DecodeError) else type(exc).__name__
            unreadable[reason] = unreadable.get(reason, 0) + 1
            peaks.append(None)
            continue
        peaks.append(cam_peak_original(prior, meta))
        found = extract_pseudo_boxes(prior, meta.body_box(), meta.canvas_h, meta.canvas_w, params)
        rows += _box_rows(row.image_id, canvas_to_original(found[:, :4].reshape(-1, 4), meta))
    boxes = pd.DataFrame(rows, columns=["image_id", "rank", *ORIG_COLUMNS])
    run = score_method("body_prior", frame, boxes, peaks, gt, params, cutoff, settings, cfg.data.root)
    note = {"sigma_px": cfg.evaluate.prior_sigma_px, "images": len(frame), "unreadable": unreadable}
    return run, note


def max_box_acc_method(
    cfg: Config, frame: pd.DataFrame, gt: Gt, params: BoxParams, cutoff: float, source: str
) -> tuple[MethodRun, dict[str, Any]]:
    """Returns MaxBoxAcc of the stored heatmaps over the target images, and the best threshold per IoU level.

    Images without an Abnormal box are not part of it (Choe et al. score images that hold an object).
    """
    thresholds = box_accuracy_thresholds(cfg.evaluate.box_acc_step)
    settings = (tuple(thresholds.tolist()), tuple(cfg.evaluate.iou))
    fine: dict[tuple[str, str], BoxAccuracyAccumulator] = {}
    for row in frame.itertuples(index=False):
        key = (str(row.view), str(row.folder))
        acc = fine.setdefault(key, BoxAccuracyAccumulator(settings))
        abnormal = gt.get(row.image_id, (np.zeros((0, 4)),))[0]
        if len(abnormal):
            meta = meta_of(row)
            heat = upsample_heatmap(heatmap_of(row), meta.canvas_h, meta.canvas_w)
            acc.update(box_accuracy_hits(heat, meta, abnormal, thresholds, settings[1]))
    total = BoxAccuracyAccumulator(settings)
    for acc in fine.values():
        total = total.merge(acc)
    canvas = (int(frame["canvas_h"].iloc[0]), int(frame["canvas_w"].iloc[0]))
    run = MethodRun(
        "max_box_acc", str(frame["split"].iloc[0]), params, float(cutoff), canvas, source, group_metrics(fine)
    )
    note = {"step": cfg.evaluate.box_acc_step, "thresholds": len(thresholds), "best_threshold": total.best_thresholds()}
    return run, note
