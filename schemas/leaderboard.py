"""Table `leaderboard`: one row per run under `leaderboard.runs`, its test metrics at its selected threshold."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),  # the run's folder name under leaderboard.runs
        pa.field("auc", pa.float32()),
        pa.field("sensitivity", pa.float32()),
        pa.field("specificity", pa.float32()),
        pa.field("f1", pa.float32()),
        pa.field("accuracy", pa.float32()),
        pa.field("thr", pa.float32()),  # the run's `make threshold` choice
        pa.field("tp", pa.int64()),
        pa.field("tn", pa.int64()),
        pa.field("fp", pa.int64()),
        pa.field("fn", pa.int64()),
        pa.field("n", pa.int64()),
    ]
)
