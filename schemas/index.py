"""Table `index`: one row per image listed in a label file (DESIGN.md §2)."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ("folder",)
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # <folder>/<filename>, unique across views
        pa.field("folder", pa.string(), nullable=False),
        pa.field("part", pa.string()),  # ankle, chest, ..., wholeBody
        pa.field("side", pa.string()),  # L, R or null
        pa.field("view", pa.string()),  # ANT or POST
        pa.field("patient_id", pa.string(), nullable=False),  # file stem; ANT and POST share it
        pa.field("path", pa.string(), nullable=False),  # POSIX path relative to the data root
        pa.field("label", pa.int8()),  # 0 normal, 1 abnormal
        pa.field("is_whole_body", pa.bool_()),
        pa.field("has_xml", pa.bool_()),
        pa.field("xml_path", pa.string()),  # relative to the data root, or null
        pa.field("line", pa.int32()),  # 1-based line in the label file
    ]
)
