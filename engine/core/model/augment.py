"""Training augmentation on the device, batched and seeded (the original pipeline's recipe).

With probability `affine_p` a random affine (rotation, translation, scale) and with probability
`jitter_p` a brightness/contrast change, applied after the letterbox on [0, 1] float canvases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)

from engine.config import TrainConfig


def _uniform(n: int, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * bound


def random_affine(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Returns `x` (B, C, H, W) with a random affine on a `cfg.affine_p` share of the images; fill 0."""
    b, _, h, w = x.shape
    apply = torch.rand(b, generator=gen) < cfg.affine_p
    angle = _uniform(b, math.radians(cfg.rotate_deg), gen) * apply
    scale = 1 + _uniform(b, cfg.scale_range, gen) * apply
    tx = _uniform(b, 2 * cfg.translate, gen) * apply  # affine_grid spans [-1, 1]: 2 units per canvas
    ty = _uniform(b, 2 * cfg.translate, gen) * apply
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    aspect = h / w  # rotate in pixel space, not in the normalised square
    theta = torch.stack([torch.stack([cos, -sin * aspect, tx], 1), torch.stack([sin / aspect, cos, ty], 1)], 1).to(
        x.device, x.dtype
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_jitter(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Returns `x` with brightness and contrast scaled by 1 ± `cfg.jitter` on a `cfg.jitter_p` share."""
    b = x.shape[0]
    apply = (torch.rand(b, generator=gen) < cfg.jitter_p).to(x.device, x.dtype).view(b, 1, 1, 1)
    brightness = (1 + _uniform(b, cfg.jitter, gen)).to(x.device, x.dtype).view(b, 1, 1, 1)
    contrast = (1 + _uniform(b, cfg.jitter, gen)).to(x.device, x.dtype).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((x * brightness - mean) * contrast + mean).clamp_(0, 1)
    return apply * jittered + (1 - apply) * x


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Returns the augmented batch: affine, then brightness/contrast; `x` is (B, 1, H, W) in [0, 1]."""
    return random_jitter(random_affine(x, cfg, gen), cfg, gen)
