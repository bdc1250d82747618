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
        pa.field("epoch", pa.int32()),  # training epoch for stage=train (counted from 1), else null
        pa.field("run_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
        # QC flags raised on the image (engine/core/scans/qc.py: noise_frame, low_count, small_body, body_cut); [] none,
        # null when the run has no qc row for it (indexed before QC) or the stage does not copy them (train)
        pa.field("qc_flags", pa.list_(pa.string())),
    ]
)
