"""Gamma-camera counts -> 8-bit grey levels under one stated, configurable rule (pure numpy).

A scan stores counts per pixel (uint16 in NM DICOM and 16-bit PNG/TIFF; whole-body exports peak at ~80-140 counts
with a mean of ~7). The classifier sees 8-bit grey, so every 16-bit input goes through `counts_to_gray8` with a
`CountScale` parsed from a rule string (`data.count_scale`):

- `max`: grey = round(counts * 255 / max(counts)), the image's own peak becomes 255 (BS-80K's 8-bit JPEGs look
  like this; the default, and the rule decode_gray8 always applied to 16-bit images).
- `p<q>` (e.g. `p99.5`): grey = min(255, round(counts * 255 / percentile(counts, q))): a few hot pixels
  (bladder, injection site) no longer set the contrast of the whole image.
- `fixed:<c>` (e.g. `fixed:0.5`): grey = min(255, round(counts / c)), `c` counts per grey level, the same for
  every image, so grey levels compare across scans.

The divisor (counts per grey level) actually used is returned with the image, to be recorded per row.
8-bit inputs are already grey levels and pass through unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MAX_GREY = 255
_PERCENTILE_RE = re.compile(r"^p(?P<q>\d+(?:\.\d+)?)$")
_FIXED_RE = re.compile(r"^fixed:(?P<c>\d+(?:\.\d*)?|\.\d+)$")
RULE_CHOICES = "max, p<q> with 0 < q <= 100 (e.g. p99.5), fixed:<counts per grey level> (e.g. fixed:0.5)"


@dataclass(frozen=True)
class CountScale:
    """A parsed count rule: `kind` is `max`, `percentile` or `fixed`; `value` is q (percent) or counts/grey."""

    kind: str
    value: float | None = None

    @property
    def rule(self) -> str:
        """Returns the rule string that parses back to this scale (`max`, `p99.5`, `fixed:0.5`)."""
        if self.kind == "max":
            return "max"
        if self.kind == "percentile":
            return f"p{self.value:g}"
        return f"fixed:{self.value:g}"


MAX_SCALE = CountScale("max")


def parse_count_scale(rule: str) -> CountScale:
    """Returns the CountScale of a rule string (see the module docstring).

    Raises:
        ValueError: an unknown rule, a percentile outside (0, 100] or a non-positive fixed factor.
    """
    text = rule.strip().lower()
    if text == "max":
        return MAX_SCALE
    match = _PERCENTILE_RE.match(text)
    if match and 0 < float(match["q"]) <= 100:
        return CountScale("percentile", float(match["q"]))
    match = _FIXED_RE.match(text)
    if match and float(match["c"]) > 0:
        return CountScale("fixed", float(match["c"]))
    raise ValueError(f"count_scale {rule!r}: unknown rule (choices: {RULE_CHOICES})")


def counts_per_grey(counts: np.ndarray, scale: CountScale) -> float:
    """Returns the counts that make one grey level for this image under `scale` (always > 0)."""
    if scale.kind == "fixed":
        return float(scale.value)
    if scale.kind == "percentile":
        reference = float(np.percentile(counts, scale.value)) if counts.size else 0.0
        if reference <= 0:  # a mostly empty image: fall back to its peak, never divide by zero
            reference = float(counts.max()) if counts.size else 0.0
    else:
        reference = float(counts.max()) if counts.size else 0.0
    return max(reference, 1.0) / MAX_GREY


def counts_to_gray8(counts: np.ndarray, scale: CountScale = MAX_SCALE) -> tuple[np.ndarray, float]:
    """Returns (uint8 grey (H, W), counts per grey level used) of a count image.

    Args:
        counts: (H, W) non-negative integer counts (uint16; uint8 inputs pass through, with factor 1).
        scale: the rule; `max` reproduces `counts * (255 / peak)` in float32, bit for bit.
    """
    if counts.dtype == np.uint8:
        return counts, 1.0
    factor = counts_per_grey(counts, scale)
    if scale.kind == "max":
        peak = max(int(counts.max()) if counts.size else 0, 1)
        grey = (counts.astype(np.float32) * (255.0 / peak)).round()
    else:
        grey = np.minimum((counts.astype(np.float64) / factor).round(), MAX_GREY)
    return grey.astype(np.uint8), factor
