"""Image QC: statistics and flags on hand-made arrays, the qc schema, the bands on generated scans, noise frames at
any speck density, low_count on true counts whatever the frame size, and domain_shift's false-flag rate."""

import dataclasses
import json
import math
from pathlib import Path

import cv2
import duckdb
import numpy as np
import pyarrow as pa
import pytest

from engine.core.scans.counts import counts_to_gray8
from engine.core.scans.qc import (
    REAL_SCAN_MEDIANS,
    SHIFT_STATS,
    QcThresholds,
    ShiftReference,
    body_blur,
    body_box,
    body_core,
    body_height_fraction,
    body_mask,
    domain_shift,
    fit_shift_reference,
    image_qc,
    qc_row,
    roughness,
    shift_scores,
    summarize_qc,
    total_counts,
    zero_fraction,
)
from engine.core.synth.anatomy import render_tissue, render_view
from engine.core.synth.patients import sample_patient
from engine.io.synth import generate_dataset, whole_body_qc
from schemas.qc import SCHEMA

H, W = 1024, 256


def block(rows: slice, cols: slice, value: int = 10) -> np.ndarray:
    image = np.zeros((H, W), np.uint8)
    image[rows, cols] = value
    return image


def body_counts(total: float, seed: int, shape: tuple[int, int] = (H, W), hot: int = 0) -> np.ndarray:
    """Returns uint16 Poisson counts of a smooth body (an ellipse, a brighter spine) holding `total` expected counts,
    plus one pixel of `hot` counts (an injection site)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = (((yy - 0.45 * h) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.18 * w)) ** 2 <= 1).astype(np.float32)
    body += 2.0 * body * (np.abs(xx - w / 2) < 0.02 * w)
    body = cv2.GaussianBlur(body, (0, 0), 3 * h / H)
    counts = np.random.default_rng(seed).poisson(body * (total / body.sum())).astype(np.uint16)
    counts[int(0.6 * h), w // 2 + w // 25] += hot
    return counts


def counts_qc(counts: np.ndarray, **kwargs) -> object:
    """QC of a 16-bit study as the engine reads one: grey by the `max` rule, statistics on the true counts."""
    return image_qc(counts_to_gray8(counts)[0], counts=counts, **kwargs)


def generated_body(seed: int, pid: int, count_factor: float = 1.0) -> np.ndarray:
    """Returns the POST view of a generated patient (never a noise frame), its counts times `count_factor`."""
    patient = sample_patient(np.random.default_rng([seed, pid]), pid, 0.0)
    patient = dataclasses.replace(patient, is_noise=(False, False), count_factor=patient.count_factor * count_factor)
    return render_view(patient, 1, render_tissue(patient), np.random.default_rng([seed, pid, 1]))


def speck_frame(density: float, seed: int) -> np.ndarray:
    """Returns pure detector noise: a faint Poisson floor and a `density` share of pixels holding bright specks."""
    rng = np.random.default_rng(seed)
    image = rng.poisson(0.01, (H, W))
    specks = rng.random((H, W)) < density
    image[specks] += rng.geometric(1 / 12, int(specks.sum()))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_a_flat_frame_is_a_blob_of_the_whole_frame_but_no_body():
    qc = image_qc(np.full((16, 8), 3, np.uint8))  # blur = 3 > 0.25 * 3 + 0.5 everywhere: one flat blob
    assert (qc.total_counts, qc.zero_fraction, qc.count_unit) == (384, 0.0, "grey")
    assert qc.body_area_fraction == 1.0 and qc.shape_snr == 0.0  # nothing varies over it: no shape
    assert qc.noise_frame and qc.body_box is None and qc.roughness is None and qc.body_counts_per_px is None
    assert not (qc.low_count or qc.small_body or qc.body_cut)  # body flags need a body


def test_all_zero_image_is_a_noise_frame_without_a_blob():
    qc = image_qc(np.zeros((H, W), np.uint8))
    assert (qc.total_counts, qc.zero_fraction, qc.body_box, qc.roughness, qc.shape_snr) == (0, 1.0, None, None, None)
    assert qc.noise_frame and qc.body_area_fraction == 0.0 and qc.body_height_fraction == 0.0
    assert not (qc.low_count or qc.body_cut or qc.small_body)


def test_block_body_box_extends_by_the_blur_to_where_it_crosses_the_level():
    # mean = 10 * 600 * 136 / 262144 = 3.113, level 1.278; k px outside a long edge the blur is
    # 10 * (1 - Phi((k - 0.5) / 6)): k = 7 gives 1.394 (in), k = 8 gives 1.056 (out).
    image = block(slice(200, 800), slice(60, 196))
    assert body_box(image) == (53, 193, 203, 807)
    assert body_height_fraction(image) == 614 / 1024
    assert total_counts(image) == 816_000 and zero_fraction(image) == 1 - 600 * 136 / (H * W)
    qc = image_qc(image)
    assert qc.body_width_fraction == 150 / 256 and qc.p99_grey == 10.0 and qc.shape_snr > 3
    mask = body_mask(image)
    core = body_core(mask, body_blur(image))  # the block itself: its blur reaches half of the blob's median
    assert qc.body_area_fraction == mask.mean() and qc.body_counts_per_px == pytest.approx(image[core].mean())
    assert core.sum() == pytest.approx(600 * 136, rel=0.01) and core.sum() < mask.sum()
    assert not (qc.noise_frame or qc.low_count or qc.small_body or qc.body_cut)


def test_checkerboard_roughness_is_its_amplitude_over_its_mean():
    image = (np.indices((64, 32)).sum(axis=0) % 2 * 20).astype(np.uint8)  # blur = 10, residual +-10
    everywhere = np.ones(image.shape, bool)
    assert roughness(image, everywhere, body_blur(image)) == pytest.approx(1.0, abs=1e-3)
    qc = image_qc(image)
    assert qc.zero_fraction == 0.5 and qc.total_counts == 20 * 1024
    assert qc.noise_frame and qc.shape_snr < 0.1  # a texture without a shape: no body


def test_sparse_specks_are_a_noise_frame():
    image = np.zeros((H, W), np.uint8)
    image[5::100, 5::30] = 50  # 110 isolated specks; a speck's blur peak is 50 / (2 pi 36) = 0.22 < level 0.5
    qc = image_qc(image)
    assert qc.noise_frame and qc.body_box is None and qc.roughness is None


def test_a_small_hot_blob_in_an_empty_frame_is_still_a_noise_frame():
    qc = image_qc(block(slice(500, 510), slice(100, 110), 200))  # a smooth blob, but on 0.5 % of the frame
    assert qc.noise_frame and qc.body_box is None and qc.body_height_fraction == 0.0
    assert 0 < qc.body_area_fraction < QcThresholds().min_body_area


@pytest.mark.parametrize("density", [0.002, 0.01, 0.05, 0.1, 0.2, 0.5])
def test_detector_noise_is_a_noise_frame_whatever_its_speck_density(density):
    qc = image_qc(speck_frame(density, seed=int(density * 1000)))
    assert qc.noise_frame and qc.body_box is None and not qc.body_cut, qc
    assert qc.shape_snr is None or qc.shape_snr < 1.5  # smoothed noise is flat: ~1 at most (bodies >= 6)


def test_the_issues_speck_frame_is_noise_not_a_cut_body():
    image = speck_frame(0.05, seed=7)  # ~5 % specks: the frame the former zero-fraction rule called a cut body
    qc = image_qc(image)
    blob = body_mask(image)
    assert 0.94 < qc.zero_fraction < 0.95 and roughness(image, blob, body_blur(image)) > 4  # as in the issue
    assert qc.noise_frame and not qc.body_cut and qc.body_box is None


@pytest.mark.parametrize("mean", [0.5, 2.0, 20.0])
def test_uniform_poisson_fields_are_noise_frames(mean):
    image = np.clip(np.random.default_rng(1).poisson(mean, (H, W)), 0, 255).astype(np.uint8)
    assert image_qc(image).noise_frame


def test_bodies_are_bodies_from_full_counts_down_to_a_twentieth():
    for pid in range(3):
        for factor in (1.0, 0.1, 0.05):
            qc = image_qc(generated_body(5, pid, factor))
            assert not qc.noise_frame and qc.body_box is not None and qc.shape_snr >= 3, (pid, factor, qc)
            assert qc.low_count == (factor < 0.5), (pid, factor, qc.body_counts_per_px)


def test_body_touching_the_top_is_cut_and_a_short_body_is_small():
    assert image_qc(block(slice(0, 300), slice(60, 196))).body_cut
    assert image_qc(block(slice(724, 1024), slice(60, 196))).body_cut
    short = image_qc(block(slice(400, 700), slice(60, 196)))
    assert short.small_body and not short.body_cut and short.body_height_fraction < 0.45


def test_a_region_crop_gets_only_the_noise_flag():
    faint = body_counts(4000, seed=1, shape=(128, 64))[20:84].astype(np.uint8)  # a body cut by a crop, few counts
    whole = image_qc(faint)
    crop = image_qc(faint, whole_body=False)
    assert whole.body_cut and whole.low_count and not whole.noise_frame
    assert not (crop.body_cut or crop.low_count or crop.small_body) and crop.body_box == whole.body_box
    assert image_qc(np.zeros((64, 64), np.uint8), whole_body=False).noise_frame


def test_low_count_judges_the_true_counts_not_the_count_scaled_grey():
    low = body_counts(99_000, seed=1)  # a genuinely low-count study
    hot = body_counts(1_400_000, seed=2, hot=3000)  # plenty of counts, one hot spot sets the grey scale
    low_qc, hot_qc = counts_qc(low), counts_qc(hot)
    assert low_qc.count_unit == hot_qc.count_unit == "counts"
    assert low_qc.total_counts == int(low.sum()) and hot_qc.total_counts == int(hot.sum())
    assert low_qc.low_count and low_qc.body_counts_per_px < 2.5 and not low_qc.noise_frame
    assert not hot_qc.low_count and hot_qc.body_counts_per_px > 10
    # their grey images alone say the opposite: the low study's peak maps to 255, the hot spot darkens the other
    low_grey, hot_grey = counts_to_gray8(low)[0], counts_to_gray8(hot)[0]
    assert low_grey.sum() > 300_000 > hot_grey.sum()  # the former rule: total grey < 300,000 flagged
    assert not image_qc(low_grey).low_count


def test_low_count_does_not_depend_on_the_frame_size():
    for total, is_low in ((99_000, True), (600_000, False)):
        full = counts_qc(body_counts(total, seed=3))
        quarter = counts_qc(body_counts(total / 4, seed=3, shape=(H // 2, W // 2)))  # same counts per pixel
        padded_counts = np.zeros((H, 2 * W), np.uint16)
        padded_counts[:, W // 2 : W // 2 + W] = body_counts(total, seed=3)
        padded = counts_qc(padded_counts)  # the same study in a frame with wide empty margins
        for qc in (full, quarter, padded):
            assert qc.low_count == is_low and not qc.noise_frame, (total, qc)
        assert quarter.body_counts_per_px == pytest.approx(full.body_counts_per_px, rel=0.1)
        assert padded.body_counts_per_px == pytest.approx(full.body_counts_per_px, rel=0.05)


def test_counts_per_body_pixel_are_scaled_to_a_2_4_mm_pixel_where_the_spacing_is_known():
    counts = body_counts(500_000, seed=4)
    plain = counts_qc(counts)
    assert counts_qc(counts, pixel_mm=(2.4, 2.4)).body_counts_per_px == pytest.approx(plain.body_counts_per_px)
    assert counts_qc(counts, pixel_mm=(4.8, 2.4)).body_counts_per_px == pytest.approx(plain.body_counts_per_px / 2)
    binned = counts.reshape(H // 2, 2, W // 2, 2).sum(axis=(1, 3)).astype(np.uint16)  # a 2x2-binned matrix
    coarse = counts_qc(binned, pixel_mm=(4.8, 4.8))
    assert coarse.body_counts_per_px == pytest.approx(plain.body_counts_per_px, rel=0.1)


def test_thresholds_are_parameters_and_low_count_is_strict():
    image = block(slice(200, 800), slice(60, 196))
    density = image_qc(image).body_counts_per_px
    assert image_qc(image, QcThresholds(low_count_per_px=density + 1e-9)).low_count
    assert not image_qc(image, QcThresholds(low_count_per_px=density)).low_count
    assert image_qc(image, QcThresholds(small_body_height=0.7)).small_body
    assert image_qc(block(slice(10, 300), slice(60, 196)), QcThresholds(cut_margin_px=5)).body_cut
    assert image_qc(image, QcThresholds(min_body_area=0.5)).noise_frame


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.float32), np.zeros((2, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)]
)
def test_non_2d_uint8_images_are_refused_with_shape_and_dtype(bad):
    with pytest.raises(ValueError, match=r"2-D uint8 image .* got shape"):
        image_qc(bad)


def test_counts_of_another_shape_are_refused():
    with pytest.raises(ValueError, match=r"counts must be .* shape \(4, 4\)"):
        image_qc(np.zeros((4, 4), np.uint8), counts=np.zeros((4, 5), np.uint16))


def test_qc_rows_fill_the_schema_and_read_back_in_pandas_and_duckdb():
    rows = [
        qc_row("wholeBodyANT/1.jpg", "wholeBodyANT", image_qc(block(slice(200, 800), slice(60, 196)))),
        qc_row("wholeBodyPOST/1.jpg", "wholeBodyPOST", image_qc(np.zeros((H, W), np.uint8))),
        qc_row("dicom/s.dcm#1", "dicom", counts_qc(body_counts(99_000, seed=1))),
    ]
    qc_table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert qc_table.column_names == SCHEMA.names
    frame = qc_table.to_pandas()
    assert frame.loc[0, ["body_x1", "body_y1", "body_x2", "body_y2"]].tolist() == [53, 193, 203, 807]
    assert frame["noise_frame"].tolist() == [False, True, False] and frame["body_x1"].isna().tolist() == [0, 1, 0]
    assert frame["count_unit"].tolist() == ["grey", "grey", "counts"] and frame["low_count"].tolist() == [0, 0, 1]
    assert duckdb.sql("select count(*) from qc_table where body_x1 is null").fetchall() == [(1,)]


def test_summary_takes_medians_over_body_frames_and_counts_noise_frames():
    frames = [image_qc(block(slice(200, 800), slice(60, 196), value)) for value in (10, 20, 30)]
    summary = summarize_qc([*frames, image_qc(np.zeros((H, W), np.uint8))])
    assert (summary["frames"], summary["noise_frames"], summary["low_count_frames"]) == (4, 1, 0)
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


def shift_stats(results: list) -> dict[str, np.ndarray]:
    return {name: np.array([getattr(qc, name) for qc in results], dtype=np.float64) for name in SHIFT_STATS}


@pytest.fixture(scope="module")
def training_like() -> tuple[dict, dict]:
    """QC statistics of 240 + 240 generated POST scans of different patients (noise frames left out, as
    qc.exclude does): a model's training images, and held-out scans like them."""
    sets = []
    for seed in (21, 22):
        results = []
        for pid in range(240):
            patient = sample_patient(np.random.default_rng([seed, pid]), pid, 0.0)
            qc = image_qc(render_view(patient, 1, render_tissue(patient), np.random.default_rng([seed, pid, 1])))
            results += [] if qc.noise_frame else [qc]
        sets.append(shift_stats(results))
    return sets[0], sets[1]


