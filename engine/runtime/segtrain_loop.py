"""The Ray Train loop of `make segtrain`: per-worker training on the target stream, rank-0 val, checkpoints, resume.

The shape of runtime/training.py (``train_loop_per_worker``): each worker trains on its shard of the train stream,
rank 0 scores the whole val stream, every epoch is reported with a Ray Train checkpoint (model, optimiser,
scheduler, best so far) and a re-run resumes from the latest one. Epochs count from 1. The best network by pooled
val Dice against the val pseudo masks goes to `<run_dir>/segnet/best.pt` (``engine.io.checkpoints.save_segnet``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.config import TrainConfig
from engine.config_sections import SegTrainConfig
from engine.core.model.augment import random_affine, random_jitter
from engine.core.model.classifier import bf16_autocast, canvas_to_unit, imagenet_normalize
from engine.core.segnet.arrays import SegDiceAccumulator
from engine.core.segnet.network import SegLoss, build_segnet
from engine.io.checkpoints import init_encoder_from_classifier, save_segnet
from engine.io.pause import pause_point
from engine.io.tables import write_part
from engine.runtime.training import (
    _gather,
    _split_ok,
    _unwrap,
    lr_factor,
    optimizer_step,
    report_checkpoint,
    restore_checkpoint,
)

STAGE = "segtrain"


@dataclass(frozen=True)
class SegTrainSettings:
    """What `make segtrain`'s workers read, built by the stage from the run's config (engine/stages/segtrain.py)."""

    run_dir: str  # where seg_epochs, errors and segnet/ are written (and model/best.pt is read)
    run_id: str
    seed: int
    segtrain: SegTrainConfig
    train: TrainConfig  # workers' threads, bf16 and the augmentation, as in `make train`
    arch: dict[str, Any]  # engine/core/segnet/network.py segnet_arch
    steps_per_epoch: int  # batches of one worker per epoch (the LR schedule's unit)
    canvas_h: int  # recorded in segnet/best.pt's info, with the view
    canvas_w: int
    view: str


@dataclass
class SegEpochOutputs:
    """What one worker saw in one epoch (the fields engine.runtime.training._split_ok fills are the same)."""

    loss_sum: float = 0.0
    images: int = 0
    val_loss_sum: float = 0.0
    val: SegDiceAccumulator = field(default_factory=SegDiceAccumulator)
    errors: list[dict[str, Any]] = field(default_factory=list)


def augment_pair(x: torch.Tensor, target: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> tuple:
    """Returns (image, target) after `make train`'s augmentation: one affine for both, jitter on the image only.

    Args:
        x: (B, 1, H, W) image in [0, 1].
        target: (B, 1, H, W) 0/1 float target.
    """
    moved = random_affine(torch.cat([x, target], dim=1), cfg, gen)
    return random_jitter(moved[:, :1], cfg, gen), (moved[:, 1:] >= 0.5).float()


def _tensors(batch: dict[str, np.ndarray], ok: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    canvas = torch.from_numpy(np.ascontiguousarray(batch["canvas"][ok])).to(device)
    target = torch.from_numpy(np.ascontiguousarray(batch["target"][ok])).to(device).float().unsqueeze(1)
    return canvas_to_unit(canvas), target


def train_epoch(model: nn.Module, shard: Any, opt: Any, sched: Any, loss_fn: nn.Module, ctx: dict) -> SegEpochOutputs:
    """Runs one epoch over this worker's shard; returns loss sum, images and error rows."""
    settings: SegTrainSettings = ctx["settings"]
    out = SegEpochOutputs()
    model.train()
    batches = shard.iter_batches(
        batch_size=settings.segtrain.batch_size,
        batch_format="numpy",
        prefetch_batches=2,
        local_shuffle_buffer_size=settings.segtrain.batch_size * 8,
        local_shuffle_seed=settings.seed + ctx["epoch"],
    )
    for batch in batches:
        ok = _split_ok(batch, out, STAGE)
        if not ok.any():
            continue
        x, target = augment_pair(*_tensors(batch, ok, ctx["device"]), settings.train, ctx["gen"])
        with bf16_autocast(ctx["amp"]):
            logits = model(imagenet_normalize(x)).float()
        optimizer_step(loss_fn(logits, target), opt, sched, out, int(ok.sum()))
    return out


@torch.no_grad()
def validate(model: nn.Module, shard: Any, loss_fn: nn.Module, ctx: dict, out: SegEpochOutputs) -> None:
    """Rank 0: scores the whole val stream into `out.val` (Dice vs the val pseudo masks) and `out.val_loss_sum`."""
    settings: SegTrainSettings = ctx["settings"]
    model.eval()
    for batch in shard.iter_batches(batch_size=settings.segtrain.batch_size * 2, batch_format="numpy"):
        ok = _split_ok(batch, out, STAGE)
        if not ok.any():
            continue
        x, target = _tensors(batch, ok, ctx["device"])
        with bf16_autocast(ctx["amp"]):
            logits = model(imagenet_normalize(x)).float()
        out.val_loss_sum += float(loss_fn(logits, target)) * int(ok.sum())
        pred = (torch.sigmoid(logits) >= settings.segtrain.threshold)[:, 0].cpu().numpy()
        out.val.update(pred, target[:, 0].cpu().numpy() > 0)


