"""Table `masks`: one row per pseudo box, its pseudo mask as COCO RLE in original-image px, QC flags."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("split", "folder")
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("rank", pa.int16()),  # the box's rank in table boxes (0 = highest score)
        pa.field("rle_counts", pa.string()),  # COCO compressed RLE counts (pycocotools), original px
        pa.field("rle_h", pa.int32()),  # RLE size: original image height, px
        pa.field("rle_w", pa.int32()),  # original image width, px
        pa.field("area", pa.int64()),  # mask pixels, original px
        pa.field("mask_x1", pa.float32()),  # mask bounding box, original px, x2/y2 exclusive; null when empty
        pa.field("mask_y1", pa.float32()),
        pa.field("mask_x2", pa.float32()),
        pa.field("mask_y2", pa.float32()),
        pa.field("contrast", pa.float32()),  # Michelson contrast of the peak against the box-border median
        pa.field("cam_inside", pa.float32()),  # mean normalised CAM inside the mask (null when empty)
        pa.field("cam_ring", pa.float32()),  # mean normalised CAM on the ring around the mask (masks.ring_px)
        pa.field("agreement_iou", pa.float32()),  # IoU with masks.second's mask; null without a second segmenter
        pa.field("score", pa.float32()),  # the segmenter's own confidence in [0, 1]
        pa.field("y_prob", pa.float32()),
        pa.field("segmenter", pa.string()),  # masks.segmenter
        pa.field("segmenter_version", pa.string()),
        pa.field("qc_flags", pa.list_(pa.string())),  # QC reason codes (engine/core/masks/crops.py); empty: kept
        pa.field("kept", pa.bool_()),  # no QC flag
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
    ]
)
