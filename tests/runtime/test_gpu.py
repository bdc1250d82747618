"""GPU paths of the model actor, checked against the float32 CPU path on the same images (skipped without CUDA).

bf16 autocast and torch.compile must give the CPU path's probabilities, CAM and pseudo boxes within tolerance,
and two calls in flight per actor (one CUDA stream each) the same rows as one call at a time. `BS80K_GPU_TESTS_ON
=cpu` runs the same comparisons with every path on the CPU, to check the tests themselves on a machine without CUDA.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.runtime.decode import DecodeSettings
from engine.runtime.pipeline import StreamSettings, image_stream
from engine.runtime.udfs.cam import CamSettings, ClassifyCamStage
from engine.stages._scoring import cam_settings
from engine.stages.cam import cam_rows
from tests.conftest import test_config

ON_CPU = os.environ.get("BS80K_GPU_TESTS_ON") == "cpu"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (ON_CPU or torch.cuda.is_available()), reason="needs CUDA (BS80K_GPU_TESTS_ON=cpu: dry)"),
]
IMAGES = 16  # at most: the session data's test split holds fewer whole-body images of the view


@pytest.fixture(scope="module")
def images(ray_session, data_root: Path, trained_run: Path) -> tuple[CamSettings, dict[str, np.ndarray]]:
    """The trained run's float32 CPU settings and one decoded batch of its test images."""
    cfg = test_config(data_root, trained_run, "cam.refine=true")
    rows = cam_rows(cfg).head(IMAGES)
    stream = image_stream(rows, DecodeSettings.of(cfg.data, cfg.canvas), StreamSettings.of(cfg.ray))
    batch = stream.take_batch(IMAGES, batch_format="numpy")
    return replace(cam_settings(cfg, with_cam=True, use_gpu=False), amp=False, compile=False), batch


def _score(settings: CamSettings, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ClassifyCamStage(replace(settings, use_gpu=settings.use_gpu and not ON_CPU))(batch)


def _top_box_centres(out: dict[str, np.ndarray]) -> np.ndarray:
    top = out["boxes"][:, 0, :4].astype(np.float64)
    return np.stack([(top[:, 0] + top[:, 2]) / 2, (top[:, 1] + top[:, 3]) / 2], axis=1)


@pytest.mark.parametrize(
    ("amp", "compiled", "prob_atol", "heat_atol"),
    [
        (False, False, 1e-4, 2e-3),  # float32 on the GPU: the CPU path up to kernel rounding
        (True, False, 2e-2, 6e-2),  # bf16 backbone (the CAM itself stays float32)
        (True, True, 2e-2, 6e-2),  # bf16 + torch.compile
    ],
)
def test_gpu_paths_give_the_float32_cpu_probabilities_cams_and_boxes(images, amp, compiled, prob_atol, heat_atol):
    settings, batch = images
    reference = _score(settings, batch)
    cell = batch["canvas_h"][0] / reference["heatmap"].shape[1]  # canvas px per CAM cell
    out = _score(replace(settings, use_gpu=True, amp=amp, compile=compiled), batch)
    assert np.isfinite(out["y_prob"]).all()
    np.testing.assert_allclose(out["y_prob"], reference["y_prob"], atol=prob_atol)
    heat, expected = out["heatmap"].astype(np.float32), reference["heatmap"].astype(np.float32)
    np.testing.assert_allclose(heat, expected, atol=heat_atol)
    assert (out["box_count"] == reference["box_count"]).mean() >= 0.9
    moved = np.linalg.norm(_top_box_centres(out) - _top_box_centres(reference), axis=1)
    assert np.nanmean(moved <= cell) >= 0.9, f"top boxes moved by {moved} canvas px (a cell is {cell} px)"


def test_two_calls_in_flight_on_one_actor_give_the_rows_of_one_call_at_a_time(images):
    settings, batch = images
    stage = ClassifyCamStage(replace(settings, use_gpu=not ON_CPU, amp=True))
    half = len(batch["image_id"]) // 2
    assert half >= 1
    halves = [{k: v[:half] for k, v in batch.items()}, {k: v[half:] for k, v in batch.items()}]
    one_at_a_time = [stage(half) for half in halves]
    with ThreadPoolExecutor(max_workers=2) as pool:  # what infer.calls_per_actor=2 does inside the actor
        in_flight = list(pool.map(stage, halves))
    for alone, together in zip(one_at_a_time, in_flight, strict=True):
        assert list(alone["image_id"]) == list(together["image_id"])
        for key in ("y_prob", "heatmap", "boxes"):
            np.testing.assert_array_equal(alone[key], together[key])


def test_the_refined_cam_compiles_or_falls_back_to_the_eager_model_with_a_warning(images, caplog):
    settings, batch = images
    with caplog.at_level("WARNING", logger="engine"):
        stage = ClassifyCamStage(
            replace(
                settings,
                use_gpu=not ON_CPU,
                amp=True,
                compile=True,
                warmup=(IMAGES, int(batch["canvas_h"][0]), int(batch["canvas_w"][0])),
            )
        )
    out = stage(batch)
    assert np.isfinite(out["y_prob"]).all() and out["box_count"].sum() > 0
    fell_back = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert stage.forward is stage.model or not fell_back, "a compile failure must leave the eager model in use"
