"""Table `errors`: one row per bad input, naming the file, the stage and the reason."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("stage", "split")
SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),  # label file, XML or image path, relative to its root
        pa.field("line", pa.int32()),  # line in a label file, or null
        pa.field("image_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),  # index, split, train, infer, cam, boxes, ...
        pa.field("reason", pa.string(), nullable=False),  # code first, then detail
        pa.field("split", pa.string(), nullable=False),  # the row's split; "all" for stages before the split
    ]
)