def test_domain_shift_flags_at_most_2_percent_of_the_training_images_and_of_scans_like_them(training_like):
    train, held_out = training_like
    reference = fit_shift_reference(train)
    flagged_train = domain_shift(train, reference).mean()
    flagged_held = domain_shift(held_out, reference).mean()
    print(
        f"\n[domain_shift] flagged: training {flagged_train:.3f}, held-out {flagged_held:.3f}, "
        f"threshold {reference.threshold:.3f}"
    )
    assert flagged_train <= 0.02 and reference.train_flagged == round(flagged_train * reference.images)
    assert flagged_held <= 0.03  # expected ~1-2 % of scans from the same population
    old = np.zeros(len(train["mean_grey"]), bool)  # the former rule: each statistic against its 1-99 % range
    for name in SHIFT_STATS:
        low, high = np.quantile(train[name], (0.01, 0.99))
        old |= (train[name] < low) | (train[name] > high)
    assert old.mean() > 0.04  # it flagged 4-8 % of the model's own training images


def test_domain_shift_flags_scans_unlike_the_training_images(training_like):
    train, _ = training_like
    reference = fit_shift_reference(train)
    clinic = {
        "mean_grey": np.array([13.8]),
        "zero_fraction": np.array([0.51]),
        "p99_grey": np.array([120.0]),
        "body_height_fraction": np.array([0.99]),
    }  # a clinic export: cropped to the body, brighter, less sparse
    assert domain_shift(clinic, reference).tolist() == [True]
    typical = {name: np.array([np.median(train[name])]) for name in SHIFT_STATS}
    assert domain_shift(typical, reference).tolist() == [False]
    for name in SHIFT_STATS:  # any one statistic beyond the training range by its width, on either side
        low, high = train[name].min(), train[name].max()
        for value in (low - (high - low), high + (high - low)):
            one_off = {**typical, name: np.array([value])}
            assert domain_shift(one_off, reference).tolist() == [True], (name, value)


