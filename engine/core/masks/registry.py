"""The segmenter registry of `make masks`: the classical segmenters (engine/core/masks/segmenters.py) and the model
segmenters (engine/core/masks/sam.py), by name. A model segmenter gets its weights through a reader the caller
passes in (engine/io/checkpoints.py `build_segmenter_from_files`): core reads no files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.config_sections import MasksConfig
from engine.core.masks.pixels import MaskError
from engine.core.masks.sam import MODEL_CLASSES, check_model
from engine.core.masks.segmenters import SEGMENTERS, Segmenter

MODEL_SEGMENTERS = ("litemedsam", "sam", "sam2")  # engine/core/masks/sam.py; torch and the model load on first use


def build_segmenter(name: str, cfg: MasksConfig, read_weights: Callable[..., Any] | None = None) -> Segmenter:
    """Returns the segmenter registered under `name`.

    Args:
        read_weights: for a model segmenter, ``read_weights(path, map_location="cpu")`` -> its checkpoint's payload
            (engine/io/checkpoints.py `read_weights`, weights_only=True); the classical ones need none.

    Raises:
        MaskError: an unknown name (with the known ones); model segmenters raise MaskError when their package
            or checkpoint is absent, and (after those checks) when no `read_weights` was given.
    """
    if name in MODEL_SEGMENTERS:
        return MODEL_CLASSES[name](cfg, read_weights)
    if name not in SEGMENTERS:
        raise MaskError(f"masks.segmenter={name!r}: unknown (known: {sorted([*SEGMENTERS, *MODEL_SEGMENTERS])})")
    return SEGMENTERS[name](cfg)


def check_segmenter(name: str, cfg: MasksConfig) -> None:
    """Raises MaskError when `name` is unknown or its package / checkpoint is missing; loads no model."""
    if name in MODEL_SEGMENTERS:
        check_model(name, cfg)
    elif name not in SEGMENTERS:
        build_segmenter(name, cfg)
