"""Peak refinement stays inside each peak's CAM basin: a weak lesion beside a strong one keeps its own box."""

import numpy as np
import pytest
import torch

from engine.core.localization.basins import cam_basins
from engine.core.localization.boxes import BoxParams, extract_pseudo_boxes, refined_peaks
from engine.core.model.cam import CamError, normalize_cams, refine_cell_centres


def test_cam_basins_follow_steepest_ascent_to_each_local_maximum():
    cam = torch.tensor([[[0.0, 0.2, 0.1, 0.0, 0.0], [0.9, 0.3, 0.1, 0.4, 0.6], [0.2, 0.1, 0.0, 0.3, 0.2]]])
    left, right = 1 * 5 + 0, 1 * 5 + 4  # flat indices of the two maxima
    expected = [[left, left, right, right, right]] * 3
    # (0, 2) = 0.1 is 0.2 / 0.3 from the left slope but 0.4 (1, 3) from the right one: the steepest way is right;
    # (1, 1) = 0.3 climbs to 0.9; (1, 3) = 0.4 climbs to 0.6 (its 0.1 / 0.3 neighbours are lower).
    assert cam_basins(cam)[0].tolist() == expected


def test_cam_basins_give_a_ridge_one_basin_and_a_flat_map_one_basin():
    ridge = torch.zeros(1, 4, 3)
    ridge[0, 1:4, 1] = 1.0
    assert set(cam_basins(ridge).flatten().tolist()) == {1 * 3 + 1}
    assert set(cam_basins(torch.zeros(2, 3, 3)).flatten().tolist()) == {0}


def brute_force_basin_centres(evidence, labels, reach, power):
    """Per cell: the weighted centroid of the window's pixels whose cell shares the cell's label, by loops."""
    height, width = evidence.shape
    grid_h, grid_w = labels.shape
    weight = (evidence / max(evidence.max(), 1e-30)) ** power
    pixel_rows = np.floor((np.arange(height) + 0.5) * grid_h / height).astype(int)  # nearest cell centre
    pixel_cols = np.floor((np.arange(width) + 0.5) * grid_w / width).astype(int)
    pixel_labels = labels[pixel_rows][:, pixel_cols]
    cell_h, cell_w = height / grid_h, width / grid_w
    out = np.zeros((grid_h, grid_w, 2))
    for r in range(grid_h):
        for c in range(grid_w):
            cx, cy = (c + 0.5) * cell_w, (r + 0.5) * cell_h
            x0, x1 = max(0, int(np.floor(cx - reach * cell_w))), min(width, int(np.ceil(cx + reach * cell_w)))
            y0, y1 = max(0, int(np.floor(cy - reach * cell_h))), min(height, int(np.ceil(cy + reach * cell_h)))
            window = weight[y0:y1, x0:x1] * (pixel_labels[y0:y1, x0:x1] == labels[r, c])
            ys, xs = np.mgrid[y0:y1, x0:x1] + 0.5
            total = window.sum()
            out[r, c] = ((window * xs).sum() / total, (window * ys).sum() / total) if total > 1e-12 else (cx, cy)
    return out


@pytest.mark.parametrize(("shape", "grid", "reach"), [((40, 24), (5, 3), 2.0), ((37, 29), (6, 4), 1.5)])
def test_basin_refinement_equals_a_brute_force_centroid_over_the_cells_basin(shape, grid, reach):
    rng = np.random.default_rng(5)
    evidence = rng.random((2, *shape)) ** 4
    cams = rng.random((2, *grid))
    got = refine_cell_centres(torch.from_numpy(evidence).float(), *grid, reach, 3.0, cams=torch.from_numpy(cams))
    labels = cam_basins(torch.from_numpy(cams)).numpy()
    assert len(np.unique(labels[0])) > 1  # several basins: the restriction is exercised
    for b in range(2):
        expected = brute_force_basin_centres(evidence[b].astype(np.float32).astype(np.float64), labels[b], reach, 3.0)
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-3)
    with pytest.raises(CamError, match="cams must be"):
        refine_cell_centres(torch.from_numpy(evidence).float(), *grid, reach, 3.0, cams=torch.zeros(1, *grid))


def two_lesions(strong_x: float, weak_x: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A 256 x 256 canvas (stride 32, 8 x 8 CAM) with a strong and a 3x weaker Gaussian hot spot on row y = 112."""
    ys, xs = np.mgrid[0:256, 0:256] + 0.5
    spot = lambda x0, amp: amp * np.exp(-((xs - x0) ** 2 + (ys - 112) ** 2) / (2 * 6.0**2))  # noqa: E731
    evidence = torch.from_numpy(spot(strong_x, 1.0) + spot(weak_x, 0.3))[None].float()
    cam = torch.zeros(1, 8, 8)
    cam[0, 3, int(strong_x // 32)], cam[0, 3, int(weak_x // 32)] = 1.0, 0.5  # two separate CAM peaks
    cam[0, 3, int(strong_x // 32) + 1] = 0.3  # the cell between: on the strong peak's slope
    return evidence, cam


def test_weak_peak_59_px_from_a_strong_one_keeps_its_own_box():
    evidence, cam = two_lesions(80.0, 139.0)  # 59 px apart: the weak peak's window reaches the strong spot
    heat = normalize_cams(cam)[0][0].numpy()
    body, params = (0.0, 0.0, 256.0, 256.0), BoxParams(size=48, max_boxes=5, nms_iou=0.15)
    centres = refine_cell_centres(evidence, 8, 8, reach=2.0, power=4.0, cams=cam)[0].numpy()
    refined = refined_peaks(heat, body, 256, 256, centres, limit=8)
    np.testing.assert_allclose(refined[1], [[80.0, 112.0], [139.0, 112.0]], atol=0.5)
    boxes = extract_pseudo_boxes(heat, body, 256, 256, params, refined)
    assert len(boxes) == 2  # both lesions
    np.testing.assert_allclose((boxes[:, 0] + boxes[:, 2]) / 2, [80.0, 139.0], atol=0.5)
    np.testing.assert_allclose(boxes[:, 4], [1.0, 0.5], rtol=1e-6)
    unbounded = refine_cell_centres(evidence, 8, 8, reach=2.0, power=4.0)[0].numpy()  # windows across basins
    merged = refined_peaks(heat, body, 256, 256, unbounded, limit=8)
    assert abs(merged[1][1, 0] - 80.0) < 5.0  # the weak peak is pulled onto the strong spot ...
    assert len(extract_pseudo_boxes(heat, body, 256, 256, params, merged)) == 1  # ... and NMS drops it