def test_domain_shift_reference_round_trips_through_json_and_ignores_unmeasured_values(training_like):
    reference = fit_shift_reference(training_like[0])
    record = json.loads(json.dumps(reference.to_dict()))
    assert ShiftReference.from_dict(record) == reference and record["stats"] == list(SHIFT_STATS)
    stats = {name: np.array([np.nan, 1e9]) for name in SHIFT_STATS}
    assert domain_shift(stats, reference).tolist() == [False, True]  # NaN: not measured, never a shift
    assert np.isnan(shift_scores(stats, reference)[0])
    assert not domain_shift(stats, None).any()  # no reference: nothing to compare with
    assert fit_shift_reference({name: np.full(3, np.nan) for name in SHIFT_STATS}) is None


def test_the_threshold_keeps_at_most_alpha_of_any_training_set_above_it():
    rng = np.random.default_rng(0)
    for n in (5, 30, 99, 100, 400, 2000):
        train = {
            "mean_grey": rng.lognormal(1.3, 0.4, n),
            "zero_fraction": rng.beta(30, 10, n),
            "p99_grey": rng.gamma(20, 2.3, n),
            "body_height_fraction": np.where(
                rng.random(n) < 0.08, rng.uniform(0.3, 0.55, n), rng.normal(0.66, 0.04, n)
            ),
        }
        reference = fit_shift_reference(train)
        flagged = int(domain_shift(train, reference).sum())
        assert flagged == reference.train_flagged <= math.floor(0.01 * n), n
