"""Fused CAM equals autograd Grad-CAM on tiny timm models; normalisation and heatmap resizing."""

import numpy as np
import pytest
import timm
import torch
from torch import nn

from engine.core.model.cam import (
    CamError,
    fused_cam,
    fused_cam_with_evidence,
    gap_linear_weights,
    gradcam_autograd,
    heatmap_to_original,
    normalize_cams,
    refine_cell_centres,
    upsample_heatmap,
)
from engine.core.scans.letterbox import letterbox, letterbox_meta


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=1).eval()


def make_images() -> torch.Tensor:
    return torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(1))


# The module whose output is forward_features' output (the target layer the fused CAM corresponds to).
TARGET_LAYERS = {"test_resnet": lambda m: m.layer4, "test_efficientnet": lambda m: m.bn2}


@pytest.mark.parametrize("name", sorted(TARGET_LAYERS))
def test_fused_cam_equals_autograd_gradcam_on_timm_models(name):
    model, images = make_model(name), make_images()
    weight = gap_linear_weights(model)
    assert weight is not None and weight.shape == (model.num_features,)
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model.forward_head(features)[:, 0]
    cam_fused = fused_cam(features, weight)
    cam_grad, logits_grad = gradcam_autograd(model, images, TARGET_LAYERS[name](model))
    assert cam_fused.dtype == cam_grad.dtype == torch.float32
    assert cam_fused.shape == cam_grad.shape == (2, 4, 2)
    torch.testing.assert_close(logits_grad, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cam_fused, cam_grad, rtol=1e-4, atol=1e-6)
    norm_fused, _ = normalize_cams(cam_fused)
    norm_grad, _ = normalize_cams(cam_grad)
    assert (norm_fused - norm_grad).abs().max() <= 1e-5


@pytest.mark.parametrize("name", sorted(TARGET_LAYERS))
def test_mean_of_pre_relu_map_plus_bias_is_the_logit(name):
    model, images = make_model(name), make_images()
    weight = gap_linear_weights(model)
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model(images)[:, 0]
    pre_relu = torch.einsum("bchw,c->bhw", features, weight)  # sum_c w_c A_c, before ReLU and / (h w)
    torch.testing.assert_close(pre_relu.mean(dim=(1, 2)) + model.get_classifier().bias[0], logits)


def test_gradcam_autograd_works_for_heads_without_fused_form_and_frozen_weights():
    model = make_model("test_convnext")
    assert gap_linear_weights(model) is None
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():  # the function turns gradients on itself
        cam, logits = gradcam_autograd(model, make_images(), model.stages[-1])
    assert cam.shape == (2, 4, 2) and logits.shape == (2,)
    assert torch.all(cam >= 0) and not cam.requires_grad


def test_gap_linear_weights_rejects_multi_output_and_non_avg_heads():
    torch.manual_seed(0)
    assert gap_linear_weights(timm.create_model("test_resnet", pretrained=False, num_classes=3)) is None
    assert (
        gap_linear_weights(timm.create_model("test_resnet", pretrained=False, num_classes=1, global_pool="max")) is None
    )
    assert gap_linear_weights(nn.Linear(4, 1)) is None


def test_gradcam_hook_is_removed_even_when_the_forward_fails():
    model = make_model("test_resnet")
    with pytest.raises(RuntimeError):
        gradcam_autograd(model, torch.zeros(2, 5, 64, 32), model.layer4)  # wrong channel count
    assert not model.layer4._forward_hooks
    with pytest.raises(CamError, match="not called"):
        gradcam_autograd(model, make_images(), nn.Conv2d(1, 1, 1))
    with torch.inference_mode(), pytest.raises(CamError, match="outside torch.inference_mode"):
        gradcam_autograd(model, make_images(), model.layer4)


def test_fused_cam_hand_worked_on_two_channels():
    features = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    # w = (-2, 1): cell 0 = -2*1 + 3 = 1, cell 1 = -2*(-2) + 0 = 4; divided by h*w = 2.
    torch.testing.assert_close(fused_cam(features, torch.tensor([-2.0, 1.0])), torch.tensor([[[0.5, 2.0]]]))
    # w = (2, -1): both cells negative (-1, -4): ReLU gives an all-zero map.
    torch.testing.assert_close(fused_cam(features, torch.tensor([2.0, -1.0])), torch.zeros(1, 1, 2))


