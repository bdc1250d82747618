"""Table `loc_metrics`: weak-localisation metrics, one row per method x split x view x folder x metric."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("method", pa.string(), nullable=False),  # peaks, masks_tight, masks, seed, ... (stages/evaluate)
        pa.field("split", pa.string(), nullable=False),  # split scored (val rows only record the tuning)
        pa.field("view", pa.string(), nullable=False),  # ANT or POST
        pa.field("folder", pa.string(), nullable=False),  # "*" = every folder of the view
        pa.field("metric", pa.string(), nullable=False),  # pointing_game, hit@5, precision@iou0.3, n_images, ...
        pa.field("value", pa.float64()),  # numerator / denominator; NaN when the denominator is 0
        pa.field("numerator", pa.int64()),
        pa.field("denominator", pa.int64()),  # null for plain counts (metric n_*)
        pa.field("box_size", pa.int32()),  # box side, canvas px
        pa.field("nms_iou", pa.float32()),
        pa.field("min_score", pa.float32()),
        pa.field("max_boxes", pa.int32()),
        pa.field("cutoff", pa.float32()),  # probability cutoff of the *_at_cutoff metrics
        pa.field("canvas_h", pa.int32()),  # canvas the heatmaps were computed on, px
        pa.field("canvas_w", pa.int32()),
        pa.field("tolerance_px", pa.float32()),  # pointing-game tolerance, original px
        pa.field("tuned_on", pa.string()),  # split the box parameters were chosen on, or null
        pa.field("source_run", pa.string()),  # run dir of the heatmaps (this run, or evaluate.baseline_run)
    ]
)
