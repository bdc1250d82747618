"""The single timm model factory, and input normalisation on the device (checkpoint files: engine/io/checkpoints.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from engine.config import ModelConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm/torchvision ImageNet statistics; grey repeated to 3 channels
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(RuntimeError):
    """A model that cannot be built or a checkpoint that cannot be loaded."""


def build_classifier(
    cfg: ModelConfig, read_weights: Callable[[str], Mapping[str, torch.Tensor]] | None = None
) -> nn.Module:
    """Returns the timm classifier with one logit (`timm.create_model`, the only call site).

    Args:
        read_weights: reads the state dict of `model.weights` when set (engine/io/checkpoints.py
            `read_start_weights`; `build_classifier_from_files` passes it): core reads no files.

    Raises:
        ModelError: hub weights unreachable (with the offline alternatives), a bad weights file, or `model.weights`
            set without a `read_weights`.
    """
    import timm

    if cfg.output_stride not in (8, 16, 32):
        raise ModelError(f"model.output_stride={cfg.output_stride}: must be 8, 16 or 32")
    # Only a non-default stride is passed: architectures without dilation support accept the default call.
    stride = {} if cfg.output_stride == 32 else {"output_stride": cfg.output_stride}
    try:
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained, num_classes=1, **stride)
    except Exception as exc:  # hub and network errors come in many types
        if cfg.pretrained:
            raise ModelError(
                f"cannot load pretrained weights for '{cfg.name}' ({type(exc).__name__}: {exc}). "
                "Offline? Use model.pretrained=false, or model.weights=<local state dict file>."
            ) from exc
        raise ModelError(f"cannot build model '{cfg.name}': {exc}") from exc
    if cfg.weights:
        if read_weights is None:
            raise ModelError(
                f"model.weights={cfg.weights!r}: build the model with "
                "engine.io.checkpoints.build_classifier_from_files, which reads the file"
            )
        _load_start_weights(model, read_weights(cfg.weights), cfg.weights)
    return model


def _load_start_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Copies the tensors of `state` whose name and shape fit the model (read from `path`, named in the log)."""
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(kept))
    model.load_state_dict(kept, strict=False)
    log.info("loaded %d tensors from %s (skipped %d: %s)", len(kept), path, len(skipped), skipped[:5])


def bf16_autocast(enabled: bool) -> torch.autocast:
    """Returns the CUDA bf16 autocast context of training, the model actors and the bench (off when not enabled)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)


def canvas_to_unit(canvas: torch.Tensor) -> torch.Tensor:
    """Returns float (B, 1, H, W) in [0, 1] from uint8 (B, H, W) canvases, on their device."""
    return canvas.to(torch.float32).div_(255.0).unsqueeze(1)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """Returns (B, 3, H, W) ImageNet-normalised input from gray (B, 1, H, W) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def normalize_canvas(canvas: torch.Tensor) -> torch.Tensor:
    """Returns the model input from uint8 (B, H, W) gray canvases.

    Runs on the tensor's device: uint8 travels over the wire, the float work happens on the GPU.
    """
    return imagenet_normalize(canvas_to_unit(canvas))


def arch_info(cfg: ModelConfig) -> dict[str, Any]:
    """Returns what a checkpoint records to rebuild its architecture: the timm name and the output stride."""
    return {"model": cfg.name, "output_stride": cfg.output_stride}


def probe_cell_centre(model: nn.Module, stride: int, cells: int = 12) -> list[float]:
    """Returns [x, y]: where a feature cell's input evidence centres, in cells from the cell's origin (c * stride).

    The gradient centroid of a probe (Selvaraju et al. 2017 read a CAM cell through its gradient): backprop the
    channel sum of the central cell of ``model.forward_features`` on a seeded random (cells * stride)^2 input to the
    input, and take the centroid of |grad| (pixel centres at +0.5). ``(c + 0.5) stride`` assumes 0.5; symmetric
    "same" padding at every stride-2 layer puts a ResNet's cells near 0.0, TF-style asymmetric padding elsewhere.
    Eval mode for the probe; the model's mode and weights are left as they were.
    """
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    size = cells * stride
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    try:
        with torch.enable_grad():
            features = model.eval().forward_features(x)
            row, col = features.shape[2] // 2, features.shape[3] // 2
            (grad,) = torch.autograd.grad(features[0, :, row, col].float().sum(), x)
    finally:
        model.train(was_training)
    weight = grad.detach().abs().sum(dim=1)[0].double().cpu()
    total = float(weight.sum())
    if total <= 0:  # no gradient reaches the input: keep the pixel-centre assumption
        return [0.5, 0.5]
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    centre_x = float((weight.sum(dim=0) * centres).sum()) / total
    centre_y = float((weight.sum(dim=1) * centres).sum()) / total
    return [round(centre_x / stride - col, 4), round(centre_y / stride - row, 4)]


def model_stride(model: nn.Module, info: dict[str, Any]) -> int:
    """Returns the feature map's reduction: timm's ``feature_info``, else the recorded output_stride (default 32)."""
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        return int(feature_info[-1]["reduction"])
    return int(info.get("output_stride", 32))
