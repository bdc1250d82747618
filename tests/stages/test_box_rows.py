"""Box rows of the `boxes` table (engine.stages.explode_boxes): one row per box, with the parameters used."""

import numpy as np
import pyarrow as pa

import schemas
from engine.core.localization.boxes import BoxParams, boxes_for_batch
from engine.core.localization.columns import explode_boxes
from engine.core.scans.letterbox import letterbox_meta
from engine.io.tables import to_arrow


def two_image_batch() -> tuple[dict, np.ndarray, np.ndarray, BoxParams]:
    """Two 16 x 8 scans on a 16 x 16 canvas (body x 4..12), one hot cell each, the second with two."""
    meta = letterbox_meta(16, 8, 16, 16)
    params = BoxParams(size=4, max_boxes=3, nms_iou=0.1, min_score=0.2)
    heatmaps = np.zeros((2, 4, 4), dtype=np.float32)
    heatmaps[0, 1, 1] = 0.9
    heatmaps[1, 0, 2], heatmaps[1, 3, 1], heatmaps[1, 2, 2] = 1.0, 0.5, 0.1  # 0.1 <= min_score: no box
    bodies = np.array([meta.body_box()] * 2, dtype=np.float64)
    boxes, counts = boxes_for_batch(heatmaps, bodies, 16, 16, params)
    batch = {
        name: np.array([getattr(meta, name)] * 2)
        for name in ("scale", "pad_left", "pad_top", "orig_w", "orig_h", "new_w", "new_h")
    }
    batch.update(
        image_id=np.array(["a", "b"], dtype=object),
        y_prob=np.array([0.7, 0.9], dtype=np.float32),
        raw_min=np.zeros(2, np.float32),
        raw_max=np.array([2.0, 4.0], np.float32),
        split=np.array(["test"] * 2, dtype=object),
        folder=np.array(["f"] * 2, dtype=object),
    )
    return batch, boxes, counts, params


def test_box_rows_record_every_box_parameter_used():
    batch, boxes, counts, params = two_image_batch()
    assert counts.tolist() == [1, 2]
    rows = explode_boxes(batch, boxes, counts, params, float("-inf"))
    table = to_arrow("boxes", rows)
    assert table.schema == schemas.TABLES["boxes"].SCHEMA
    assert table.column("image_id").to_pylist() == ["a", "b", "b"]
    assert table.column("rank").to_pylist() == [0, 0, 1]
    assert table.schema.field("boxes_max").type == pa.int16() and table.schema.field("min_score").type == pa.float32()
    assert table.column("boxes_max").to_pylist() == [3, 3, 3]
    np.testing.assert_allclose(table.column("min_score").to_numpy(), 0.2)
    assert table.column("box_size").to_pylist() == [4, 4, 4]
    np.testing.assert_allclose(table.column("nms_iou").to_numpy(), 0.1)
    np.testing.assert_allclose(table.column("score_raw").to_numpy(), [1.8, 4.0, 2.0], rtol=1e-6)


def test_box_rows_of_images_below_min_prob_are_left_out_with_their_parameters():
    batch, boxes, counts, params = two_image_batch()
    rows = explode_boxes(batch, boxes, counts, params, 0.8)
    assert rows["image_id"].tolist() == ["b", "b"]
    assert rows["boxes_max"].dtype == np.int16 and rows["min_score"].dtype == np.float32
    assert len(rows["boxes_max"]) == len(rows["min_score"]) == 2
