"""`make bench`: prepares a generated index, runs the three measurements, prints and records the figures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform

import ray
import timm
import torch

from engine.bench.feed import run_feed
from engine.bench.measure import engine_run, model_only, plain_loop
from engine.config import Config
from engine.core.model.classifier import arch_info
from engine.io.checkpoints import build_classifier_from_files, save_model
from engine.io.summary import StageSummary
from engine.io.synth import generate_dataset
from engine.io.tables import read_table
from engine.stages._rows import select_rows
from engine.stages.index import run_index
from engine.stages.split import run_split


def _prepare(cfg: Config) -> Config:
    """Generates the bench dataset when missing, indexes and splits it, stores an (untrained, seeded) model."""
    if not os.path.isdir(cfg.bench.data_root):
        generate_dataset(cfg.bench.data_root, patients=cfg.bench.patients, seed=cfg.seed)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, root=cfg.bench.data_root),
        run=dataclasses.replace(cfg.run, overwrite=True),
    )
    run_index(cfg)
    run_split(cfg)
    torch.manual_seed(cfg.seed)
    model = build_classifier_from_files(dataclasses.replace(cfg.model, pretrained=False))
    with torch.no_grad():  # a random head can make every CAM cell negative (no peaks, no boxes): keep the
        model.get_classifier().weight.abs_()  # work of a trained model's maps by making the weights non-negative
    save_model(cfg.run.dir, model, {**arch_info(cfg.model), "epoch": -1, "val_auc": None})
    return cfg


def bytes_per_image(run_dir: str, images: int) -> dict[str, float]:
    """Returns on-disk Parquet bytes per scored image of each `make cam` table."""
    out = {}
    for name, sub in (("preds", "preds/stage=cam"), ("heatmaps", "heatmaps"), ("boxes", "boxes"), ("meta", "meta")):
        folder = os.path.join(run_dir, "tables", sub)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)
        out[name] = round(size / max(images, 1), 1)
    return out


def device_name() -> str:
    """Returns the GPU model, or the CPU model and core count."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def run_bench(cfg: Config) -> StageSummary:
    """Measures the feed, then model-only, plain loop and engine (N and scale x N images) in one run; appends the
    results file. `bench.only=feed` measures the feed alone."""
    summary = StageSummary("bench")
    cfg = _prepare(cfg)
    feed = run_feed(cfg, read_table(cfg.run.dir, "index"), summary)
    if cfg.bench.only == "feed":
        summary.require_balanced()
        summary.extra.update(device=device_name(), **feed)
        _append_results(cfg, summary)
        return summary.finish()
    n = cfg.bench.images
    rows = select_rows(cfg, None, False, qc_exclude=False).head(n)  # as cam.scope=all: every image
    figures = {"model_only_eager": model_only(cfg)}
    if cfg.model.compile and torch.cuda.is_available():
        figures["model_only_compiled"] = model_only(cfg, compiled=True)
    if cfg.cam.refine:  # what the refinement's backward pass costs: the forward-only CAM beside it
        no_refine = dataclasses.replace(cfg, cam=dataclasses.replace(cfg.cam, refine=False))
        forward_only = model_only(no_refine)
        if "model_only_compiled" in figures:
            figures["model_only_compiled_without_refine"] = model_only(no_refine, compiled=True)
    plain_rate, profile = plain_loop(cfg, rows, os.path.join(cfg.run.dir, "bench_plain"))
    figures["plain_loop"] = plain_rate
    small = engine_run(cfg, n)
    large = engine_run(cfg, n * cfg.bench.scale)
    figures["engine"] = small["img_per_s"]
    model_best = max(v for k, v in figures.items() if k.startswith("model_only") and "without_refine" not in k)
    summary.rows_in += small["images"] + large["images"]
    summary.rows_ok += small["ok"] + large["ok"]
    summary.errors.update(small["errors"] + large["errors"])
    summary.require_balanced()  # the feed's rows and each engine run's committed account: a check that they add up
    summary.extra.update(
        device=device_name(),
        model=cfg.model.name,
        canvas=f"{cfg.canvas.height}x{cfg.canvas.width}",
        batch_size=cfg.infer.batch_size,
        actors=cfg.infer.actors,
        images=n,
        **{f"{k}_img_per_s": round(v, 1) for k, v in figures.items()},
        engine_over_model_only=round(small["img_per_s"] / model_best, 3),
        model_only_without_refine_img_per_s=round(forward_only, 1) if cfg.cam.refine else None,
        engine_over_plain_loop=round(small["img_per_s"] / plain_rate, 3),
        engine_large_img_per_s=round(large["img_per_s"], 1),
        large_images=large["images"],
        gpu_busy_large=None if large["gpu_busy"] is None else round(large["gpu_busy"], 3),
        cam_refine=cfg.cam.refine,
        calls_per_actor=cfg.infer.calls_per_actor,
        peak_mem_mb_small=round(small["peak_mem_mb"], 1),
        peak_mem_mb_large=round(large["peak_mem_mb"], 1),
        mem_large_over_small=round(large["peak_mem_mb"] / small["peak_mem_mb"], 3),
        table_bytes_per_image=bytes_per_image(cfg.run.dir, large["images"]),
        plain_loop_profile_s={k: round(v, 3) for k, v in sorted(profile.items(), key=lambda kv: -kv[1])},
        **feed,
    )
    _append_results(cfg, summary)
    return summary.finish()


def _append_results(cfg: Config, summary: StageSummary) -> None:
    versions = f"torch {torch.__version__}, timm {timm.__version__}, ray {ray.__version__}"
    lines = [
        f"\n## {dt.date.today().isoformat()} — {summary.extra['device']} ({versions})\n",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in summary.extra.items() if key != "device"]
    with open(cfg.bench.out, "a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
