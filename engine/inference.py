"""ClassifyCamStage: the model actor's UDF — probability, CAM and pseudo boxes per batch, one pass."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.boxes import BoxParams
from engine.stages import pseudo_boxes, refined_peak_columns

PASS_THROUGH = (
    "image_id", "patient_id", "view", "split", "folder", "label", "path", "error",
    "orig_h", "orig_w", "canvas_h", "canvas_w", "scale", "pad_left", "pad_top", "new_h", "new_w",
)  # fmt: skip


@dataclass(frozen=True)
class CamSettings:
    """What the model actor computes (built by the job from `cam.*`, `boxes.*` and `infer.*`)."""

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


class ClassifyCamStage:
    """Ray Data actor UDF: uint8 canvases -> y_prob, logit, CAM heatmap (float16), pseudo boxes."""

    def __init__(self, settings: CamSettings) -> None:
        import torch  # imported here: the class is pickled to the actor (DESIGN.md §7)

        from engine.cam import gap_linear_weights
        from engine.config import ModelConfig
        from engine.model import load_model

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
        self.method = self._choose_method(settings.method)
        compiled = settings.compile and self.device.type == "cuda"
        self.forward = torch.compile(self.model) if compiled else self.model
        self.features = torch.compile(self.model.forward_features) if compiled else self.model.forward_features
        self.refine = settings.with_cam and settings.refine and self.method == "fused"
        self.local = threading.local()  # per calling thread: its CUDA stream (infer.calls_per_actor > 1)

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
        """Returns (logits (B,), cams (B, h, w) float32 or None, refined cell centres (B, h, w, 2) or None)."""
        from engine.cam import fused_cam, fused_cam_with_evidence, gradcam_autograd, refine_cell_centres

        torch = self.torch
        autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and self.settings.amp
        )
        if not self.settings.with_cam:
            with torch.inference_mode(), autocast:
                return self.forward(x)[:, 0].float(), None, None
        if self.refine:
            with autocast:
                logits, cams, evidence = fused_cam_with_evidence(self.model, x, self.class_weight, self.features)
            centres = refine_cell_centres(evidence, cams.shape[1], cams.shape[2], self.settings.refine_reach,
                                          self.settings.refine_power)  # fmt: skip
            return logits, cams.float(), centres
        if self.method == "fused":
            with torch.inference_mode(), autocast:
                features = self.features(x)
                logits = self.model.forward_head(features)[:, 0].float()
                return logits, fused_cam(features.float(), self.class_weight.float()), None
        with autocast:
            cams, logits = gradcam_autograd(self.model, x, self._target_layer())
        return logits.detach().float(), cams.detach().float(), None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._stream():
            return self._process(batch)

    def _process(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from engine.cam import normalize_cams
        from engine.model import normalize_canvas

        torch = self.torch
        out = {k: batch[k] for k in PASS_THROUGH if k in batch}
        n = len(batch["image_id"])
        ok = np.asarray(batch["error"]) == ""
        y_prob = np.full(n, np.nan, dtype=np.float32)
        logit = np.full(n, np.nan, dtype=np.float32)
        out["cam_method"] = np.full(n, self.method if self.settings.with_cam else "", dtype=object)
        if ok.any():
            canvas = torch.from_numpy(np.ascontiguousarray(batch["canvas"][ok]))
            if self.device.type == "cuda":
                canvas = canvas.pin_memory().to(self.device, non_blocking=True)
            x = normalize_canvas(canvas)
            if self.device.type == "cuda" and self.settings.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits, cams, centres = self._run_model(x)
            logit[ok] = logits.cpu().numpy()
            y_prob[ok] = torch.sigmoid(logits).cpu().numpy()
        out["y_prob"], out["logit"] = y_prob, logit
        if self.settings.with_cam:
            found = (cams, None if centres is None else centres.cpu().numpy()) if ok.any() else (None, None)
            out.update(self._cam_columns(batch, ok, *found, normalize_cams))
        return out

    def _cam_columns(
        self, batch: dict[str, np.ndarray], ok: np.ndarray, cams: Any, centres: np.ndarray | None, normalize: Any
    ) -> dict:
        n = len(ok)
        if cams is None:
            h, w = self._feature_shape(batch)
            heat = np.zeros((n, h, w), np.float16)
            raw_min, raw_max = np.zeros(n, np.float32), np.zeros(n, np.float32)
        else:
            norm, raw = normalize(cams)
            heat = np.zeros((n, *norm.shape[1:]), np.float16)
            heat[ok] = norm.cpu().numpy().astype(np.float16)
            raw_min, raw_max = np.zeros(n, np.float32), np.zeros(n, np.float32)
            raw_min[ok] = cams.flatten(1).min(dim=1).values.cpu().numpy()
            raw_max[ok] = raw.cpu().numpy()
        params = self.settings.boxes
        boxes = np.full((n, params.max_boxes, 5), np.nan, dtype=np.float32)
        counts = np.zeros(n, dtype=np.int32)
        columns: dict[str, np.ndarray] = {}
        if ok.any():  # undecodable rows have no letterbox meta and get no boxes
            ok_meta = {
                k: np.asarray(batch[k])[ok] for k in ("canvas_h", "canvas_w", "pad_left", "pad_top", "new_w", "new_h")
            }
            if centres is not None:
                peaks = refined_peak_columns(heat[ok], ok_meta, centres, self.settings.refine_peaks)
                ok_meta.update(peaks)
                columns = {k: np.full((n, *v.shape[1:]), -1 if k == "peak_index" else np.nan, dtype=v.dtype)
                           for k, v in peaks.items()}  # fmt: skip
                for k, v in peaks.items():
                    columns[k][ok] = v
            boxes[ok], counts[ok] = pseudo_boxes(heat[ok], ok_meta, params)
        return {"heatmap": heat, "raw_min": raw_min, "raw_max": raw_max, "boxes": boxes, "box_count": counts,
                **columns}  # fmt: skip

    def _feature_shape(self, batch: dict[str, np.ndarray]) -> tuple[int, int]:
        h, w = int(batch["canvas_h"][0]), int(batch["canvas_w"][0])
        reduction = self.model.feature_info[-1]["reduction"]
        return -(-h // reduction), -(-w // reduction)
