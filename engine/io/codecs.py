"""Table columns <-> arrays: heatmaps as float16 lists, refined peaks and hot spots as padded lists."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.core.localization.spots import SPOT_COLUMNS


def heatmap_column(heat: np.ndarray) -> pa.Array:
    """Returns (N, h, w) float16 maps as an Arrow list<float16> column (row-major, plain Arrow types)."""
    n = heat.shape[0]
    size = int(np.prod(heat.shape[1:])) if n else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * size)
    return pa.ListArray.from_arrays(offsets, pa.array(heat.reshape(-1).astype(np.float16), type=pa.float16()))


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
