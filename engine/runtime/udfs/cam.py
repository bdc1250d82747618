"""ClassifyCamStage: the model actor's UDF of `make cam` / `make infer` — probability, CAM and pseudo boxes per
batch, one pass."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.core.localization.boxes import BoxParams
from engine.core.localization.columns import (
    BODY_CANVAS_COLUMNS,
    body_boxes,
    pseudo_boxes,
    ranked_batch_boxes,
    refined_peak_columns,
    row_slices,
)
from engine.core.localization.spots import SpotRanker, SpotSettings, spot_columns
from engine.core.scans.views import mirror_rows, mirrored, unmirror_centres
from engine.io.codecs import stored_heatmaps
from engine.runtime.decode import BatchDecoder, DecodeSettings

log = logging.getLogger(__name__)

PASS_THROUGH = (
    "image_id",
    "patient_id",
    "view",
    "split",
    "folder",
    "label",
    "path",
    "error",
    "orig_h",
    "orig_w",
    "canvas_h",
    "canvas_w",
    "scale",
    "pad_left",
    "pad_top",
    "new_h",
    "new_w",
    *BODY_CANVAS_COLUMNS,
)


@dataclass(frozen=True)
class CamSettings:
    """What the model actor computes (built by the stage from `cam.*`, `boxes.*`, `infer.*` and `train.*`)."""

    run_dir: str  # run holding model/best.pt
    model_name: str  # timm name (architecture only; weights come from the run)
    method: str = "auto"  # auto, fused, gradcam
    target_layer: str = ""  # autograd Grad-CAM layer; empty: timm's last feature module
    with_cam: bool = True  # False: probabilities only (`make infer`)
    use_gpu: bool = False
    amp: bool = True  # bf16 autocast on GPU
    channels_last: bool = True
    compile: bool = False
    cpu_threads: int = 1  # torch intra-op threads of a CPU actor (its `infer.num_cpus`), no oversubscription
    boxes: BoxParams = BoxParams()
    refine: bool = False  # refined peak centres from the input evidence (fused CAM only)
    refine_reach: float = 2.0
    refine_power: float = 4.0
    refine_peaks: int = 32
    spots: SpotSettings = SpotSettings(limit=0)  # hot spots found and stored per image (cam.spots)
    ranker: SpotRanker | None = None  # the run's tuned spot ranker (make boxes): boxes on spots instead of CAM peaks
    warmup: tuple[int, int, int] = (0, 0, 0)  # (batch, canvas_h, canvas_w): compile before the first real batch
    decode: DecodeSettings | None = None  # set: the actor gets index rows and decodes them itself (infer.decode)
    model_batch: int = 0  # rows per model call within one actor call (infer.batch_size); 0: the whole call


class ClassifyCamStage:
    """Ray Data actor UDF: uint8 canvases -> y_prob, logit, CAM heatmap (float16), pseudo boxes."""

    def __init__(self, settings: CamSettings) -> None:
        import torch  # imported here: the class is pickled to the actor (module-level torch.backends failed to pickle)

        from engine.config import ModelConfig
        from engine.core.model.cam import gap_linear_weights
        from engine.io.checkpoints import load_model

        self.torch = torch
        self.settings = settings
        self.device = torch.device("cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, settings.cpu_threads))
        model, self.info = load_model(settings.run_dir, ModelConfig(name=settings.model_name, pretrained=False))
        self.model = model.to(self.device).eval().requires_grad_(False)  # gradients only w.r.t. inputs/activations
        if self.device.type == "cuda" and settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.class_weight = gap_linear_weights(self.model)
        self.cell_centre = tuple(self.info.get("cell_centre", (0.5, 0.5)))  # core.model.classifier.probe_cell_centre
        self.method = self._choose_method(settings.method)
        compiled = settings.compile and self.device.type == "cuda"
        self.forward = torch.compile(self.model) if compiled else self.model
        self.features = torch.compile(self.model.forward_features) if compiled else self.model.forward_features
        self.refine = settings.with_cam and settings.refine and self.method == "fused"
        self.decoder = BatchDecoder(settings.decode) if settings.decode is not None else None
        self.local = threading.local()  # per calling thread: its CUDA stream (infer.calls_per_actor > 1)
        if compiled and min(settings.warmup) > 0:  # compile once here, not in concurrent first calls
            try:
                self._run_model(self._model_input(torch.zeros(settings.warmup, dtype=torch.uint8, device=self.device)))
            except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager model does the same work
                log.warning("torch.compile failed (%s: %s); running the eager model", type(exc).__name__, exc)
                self.forward, self.features = self.model, self.model.forward_features

    def _stream(self) -> Any:
        """Returns this thread's CUDA stream context (a no-op on CPU): concurrent calls overlap copy and compute."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if not hasattr(self.local, "stream"):
            self.local.stream = self.torch.cuda.Stream(device=self.device)
        return self.torch.cuda.stream(self.local.stream)

    def _choose_method(self, method: str) -> str:
        if method == "fused" and self.class_weight is None:
            raise ValueError("cam.method=fused needs a global-average-pool + linear head; use gradcam")
        if method == "auto":
            return "fused" if self.class_weight is not None and not self.settings.target_layer else "gradcam"
        return method

    def _target_layer(self) -> Any:
        name = self.settings.target_layer or self.model.feature_info[-1]["module"]
        return dict(self.model.named_modules())[name]

    def _run_model(self, x: Any) -> tuple[Any, Any, Any]:
        """Returns (logits (B,), cams (B, h, w) float32 or None, refined cell centres (B, h, w, 2) or None).

        The backbone may run under bf16 autocast; the CAM and its normalisation never do (``core.cam.fused_cam``).
        """
        from engine.core.model.cam import fused_cam, fused_cam_with_evidence, gradcam_autograd, refine_cell_centres
        from engine.core.model.classifier import bf16_autocast

        torch = self.torch
        autocast = bf16_autocast(self.device.type == "cuda" and self.settings.amp)
        if not self.settings.with_cam:
            with torch.inference_mode(), autocast:
                return self.forward(x)[:, 0].float(), None, None
        if self.refine:
            with autocast:
                logits, cams, evidence = fused_cam_with_evidence(self.model, x, self.class_weight, self.features)
            reach, power = self.settings.refine_reach, self.settings.refine_power
            centres = refine_cell_centres(
                evidence, cams.shape[1], cams.shape[2], reach, power, cams=cams, cell_centre=self.cell_centre
            )
            return logits, cams.float(), centres
        if self.method == "fused":
            with torch.inference_mode():
                with autocast:
                    features = self.features(x)
                    logits = self.model.forward_head(features)[:, 0].float()
                return logits, fused_cam(features, self.class_weight), None  # float32, out of the bf16 region
        with autocast:
            cams, logits = gradcam_autograd(self.model, x, self._target_layer())
        return logits.detach().float(), cams.detach().float(), None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decodes the call's rows when the actor does (infer.decode=actor), then scores them `model_batch` rows
        at a time; returns the rows in order."""
        n = len(batch["image_id"])
        step = max(self.settings.model_batch or n, 1)
        if self.decoder is not None:  # each model batch is decoded onto the same buffer just before it is scored
            chunks = self.decoder.chunks(batch, step)
        else:
            chunks = (part for _, part in row_slices(batch, step))
        with self._stream():
            parts = [self._process(chunk) for chunk in chunks]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def _model_input(self, canvas: Any) -> Any:
        """Returns the normalised model input of uint8 (B, H, W) canvases on the device (channels_last on GPU)."""
        from engine.core.model.classifier import normalize_canvas

        x = normalize_canvas(canvas)
        if self.device.type == "cuda" and self.settings.channels_last:
            x = x.contiguous(memory_format=self.torch.channels_last)
        return x

    def _process(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        out = {k: batch[k] for k in PASS_THROUGH if k in batch}
        n = len(batch["image_id"])
        ok = np.asarray(batch["error"]) == ""
        y_prob = np.full(n, np.nan, dtype=np.float32)
        logit = np.full(n, np.nan, dtype=np.float32)
        out["cam_method"] = np.full(n, self.method if self.settings.with_cam else "", dtype=object)
        out["actor_pid"] = np.full(n, os.getpid(), dtype=np.int64)  # which actor scored the row (not stored)
        host: dict[str, np.ndarray] = {}
        if ok.any():
            pixels = batch["canvas"]  # the decoder's buffer as it is; else a copy (bad rows, or a read-only block)
            pixels = pixels if ok.all() and pixels.flags.writeable else pixels[ok]
            # ANT rows reach the model mirrored (core/scans/views.py); their CAM and peaks are flipped back below
            flip = mirrored(batch["view"])[ok] if "view" in batch else np.zeros(int(ok.sum()), bool)
            canvas = torch.from_numpy(np.ascontiguousarray(mirror_rows(pixels, flip)))
            if self.device.type == "cuda":
                canvas = canvas.pin_memory().to(self.device, non_blocking=True)
            host = self._to_host(*self._run_model(self._model_input(canvas)))
            if "heat" in host:
                host["heat"] = mirror_rows(host["heat"], flip)
            if "centres" in host:
                host["centres"] = unmirror_centres(host["centres"], flip, int(pixels.shape[-1]))
            logit[ok], y_prob[ok] = host["logit"], host["y_prob"]
        out["y_prob"], out["logit"] = y_prob, logit
        if self.settings.with_cam:
            out.update(self._cam_columns(batch, ok, host))
        return out

    def _to_host(self, logits: Any, cams: Any, centres: Any) -> dict[str, np.ndarray]:
        """Returns the batch's results as numpy arrays after ONE device-to-host copy (a packed float32 tensor).

        logit, y_prob (B,); with a CAM also raw_min, raw_max (B,), the min-max normalised map (B, h, w) and, when
        refined, the cell centres (B, h, w, 2).
        """
        from engine.core.model.cam import normalize_cams

        torch = self.torch
        logits = logits.float()
        parts = [logits[:, None], torch.sigmoid(logits)[:, None]]
        if cams is not None:
            norm, raw_max = normalize_cams(cams)
            parts += [cams.flatten(1).min(dim=1).values[:, None], raw_max[:, None], norm.flatten(1)]
            if centres is not None:
                parts.append(centres.flatten(1))
        packed = torch.cat([p.float() for p in parts], dim=1).cpu().numpy()
        host = {"logit": packed[:, 0], "y_prob": packed[:, 1]}
        if cams is not None:
            batch, h, w = cams.shape
            host.update(raw_min=packed[:, 2], raw_max=packed[:, 3], heat=packed[:, 4 : 4 + h * w].reshape(batch, h, w))
            if centres is not None:
                host["centres"] = packed[:, 4 + h * w :].reshape(batch, h, w, 2)
        return host

    def _cam_columns(self, batch: dict[str, np.ndarray], ok: np.ndarray, host: dict[str, np.ndarray]) -> dict:
        n = len(ok)
        raw_min, raw_max = np.zeros(n, np.float32), np.zeros(n, np.float32)
        if "heat" not in host:
            heat = np.zeros((n, *self._feature_shape(batch)), np.float16)
        else:
            heat = np.zeros((n, *host["heat"].shape[1:]), np.float16)
            heat[ok] = stored_heatmaps(host["heat"])  # the 8-bit levels the table keeps: boxes as make boxes finds
            raw_min[ok], raw_max[ok] = host["raw_min"], host["raw_max"]
        params, ranker = self.settings.boxes, self.settings.ranker
        width = max(params.max_boxes, ranker.max_boxes if ranker is not None else 0)
        boxes = np.full((n, width, 5), np.nan, dtype=np.float32)
        counts = np.zeros(n, dtype=np.int32)
        columns: dict[str, np.ndarray] = {}
        if ok.any():  # undecodable rows have no letterbox meta and get no boxes
            ok_meta = {
                k: np.asarray(batch[k])[ok]
                for k in (
                    "canvas_h",
                    "canvas_w",
                    "scale",
                    "pad_left",
                    "pad_top",
                    "new_w",
                    "new_h",
                    *BODY_CANVAS_COLUMNS,
                )
                if k in batch
            }
            if "centres" in host:
                peaks = refined_peak_columns(heat[ok], ok_meta, host["centres"], self.settings.refine_peaks)
                ok_meta.update(peaks)
                columns = {
                    k: np.full((n, *v.shape[1:]), -1 if k == "peak_index" else np.nan, dtype=v.dtype)
                    for k, v in peaks.items()
                }
                for k, v in peaks.items():
                    columns[k][ok] = v
            if self.settings.spots.limit > 0:
                found = spot_columns(np.asarray(batch["canvas"])[ok], body_boxes(ok_meta), self.settings.spots)
                for k, v in found.items():
                    columns[k] = np.full((n, v.shape[1]), np.nan, dtype=np.float32)
                    columns[k][ok] = v
            if ranker is not None and "spot_x" in columns:
                rows = {k: v[ok] for k, v in columns.items()} | ok_meta | {"y_prob": host["y_prob"]}
                boxes[ok], counts[ok] = ranked_batch_boxes(heat[ok], rows, ranker, width)
            else:
                boxes[ok, : params.max_boxes], counts[ok] = pseudo_boxes(heat[ok], ok_meta, params)
        return {"heatmap": heat, "raw_min": raw_min, "raw_max": raw_max, "boxes": boxes, "box_count": counts, **columns}

    def _feature_shape(self, batch: dict[str, np.ndarray]) -> tuple[int, int]:
        h, w = int(batch["canvas_h"][0]), int(batch["canvas_w"][0])
        reduction = self.model.feature_info[-1]["reduction"]
        return -(-h // reduction), -(-w // reduction)
