"""Table `seg_probs`: the segmentation network's pixel probability per image (`make segment`), compact, canvas frame.

One row per image the network scored (with or without a component). `prob` holds the row-major (prob_h, prob_w)
uint8 map round(255 * the mean probability of each PROB_STRIDE x PROB_STRIDE canvas block)
(``engine.core.masks.scoremaps.pool_probability``); ``unpool_probability`` brings it back to the canvas_h x canvas_w
canvas, and the image's letterbox meta (table `meta`) to original px. `make evaluate` scores its PxAP on it: the
network's own continuous map, where `seg_masks` holds only its thresholded components.
"""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("split", "folder")
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("prob", pa.list_(pa.uint8())),  # row-major (prob_h, prob_w), probability * 255, rounded
        pa.field("prob_h", pa.int16()),
        pa.field("prob_w", pa.int16()),
        pa.field("canvas_h", pa.int16()),  # the canvas the map covers (prob_h = ceil(canvas_h / stride))
        pa.field("canvas_w", pa.int16()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
    ]
)
