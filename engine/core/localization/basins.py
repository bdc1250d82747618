"""CAM basins and basin-restricted window sums: what keeps a refined peak inside its own hot spot (torch, any device).

A basin is the set of CAM cells whose steepest ascent (8-neighbourhood) ends at the same local maximum, the
watershed of the map (Vincent & Soille, IEEE TPAMI 1991, by drop-of-water paths). ``refine_cell_centres`` in
``core.model.cam`` sums the evidence of a cell's window only over the cells of its own basin, so a weak peak beside a
strong blob is never pulled onto the blob.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias


def cam_basins(cams: torch.Tensor) -> torch.Tensor:
    """Returns (B, h, w) int64: per cell, the flat index r * w + c of the local maximum its steepest ascent reaches.

    Each cell points to its highest 8-neighbour (itself included; equal values go to the smallest flat index, so
    paths never cycle); pointer jumping follows the paths in log2(h w) steps. A plateau's cells join where their
    equal-valued, smaller-index neighbours lead (one basin for a straight ridge).

    Args:
        cams: (B, h, w) CAMs (any float dtype, any device).
    """
    batch, h, w = cams.shape
    values = cams.double()
    index = torch.arange(h * w, device=cams.device).view(1, h, w).expand(batch, h, w)
    padded_values = F.pad(values, (1, 1, 1, 1), value=-math.inf)
    padded_index = F.pad(index, (1, 1, 1, 1), value=h * w)
    best_value, best_index = values.clone(), index.clone()
    for dy in range(3):
        for dx in range(3):
            value = padded_values[:, dy : dy + h, dx : dx + w]
            other = padded_index[:, dy : dy + h, dx : dx + w]
            better = (value > best_value) | ((value == best_value) & (other < best_index))
            best_value, best_index = torch.where(better, value, best_value), torch.where(better, other, best_index)
    parent = best_index.reshape(batch, h * w)
    for _ in range(max(1, math.ceil(math.log2(h * w))) + 1):
        parent = parent.gather(1, parent)
    return parent.view(batch, h, w)


def neighbour_spans(
    grid: int, size: int, window_lo: torch.Tensor, window_hi: torch.Tensor, span: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (neighbour, lo, hi), each (grid, 2 span + 1) int64, along one axis.

    Cell k holds the pixels whose centre is nearest its centre (k + 0.5) size / grid: floor((p + 0.5) grid / size) = k,
    i.e. pixels [ceil(k size / grid - 0.5), ceil((k + 1) size / grid - 0.5)). For cell k and offset j,
    neighbour = k + j - span (clamped) and [lo, hi) is the part of that neighbour inside cell k's window
    [window_lo[k], window_hi[k]), empty where the neighbour lies off the grid.
    """
    device = window_lo.device
    cells = torch.arange(grid, device=device)
    neighbour = cells[:, None] + torch.arange(-span, span + 1, device=device)[None, :]
    on_grid = (neighbour >= 0) & (neighbour < grid)
    neighbour = neighbour.clamp(0, grid - 1)
    bounds = (2 * torch.arange(grid + 1, device=device) * size + grid - 1) // (2 * grid)
    lo = torch.maximum(bounds[neighbour], window_lo[:, None])
    hi = torch.minimum(bounds[neighbour + 1], window_hi[:, None])
    return neighbour, lo, torch.where(on_grid, torch.maximum(hi, lo), lo)


def basin_window_sums(tables: list[torch.Tensor], basins: torch.Tensor, rows: tuple, cols: tuple) -> list[torch.Tensor]:
    """Returns per table the (B, h, w) sum over each cell's window, counting only the cells of the cell's basin.

    Args:
        tables: (B, H + 1, W + 1) summed-area tables.
        basins: (B, h, w) basin labels (``cam_basins``; all equal: plain window sums).
        rows: ``neighbour_spans`` along the height.
        cols: ``neighbour_spans`` along the width.
    """
    (row_nb, row_lo, row_hi), (col_nb, col_lo, col_hi) = rows, cols
    sums = [torch.zeros(basins.shape, dtype=t.dtype, device=t.device) for t in tables]
    for j in range(row_nb.shape[1]):  # one vertical offset at a time: (B, h, w, offsets) stays small
        neighbours = basins[:, row_nb[:, j]][:, :, col_nb]  # (B, h, w, offsets)
        same = (neighbours == basins[..., None]).to(tables[0].dtype)
        for total, table in zip(sums, tables, strict=True):
            top, bottom = table[:, row_lo[:, j]], table[:, row_hi[:, j]]  # (B, h, W + 1)
            rect = bottom[:, :, col_hi] - bottom[:, :, col_lo] - top[:, :, col_hi] + top[:, :, col_lo]
            total += (rect * same).sum(dim=-1)
    return sums
