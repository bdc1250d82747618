"""Checkpoint files: the classifier and the segmentation network, saved and loaded with weights_only=True; the
model weights core receives (a classifier's start weights, the SAM-family checkpoints) and Ray Train's state.pt."""

from __future__ import annotations

import io
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.config import ModelConfig
from engine.config_sections import MasksConfig
from engine.core.model.classifier import ModelError, build_classifier, model_stride, probe_cell_centre
from engine.core.segnet.network import SEGNET_DIR, build_segnet
from engine.io.fs import resolve_fs

if TYPE_CHECKING:
    from engine.core.masks.segmenters import Segmenter

log = logging.getLogger(__name__)


def read_weights(path: str, map_location: str = "cpu") -> Any:
    """Returns the payload of a local checkpoint file, loaded with weights_only=True onto `map_location`."""
    return torch.load(path, map_location=map_location, weights_only=True)


def read_start_weights(path: str) -> dict[str, torch.Tensor]:
    """Returns the state dict of a local `model.weights` file: .safetensors, or a torch file (weights_only=True)
    holding the state dict itself or under "model"."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = read_weights(path)
    return state.get("model", state) if isinstance(state, dict) else state


def build_classifier_from_files(cfg: ModelConfig) -> nn.Module:
    """Returns ``build_classifier(cfg)`` with `model.weights` (when set) read by ``read_start_weights``.

    Raises:
        ModelError: as ``engine.core.model.classifier.build_classifier``.
    """
    return build_classifier(cfg, read_start_weights)


def build_segmenter_from_files(name: str, cfg: MasksConfig) -> Segmenter:
    """Returns segmenter `name` (engine/core/masks/registry.py); a model segmenter's checkpoint is read by
    ``read_weights`` (weights_only=True).

    Raises:
        MaskError: as ``engine.core.masks.registry.build_segmenter``.
    """
    from engine.core.masks.registry import build_segmenter

    return build_segmenter(name, cfg, read_weights)


def save_model(run_dir: str, model: nn.Module, info: dict[str, Any]) -> str:
    """Writes `<run_dir>/model/best.pt` (state dict + info) and `best.json`; returns the .pt path.

    The info gains `cell_centre` (``probe_cell_centre``) unless the caller gave one. A trained classifier's info
    carries its contract (engine/contract.py `contract_info`: `contract`, `cam_settings`, `threshold`), which
    `make cam` and `make infer` read back from best.json before they score (engine/stages/_scoring.py scoring_config).
    """
    if "cell_centre" not in info:
        info = {**info, "cell_centre": probe_cell_centre(model, model_stride(model, info))}
    fs, root = resolve_fs(run_dir)
    fs.create_dir(f"{root}/model", recursive=True)
    buffer = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "info": json.dumps(info)}, buffer)
    for name, payload in (("best.pt", buffer.getvalue()), ("best.json", json.dumps(info, indent=2).encode())):
        tmp = f"{root}/model/.{name}.tmp"
        with fs.open_output_stream(tmp) as out:
            out.write(payload)
        fs.move(tmp, f"{root}/model/{name}")
    return f"{root}/model/best.pt"


def read_checkpoint(run_dir: str, relative: str, made_by: str) -> tuple[dict[str, Any], str]:
    """Returns (the payload of `<run_dir>/<relative>` loaded with weights_only=True on CPU, its path).

    Raises:
        ModelError: no such file; names `made_by`, the command that writes it.
    """
    fs, root = resolve_fs(run_dir)
    path = f"{root}/{relative}"
    try:
        with fs.open_input_stream(path) as stream:
            return torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True), path
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no trained model; run `{made_by}` first") from exc


def load_training_state(folder: str) -> dict[str, Any]:
    """Returns the `state.pt` of a Ray Train checkpoint folder (model, optimizer, scheduler and the run's counters),
    loaded on CPU with weights_only=True."""
    return torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)


def load_model(run_dir: str, cfg: ModelConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Returns the run's best model (eval mode, CPU) and its info (with `cell_centre`); weights_only=True loading.

    Raises:
        ModelError: no trained model in the run, or weights that do not fit the configured model.
    """
    payload, path = read_checkpoint(run_dir, "model/best.pt", "make train")
    info = json.loads(payload["info"])
    arch = ModelConfig(
        name=info.get("model", cfg.name), pretrained=False, output_stride=int(info.get("output_stride", 32))
    )
    model = build_classifier(arch)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit model '{arch.name}': {exc}") from exc
    if "cell_centre" not in info:  # a checkpoint written before cell centres were recorded
        info["cell_centre"] = probe_cell_centre(model, model_stride(model, info))
    return model.eval(), info


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


def save_segnet(run_dir: str, model: nn.Module, info: dict[str, Any]) -> str:
    """Writes `<run_dir>/segnet/best.pt` (state dict + info) and `best.json` (each via a temp file); returns .pt."""
    fs, root = resolve_fs(run_dir)
    folder = f"{root}/{SEGNET_DIR}"
    fs.create_dir(folder, recursive=True)
    buffer = io.BytesIO()
    torch.save(
        {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "info": json.dumps(info)}, buffer
    )
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
