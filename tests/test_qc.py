"""Image QC: statistics and flags on hand-made arrays, the qc schema, and the bands on generated scans."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from engine.core.qc import (
    REAL_SCAN_MEDIANS,
    QcThresholds,
    body_box,
    body_height_fraction,
    domain_shift,
    image_qc,
    qc_row,
    summarize_qc,
    total_counts,
    zero_fraction,
)
from engine.io.synth import generate_dataset, whole_body_qc
from schemas.qc import SCHEMA

H, W = 1024, 256


def block(rows: slice, cols: slice, value: int = 10) -> np.ndarray:
    image = np.zeros((H, W), np.uint8)
    image[rows, cols] = value
    return image


def test_uniform_image_is_one_whole_frame_body_with_zero_roughness():
    qc = image_qc(np.full((16, 8), 3, np.uint8))  # blur = 3 > 0.25 * 3 + 0.5 everywhere
    assert (qc.total_counts, qc.zero_fraction, qc.body_box) == (384, 0.0, (0, 0, 8, 16))
    assert qc.body_height_fraction == qc.body_width_fraction == 1.0
    assert qc.roughness == pytest.approx(0.0, abs=1e-6)
    assert qc.body_cut and qc.low_count and not qc.noise_frame and not qc.small_body


def test_all_zero_image_is_a_noise_frame_without_a_body():
    qc = image_qc(np.zeros((H, W), np.uint8))
    assert (qc.total_counts, qc.zero_fraction, qc.body_box, qc.roughness) == (0, 1.0, None, None)
    assert qc.noise_frame and qc.low_count and not qc.body_cut and not qc.small_body
    assert qc.body_height_fraction == 0.0


def test_block_body_box_extends_by_the_blur_to_where_it_crosses_the_level():
    # mean = 10 * 600 * 136 / 262144 = 3.113, level 1.278; k px outside a long edge the blur is
    # 10 * (1 - Phi((k - 0.5) / 6)): k = 7 gives 1.394 (in), k = 8 gives 1.056 (out).
    image = block(slice(200, 800), slice(60, 196))
    assert body_box(image) == (53, 193, 203, 807)
    assert body_height_fraction(image) == 614 / 1024
    assert total_counts(image) == 816_000 and zero_fraction(image) == 1 - 600 * 136 / (H * W)
    qc = image_qc(image)
    assert qc.body_width_fraction == 150 / 256 and qc.p99_grey == 10.0
    assert not (qc.noise_frame or qc.low_count or qc.small_body or qc.body_cut)


def test_checkerboard_roughness_is_its_amplitude_over_its_mean():
    image = (np.indices((64, 32)).sum(axis=0) % 2 * 20).astype(np.uint8)  # blur = 10, residual +-10
    qc = image_qc(image)
    assert qc.zero_fraction == 0.5 and qc.total_counts == 20 * 1024
    assert qc.roughness == pytest.approx(1.0, abs=1e-3)


def test_sparse_specks_are_a_noise_frame():
    image = np.zeros((H, W), np.uint8)
    image[5::100, 5::30] = 50  # 110 isolated specks; a speck's blur peak is 50 / (2 pi 36) = 0.22 < level 0.5
    qc = image_qc(image)
    assert qc.noise_frame and qc.body_box is None and qc.roughness is None


def test_a_small_hot_blob_in_an_empty_frame_is_still_a_noise_frame():
    qc = image_qc(block(slice(500, 510), slice(100, 110), 200))  # a blob, but 99.96 % zero pixels
    assert qc.noise_frame and qc.body_box is None and qc.body_height_fraction == 0.0


def test_body_touching_the_top_is_cut_and_a_short_body_is_small():
    assert image_qc(block(slice(0, 300), slice(60, 196))).body_cut
    assert image_qc(block(slice(724, 1024), slice(60, 196))).body_cut
    short = image_qc(block(slice(400, 700), slice(60, 196)))
    assert short.small_body and not short.body_cut and short.body_height_fraction < 0.45


def test_a_region_crop_gets_only_the_noise_flag():
    cut_and_faint = np.full((64, 64), 1, np.uint8)  # a body filling the frame (cut) with few counts
    whole = image_qc(cut_and_faint)
    crop = image_qc(cut_and_faint, whole_body=False)
    assert whole.body_cut and whole.low_count
    assert not (crop.body_cut or crop.low_count or crop.small_body) and crop.body_box == whole.body_box
    assert image_qc(np.zeros((64, 64), np.uint8), whole_body=False).noise_frame


def test_thresholds_are_parameters_and_low_count_is_strict():
    image = block(slice(200, 800), slice(60, 196))  # 816,000 counts
    assert image_qc(image, QcThresholds(low_count_total=816_001)).low_count
    assert not image_qc(image, QcThresholds(low_count_total=816_000)).low_count
    assert image_qc(image, QcThresholds(small_body_height=0.7)).small_body
    assert image_qc(block(slice(10, 300), slice(60, 196)), QcThresholds(cut_margin_px=5)).body_cut


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32), np.zeros((2, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_non_2d_uint8_images_are_refused_with_shape_and_dtype(bad):
    with pytest.raises(ValueError, match=r"2-D uint8 image .* got shape"):
        image_qc(bad)


def test_qc_rows_fill_the_schema_and_read_back_in_pandas_and_duckdb():
    rows = [qc_row("wholeBodyANT/1.jpg", "wholeBodyANT", image_qc(block(slice(200, 800), slice(60, 196)))),
            qc_row("wholeBodyPOST/1.jpg", "wholeBodyPOST", image_qc(np.zeros((H, W), np.uint8)))]  # fmt: skip
    qc_table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert qc_table.column_names == SCHEMA.names
    frame = qc_table.to_pandas()
    assert frame.loc[0, ["body_x1", "body_y1", "body_x2", "body_y2"]].tolist() == [53, 193, 203, 807]
    assert frame["noise_frame"].tolist() == [False, True] and frame["body_x1"].isna().tolist() == [False, True]
    assert duckdb.sql("select count(*) from qc_table where body_x1 is null").fetchall() == [(1,)]


def test_summary_takes_medians_over_body_frames_and_counts_noise_frames():
    frames = [image_qc(block(slice(200, 800), slice(60, 196), value)) for value in (10, 20, 30)]
    summary = summarize_qc([*frames, image_qc(np.zeros((H, W), np.uint8))])
    assert (summary["frames"], summary["noise_frames"], summary["low_count_frames"]) == (4, 1, 1)
    assert summary["mean_grey"] == frames[1].mean_grey and summary["p99_grey"] == 20.0


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("qc") / "data"
    generate_dataset(root, patients=20, seed=4, region_fraction=0.0)  # seed 4: two noise frames among 40
    return root, whole_body_qc(root)


def test_generated_scans_match_the_real_scan_statistics(generated):
    _, results = generated
    summary = summarize_qc(qc for _, qc in results)
    print("\n[qc] generated vs real:", {k: (round(summary[k], 3), v) for k, v in REAL_SCAN_MEDIANS.items()})
    for name, real in REAL_SCAN_MEDIANS.items():
        assert 0.75 * real <= summary[name] <= 1.25 * real, (name, summary[name], real)
    assert 0.60 <= summary["body_height_fraction"] <= 0.75


def test_generated_noise_frames_and_only_they_are_flagged_noise(generated):
    root, results = generated
    truth = {line["image_id"]: line for line in map(json.loads, (root / "synth_truth.jsonl").read_text().splitlines())}
    assert set(truth) == {image_id for image_id, _ in results}
    flagged = {image_id for image_id, qc in results if qc.noise_frame}
    assert flagged == {image_id for image_id, line in truth.items() if line["noise_frame"]}
    assert len(flagged) == 2


def test_domain_shift_flags_values_outside_the_reference_quantile_range_only():
    reference = {"mean_grey": np.linspace(2.0, 6.0, 101), "zero_fraction": np.linspace(0.6, 0.9, 101)}
    stats = {
        "mean_grey": np.array([4.0, 19.6, 1.0, np.nan, 4.0]),
        "zero_fraction": np.array([0.7, 0.7, 0.7, 0.7, 0.22]),
    }
    assert domain_shift(stats, reference).tolist() == [False, True, True, False, True]
    assert not domain_shift(stats, {}).any()  # no reference: nothing to compare with
    edge = {"mean_grey": np.array([2.0, 1.99])}  # the reference minimum is inside a (0, 1) range
    assert domain_shift(edge, reference, quantiles=(0.0, 1.0)).tolist() == [False, True]
