"""Table `gt_boxes`: one row per VOC XML object, original-image px, 0-based, x2/y2 exclusive."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("view",)
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("view", pa.string()),
        pa.field("patient_id", pa.string()),
        pa.field("cls", pa.string()),  # Normal (physiological) or Abnormal (suspected lesion)
        pa.field("x1", pa.int32()),
        pa.field("y1", pa.int32()),
        pa.field("x2", pa.int32()),
        pa.field("y2", pa.int32()),
        pa.field("repaired", pa.string()),  # null, or what was fixed (swapped_x, clipped, ...)
    ]
)
