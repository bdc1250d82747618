"""decode_gray8 and the count rules: image bytes -> uint8 (H, W), or a DecodeError that starts with its code."""

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.core.scans.counts import MAX_SCALE, CountScale, counts_to_gray8, parse_count_scale, percentile_counts
from engine.core.scans.decode import MAX_SIDE_PX, DecodeError, decode_gray8, decode_scan

COUNTS = np.array([[0, 50], [100, 200]], np.uint16)  # hand-worked below


def encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    """Returns `image` encoded by OpenCV as `ext` (.png, .jpg, .tiff, ...)."""
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return buffer.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """Returns a tiny, valid-looking gray PNG that claims `width` x `height` px (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_8_bit_gray_jpeg_of_a_whole_body_scan_keeps_height_and_width():
    image = np.full((1024, 256), 200, np.uint8)
    decoded = decode_gray8(encode(".jpg", image))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (1024, 256)
    assert (decoded == 200).all()  # a flat JPEG decodes exactly


def test_gray_jpeg_gradient_decodes_close_to_the_original():
    image = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (32, 1))
    decoded = decode_gray8(encode(".jpg", image, cv2.IMWRITE_JPEG_QUALITY, 100))
    assert np.abs(decoded.astype(int) - image).max() <= 2


def test_16_bit_png_is_scaled_by_its_own_maximum():
    image = np.array([[0, 1020], [512, 4]], np.uint16)  # 255 / 1020 = 1/4 exactly
    np.testing.assert_array_equal(decode_gray8(encode(".png", image)), [[0, 255], [128, 1]])


def test_all_black_16_bit_png_decodes_to_zeros():
    np.testing.assert_array_equal(decode_gray8(encode(".png", np.zeros((3, 2), np.uint16))), np.zeros((3, 2)))


def test_rgb_png_becomes_luma_gray():
    bgr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)  # blue, green, red, white
    np.testing.assert_array_equal(decode_gray8(encode(".png", bgr)), [[29, 150, 76, 255]])  # 0.114, 0.587, 0.299


def test_rgba_png_becomes_gray_and_ignores_alpha():
    bgra = np.array([[[255, 0, 0, 0], [0, 255, 0, 255], [0, 0, 255, 128]]], np.uint8)
    np.testing.assert_array_equal(decode_gray8(encode(".png", bgra)), [[29, 150, 76]])


def test_16_bit_rgb_png_becomes_gray_scaled_to_255():
    bgr = np.zeros((1, 2, 3), np.uint16)
    bgr[0, 1] = 4000
    np.testing.assert_array_equal(decode_gray8(encode(".png", bgr)), [[0, 255]])


def test_bmp_and_tiff_gray_images_decode():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(decode_gray8(encode(".bmp", image)), image)
    np.testing.assert_array_equal(decode_gray8(encode(".tiff", image)), image)


def test_png_bytes_in_a_jpg_named_file_decode_because_bytes_count(tmp_path):
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "1.jpg"
    path.write_bytes(encode(".png", image))
    np.testing.assert_array_equal(decode_gray8(path.read_bytes()), image)


def test_jpeg_with_zero_padding_after_its_end_marker_decodes():
    data = encode(".jpg", np.full((8, 8), 90, np.uint8)) + b"\0" * 64
    assert (decode_gray8(data) == 90).all()


def test_zero_bytes_are_an_empty_file():
    with pytest.raises(DecodeError, match=r"^empty_file: 0 bytes"):
        decode_gray8(b"")


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_jpeg_cut_short_is_a_truncated_jpeg(keep):
    data = encode(".jpg", np.random.default_rng(0).integers(0, 255, (64, 32), dtype=np.uint8))
    cut = data[: int(len(data) * keep)]
    with pytest.raises(DecodeError, match=rf"^truncated_jpeg: no end-of-image marker in {len(cut)} bytes"):
        decode_gray8(cut)


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is a text file\n",
        bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)),
        b"\x89PNG\r\n\x1a\n",
        b"\xff",
    ],
    ids=["text", "random", "png-signature-only", "one-byte"],
)
def test_bytes_that_are_no_image_are_undecodable(data):
    with pytest.raises(DecodeError, match=r"^undecodable: "):
        decode_gray8(data)


def test_a_png_cut_short_is_undecodable():
    data = encode(".png", np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(DecodeError, match=r"^undecodable: "):
        decode_gray8(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("image", "dtype_name"),
    [
        (np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "float32"),
        (np.zeros((3, 4, 3), np.float32), "float32"),
        (np.arange(12, dtype=np.int16).reshape(3, 4), "int16"),
    ],
)
def test_float_and_signed_tiffs_are_an_unsupported_dtype(image, dtype_name):
    with pytest.raises(DecodeError, match=rf"^unsupported_dtype: {dtype_name}"):
        decode_gray8(encode(".tiff", image))


def test_an_image_wider_than_the_limit_is_too_large():
    with pytest.raises(DecodeError, match=rf"^image_too_large: {MAX_SIDE_PX + 1}x1 px > {MAX_SIDE_PX}"):
        decode_gray8(encode(".png", np.zeros((1, MAX_SIDE_PX + 1), np.uint8)))


def test_a_header_claiming_ten_gigapixels_is_too_large_not_an_opencv_crash():
    with pytest.raises(DecodeError, match=r"^image_too_large: "):
        decode_gray8(png_header_only(100_000, 100_000))


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24)))
def test_any_small_uint8_png_round_trips_exactly(image):
    decoded = decode_gray8(encode(".png", image))
    assert decoded.dtype == np.uint8
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, image)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=16)))
def test_16_bit_scaling_keeps_pixel_order_and_maps_the_maximum_to_255(image):
    decoded = decode_gray8(encode(".png", image)).astype(int).ravel()
    flat = image.astype(int).ravel()
    order = np.argsort(flat, kind="stable")
    assert (np.diff(decoded[order]) >= 0).all()  # brighter input is never darker output
    if flat.max() > 0:
        assert (decoded[flat == flat.max()] == 255).all()
    assert (decoded[flat == 0] == 0).all()


def test_count_rules_parse_and_print_back():
    assert parse_count_scale(" MAX ") == MAX_SCALE
    assert parse_count_scale("p99.5") == CountScale("percentile", 99.5)
    assert parse_count_scale("fixed:0.5") == CountScale("fixed", 0.5)
    assert [parse_count_scale(rule).rule for rule in ("max", "p99.5", "p100", "fixed:2")] == [
        "max",
        "p99.5",
        "p100",
        "fixed:2",
    ]


@pytest.mark.parametrize("rule", ["mean", "p0", "p101", "fixed:0", "fixed:-1", "fixed:", "p"])
def test_an_unknown_count_rule_names_the_choices(rule):
    with pytest.raises(ValueError, match=r"count_scale .*: unknown rule \(choices: max, p<q>"):
        parse_count_scale(rule)


def test_max_rule_maps_the_peak_to_255():
    grey, factor = counts_to_gray8(COUNTS, MAX_SCALE)
    np.testing.assert_array_equal(grey, [[0, 64], [128, 255]])  # 50 * 255 / 200 = 63.75; 127.5 rounds to even
    assert factor == pytest.approx(200 / 255)


def test_percentile_rule_saturates_the_hot_pixels_above_the_percentile():
    grey, factor = counts_to_gray8(COUNTS, parse_count_scale("p50"))  # median of 0, 50, 100, 200 = 75
    np.testing.assert_array_equal(grey, [[0, 170], [255, 255]])  # 50 * 255 / 75 = 170; 100 and 200 clip
    assert factor == pytest.approx(75 / 255)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.uint16, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12)), st.floats(0, 100))
def test_histogram_percentile_equals_numpy_linear_percentile(counts, q):
    assert percentile_counts(counts, q) == pytest.approx(float(np.percentile(counts, q)), abs=1e-6)


def test_fixed_rule_uses_the_same_counts_per_grey_level_for_every_image():
    grey, factor = counts_to_gray8(COUNTS, parse_count_scale("fixed:0.5"))
    np.testing.assert_array_equal(grey, [[0, 100], [200, 255]])
    assert factor == 0.5
    np.testing.assert_array_equal(counts_to_gray8(COUNTS * 0 + 3, parse_count_scale("fixed:0.5"))[0], 6)


def test_an_empty_scan_under_a_percentile_rule_stays_black_without_dividing_by_zero():
    zeros = np.zeros((4, 4), np.uint16)
    for rule in ("max", "p99.5", "fixed:1"):
        grey, factor = counts_to_gray8(zeros, parse_count_scale(rule))
        assert not grey.any() and factor > 0


def test_8_bit_images_are_grey_levels_already_and_pass_every_rule_unchanged():
    image = np.array([[0, 7], [90, 255]], np.uint8)
    for rule in ("max", "p50", "fixed:0.25"):
        grey, factor = decode_scan(encode(".png", image), scale=parse_count_scale(rule))
        np.testing.assert_array_equal(grey, image)
        assert factor == 1.0


def test_decode_gray8_applies_the_given_rule_to_a_16_bit_png():
    decoded = decode_gray8(encode(".png", COUNTS), parse_count_scale("fixed:0.5"))
    np.testing.assert_array_equal(decoded, [[0, 100], [200, 255]])


def test_bytes_asked_for_a_dicom_frame_that_are_not_dicom_are_refused_with_a_code():
    with pytest.raises(DecodeError, match=r"^unreadable_dicom: "):
        decode_scan(encode(".png", COUNTS), frame=0)