def test_fused_cam_rejects_mismatched_weight():
    with pytest.raises(CamError, match=r"class_weight must be \(3,\)"):
        fused_cam(torch.zeros(1, 3, 2, 2), torch.zeros(4))


def test_normalize_cams_scales_each_map_and_keeps_raw_max():
    cams = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    normalised, raw_max = normalize_cams(cams)
    torch.testing.assert_close(normalised[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.all(normalised[1] == 0)
    torch.testing.assert_close(raw_max, torch.tensor([4.0, 0.0]))


def test_upsample_heatmap_centres_cells_on_the_canvas_grid():
    heatmap = np.array([[0.0, 1.0]], dtype=np.float32)  # (h, w) = (1, 2)
    canvas = upsample_heatmap(heatmap, 2, 8)  # cells 4 px wide: centres at x = 2 and x = 6
    assert canvas.shape == (2, 8) and canvas.dtype == np.float32
    # pixel x samples at x + 0.5: 0 up to the first centre, 1 from the second, linear between.
    np.testing.assert_allclose(canvas[0], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1])


def test_heatmap_to_original_crops_the_body_and_resizes_to_the_image():
    image = np.zeros((8, 2), dtype=np.uint8)
    image[:, 1] = 200
    canvas, meta = letterbox(image, 4, 4)  # scale 0.5: body 1 x 4 at columns 1..1
    assert meta.body_box() == (1, 0, 2, 4)
    heatmap = np.zeros((4, 4), dtype=np.float32)
    heatmap[:, 1] = 0.5
    heatmap[:, 0] = 1.0  # padding: must not leak into the original-frame map
    mapped = heatmap_to_original(heatmap, meta)
    assert mapped.shape == (8, 2) and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, 0.5)


def test_heatmap_to_original_is_identity_on_the_body_at_scale_one():
    meta = letterbox_meta(6, 2, 6, 4)
    heatmap = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.testing.assert_array_equal(heatmap_to_original(heatmap, meta), heatmap[:, 1:3])
    with pytest.raises(CamError, match="canvas shape"):
        heatmap_to_original(heatmap[:, :3], meta)


def brute_force_centres(evidence: np.ndarray, grid_h: int, grid_w: int, reach: float, power: float) -> np.ndarray:
    """Per cell: the weighted centroid of pixel centres inside the clipped window, by explicit loops."""
    height, width = evidence.shape
    weight = (np.clip(evidence, 0, None) / max(evidence.max(), 1e-30)) ** power
    cell_h, cell_w = height / grid_h, width / grid_w
    out = np.zeros((grid_h, grid_w, 2))
    for r in range(grid_h):
        for c in range(grid_w):
            cx, cy = (c + 0.5) * cell_w, (r + 0.5) * cell_h
            x0, x1 = max(0, int(np.floor(cx - reach * cell_w))), min(width, int(np.ceil(cx + reach * cell_w)))
            y0, y1 = max(0, int(np.floor(cy - reach * cell_h))), min(height, int(np.ceil(cy + reach * cell_h)))
            window = weight[y0:y1, x0:x1]
            if window.sum() <= 1e-12:
                out[r, c] = cx, cy
                continue
            ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
            out[r, c] = (window * xs).sum() / window.sum(), (window * ys).sum() / window.sum()
    return out


@pytest.mark.parametrize(("reach", "power"), [(2.0, 4.0), (1.0, 1.0), (1.5, 2.0)])
def test_refine_cell_centres_equals_a_brute_force_window_centroid(reach, power):
    rng = np.random.default_rng(3)
    evidence = rng.random((2, 40, 24)) ** 6  # sparse-ish, with some all-but-empty windows
    evidence[1, :20] = 0.0  # windows without evidence keep their cell centre
    got = refine_cell_centres(torch.from_numpy(evidence).float(), 5, 3, reach, power).numpy()
    assert got.shape == (2, 5, 3, 2)
    for b in range(2):
        expected = brute_force_centres(evidence[b].astype(np.float32).astype(np.float64), 5, 3, reach, power)
        np.testing.assert_allclose(got[b], expected, atol=1e-3)
    assert np.allclose(got[1, 0, :, 0], (np.arange(3) + 0.5) * 8) and np.allclose(got[1, 0, :, 1], 4.0)


