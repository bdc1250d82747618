"""Table `exports`: one row per scored DICOM frame `make export` returned as a Secondary Capture, naming its study."""

import pyarrow as pa

SCHEMA_VERSION = 1
PARTITION_COLS: tuple[str, ...] = ()
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string()),  # the source's PatientID as found in the file (may be empty)
        pa.field("study_uid", pa.string(), nullable=False),  # the source's StudyInstanceUID: the study's key
        pa.field("study_date", pa.string()),  # the source's StudyDate as YYYY-MM-DD, or null
        pa.field("source_file", pa.string(), nullable=False),  # the DICOM file, relative to data.root
        pa.field("frame_number", pa.int32()),  # the scored frame in the source, 1-based (DICOM ReferencedFrameNumber)
        pa.field("view", pa.string()),  # ANT, POST or unknown (index)
        pa.field("y_prob", pa.float32()),
        pa.field("threshold", pa.float32()),  # the run's selected threshold, null without one
        pa.field("positive", pa.bool_()),  # y_prob >= threshold; null without a threshold
        pa.field("qc_flags", pa.list_(pa.string())),  # preds.qc_flags of the frame; null when the run has no QC row
        pa.field("n_boxes", pa.int16()),  # pseudo boxes drawn (table boxes)
        pa.field("boxes", pa.list_(pa.float32())),  # x1, y1, x2, y2 of each pseudo box by rank, original px: 4 per box
        pa.field("masks_drawn", pa.int16()),  # kept pseudo masks drawn in (table masks, kept)
        pa.field("sc_file", pa.string(), nullable=False),  # the Secondary Capture, relative to run.dir (export/...)
        pa.field("sc_series_uid", pa.string(), nullable=False),  # new series: one per study and export run
        pa.field("sc_sop_uid", pa.string(), nullable=False),
        pa.field("seg_written", pa.bool_(), nullable=False),  # a DICOM Segmentation of the source file was written
        pa.field("seg_file", pa.string()),  # relative to run.dir, or null
        pa.field("seg_reason", pa.string()),  # why no Segmentation ("" when written): a code, then the detail
    ]
)