def record_epoch(parts: list[SegEpochOutputs], ctx: dict, state: dict, seconds: float) -> dict[str, Any]:
    """Rank 0: writes the epoch's seg_epochs row and errors, saves a new best network; returns the metrics."""
    settings: SegTrainSettings = ctx["settings"]
    images = sum(p.images for p in parts)
    val = parts[0].val
    val_images = len(val.lesion_dices) + val.normal_images
    metrics = {
        "epoch": ctx["epoch"],
        "train_loss": sum(p.loss_sum for p in parts) / max(images, 1),
        "val_loss": parts[0].val_loss_sum / max(val_images, 1),
        **val.compute(),
        "lr": ctx["lr"],
        "images": images,
        "val_images": val_images,
        "train_errors": sum(len(p.errors) for p in parts),
        "seconds": seconds,
        "img_per_s": images / max(seconds, 1e-9),
    }
    metrics["is_best"] = bool(val_images) and metrics["val_dice"] > state["best_dice"]
    write_part(settings.run_dir, "seg_epochs", pd.DataFrame([metrics]), f"epoch-{ctx['epoch']:03d}")
    errors = [e for p in parts for e in p.errors]
    if errors:
        write_part(settings.run_dir, "errors", pd.DataFrame(errors).drop_duplicates("image_id"), STAGE)
    if metrics["is_best"]:
        state.update(best_dice=metrics["val_dice"], best_epoch=ctx["epoch"])
        info = {
            **settings.arch,
            "epoch": ctx["epoch"],
            "val_dice": metrics["val_dice"],
            "run_id": settings.run_id,
            "canvas_h": settings.canvas_h,
            "canvas_w": settings.canvas_w,
            "view": settings.view,
            "threshold": settings.segtrain.threshold,
        }
        save_segnet(settings.run_dir, _unwrap(ctx["model"]), info)
    return metrics


def _setup(settings: SegTrainSettings) -> tuple[nn.Module, Any, Any]:
    import ray.train.torch

    segnet = build_segnet(settings.arch)
    if settings.segtrain.init_from_classifier:
        init_encoder_from_classifier(segnet, settings.run_dir)
    model = ray.train.torch.prepare_model(segnet)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.segtrain.lr, weight_decay=settings.segtrain.weight_decay)
    steps = settings.steps_per_epoch
    total = steps * settings.segtrain.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps, total))
    return model, opt, sched


def segtrain_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: trains epochs 1..`segtrain.epochs` of `config["settings"]`, resuming after the latest
    checkpoint."""
    import ray.train
    import ray.train.torch

    settings: SegTrainSettings = config["settings"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(settings.seed + rank)
    device = ray.train.torch.get_device()
    if device.type == "cpu" and settings.train.torch_threads > 0:
        torch.set_num_threads(settings.train.torch_threads)
    model, opt, sched = _setup(settings)
    state = {"best_dice": -1.0, "best_epoch": -1}
    start = restore_checkpoint(model, opt, sched, state) + 1  # epochs count from 1
    loss_fn = SegLoss(settings.segtrain.dice_weight, settings.segtrain.focal_weight)
    amp = device.type == "cuda" and settings.train.amp
    for epoch in range(start, settings.segtrain.epochs + 1):
        started = time.time()
        gen = torch.Generator().manual_seed(settings.seed * 7919 + epoch * 101 + rank)
        ctx = {
            "settings": settings,
            "epoch": epoch,
            "device": device,
            "gen": gen,
            "amp": amp,
            "model": model,
            "lr": sched.get_last_lr()[0],
        }
        out = train_epoch(model, ray.train.get_dataset_shard("train"), opt, sched, loss_fn, ctx)
        if rank == 0:
            validate(_unwrap(model), ray.train.get_dataset_shard("val"), loss_fn, ctx, out)
        parts = _gather(out, world)
        metrics = record_epoch(parts, ctx, state, time.time() - started) if rank == 0 else {"epoch": epoch}
        if rank == 0 and config.get("events") is not None:
            config["events"].put(("epoch", metrics))  # the driver prints it (runtime/fit.py fit_with_progress)
        report_checkpoint(metrics, model, opt, sched, state, rank)
        if rank == 0:
            pause_point(f"segtrain_epoch_{epoch}")  # a kill test stops here, checkpoint reported (engine/io/pause.py)
