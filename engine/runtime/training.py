"""The Ray Train loop: per-worker training on the image stream, per-epoch val, checkpoints, resume.

Runs inside Ray Train workers (`TorchTrainer`, engine/runtime/fit.py); `engine.stages.train.run_train` builds
its `TrainSettings` and starts it.
Each worker trains on its shard of the train stream; rank 0 alone scores the whole val set, so every val
image gets exactly one prediction per epoch whatever the number of workers.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.config import ModelConfig, TrainConfig
from engine.core.metrics.classification import binary_metrics
from engine.core.model.augment import augment
from engine.core.model.classifier import arch_info, bf16_autocast, canvas_to_unit, imagenet_normalize
from engine.core.scans.views import mirror_rows, mirrored
from engine.io.checkpoints import build_classifier_from_files, load_training_state, save_model
from engine.io.pause import pause_point
from engine.io.tables import write_part


@dataclass(frozen=True)
class TrainSettings:
    """What `make train`'s workers read, built by the stage from the run's config (engine/stages/train.py)."""

    run_dir: str  # where the epochs, preds, errors tables and model/ are written
    run_id: str
    seed: int
    train: TrainConfig
    model: ModelConfig
    steps_per_epoch: int  # batches of one worker per epoch (the LR schedule's unit)
    pos_weight: float  # BCE pos_weight = N_neg / N_pos of the train rows
    events_s: float  # rank 0 sends its batch count at most this often (log.events_s; 0: at every batch)
    canvas_h: int  # recorded in model/best.json, with the view and the contract
    canvas_w: int
    view: str
    contract: dict[str, Any]  # engine/contract.py contract_info of the run's config


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Returns the LR multiplier: linear warm-up to 1, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class EpochOutputs:
    """What one worker saw in one epoch."""

    loss_sum: float = 0.0
    images: int = 0  # train images trained on (decoded fine)
    rows_seen: int = 0  # train rows this worker's shard yielded (images + error rows)
    val_loss_sum: float = 0.0
    val_rows: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] | None = None


def _split_ok(batch: dict[str, np.ndarray], out: EpochOutputs, stage: str) -> np.ndarray:
    ok = np.asarray(batch["error"]) == ""
    for i in np.nonzero(~ok)[0]:
        out.errors.append(
            {
                "file": batch["path"][i],
                "line": None,
                "image_id": batch["image_id"][i],
                "stage": stage,
                "reason": batch["error"][i],
                "split": batch["split"][i],
            }
        )
    return ok


def _inputs(batch: dict[str, np.ndarray], ok: np.ndarray, device: torch.device) -> torch.Tensor:
    """Returns the uint8 canvases of the `ok` rows on `device`, ANT rows mirrored (engine/core/scans/views.py)."""
    canvas = mirror_rows(batch["canvas"][ok], mirrored(batch["view"][ok]))
    return torch.from_numpy(np.ascontiguousarray(canvas)).to(device, non_blocking=True)


def train_epoch(model: nn.Module, shard: Any, opt: Any, sched: Any, loss_fn: nn.Module, ctx: dict) -> EpochOutputs:
    """Runs one training epoch over this worker's shard; returns loss sum, images and errors."""
    settings: TrainSettings = ctx["settings"]
    out = EpochOutputs(errors=[])
    model.train()
    batches = shard.iter_batches(
        batch_size=settings.train.batch_size,
        batch_format="numpy",
        prefetch_batches=2,
        local_shuffle_buffer_size=settings.train.batch_size * 8,
        local_shuffle_seed=settings.seed + ctx["epoch"] - 1,
    )
    sent = time.monotonic()
    for done, batch in enumerate(batches, start=1):
        # rank 0 only: the batches done so far, at most once every `log.events_s` (0: at every batch)
        if ctx.get("events") is not None and time.monotonic() - sent >= settings.events_s:
            ctx["events"].put(("batches", ctx["epoch"], done - 1))
            sent = time.monotonic()
        out.rows_seen += len(batch["image_id"])
        ok = _split_ok(batch, out, "train")
        if not ok.any():
            continue
        x = augment(canvas_to_unit(_inputs(batch, ok, ctx["device"])), settings.train, ctx["gen"])
        y = torch.as_tensor(batch["label"][ok], dtype=torch.float32, device=ctx["device"])
        with bf16_autocast(ctx["amp"]):
            logits = model(imagenet_normalize(x))[:, 0].float()
        optimizer_step(loss_fn(logits, y), opt, sched, out, int(ok.sum()))
    return out


