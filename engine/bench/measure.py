"""`make bench`: model-only, plain single-process loop and the engine, measured side by side in one run.

All three do the same work on the same images, model, canvas and batch size: JPEG bytes on disk ->
decode -> letterbox -> forward + CAM -> pseudo boxes -> Parquet tables. Memory is the peak PSS of the
driver and every process under it (Ray's raylet, object store and workers when Ray runs embedded).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any

import numpy as np
import psutil
import torch

from engine.config import Config
from engine.core.localization.columns import (
    META_COLUMNS,
    QC_BODY_COLUMNS,
    body_canvas_columns,
    explode_boxes,
    pseudo_boxes,
    refined_peak_columns,
)
from engine.core.model.cam import (
    fused_cam,
    fused_cam_with_evidence,
    gap_linear_weights,
    normalize_cams,
    refine_cell_centres,
)
from engine.core.model.classifier import bf16_autocast, normalize_canvas
from engine.core.scans.decode import decode_gray8
from engine.core.scans.letterbox import letterbox
from engine.core.scans.views import mirror_rows, mirrored, unmirror_centres
from engine.io.checkpoints import load_model
from engine.io.fs import resolve_fs, safe_relative_path
from engine.io.tables import TableWriter


def gpu_utilization() -> float | None:
    """Returns GPU 0's utilisation in [0, 1] from nvidia-smi (share of the last sample period a kernel ran)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
    try:
        output = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
        return float(output.split()[0]) / 100
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class MemorySampler:
    """Samples the summed PSS of this process and all its descendants in a thread; keeps the peak.

    With `gpu`, it also samples GPU 0's utilisation; `gpu_busy` is their mean (None without samples).
    """

    def __init__(self, interval_s: float = 0.25, gpu: bool = False) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.gpu = gpu
        self.gpu_samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        root = psutil.Process()
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            busy = gpu_utilization() if self.gpu else None
            if busy is not None:
                self.gpu_samples.append(busy)
            self._stop.wait(self.interval_s)

    @property
    def gpu_busy(self) -> float | None:
        """Returns the mean sampled GPU utilisation, or None."""
        return sum(self.gpu_samples) / len(self.gpu_samples) if self.gpu_samples else None

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._sample())


