"""BS-80K streaming weak-localisation engine: pure core (letterbox, CAM, boxes, metrics, parsing) + Ray stages."""

from typing import Any

__all__ = ["load_heatmap"]


def __getattr__(name: str) -> Any:
    """Returns `engine.load_heatmap` on first use: importing a pure core module must not load pyarrow."""
    if name == "load_heatmap":
        from engine.io.heatmap_access import load_heatmap

        return load_heatmap
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