def optimizer_step(loss: torch.Tensor, opt: Any, sched: Any, out: Any, images: int) -> None:
    """One optimizer and scheduler step on `loss` (the mean over `images`); adds both to `out` (loss_sum, images)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    out.loss_sum += float(loss.detach()) * images
    out.images += images


@torch.no_grad()
def validate(model: nn.Module, shard: Any, loss_fn: nn.Module, ctx: dict, out: EpochOutputs) -> None:
    """Predicts the whole val stream into `out.val_rows`; counts undecodable rows as errors.

    Called on rank 0 only, with the unwrapped model: a DDP forward would wait for the other workers.
    """
    settings: TrainSettings = ctx["settings"]
    model.eval()
    out.val_rows = []
    for batch in shard.iter_batches(batch_size=settings.train.batch_size * 2, batch_format="numpy"):
        ok = _split_ok(batch, out, "train")
        if not ok.any():
            continue
        x = imagenet_normalize(canvas_to_unit(_inputs(batch, ok, ctx["device"])))
        with bf16_autocast(ctx["amp"]):
            logits = model(x)[:, 0].float()
        y = torch.as_tensor(batch["label"][ok], dtype=torch.float32, device=ctx["device"])
        out.val_loss_sum += float(loss_fn(logits, y)) * int(ok.sum())
        for i, j in enumerate(np.nonzero(ok)[0]):
            out.val_rows.append(
                {
                    "image_id": batch["image_id"][j],
                    "patient_id": batch["patient_id"][j],
                    "view": batch["view"][j],
                    "folder": batch["folder"][j],
                    "y_true": int(batch["label"][j]),
                    "logit": float(logits[i]),
                }
            )


def _gather(out: EpochOutputs, world: int) -> list[EpochOutputs]:
    if world == 1:
        return [out]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, out)
    return gathered


def record_epoch(parts: list[EpochOutputs], ctx: dict, state: dict, seconds: float) -> dict[str, Any]:
    """Rank 0: writes the epoch's val preds, epoch row and errors; returns the reported metrics."""
    settings: TrainSettings = ctx["settings"]
    rows = pd.DataFrame([r for p in parts for r in p.val_rows])
    images = sum(p.images for p in parts)
    y_prob = 1 / (1 + np.exp(-rows["logit"].to_numpy())) if len(rows) else np.zeros(0)
    auc = binary_metrics(rows["y_true"].to_numpy(), y_prob, 0.5).auc if len(rows) else None
    metrics = {
        "epoch": ctx["epoch"],
        "train_loss": sum(p.loss_sum for p in parts) / max(images, 1),
        "val_loss": sum(p.val_loss_sum for p in parts) / max(len(rows), 1),
        "val_auc": float("nan") if auc is None else auc,
        "lr": ctx["lr"],
        "images": images,
        "train_errors": sum(len(p.errors) for p in parts),
        "train_rows_seen": sum(p.rows_seen for p in parts),
        "val_images": len(rows),
        "seconds": seconds,
        "img_per_s": images / max(seconds, 1e-9),
    }
    is_best = auc is not None and auc > state["best_auc"]
    metrics["is_best"] = is_best
    epoch_tag = f"epoch-{ctx['epoch']:03d}"
    if len(rows):
        preds = rows.assign(
            y_prob=y_prob,
            epoch=ctx["epoch"],
            run_id=ctx["run_id"],
            model=settings.model.name,
            stage="train",
            split="val",
            qc_flags=None,
        )
        write_part(settings.run_dir, "preds", preds, epoch_tag)
    write_part(settings.run_dir, "epochs", pd.DataFrame([metrics]), epoch_tag)
    errors = [e for p in parts for e in p.errors]
    if errors:
        write_part(settings.run_dir, "errors", pd.DataFrame(errors).drop_duplicates("image_id"), "train")
    if is_best:
        state.update(best_auc=auc, best_epoch=ctx["epoch"])
        info = {
            **arch_info(settings.model),
            "epoch": ctx["epoch"],
            "val_auc": auc,
            "run_id": ctx["run_id"],
            "canvas_h": settings.canvas_h,
            "canvas_w": settings.canvas_w,
            "view": settings.view,
            **settings.contract,
        }
        save_model(settings.run_dir, _unwrap(ctx["model"]), info)
    return metrics


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def epochs_done(saved: dict[str, Any]) -> int:
    """Returns how many epochs a checkpoint's state holds: `epochs_done`, or (older runs) the 0-based `epoch` + 1."""
    return int(saved["epochs_done"]) if "epochs_done" in saved else int(saved["epoch"]) + 1


