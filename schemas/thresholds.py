"""Table `thresholds`: the operating point chosen on val (`make threshold`)."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("mode", pa.string(), nullable=False),  # youden, f1, sens_atleast
        pa.field("sens_min", pa.float32()),
        pa.field("epoch", pa.int32()),  # the best epoch whose val predictions were used (counted from 1)
        pa.field("thr", pa.float32()),
        pa.field("sens", pa.float32()),
        pa.field("spec", pa.float32()),
        pa.field("precision", pa.float32()),
        pa.field("f1", pa.float32()),
        pa.field("youden_j", pa.float32()),
        pa.field("auc", pa.float32()),
        pa.field("tp", pa.int64()),
        pa.field("tn", pa.int64()),
        pa.field("fp", pa.int64()),
        pa.field("fn", pa.int64()),
        pa.field("n", pa.int64()),
    ]
)
