"""CAM math on tensors: fused (forward-only) Grad-CAM for GAP+linear heads, autograd Grad-CAM, heatmap resizing.

Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391): ``cam = ReLU(sum_c alpha_c A_c)`` with
``alpha_c = mean_ij d y / d A_c(i, j)``. For a head ``y = sum_c w_c mean_ij A_c(i, j) + b`` (global average
pool + one linear layer, timm ResNet/ResNet-RS/EfficientNet) the gradient is ``w_c / (h w)`` at every cell, so
Grad-CAM equals ``ReLU(sum_c w_c A_c) / (h w)``: classic CAM (Zhou et al., CVPR 2016) computed from the same
``forward_features`` output as the prediction, no backward pass (the derivation above). Torch functions are
device-agnostic and return float32; heatmap resizing works on numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from engine.core.localization.basins import basin_window_sums, cam_basins, neighbour_spans
from engine.core.scans.letterbox import LetterboxMeta, resize_image


class CamError(ValueError):
    """Invalid CAM input: tensor ranks or shapes that do not match."""


def _probe_is_avg_pool_linear(model: nn.Module, classifier: nn.Linear) -> bool:
    """Returns whether model.forward_head(x) == mean_hw(x) @ W.T + b on a fixed probe tensor."""
    weight = classifier.weight
    probe = torch.linspace(-1.0, 1.0, 2 * weight.shape[1] * 6, device=weight.device)
    probe = torch.sin(7.0 * probe).reshape(2, weight.shape[1], 3, 2).to(weight.dtype)
    try:
        with torch.no_grad():
            got = model.forward_head(probe)
    except (RuntimeError, ValueError, TypeError):  # e.g. a conv_head expecting other channels
        return False
    with torch.no_grad():
        expected = classifier(probe.mean(dim=(2, 3)))
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    tolerance = 1e-3 * (1.0 + float(expected.abs().max()))
    return bool((got.float() - expected.float()).abs().max() <= tolerance)


def gap_linear_weights(model: nn.Module) -> torch.Tensor | None:
    """Returns the (C,) classifier weight of logit 0 when the head is exactly GAP + one linear; else None.

    Accepted: timm models whose ``global_pool.pool_type == 'avg'``, whose ``get_classifier()`` is an
    ``nn.Linear`` with one output, and whose ``forward_head`` is verified on a probe tensor to be exactly
    mean-pool then that linear layer (so a ConvNeXt head norm, a MobileNetV3 ``conv_head`` or active head
    dropout in train mode all give None). With None, use ``gradcam_autograd``.
    """
    pool = getattr(model, "global_pool", None)
    get_classifier = getattr(model, "get_classifier", None)
    if getattr(pool, "pool_type", None) != "avg" or not callable(get_classifier):
        return None
    classifier = get_classifier()
    if not isinstance(classifier, nn.Linear) or classifier.out_features != 1:
        return None
    if not hasattr(model, "forward_head") or not _probe_is_avg_pool_linear(model, classifier):
        return None
    return classifier.weight[0].detach()


def float32_region(device: torch.device) -> torch.autocast:
    """Returns a context with autocast off on `device`: CAM math stays float32 inside a bf16 autocast region.

    Under autocast einsum/bmm run in bf16 (8 mantissa bits) whatever the input dtype, so nearby CAM values round
    to the same number and peaks tie; the features may be bf16, the weighted sum and its normalisation are not.
    """
    return torch.autocast(device.type, enabled=False)


def fused_cam(features: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """Returns Grad-CAM for a GAP+linear head, ``ReLU(sum_c w_c A_c) / (h w)``, float32 (B, h, w).

    Computed in float32 with autocast off (``float32_region``), also inside a bf16 autocast region.

    Args:
        features: (B, C, h, w) output of ``model.forward_features`` (any float dtype, any device).
        class_weight: (C,) from ``gap_linear_weights``.
    """
    if features.ndim != 4:
        raise CamError(f"features must be (B, C, h, w), got shape {tuple(features.shape)}")
    if class_weight.ndim != 1 or class_weight.shape[0] != features.shape[1]:
        raise CamError(f"class_weight must be ({features.shape[1]},), got shape {tuple(class_weight.shape)}")
    h, w = features.shape[2], features.shape[3]
    with float32_region(features.device):
        weighted = torch.einsum("bchw,c->bhw", features.float(), class_weight.to(features.device).float())
        return torch.relu(weighted) / (h * w)


def gradcam_autograd(
    model: nn.Module, images: torch.Tensor, target_layer: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns batched Grad-CAM (B, h, w) float32 for logit 0 and the logits (B,), both detached.

    Works for any head. A forward hook takes ``target_layer``'s output A (B, C, h, w); with
    ``y = model(images)[:, 0]``, ``alpha = d(sum y)/dA`` averaged over (h, w) and ``cam = ReLU(sum_c alpha_c A_c)``.
    Samples are independent only in eval mode (batch norm in train mode mixes them). The hook is removed
    even when the forward or backward pass fails.
    """
    if torch.is_inference_mode_enabled():
        raise CamError("gradcam_autograd needs autograd: call it outside torch.inference_mode()")
    captured: list[torch.Tensor] = []

    def keep_activation(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise CamError(f"target layer must output one (B, C, h, w) tensor, got {type(output).__name__}")
        if output.requires_grad:
            captured.append(output)
            return None
        leaf = output.detach().requires_grad_(True)  # frozen backbone: differentiate w.r.t. A directly
        captured.append(leaf)
        return leaf

    handle = target_layer.register_forward_hook(keep_activation)
    try:
        with torch.enable_grad():
            logits = model(images)[:, 0]
            if not captured:
                raise CamError("target_layer was not called during model(images)")
            activation = captured[-1]
            (grads,) = torch.autograd.grad(logits.sum(), activation)
    finally:
        handle.remove()
    with float32_region(activation.device):
        alpha = grads.float().mean(dim=(2, 3))
        cam = torch.relu(torch.einsum("bchw,bc->bhw", activation.detach().float(), alpha))
    return cam, logits.detach()


def fused_cam_with_evidence(
    model: nn.Module, images: torch.Tensor, class_weight: torch.Tensor, forward_features: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (logits (B,), fused CAMs (B, h, w), evidence (B, H, W)), all detached float32.

    The evidence map says which input pixels raise the CAM: the positive part of ``d(sum of the CAM)/d input``,
    summed over the input channels. A CAM cell is a whole stride wide and its peak can sit a cell away from the hot
    spot that drives it; the evidence is pixel-sharp (``refine_cell_centres``). One backward pass per batch,
    w.r.t. the input only; samples are independent in eval mode. `forward_features` replaces
    ``model.forward_features`` (e.g. its ``torch.compile`` form).
    """
    if torch.is_inference_mode_enabled():
        raise CamError("fused_cam_with_evidence needs autograd: call it outside torch.inference_mode()")
    with torch.enable_grad():
        images = images.detach().requires_grad_(True)
        features = (forward_features or model.forward_features)(images)
        logits = model.forward_head(features)[:, 0]
        cams = fused_cam(features, class_weight)
        (grad,) = torch.autograd.grad(cams.sum(), images)
    return logits.detach().float(), cams.detach(), grad.float().sum(dim=1).clamp_(min=0)


def _integral(values: torch.Tensor) -> torch.Tensor:
    """Returns the (B, H + 1, W + 1) float64 summed-area table of (B, H, W) values."""
    table = values.double().cumsum(dim=1).cumsum(dim=2)
    return torch.nn.functional.pad(table, (1, 0, 1, 0))


def refine_cell_centres(
    evidence: torch.Tensor,
    grid_h: int,
    grid_w: int,
    reach: float = 2.0,
    power: float = 4.0,
    cams: torch.Tensor | None = None,
    cell_centre: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """Returns (B, grid_h, grid_w, 2) float32 canvas (x, y): per CAM cell, where its neighbourhood's evidence lies.

    For cell (r, c), centred at ((c + fx) W / grid_w, (r + fy) H / grid_h) with (fx, fy) = `cell_centre` (the
    model's ``core.model.probe_cell_centre``; 0.5 is the pixel-centre assumption), the window reaches `reach` cells
    each way (clipped to the canvas); the result is the centroid of the pixel centres weighted by
    ``(evidence / image max) ** power`` (a high power follows the strongest evidence, not the window's middle).
    With `cams`, only the pixels of cells in the cell's own CAM basin count (``basins.cam_basins``): the
    evidence is the gradient of the summed CAM, so without it a weak peak within reach of a strong blob is pulled
    onto the blob and NMS then drops it. A window without evidence keeps the cell centre. Summed-area tables make
    it O(H W) per image (plus O(h w reach^2) cell work) on any device.

    Args:
        evidence: (B, H, W) non-negative canvas-resolution map (``fused_cam_with_evidence``).
        grid_h, grid_w: the CAM's (h, w).
        reach: window half-size in cells.
        power: weighting exponent.
        cams: optional (B, grid_h, grid_w) CAMs whose basins bound each window (pixels belong to the nearest
            (c + 0.5) cell).
        cell_centre: where a cell's evidence centres, in cells from its origin.
    """
    if evidence.ndim != 3:
        raise CamError(f"evidence must be (B, H, W), got shape {tuple(evidence.shape)}")
    if grid_h < 1 or grid_w < 1 or reach <= 0 or power <= 0:
        raise CamError(f"need a positive grid, reach and power, got {grid_h}x{grid_w}, {reach}, {power}")
    batch, height, width = evidence.shape
    if cams is not None and tuple(cams.shape) != (batch, grid_h, grid_w):
        raise CamError(f"cams must be {(batch, grid_h, grid_w)}, got shape {tuple(cams.shape)}")
    device = evidence.device
    weight = evidence.double().clamp(min=0)
    weight = (weight / weight.flatten(1).amax(dim=1).clamp(min=1e-30).view(batch, 1, 1)) ** power
    xs = torch.arange(width, device=device, dtype=torch.float64) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float64) + 0.5
    tables = [_integral(weight), _integral(weight * xs), _integral(weight * ys[:, None])]
    cell_w, cell_h = width / grid_w, height / grid_h
    centre_x = (torch.arange(grid_w, device=device, dtype=torch.float64) + float(cell_centre[0])) * cell_w
    centre_y = (torch.arange(grid_h, device=device, dtype=torch.float64) + float(cell_centre[1])) * cell_h
    shift = max(abs(float(cell_centre[0]) - 0.5), abs(float(cell_centre[1]) - 0.5))
    span = math.ceil(reach + 0.5 + shift) + 1  # cells a window can touch on each side, pixel rounding included
    cols = neighbour_spans(
        grid_w,
        width,
        (centre_x - reach * cell_w).floor().clamp(0, width).long(),
        (centre_x + reach * cell_w).ceil().clamp(0, width).long(),
        span,
    )
    rows = neighbour_spans(
        grid_h,
        height,
        (centre_y - reach * cell_h).floor().clamp(0, height).long(),
        (centre_y + reach * cell_h).ceil().clamp(0, height).long(),
        span,
    )
    basins = cam_basins(cams) if cams is not None else torch.zeros(batch, grid_h, grid_w, device=device).long()
    total, sum_x, sum_y = basin_window_sums(tables, basins, rows, cols)
    has = total > 1e-12
    safe = torch.where(has, total, torch.ones_like(total))
    out_x = torch.where(has, sum_x / safe, centre_x.view(1, 1, grid_w).expand_as(total))
    out_y = torch.where(has, sum_y / safe, centre_y.view(1, grid_h, 1).expand_as(total))
    return torch.stack([out_x, out_y], dim=-1).float()


def normalize_cams(cams: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns per-image min-max normalised maps in [0, 1] (B, h, w) and each raw maximum (B,).

    The original pipeline's normalisation: ``(cam - min) / (max - min + eps)``. It makes maps
    readable but not comparable across images, hence the raw maximum is returned too (README.md "What changed").
    An all-zero (or constant) map stays all zero. Float32 with autocast off (``float32_region``).
    """
    if cams.ndim != 3:
        raise CamError(f"cams must be (B, h, w), got shape {tuple(cams.shape)}")
    with float32_region(cams.device):
        flat = cams.float().flatten(1)
        low = flat.min(dim=1, keepdim=True).values
        high = flat.max(dim=1, keepdim=True).values
        normalised = (flat - low) / (high - low + eps)
    return normalised.reshape(cams.shape), high[:, 0]


def upsample_heatmap(heatmap: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Returns a stored feature-resolution heatmap (h, w) resized to (out_h, out_w), float32, bilinear.

    This is THE way a stored heatmap becomes a canvas-resolution map. OpenCV INTER_LINEAR uses pixel-centre
    alignment: feature cell (r, c) is centred at canvas ((c + 0.5) out_w / w, (r + 0.5) out_h / h), the same
    geometry ``boxes.extract_pseudo_boxes`` uses for peaks. The original pipeline also upsampled with cv2
    bilinear.
    """
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise CamError(f"heatmap must be a non-empty 2-D (h, w) array, got shape {heatmap.shape}")
    if int(out_h) < 1 or int(out_w) < 1:
        raise CamError(f"output size must be positive, got ({out_h}, {out_w})")
    return cv2.resize(heatmap.astype(np.float32), (int(out_w), int(out_h)), interpolation=cv2.INTER_LINEAR)


def heatmap_to_original(heatmap: np.ndarray, meta: LetterboxMeta) -> np.ndarray:
    """Returns a canvas-resolution map cropped to the image body and resized to (orig_h, orig_w), float32.

    Args:
        heatmap: (canvas_h, canvas_w) map in the canvas frame (e.g. from ``upsample_heatmap``).
        meta: letterbox meta of the image.
    """
    if heatmap.shape != (meta.canvas_h, meta.canvas_w):
        raise CamError(f"heatmap must have the canvas shape {(meta.canvas_h, meta.canvas_w)}, got {heatmap.shape}")
    x1, y1, x2, y2 = meta.body_box()
    body = np.ascontiguousarray(heatmap[y1:y2, x1:x2], dtype=np.float32)
    return resize_image(body, meta.orig_h, meta.orig_w)
