"""Table `qc`: one row per indexed image, its count statistics, body box and QC flags (engine/core/scans/qc.py)."""

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: true counts (count_unit), counts per body pixel, the body blob's area and shape_snr
PARTITION_COLS: tuple[str, ...] = ("folder",)
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # <folder>/<filename>, as in the index table
        pa.field("folder", pa.string(), nullable=False),
        pa.field("count_unit", pa.string()),  # counts (16-bit file, DICOM frame) or grey (8-bit file)
        pa.field("total_counts", pa.int64()),  # sum of the counts (count_unit)
        pa.field("body_counts_per_px", pa.float64()),  # mean counts of the body's core per 2.4 mm px; null: no body
        pa.field("mean_grey", pa.float64()),  # of the grey image the model sees (data.count_scale), as below
        pa.field("zero_fraction", pa.float64()),  # share of pixels exactly 0
        pa.field("p99_grey", pa.float64()),  # 99th percentile grey level
        pa.field("body_height_fraction", pa.float64()),  # body box height / image height; 0 for noise frames
        pa.field("body_width_fraction", pa.float64()),  # body box width / image width; 0 for noise frames
        pa.field("body_area_fraction", pa.float64()),  # the largest blob's area / the frame's; 0 without a blob
        pa.field("shape_snr", pa.float64()),  # the largest blob's shape signal over counting noise; null: no blob
        pa.field("roughness", pa.float64()),  # std(image - blur) / mean(blur) over the body; null for noise frames
        pa.field("noise_frame", pa.bool_()),  # no blob that looks like a body (area, shape_snr)
        pa.field("low_count", pa.bool_()),  # a body with fewer counts per body pixel than qc.low_count_per_px
        pa.field("small_body", pa.bool_()),
        pa.field("body_cut", pa.bool_()),  # body box touches the top or bottom edge
        pa.field("body_x1", pa.int32()),  # body box, original px, x2/y2 exclusive; null for noise frames
        pa.field("body_y1", pa.int32()),
        pa.field("body_x2", pa.int32()),
        pa.field("body_y2", pa.int32()),
    ]
)
