"""Table `meta`: the letterbox meta of each scored image (engine.core.scans.letterbox.LetterboxMeta)."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("split", "folder")
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("orig_h", pa.int32()),
        pa.field("orig_w", pa.int32()),
        pa.field("canvas_h", pa.int32()),
        pa.field("canvas_w", pa.int32()),
        pa.field("scale", pa.float32()),
        pa.field("pad_left", pa.int32()),
        pa.field("pad_top", pa.int32()),
        pa.field("new_h", pa.int32()),
        pa.field("new_w", pa.int32()),
        # the QC body box on the canvas, px, x2/y2 exclusive: where peaks may sit; null when the image
        # has none (noise frame, indexed before QC), and then peaks may sit anywhere in the letterboxed image
        pa.field("body_x1_canvas", pa.float32()),
        pa.field("body_y1_canvas", pa.float32()),
        pa.field("body_x2_canvas", pa.float32()),
        pa.field("body_y2_canvas", pa.float32()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
    ]
)
