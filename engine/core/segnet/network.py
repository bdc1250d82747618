"""The segmentation network: segmentation-models-pytorch on a timm encoder, and its loss (files: io/checkpoints.py).

`build_segnet` is the one construction site (`smp.create_model`, encoder `tu-<timm name>`, encoder_weights=None:
nothing is downloaded). The input is the classifier's: the letterboxed canvas as ImageNet-normalised 3 channels
(``engine.core.model.classifier.normalize_canvas``), so the classifier's backbone can initialise the encoder
(``init_encoder_from_classifier``; smp's timm encoder keeps timm's parameter names under ``encoder.model``).
The best network lives in `<run_dir>/segnet/best.pt` (state dict + info JSON), loaded with weights_only=True.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from engine.config_sections import SegTrainConfig
from engine.core.model.classifier import ModelError

log = logging.getLogger(__name__)
SEGNET_DIR = "segnet"


def segnet_arch(seg: SegTrainConfig, model_name: str) -> dict[str, Any]:
    """Returns what rebuilds the network: arch, timm encoder name (`segtrain.encoder`, else the classifier's
    `model_name`), decoder widths."""
    return {"arch": seg.arch, "encoder": seg.encoder or model_name, "decoder_channels": list(seg.decoder_channels)}


def build_segnet(arch: dict[str, Any]) -> nn.Module:
    """Returns the smp model of a ``segnet_arch`` record: 3 input channels, one logit per pixel.

    Raises:
        ModelError: segmentation-models-pytorch missing, or an encoder / decoder it cannot build.
    """
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        raise ModelError("make segtrain needs segmentation-models-pytorch (pip install -e .)") from exc
    extra = {"decoder_channels": tuple(arch["decoder_channels"])} if arch["arch"] == "Unet" else {}
    depth = len(arch["decoder_channels"]) if arch["arch"] == "Unet" else 5
    try:
        return smp.create_model(
            arch["arch"],
            encoder_name=f"tu-{arch['encoder']}",
            encoder_weights=None,
            encoder_depth=depth,
            in_channels=3,
            classes=1,
            **extra,
        )
    except Exception as exc:  # smp and timm raise many types for a bad name or depth
        raise ModelError(f"cannot build segnet {arch}: {type(exc).__name__}: {exc}") from exc


class SegLoss(nn.Module):
    """dice_weight x smp DiceLoss + focal_weight x smp FocalLoss, binary, on logits (B, 1, H, W)."""

    def __init__(self, dice_weight: float, focal_weight: float) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.focal = FocalLoss(mode="binary")
        self.dice_weight, self.focal_weight = dice_weight, focal_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Returns the weighted loss of logits vs a 0/1 float target of the same shape."""
        return self.dice_weight * self.dice(logits, target) + self.focal_weight * self.focal(logits, target)
