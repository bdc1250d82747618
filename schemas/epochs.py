"""Table `epochs`: one row per training epoch (rank 0)."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("epoch", pa.int32(), nullable=False),  # counted from 1 (runs trained before 2026-12 from 0)
        pa.field("train_loss", pa.float32()),
        pa.field("val_loss", pa.float32()),
        pa.field("val_auc", pa.float32()),
        pa.field("lr", pa.float32()),
        pa.field("images", pa.int64()),  # training images seen this epoch (all workers)
        pa.field("train_errors", pa.int64()),  # undecodable train + val images skipped this epoch
        pa.field("seconds", pa.float32()),
        pa.field("img_per_s", pa.float32()),
        pa.field("is_best", pa.bool_()),  # best val AUC so far
    ]
)
