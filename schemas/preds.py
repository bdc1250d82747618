"""Table `preds`: one probability per image and producing stage (train epochs, infer, cam)."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("stage", "split", "folder")
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string()),
        pa.field("view", pa.string()),
        pa.field("y_true", pa.int8()),
        pa.field("y_prob", pa.float32()),
        pa.field("logit", pa.float32()),
        pa.field("epoch", pa.int32()),  # training epoch for stage=train, else null
        pa.field("run_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
    ]
)
