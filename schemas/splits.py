"""Table `splits`: the patient-level split, one row per indexed image."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("split",)
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("folder", pa.string()),
        pa.field("view", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("patient_label", pa.int8()),  # 1 when any whole-body view of the patient is abnormal
        pa.field("group_id", pa.string()),  # the patient's duplicate group (its smallest id)
        pa.field("split", pa.string(), nullable=False),  # train, val, test
    ]
)
