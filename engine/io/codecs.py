"""Table columns <-> arrays: heatmaps as 8-bit lists, refined peaks and hot spots as padded lists.

A heatmap is stored as uint8 levels: level / 255 is the min-max normalised CAM (its raw scale is kept in `raw_min`,
`raw_max`); `read_table` hands it back as float16 in [0, 1]. The model actor rounds its CAM to those levels before it
places any box (`stored_heatmaps`), so that boxes recomputed from the table are the actor's own.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.core.localization.spots import SPOT_COLUMNS

HEAT_LEVELS = 255  # a stored heatmap value v means v / HEAT_LEVELS


def quantize_heatmaps(heat: np.ndarray) -> np.ndarray:
    """Returns maps in [0, 1] as uint8 levels (rounded; values outside [0, 1] clipped)."""
    return np.rint(np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0) * HEAT_LEVELS).astype(np.uint8)


def dequantize_heatmaps(levels: np.ndarray) -> np.ndarray:
    """Returns uint8 levels as float16 maps in [0, 1]."""
    return (np.asarray(levels, dtype=np.float32) / HEAT_LEVELS).astype(np.float16)


def stored_heatmaps(heat: np.ndarray) -> np.ndarray:
    """Returns maps exactly as they read back from the table (float16 of the uint8 levels)."""
    return dequantize_heatmaps(quantize_heatmaps(heat))


def heatmap_column(heat: np.ndarray) -> pa.Array:
    """Returns (N, h, w) maps in [0, 1] as an Arrow list<uint8> column of levels (row-major, plain Arrow types)."""
    n = heat.shape[0]
    size = int(np.prod(heat.shape[1:])) if n else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * size)
    return pa.ListArray.from_arrays(offsets, pa.array(quantize_heatmaps(heat).reshape(-1), type=pa.uint8()))


def decoded_heatmap_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Returns a stored list<uint8> heatmap column as list<float16> in [0, 1] (one vectorised pass per chunk)."""
    chunks = []
    for chunk in column.chunks:
        values = dequantize_heatmaps(chunk.values.to_numpy(zero_copy_only=False))
        values = pa.array(values, type=pa.float16())
        chunks.append(pa.ListArray.from_arrays(chunk.offsets, values, mask=chunk.is_null()))
    return pa.chunked_array(chunks, type=pa.list_(pa.float16()))


def padded_list_column(values: np.ndarray, valid: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Returns (N, K) padded rows as an Arrow list column holding each row's `valid` entries (plain Arrow)."""
    lengths = valid.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values[valid], type=arrow_type))


def peak_list_columns(ok: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Returns the refined peak columns as Arrow lists (nulls when the pass did not refine)."""
    if "peak_index" not in ok:
        n = len(ok["image_id"])
        return {
            "peak_index": pa.nulls(n, pa.list_(pa.int32())),
            "peak_x": pa.nulls(n, pa.list_(pa.float32())),
            "peak_y": pa.nulls(n, pa.list_(pa.float32())),
        }
    valid = ok["peak_index"] >= 0
    return {
        "peak_index": padded_list_column(ok["peak_index"], valid, pa.int32()),
        "peak_x": padded_list_column(ok["peak_x"], valid, pa.float32()),
        "peak_y": padded_list_column(ok["peak_y"], valid, pa.float32()),
    }


def spot_list_columns(ok: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Returns the hot-spot columns as Arrow lists (NaN padding dropped; nulls when the pass found none)."""
    n = len(ok["image_id"])
    if "spot_x" not in ok:
        return {name: pa.nulls(n, pa.list_(pa.float32())) for name in SPOT_COLUMNS}
    valid = np.isfinite(ok["spot_x"])
    return {name: padded_list_column(ok[name], valid, pa.float32()) for name in SPOT_COLUMNS}
