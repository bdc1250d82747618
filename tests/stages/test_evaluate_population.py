"""Box settings of the stored boxes: read from the table when it records them, else the config (and said so)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from engine.core.localization.boxes import BoxParams
from engine.stages.evaluate.run import stored_box_params
from tests.conftest import test_config


def test_stored_box_settings_come_from_the_boxes_table_not_the_current_config(tmp_path: Path) -> None:
    cfg = test_config(tmp_path, tmp_path / "run", "boxes.max=3", "boxes.min_score=0.5", "boxes.size=40")
    boxes = pd.DataFrame({"box_size": [16, 16], "nms_iou": [0.2, 0.2], "boxes_max": [7, 7], "min_score": [0.1, 0.1]})
    params, source = stored_box_params(boxes, cfg)
    assert params == BoxParams(size=16, max_boxes=7, nms_iou=0.2, min_score=0.1) and source == "boxes table"
    old, note = stored_box_params(boxes.drop(columns=["boxes_max", "min_score"]), cfg)
    assert old == BoxParams(size=16, max_boxes=3, nms_iou=0.2, min_score=0.5)
    assert "config (boxes.max, boxes.min_score)" in note and "predates" in note
    empty, note = stored_box_params(boxes.iloc[:0], cfg)
    assert empty.size == 40 and note == "config (no boxes)"
