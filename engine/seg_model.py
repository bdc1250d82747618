"""The segmentation network: segmentation-models-pytorch on a timm encoder, its loss, init and checkpoint files.

`build_segnet` is the one construction site (`smp.create_model`, encoder `tu-<timm name>`, encoder_weights=None:
nothing is downloaded). The input is the classifier's: the letterboxed canvas as ImageNet-normalised 3 channels
(``engine.model.normalize_canvas``), so the classifier's backbone can initialise the encoder
(``init_encoder_from_classifier``; smp's timm encoder keeps timm's parameter names under ``encoder.model``).
The best network lives in `<run_dir>/segnet/best.pt` (state dict + info JSON), loaded with weights_only=True.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import torch
from torch import nn

from engine.config import Config
from engine.model import ModelError, read_checkpoint
from engine.tables import resolve_fs

log = logging.getLogger(__name__)
SEGNET_DIR = "segnet"


def segnet_arch(cfg: Config) -> dict[str, Any]:
    """Returns what rebuilds the network: arch, timm encoder name, decoder widths."""
    seg = cfg.segtrain
    return {"arch": seg.arch, "encoder": seg.encoder or cfg.model.name, "decoder_channels": list(seg.decoder_channels)}


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
        return smp.create_model(arch["arch"], encoder_name=f"tu-{arch['encoder']}", encoder_weights=None,
                                encoder_depth=depth, in_channels=3, classes=1, **extra)  # fmt: skip
    except Exception as exc:  # smp and timm raise many types for a bad name or depth
        raise ModelError(f"cannot build segnet {arch}: {type(exc).__name__}: {exc}") from exc


def init_encoder_from_classifier(segnet: nn.Module, run_dir: str) -> int:
    """Copies the run's classifier backbone (model/best.pt, weights_only=True) into the encoder; returns tensors copied.

    Only tensors whose name and shape match are copied (the classifier head has no counterpart).

    Raises:
        ModelError: no trained classifier in the run, or not one tensor matches (another architecture).
    """
    payload, path = read_checkpoint(run_dir, "model/best.pt", "make train` or set `segtrain.init_from_classifier=false")
    encoder = segnet.encoder.model
    own = encoder.state_dict()
    kept = {k: v for k, v in payload["model"].items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise ModelError(f"{path}: no classifier tensor fits the segnet encoder; set segtrain.encoder to its timm name")
    encoder.load_state_dict(kept, strict=False)
    log.info("segnet encoder: %d of %d tensors from %s", len(kept), len(own), path)
    return len(kept)


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


def save_segnet(run_dir: str, model: nn.Module, info: dict[str, Any]) -> str:
    """Writes `<run_dir>/segnet/best.pt` (state dict + info) and `best.json` (each via a temp file); returns .pt."""
    fs, root = resolve_fs(run_dir)
    folder = f"{root}/{SEGNET_DIR}"
    fs.create_dir(folder, recursive=True)
    buffer = io.BytesIO()
    torch.save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": json.dumps(info)},
               buffer)  # fmt: skip
    for name, data in (("best.pt", buffer.getvalue()), ("best.json", json.dumps(info, indent=2).encode())):
        with fs.open_output_stream(f"{folder}/.{name}.tmp") as out:
            out.write(data)
        fs.move(f"{folder}/.{name}.tmp", f"{folder}/{name}")
    return f"{folder}/best.pt"


def load_segnet(run_dir: str) -> tuple[nn.Module, dict[str, Any]]:
    """Returns the run's best segnet (eval mode, CPU) and its info; weights_only=True.

    Raises:
        ModelError: no trained segnet in the run, or weights that do not fit the recorded architecture.
    """
    payload, path = read_checkpoint(run_dir, f"{SEGNET_DIR}/best.pt", "make segtrain")
    info = json.loads(payload["info"])
    model = build_segnet(info)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit {info}: {exc}") from exc
    return model.eval(), info