def test_refine_moves_a_cell_onto_a_single_evidence_pixel_within_reach_only():
    evidence = torch.zeros(1, 64, 64)
    evidence[0, 21, 30] = 1.0  # pixel centre (30.5, 21.5): cell (2, 3) of an 8 x 8 grid is centred at (28, 20)
    got = refine_cell_centres(evidence, 8, 8, reach=1.0, power=4.0)[0]
    assert got[2, 3].tolist() == pytest.approx([30.5, 21.5])
    assert got[2, 6].tolist() == pytest.approx([52.0, 20.0])  # 3 cells away: out of reach, centre kept
    with pytest.raises(CamError):
        refine_cell_centres(evidence[0], 8, 8)


@pytest.mark.parametrize("name", sorted(TARGET_LAYERS))
def test_fused_cam_with_evidence_matches_the_forward_only_path(name):
    model = make_model(name).requires_grad_(False)
    images = make_images()
    weight = gap_linear_weights(model)
    logits, cams, evidence = fused_cam_with_evidence(model, images, weight)
    with torch.no_grad():
        features = model.forward_features(images)
        np.testing.assert_allclose(logits.numpy(), model.forward_head(features)[:, 0].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cams.numpy(), fused_cam(features, weight).numpy(), rtol=1e-5, atol=1e-7)
    assert evidence.shape == (2, 128, 64) and float(evidence.min()) >= 0.0 and float(evidence.max()) > 0.0
    x = images.clone().requires_grad_(True)  # evidence = positive part of d(sum CAM)/d input, channels summed
    fused_cam(model.forward_features(x), weight).sum().backward()
    np.testing.assert_allclose(evidence.numpy(), x.grad.sum(1).clamp(min=0).numpy(), rtol=1e-4, atol=1e-7)
    with torch.inference_mode(), pytest.raises(CamError):
        fused_cam_with_evidence(model, images, weight)


def test_cam_and_normalisation_stay_float32_inside_a_bf16_autocast_region():
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(2, 64, 8, 4, generator=generator)
    weight = torch.randn(64, generator=generator)
    expected = fused_cam(features, weight)
    expected_norm, expected_max = normalize_cams(expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_cam(features, weight)
        got_norm, got_max = normalize_cams(got)
    assert got.dtype == got_norm.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)  # bf16 would be off by ~1e-3
    torch.testing.assert_close(got_norm, expected_norm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_max, expected_max, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(TARGET_LAYERS))
def test_cam_path_under_bf16_autocast_equals_the_float32_cam_of_the_same_features(name):
    model, images = make_model(name).requires_grad_(False), make_images()
    weight = gap_linear_weights(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            features = model.forward_features(images)  # the backbone does run in bf16
        _, cams, _ = fused_cam_with_evidence(model, images, weight)
    assert features.dtype == torch.bfloat16 and cams.dtype == torch.float32
    expected = torch.relu(torch.einsum("bchw,c->bhw", features.double(), weight.double())) / (4 * 2)
    torch.testing.assert_close(cams.double(), expected, rtol=1e-5, atol=1e-7)


def test_refine_windows_sit_on_the_models_cell_centre():
    evidence = torch.zeros(1, 64, 64)
    evidence[0, 16, 17] = 1.0  # pixel centre (17.5, 16.5)
    nominal = refine_cell_centres(evidence, 8, 8, reach=1.0, power=4.0)[0]
    shifted = refine_cell_centres(evidence, 8, 8, reach=1.0, power=4.0, cell_centre=(0.0, 0.0))[0]
    # cell (2, 4): nominal centre (36, 20), window x 28..44 misses x = 17.5; centred at (32, 16), x 24..40: still out.
    assert nominal[2, 4].tolist() == pytest.approx([36.0, 20.0]) and shifted[2, 4].tolist() == pytest.approx([32, 16])
    assert shifted[2, 0].tolist() == pytest.approx([0.0, 16.0])  # window x 0..8: no evidence, its centre kept
    # cell (3, 3): the nominal window x 20..36, y 20..36 misses the pixel; the shifted one (16..32 both) holds it
    assert nominal[3, 3].tolist() == pytest.approx([28.0, 28.0])
    assert shifted[3, 3].tolist() == pytest.approx([17.5, 16.5])
