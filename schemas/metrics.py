"""Table `metrics`: classification metrics of a split at the selected threshold (`make infer`)."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("view", pa.string()),
        pa.field("thr", pa.float32()),
        pa.field("auc", pa.float32()),
        pa.field("accuracy", pa.float32()),
        pa.field("sensitivity", pa.float32()),
        pa.field("specificity", pa.float32()),
        pa.field("precision", pa.float32()),
        pa.field("f1", pa.float32()),
        pa.field("tp", pa.int64()),
        pa.field("tn", pa.int64()),
        pa.field("fp", pa.int64()),
        pa.field("fn", pa.int64()),
        pa.field("n", pa.int64()),
    ]
)
