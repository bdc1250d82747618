"""Table `index`: one row per image listed in a label file, image file or DICOM frame (engine/io/layouts.py)."""

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: label null for unlabeled scans; pixel spacing and study date of DICOM frames
PARTITION_COLS: tuple[str, ...] = ("folder",)
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # <folder>/<filename>, unique across views
        pa.field("folder", pa.string(), nullable=False),  # BS-80K folder, or the file's parent path ("." = root)
        pa.field("part", pa.string()),  # ankle, chest, ..., wholeBody, or null
        pa.field("side", pa.string()),  # L, R or null
        pa.field("view", pa.string()),  # ANT, POST or unknown
        pa.field("patient_id", pa.string(), nullable=False),  # file stem or PatientID; ANT and POST share it
        pa.field("path", pa.string(), nullable=False),  # POSIX path relative to the data root; DICOM: <file>#<frame>
        pa.field("label", pa.int8()),  # 0 normal, 1 abnormal, null unlabeled
        pa.field("is_whole_body", pa.bool_()),
        pa.field("has_xml", pa.bool_()),
        pa.field("xml_path", pa.string()),  # relative to the data root, or null
        pa.field("line", pa.int32()),  # 1-based line in the label file, or null
        pa.field("pixel_spacing_y_mm", pa.float32()),  # DICOM PixelSpacing[0] (between rows), or null
        pa.field("pixel_spacing_x_mm", pa.float32()),  # DICOM PixelSpacing[1] (between columns), or null
        pa.field("study_date", pa.string()),  # DICOM StudyDate as YYYY-MM-DD, or null
    ]
)
