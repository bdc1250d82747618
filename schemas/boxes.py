"""Table `boxes`: one row per pseudo box, in canvas and original-image px (x2/y2 exclusive)."""

import pyarrow as pa

SCHEMA_VERSION = 4  # 2: boxes_max, min_score; 3: box_method; 4: cross_view, cross_rank
PARTITION_COLS: tuple[str, ...] = ("split", "folder")
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("rank", pa.int16()),  # 0 = highest score
        pa.field("x1", pa.float32()),  # canvas px
        pa.field("y1", pa.float32()),
        pa.field("x2", pa.float32()),
        pa.field("y2", pa.float32()),
        pa.field("x1_orig", pa.float32()),  # original-image px
        pa.field("y1_orig", pa.float32()),
        pa.field("x2_orig", pa.float32()),
        pa.field("y2_orig", pa.float32()),
        pa.field("score", pa.float32()),  # [0, 1]: cam_peaks: normalised CAM at the peak; spots: the ranker score
        pa.field("score_raw", pa.float32()),  # cam_peaks: un-normalised CAM value at the peak (null for spots)
        pa.field("y_prob", pa.float32()),
        pa.field("box_method", pa.string()),  # boxes.method: cam_peaks, or spots (the run's spot_ranker.json)
        pa.field("box_size", pa.int16()),  # boxes.size used (spots: this box's side, canvas px)
        pa.field("nms_iou", pa.float32()),  # boxes.nms_iou used
        pa.field("boxes_max", pa.int16()),  # boxes.max used
        pa.field("min_score", pa.float32()),  # boxes.min_score used
        # the patient's other whole-body view (engine/core/scans/views.py, set by `make boxes`): the score of its box
        # at the matching place (> 0: confirmed), 0 when it has none there, NaN when that view was not scored
        pa.field("cross_view", pa.float32()),
        pa.field("cross_rank", pa.int16()),  # the confirming box's rank in the other view; -1 without one
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
    ]
)
