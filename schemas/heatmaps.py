"""Table `heatmaps`: the CAM per image at feature resolution, inline (engine.core.model.cam.upsample_heatmap)."""

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: the map as uint8 levels (was float16)
PARTITION_COLS: tuple[str, ...] = ("split", "folder")
SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        # row-major (heatmap_h, heatmap_w) uint8 levels: level / 255 = the min-max normalised CAM (engine/io/codecs.py)
        pa.field("heatmap", pa.list_(pa.uint8())),
        pa.field("heatmap_h", pa.int16()),
        pa.field("heatmap_w", pa.int16()),
        pa.field("raw_min", pa.float32()),  # un-normalised minimum (0 unless the whole map is positive)
        pa.field("raw_max", pa.float32()),  # un-normalised maximum: compares across images
        pa.field("y_prob", pa.float32()),
        pa.field("cam_method", pa.string()),  # fused (forward-only, exact for GAP+linear) or gradcam (autograd)
        # cam.refine: the best body peaks (flat cell index r * heatmap_w + c, best first) and where the input
        # evidence puts each of them, canvas px; null when the pass did not refine (core.model.cam.refine_cell_centres)
        pa.field("peak_index", pa.list_(pa.int32())),
        pa.field("peak_x", pa.list_(pa.float32())),
        pa.field("peak_y", pa.list_(pa.float32())),
        # cam.spots: the scan's hot spots (engine.core.localization.spots.find_spots), best excess first: centre
        # (canvas px), blob sigma (canvas px), smoothed peak, contrast to the local background, left-right asymmetry
        pa.field("spot_x", pa.list_(pa.float32())),
        pa.field("spot_y", pa.list_(pa.float32())),
        pa.field("spot_sigma", pa.list_(pa.float32())),
        pa.field("spot_peak", pa.list_(pa.float32())),
        pa.field("spot_contrast", pa.list_(pa.float32())),
        pa.field("spot_asym", pa.list_(pa.float32())),
        pa.field("overlay_canvas", pa.string()),  # PNG path relative to the run dir, or null
        pa.field("overlay_orig", pa.string()),
        pa.field("split", pa.string(), nullable=False),
        pa.field("folder", pa.string(), nullable=False),
    ]
)