@contextmanager
def _timed(profile: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    profile[key] += time.perf_counter() - start


def _device(cfg: Config) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and cfg.train.use_gpu != "false" else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(cfg: Config, compiled: bool = False) -> float:
    """Returns img/s of the model's work on a preloaded device batch (no data loading).

    The work of the engine's actor: forward + fused CAM, plus the evidence backward and the centre refinement
    when ``cam.refine`` is on.
    """
    device = _device(cfg)
    model = load_model(cfg.run.dir, cfg.model)[0].to(device).eval().requires_grad_(False)
    amp = device.type == "cuda" and cfg.train.amp  # the actor's bf16 autocast
    weight = gap_linear_weights(model)
    forward = torch.compile(model.forward_features) if compiled else model.forward_features
    canvas = torch.randint(0, 255, (cfg.infer.batch_size, cfg.canvas.height, cfg.canvas.width), dtype=torch.uint8)
    x = normalize_canvas(canvas.to(device))

    def step() -> None:
        if cfg.cam.refine:
            with bf16_autocast(amp):
                _, cams, evidence = fused_cam_with_evidence(model, x, weight, forward)
            refine_cell_centres(evidence, cams.shape[1], cams.shape[2], cfg.cam.refine_reach, cfg.cam.refine_power)
            return
        with torch.inference_mode(), bf16_autocast(amp):
            features = forward(x)
            model.forward_head(features)
            fused_cam(features.float(), weight.float())

    for _ in range(2):  # warm-up (and compilation)
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(cfg.bench.model_batches):
        step()
    _sync(device)
    return cfg.bench.model_batches * cfg.infer.batch_size / (time.perf_counter() - start)


def _decode_rows(rows: Any, cfg: Config, profile: dict[str, float]) -> dict[str, np.ndarray]:
    fs, root = resolve_fs(cfg.data.root)
    canvases, metas = [], []
    for relative in rows["path"]:
        with _timed(profile, "read"), fs.open_input_file(safe_relative_path(root, relative)) as handle:
            data = handle.read()
        with _timed(profile, "decode"):
            image = decode_gray8(data)
        with _timed(profile, "letterbox"):
            canvas, meta = letterbox(image, cfg.canvas.height, cfg.canvas.width)
        canvases.append(canvas)
        metas.append(meta)
    batch = {c: rows[c].to_numpy() for c in ("image_id", "patient_id", "view", "split", "folder", "label", "path")}
    batch.update({name: np.array([getattr(m, name) for m in metas]) for name in META_COLUMNS})
    batch["canvas"] = np.stack(canvases)
    if all(c in rows for c in QC_BODY_COLUMNS):  # peaks stay inside the QC body box, as in decode_batch
        batch.update({c: rows[c].to_numpy(dtype=np.float64) for c in QC_BODY_COLUMNS})
        batch.update(body_canvas_columns(batch))
    return batch


def plain_loop(cfg: Config, rows: Any, run_dir: str) -> tuple[float, dict[str, float]]:
    """Returns (img/s, seconds per step) of the same work in one process: no Ray, no actors."""
    from engine.core.localization.columns import body_boxes
    from engine.core.localization.spots import SpotSettings, spot_columns
    from engine.io.codecs import heatmap_column, peak_list_columns, spot_list_columns, stored_heatmaps
    from engine.stages._scoring import box_params

    device = _device(cfg)
    model, info = load_model(cfg.run.dir, cfg.model)
    model = model.to(device).eval().requires_grad_(False)
    amp = device.type == "cuda" and cfg.train.amp  # the actor's bf16 autocast
    weight, params = gap_linear_weights(model), box_params(cfg)
    writer = TableWriter(run_dir, "bench", overwrite=True)
    profile: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    for first in range(0, len(rows), cfg.infer.batch_size):
        batch = _decode_rows(rows.iloc[first : first + cfg.infer.batch_size], cfg, profile)
        flip = mirrored(batch["view"])  # as ClassifyCamStage: the model reads ANT mirrored, its CAM flipped back
        with _timed(profile, "transfer"):
            x = normalize_canvas(torch.from_numpy(np.ascontiguousarray(mirror_rows(batch["canvas"], flip))).to(device))
        centres = None
        if cfg.cam.refine:  # "forward" holds forward + CAM + the evidence backward: one autograd pass
            with _timed(profile, "forward"), bf16_autocast(amp):
                logits, cams, evidence = fused_cam_with_evidence(model, x, weight)
                probs = torch.sigmoid(logits).cpu().numpy()
            with _timed(profile, "refine"):
                h, w = cams.shape[1:]
                centres = refine_cell_centres(
                    evidence,
                    h,
                    w,
                    cfg.cam.refine_reach,
                    cfg.cam.refine_power,
                    cams=cams,
                    cell_centre=tuple(info["cell_centre"]),
                )  # as ClassifyCamStage
                centres = unmirror_centres(centres.cpu().numpy(), flip, batch["canvas"].shape[-1])
        else:
            with _timed(profile, "forward"), torch.inference_mode(), bf16_autocast(amp):
                features = model.forward_features(x)
                probs = torch.sigmoid(model.forward_head(features)[:, 0].float()).cpu().numpy()
            with _timed(profile, "cam"), torch.inference_mode():
                cams = fused_cam(features.float(), weight.float())
        with _timed(profile, "cam"):
            norm, raw_max = normalize_cams(cams)
            raw_min = cams.flatten(1).min(dim=1).values
            heat = stored_heatmaps(mirror_rows(norm.cpu().numpy(), flip))  # the 8-bit levels the table keeps
        with _timed(profile, "spots"):  # as ClassifyCamStage: the scan's hot spots, stored with the heatmap
            if cfg.cam.spots > 0:
                batch.update(spot_columns(batch["canvas"], body_boxes(batch), SpotSettings(limit=cfg.cam.spots)))
        with _timed(profile, "boxes"):
            if centres is not None:
                batch.update(refined_peak_columns(heat, batch, centres, cfg.cam.refine_peaks))
            boxes, counts = pseudo_boxes(heat, batch, params)
            batch.update(y_prob=probs, raw_min=raw_min.cpu().numpy(), raw_max=raw_max.cpu().numpy())
            box_rows = explode_boxes(batch, boxes, counts, params, float("-inf"))
        with _timed(profile, "write"):
            n = len(probs)
            shape = {"heatmap_h": [heat.shape[1]] * n, "heatmap_w": [heat.shape[2]] * n}
            writer.write(
                "heatmaps",
                {
                    **batch,
                    **peak_list_columns(batch),
                    **spot_list_columns(batch),
                    **shape,
                    "heatmap": heatmap_column(heat),
                    "overlay_canvas": [None] * n,
                    "overlay_orig": [None] * n,
                    "cam_method": ["fused"] * n,
                },
            )
            writer.write("boxes", box_rows)
    with _timed(profile, "write"):
        writer.commit()
    seconds = time.perf_counter() - start
    return len(rows) / seconds, dict(profile)


def engine_run(cfg: Config, limit: int) -> dict[str, Any]:
    """Runs `make cam cam.scope=all` on the first `limit` index rows; returns its account, rate, peak memory.

    `images` are the rows in, `ok` the preds rows written and `errors` the error rows by reason (run_cam's summary).
    """
    from engine.stages.cam import run_cam

    run_cfg = dataclasses.replace(
        cfg,
        cam=dataclasses.replace(cfg.cam, scope="all", limit=limit, overlays=0),
        run=dataclasses.replace(cfg.run, overwrite=True),
    )
    with MemorySampler(gpu=torch.cuda.is_available()) as memory:
        summary = run_cam(run_cfg)
    return {
        "images": summary.rows_in,
        "ok": summary.rows_ok,
        "errors": summary.errors,
        "seconds": summary.seconds,
        "img_per_s": summary.rows_in / summary.seconds,
        "peak_mem_mb": memory.peak_bytes / 2**20,
        "gpu_busy": memory.gpu_busy,
    }
