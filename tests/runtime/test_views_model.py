"""The model actor reads an ANT image mirrored (engine/core/scans/views.py) and stores its CAM in the image's own
frame: a POST canvas and the same canvas flipped and labelled ANT reach the model as one input, so they get the
same probability, and the ANT row's stored CAM and refined peaks are the POST row's mirrored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.core.localization.columns import BODY_CANVAS_COLUMNS
from engine.runtime.decode import DecodeSettings
from engine.runtime.pipeline import StreamSettings, image_stream
from engine.runtime.udfs.cam import ClassifyCamStage
from engine.stages._scoring import cam_settings
from engine.stages.cam import cam_rows
from tests.conftest import test_config


@pytest.fixture(scope="module")
def scored_both_ways(ray_session, data_root: Path, trained_run: Path) -> tuple[dict, dict, int]:
    cfg = test_config(data_root, trained_run, "cam.refine=true")
    rows = cam_rows(cfg).head(6)
    batch = image_stream(rows, DecodeSettings.of(cfg.data, cfg.canvas), StreamSettings.of(cfg.ray)).take_batch(
        6, batch_format="numpy"
    )
    assert set(batch["view"]) == {"POST"}
    width = int(batch["canvas"].shape[-1])
    as_ant = {**batch, "view": np.full(len(batch["view"]), "ANT", dtype=object)}
    as_ant["canvas"] = np.ascontiguousarray(batch["canvas"][:, :, ::-1])
    x1, _, x2, _ = (np.asarray(batch[c], dtype=np.float64) for c in BODY_CANVAS_COLUMNS)
    as_ant[BODY_CANVAS_COLUMNS[0]], as_ant[BODY_CANVAS_COLUMNS[2]] = width - x2, width - x1
    stage = ClassifyCamStage(replace(cam_settings(cfg, with_cam=True, use_gpu=False), compile=False))
    return stage(dict(batch)), stage(as_ant), width


def test_an_ant_image_reaches_the_model_mirrored(scored_both_ways) -> None:
    post, ant, _ = scored_both_ways
    assert np.allclose(ant["y_prob"], post["y_prob"], atol=1e-6)


def test_the_ant_cam_and_its_peaks_are_stored_in_the_images_own_frame(scored_both_ways) -> None:
    post, ant, width = scored_both_ways
    assert np.allclose(ant["heatmap"].astype(np.float32), post["heatmap"][:, :, ::-1].astype(np.float32), atol=2e-3)
    assert np.allclose(ant["peak_x"][:, 0], width - post["peak_x"][:, 0], atol=0.05)
    assert np.allclose(ant["peak_y"][:, 0], post["peak_y"][:, 0], atol=0.05)