def restore_checkpoint(model: nn.Module, opt: Any, sched: Any, state: dict) -> int:
    """Loads the latest Ray Train checkpoint if any (weights_only=True) into model, optimizer, scheduler and the
    `state` keys it saved (make train's best_auc, make segtrain's best_dice, best_epoch); returns the epochs done."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        saved = load_training_state(folder)
    _unwrap(model).load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    state.update({k: saved[k] for k in state if k in saved})
    return epochs_done(saved)


def report_checkpoint(metrics: dict, model: nn.Module, opt: Any, sched: Any, state: dict, rank: int) -> None:
    """Reports an epoch's numeric metrics to Ray Train, with rank 0's checkpoint (model, optimizer, scheduler,
    `state`, the epoch done)."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            payload = {
                "model": _unwrap(model).state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": metrics["epoch"],
                "epochs_done": metrics["epoch"],
                **state,
            }
            torch.save(payload, os.path.join(folder, "state.pt"))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, int | float)}, checkpoint=checkpoint)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: trains `train.epochs` epochs of `config["settings"]`, resuming from the latest checkpoint."""
    import ray.train
    import ray.train.torch

    settings: TrainSettings = config["settings"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(settings.seed + rank)
    device = ray.train.torch.get_device()
    if device.type == "cpu" and settings.train.torch_threads > 0:  # Ray caps a 1-CPU worker at 1 thread
        torch.set_num_threads(settings.train.torch_threads)
    model = ray.train.torch.prepare_model(build_classifier_from_files(settings.model))
    opt = torch.optim.AdamW(model.parameters(), lr=settings.train.lr, weight_decay=settings.train.weight_decay)
    total = settings.steps_per_epoch * settings.train.epochs
    warmup = max(1, int(settings.steps_per_epoch * settings.train.warmup_epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, warmup, total))
    state = {"best_auc": -1.0, "best_epoch": -1}
    start = restore_checkpoint(model, opt, sched, state)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(settings.pos_weight, device=device))
    amp = device.type == "cuda" and settings.train.amp
    events = config.get("events") if rank == 0 else None
    for index in range(start, settings.train.epochs):
        started = time.time()
        gen = torch.Generator().manual_seed(settings.seed * 7919 + index * 101 + rank)
        # ctx["epoch"] is the epoch's number, counted from 1 (terminal, tables, best.json); `index` counts from 0.
        ctx = {
            "settings": settings,
            "epoch": index + 1,
            "device": device,
            "gen": gen,
            "amp": amp,
            "model": model,
            "run_id": settings.run_id,
            "lr": sched.get_last_lr()[0],
            "events": events,
        }
        out = train_epoch(model, ray.train.get_dataset_shard("train"), opt, sched, loss_fn, ctx)
        if rank == 0:
            validate(_unwrap(model), ray.train.get_dataset_shard("val"), loss_fn, ctx, out)
        else:
            out.val_rows = []
        parts = _gather(out, world)
        metrics = record_epoch(parts, ctx, state, time.time() - started) if rank == 0 else {"epoch": index + 1}
        if events is not None:
            events.put(("epoch", metrics))  # the driver prints it (engine/runtime/fit.py fit_with_progress)
        report_checkpoint(metrics, model, opt, sched, state, rank)
        if rank == 0:
            pause_point(f"train_epoch_{index + 1}")  # a kill test stops here, checkpoint reported (engine/io/pause.py)
