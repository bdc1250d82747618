"""`engine.load_heatmap`: from a table row to the scan and its CAM in one frame, on a real trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import engine
import schemas
from engine.core.localization.columns import META_COLUMNS
from engine.core.scans.letterbox import LetterboxMeta, canvas_to_original
from engine.io.codecs import heatmap_column
from engine.io.heatmap_access import HeatmapNotFoundError, load_heatmap
from engine.io.tables import TableWriter, read_table


@pytest.fixture(scope="module")
def cam_run(scored_run: Path) -> Path:
    return scored_run


def scored(run_dir: Path) -> pd.DataFrame:
    heat = read_table(str(run_dir), "heatmaps")
    meta = read_table(str(run_dir), "meta").drop(columns=["split", "folder"])
    index = read_table(str(run_dir), "index")[["image_id", "path"]]
    return heat.merge(meta, on="image_id").merge(index, on="image_id")


def meta_of(row: object) -> LetterboxMeta:
    return LetterboxMeta(**{k: float(getattr(row, k)) if k == "scale" else int(getattr(row, k)) for k in META_COLUMNS})


def cell_centre_orig(row: object, cell: int) -> tuple[float, float, float, float]:
    """Returns (x, y, cell width, cell height) in original px of feature cell `cell` (flat r * w + c)."""
    meta, h, w = meta_of(row), int(row.heatmap_h), int(row.heatmap_w)
    r, c = divmod(cell, w)
    x, y = (c + 0.5) * meta.canvas_w / w, (r + 0.5) * meta.canvas_h / h
    x_orig, y_orig = canvas_to_original(np.array([[x, y, x, y]]), meta)[0][:2]
    cell_w, cell_h = meta.canvas_w / w * meta.orig_w / meta.new_w, meta.canvas_h / h * meta.orig_h / meta.new_h
    return x_orig, y_orig, cell_w, cell_h


def test_the_orig_space_map_has_the_original_image_shape_and_stays_in_unit_range(cam_run: Path, data_root: Path):
    frame = scored(cam_run)
    assert len(frame) >= 4
    for row in frame.head(6).itertuples(index=False):
        image, heatmap = engine.load_heatmap(str(cam_run), row.image_id)  # data root from the saved config
        on_disk = cv2.imread(str(data_root / row.path), cv2.IMREAD_GRAYSCALE)
        assert image.shape == heatmap.shape == on_disk.shape == (row.orig_h, row.orig_w)
        assert np.array_equal(image, on_disk)
        assert heatmap.dtype == np.float32 and heatmap.min() >= 0.0 and heatmap.max() <= 1.0


def test_the_orig_argmax_lies_in_the_cell_of_the_stored_maps_maximum(cam_run: Path) -> None:
    frame = scored(cam_run)
    inside = []
    for row in frame.itertuples(index=False):
        cell = int(np.argmax(row.heatmap))
        r, c = divmod(cell, int(row.heatmap_w))
        x, y = (c + 0.5) * row.canvas_w / row.heatmap_w, (r + 0.5) * row.canvas_h / row.heatmap_h
        if row.pad_left <= x < row.pad_left + row.new_w and row.pad_top <= y < row.pad_top + row.new_h:
            inside.append((row, cell))  # the maximum's cell centre lies on the scan, not on the padding
    assert inside, "no image whose map maximum lies on the scan"
    for row, cell in inside:
        _, heatmap = load_heatmap(str(cam_run), row.image_id, "orig")
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        centre_x, centre_y, cell_w, cell_h = cell_centre_orig(row, cell)
        assert abs(x + 0.5 - centre_x) <= cell_w / 2 and abs(y + 0.5 - centre_y) <= cell_h / 2, row.image_id
        assert heatmap.max() == pytest.approx(1.0, abs=0.05)


def test_canvas_space_gives_the_letterboxed_canvas_with_black_padding(cam_run: Path) -> None:
    row = next(scored(cam_run).itertuples(index=False))
    canvas, heatmap = load_heatmap(str(cam_run), row.image_id, space="canvas")
    assert canvas.shape == heatmap.shape == (row.canvas_h, row.canvas_w)
    x1, y1 = row.pad_left, row.pad_top
    x2, y2 = x1 + row.new_w, y1 + row.new_h
    padding = np.ones(canvas.shape, dtype=bool)
    padding[y1:y2, x1:x2] = False
    assert padding.any() and not canvas[padding].any() and canvas[~padding].any()
    assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0


def test_a_one_hot_heatmap_peaks_exactly_where_its_cell_maps_to(cam_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(cam_run, copy)
    frame = scored(copy)
    grid = np.zeros((len(frame), int(frame["heatmap_h"].iloc[0]), int(frame["heatmap_w"].iloc[0])), np.float16)
    cells = []
    for i, row in enumerate(frame.itertuples(index=False)):  # the cell holding the body's centre
        meta = meta_of(row)
        r = int((meta.pad_top + meta.new_h / 2) // (meta.canvas_h / grid.shape[1]))
        c = int((meta.pad_left + meta.new_w / 2) // (meta.canvas_w / grid.shape[2]))
        grid[i, r, c] = 1.0
        cells.append(r * grid.shape[2] + c)
    writer = TableWriter(str(copy), "cam", overwrite=True, split="test")
    columns = {c: frame[c].to_numpy() for c in frame.columns if c in schemas.TABLES["heatmaps"].SCHEMA.names}
    writer.write("heatmaps", columns | {"heatmap": heatmap_column(grid)})
    writer.commit()
    for row, cell in list(zip(frame.itertuples(index=False), cells, strict=True))[:6]:
        _, heatmap = load_heatmap(str(copy), row.image_id)
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        centre_x, centre_y, cell_w, cell_h = cell_centre_orig(row, cell)
        assert abs(x + 0.5 - centre_x) <= max(1.0, cell_w / 8) and abs(y + 0.5 - centre_y) <= max(1.0, cell_h / 8)
        assert heatmap[0, 0] == 0.0  # far from the hot cell: cold


def test_unknown_images_spaces_and_runs_without_a_saved_config_are_refused(cam_run: Path, tmp_path: Path) -> None:
    row = next(scored(cam_run).itertuples(index=False))
    with pytest.raises(HeatmapNotFoundError, match=r"image_id=nope/0.jpg"):
        load_heatmap(str(cam_run), "nope/0.jpg")
    with pytest.raises(ValueError, match=r"space='pixels'"):
        load_heatmap(str(cam_run), row.image_id, space="pixels")
    bare = tmp_path / "bare"
    shutil.copytree(cam_run / "tables", bare / "tables")
    with pytest.raises(HeatmapNotFoundError, match=r"data.root"):
        load_heatmap(str(bare), row.image_id)
