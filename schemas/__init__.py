"""One Arrow schema per table: the single source of truth for column names and types."""

from types import ModuleType

from schemas import (
    boxes,
    epochs,
    errors,
    exports,
    gt_boxes,
    heatmaps,
    index,
    leaderboard,
    loc_metrics,
    masks,
    meta,
    metrics,
    preds,
    qc,
    seg_epochs,
    seg_masks,
    splits,
    thresholds,
)

TABLES: dict[str, ModuleType] = {
    "index": index,
    "gt_boxes": gt_boxes,
    "errors": errors,
    "splits": splits,
    "preds": preds,
    "heatmaps": heatmaps,
    "boxes": boxes,
    "meta": meta,
    "epochs": epochs,
    "thresholds": thresholds,
    "metrics": metrics,
    "loc_metrics": loc_metrics,
    "masks": masks,
    "leaderboard": leaderboard,
    "qc": qc,
    "seg_epochs": seg_epochs,
    "seg_masks": seg_masks,
    "exports": exports,
}
