"""NM DICOM studies written with pydicom: header records, frame counts, the `dicom` layout and its decode."""

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from engine.core.scans.counts import counts_to_gray8, parse_count_scale
from engine.core.scans.dicom import (
    MAX_FRAMES,
    REASON_CODES,
    DicomError,
    read_frame_counts,
    read_nm_frames,
    read_nm_study,
    split_frame_path,
)
from engine.core.scans.letterbox import letterbox
from engine.io.indexing import build_index
from engine.io.layouts import LayoutSettings
from engine.io.tables import TableWriter, read_table
from engine.runtime.decode import decode_batch

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"  # Nuclear Medicine Image Storage SOP class
DICOM = LayoutSettings(layout="dicom")
VIEWS = {"AN": "Anterior", "PO": "Posterior"}


def counts_image(seed: int, height: int = 64, width: int = 16) -> np.ndarray:
    """Returns whole-body-like uint16 counts: mean ~7, a few hot pixels up to ~140."""
    counts = np.random.default_rng(seed).poisson(7, size=(height, width)).astype(np.uint16)
    counts[3, 4], counts[40, 9] = 140, 96
    return counts


def write_nm(
    path: Path,
    frames: list[np.ndarray],
    codes: list[str] | None = None,
    *,
    sop_class: str = NM_STORAGE,
    sop_in_dataset: bool = True,
    **header: object,
) -> Path:
    """Writes a PS3.10 DICOM file (128-byte preamble, `DICM`) of frames, one detector (with its view code) per frame.

    uint8 frames are stored 8-bit, (H, W, 3) uint8 frames as RGB, anything else as uint16 counts. `sop_class` goes
    into the file meta, and into the dataset unless `sop_in_dataset` is False (raw NM exports state it only in the
    file meta, as in real exports). `header` sets elements by keyword after the defaults; None deletes one.
    """
    stack = np.stack(frames)
    colour, bits = stack.ndim == 4, 8 if stack.dtype == np.uint8 else 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if sop_in_dataset:
        ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.StudyDate = "NM", "P0042", "20240131"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.Rows, ds.Columns = stack.shape[1:3]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3, "RGB") if colour else (1, "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelSpacing = [2.4, 2.5]
    detectors = []
    for code in codes or []:
        view = Dataset()
        view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = code, "SCT", VIEWS.get(code, code)
        detector = Dataset()
        detector.ViewCodeSequence = [view]
        detectors.append(detector)
    if detectors:
        ds.DetectorInformationSequence = detectors
    for key, value in header.items():
        if value is not None:
            setattr(ds, key, value)
        elif key in ds:
            delattr(ds, key)
    ds.PixelData = stack.astype(f"<u{bits // 8}").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def study(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """Returns a two-frame (anterior, posterior) NM study and its frames."""
    frames = [counts_image(1), counts_image(2)]
    return write_nm(tmp_path / "study.dcm", frames, ["AN", "PO"]), frames


@pytest.fixture
def dicom_root(tmp_path) -> Path:
    """Returns a root with a 2-frame study, a nested single-frame one, a corrupt file and a CT file."""
    root = tmp_path / "root"
    write_nm(root / "s1.dcm", [counts_image(1), counts_image(2)], ["AN", "PO"])
    write_nm(root / "ward" / "s2_post.dcm", [counts_image(3)], PatientID="ANONYMOUS", StudyDate="")
    write_nm(root / "ct.dcm", [counts_image(4)], Modality="CT")
    (root / "broken.dcm").write_bytes(b"\x00" * 10 + b"not a DICOM file")
    (root / "notes.txt").write_text("not an input")
    return root


def test_header_gives_each_frame_its_detector_view_patient_spacing_and_date(study):
    path, _ = study
    with path.open("rb") as handle:
        frames = read_nm_frames(handle)
    assert [(f.frame, f.view) for f in frames] == [(0, "ANT"), (1, "POST")]
    assert {
        (f.patient_id, f.pixel_spacing_y_mm, f.pixel_spacing_x_mm, f.study_date, f.is_whole_body) for f in frames
    } == {("P0042", 2.4, 2.5, "2024-01-31", True)}


def test_detector_vector_maps_frames_to_detectors_and_a_meaning_alone_names_the_view(tmp_path):
    frames = [counts_image(1), counts_image(2)]
    path = write_nm(tmp_path / "s.dcm", frames, ["XX", "AN"], DetectorVector=[2, 1])
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["ANT", "unknown"]  # XX has no known meaning
    path = write_nm(tmp_path / "m.dcm", frames, ["Posterior"])  # CodeMeaning "Posterior", odd CodeValue
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["POST", "unknown"]  # frame 1 has no detector item


def test_vendor_view_words_and_a_per_frame_view_position_name_the_view(tmp_path):
    frames = [counts_image(1), counts_image(2)]
    path = write_nm(tmp_path / "v.dcm", frames, ["RT ANT LT", "LT POST RT"])
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["ANT", "POST"]
    path = write_nm(tmp_path / "ap.dcm", frames, ["antero-posterior", "LAO"])  # both views, or neither: unknown
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["unknown", "unknown"]
    path = write_nm(tmp_path / "p.dcm", frames, ViewPosition=["Anterior", "Posterior"])  # no detector items
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["ANT", "POST"]


def test_anonymised_patient_id_is_none_so_the_index_uses_the_file_stem(tmp_path):
    path = write_nm(tmp_path / "s.dcm", [counts_image(1)], PatientID="anon_0001")
    with path.open("rb") as handle:
        assert read_nm_frames(handle)[0].patient_id is None


def test_non_nm_and_corrupt_files_raise_their_reason_codes(tmp_path):
    ct = write_nm(tmp_path / "ct.dcm", [counts_image(1)], Modality="CT")
    with ct.open("rb") as handle, pytest.raises(DicomError, match=r"^not_nm: Modality 'CT'"):
        read_nm_frames(handle)
    (tmp_path / "bad.dcm").write_bytes(b"garbage")
    with (tmp_path / "bad.dcm").open("rb") as handle, pytest.raises(DicomError, match=r"^unreadable_dicom: "):
        read_nm_frames(handle)


def test_read_frame_counts_returns_exactly_the_requested_frame(study):
    path, frames = study
    with path.open("rb") as handle:
        counts = read_frame_counts(handle, 1)
    assert counts.dtype == np.uint16
    np.testing.assert_array_equal(counts, frames[1])
    with path.open("rb") as handle, pytest.raises(DicomError, match=r"^bad_frames: frame 2 requested, the file holds"):
        read_frame_counts(handle, 2)


def test_split_frame_path_separates_the_frame_suffix_only():
    assert split_frame_path("a/b.dcm#1") == ("a/b.dcm", 1)
    assert split_frame_path("a/b.dcm") == ("a/b.dcm", None)
    assert split_frame_path("a/b#c.png") == ("a/b#c.png", None)


def test_dicom_layout_indexes_one_row_per_frame_and_reports_bad_files(dicom_root):
    result = build_index(dicom_root, layout=DICOM)
    index = result.index
    assert list(index["path"]) == ["s1.dcm#0", "s1.dcm#1", "ward/s2_post.dcm#0"]
    assert list(index["image_id"]) == list(index["path"])
    assert list(index["view"]) == ["ANT", "POST", "POST"]  # the single frame has no code: its name says post
    assert list(index["patient_id"]) == ["P0042", "P0042", "s2_post"]
    assert list(index["folder"]) == [".", ".", "ward"]
    assert index["label"].isna().all() and index["line"].isna().all()
    assert list(index["study_date"].astype(object).where(index["study_date"].notna(), None)) == [
        "2024-01-31",
        "2024-01-31",
        None,
    ]
    np.testing.assert_allclose(index["pixel_spacing_y_mm"].to_numpy(dtype=float), [2.4, 2.4, 2.4], rtol=1e-6)
    reasons = {row.file: row.reason.split(":")[0] for row in result.errors.itertuples()}
    assert reasons == {"broken.dcm": "unreadable_dicom", "ct.dcm": "not_nm"}
    assert result.lines_listed == len(index) + len(result.listing_errors()) == 5


def test_dicom_index_round_trips_through_the_index_table_with_null_labels(dicom_root, tmp_path):
    result = build_index(dicom_root, layout=DICOM)
    writer = TableWriter(str(tmp_path / "run"), "index", split="all")
    writer.write("index", result.index)
    writer.commit()
    back = read_table(str(tmp_path / "run"), "index").sort_values("path").reset_index(drop=True)
    assert list(back["path"]) == list(result.index["path"])
    assert back["label"].isna().all()
    assert set(back["folder"]) == {".", "ward"}
    np.testing.assert_allclose(back["pixel_spacing_x_mm"].to_numpy(dtype=float), [2.5, 2.5, 2.5], rtol=1e-6)


@pytest.mark.parametrize("rule", ["max", "p99.5", "fixed:0.5"])
def test_dicom_frame_and_lossless_png_of_the_same_counts_give_the_same_canvas(study, rule):
    path, frames = study
    scale = parse_count_scale(rule)
    cv2.imwrite(str(path.parent / "study_post.png"), frames[1])  # 16-bit PNG, lossless
    cv2.imwrite(str(path.parent / "study_post8.png"), counts_to_gray8(frames[1], scale)[0])  # converted like BS-80K
    paths = np.array(["study.dcm#1", "study_post.png", "study.dcm#0", "study_post8.png"], dtype=object)
    out = decode_batch({"path": paths}, str(path.parent), 128, 64, count_scale=rule)
    assert list(out["error"]) == ["", "", "", ""]
    assert out["canvas"][0].any()
    np.testing.assert_array_equal(out["canvas"][0], out["canvas"][1])
    np.testing.assert_array_equal(out["canvas"][0], out["canvas"][3])
    grey, factor = counts_to_gray8(frames[0], scale)
    np.testing.assert_array_equal(out["canvas"][2], letterbox(grey, 128, 64)[0])
    assert list(out["count_rule"]) == [rule] * 4
    assert out["counts_per_grey"][2] == pytest.approx(factor)


def test_decode_batch_reports_a_missing_frame_a_corrupt_file_and_a_non_dicom_frame(dicom_root):
    paths = np.array(["s1.dcm#5", "broken.dcm#0", "notes.txt#0", "s1.dcm#1"], dtype=object)
    out = decode_batch({"path": paths}, str(dicom_root), 128, 64)
    assert [error.split(":")[0] for error in out["error"]] == ["bad_frames", "unreadable_dicom", "unreadable_dicom", ""]
    assert np.isnan(out["counts_per_grey"][:3]).all() and out["counts_per_grey"][3] > 0
    assert not out["canvas"][:3].any() and out["canvas"][3].any()


def test_a_dicom_header_cut_anywhere_or_with_a_flipped_byte_is_unreadable_dicom_not_a_crash(study):
    path, _ = study
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    cases = [data[:cut] for cut in range(0, 1200, 23)]
    for _ in range(40):
        flipped = bytearray(data)
        flipped[int(rng.integers(128, 1200))] ^= int(rng.integers(1, 256))
        cases.append(bytes(flipped))
    reasons = set()
    for case in cases:
        for read in (read_nm_frames, lambda source: read_frame_counts(source, 1)):
            try:
                read(io.BytesIO(case))
            except DicomError as exc:
                reasons.add(str(exc).split(":")[0])
    assert reasons <= REASON_CODES
    assert "unreadable_dicom" in reasons


# A clinic's folder as it arrives: raw studies beside their derived files, a PS3.10 media export,
# acquisitions that are not static whole-body scans, and files that are no DICOM at all.
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
SC_TRUE_COLOUR = "1.2.840.10008.5.1.4.1.1.7.4"  # Multi-frame True Color Secondary Capture Image Storage
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def rgb(seed: int, height: int = 64, width: int = 32) -> np.ndarray:
    """Returns an (H, W, 3) uint8 colour map."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_media_export(folder: Path) -> Path:
    """Writes a PS3.10 media export with pydicom's FileSet (DICOMDIR + PT000000/.../IM000000); returns the image."""
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    source = write_nm(
        folder.parent / "source.dcm",
        [counts_image(9), counts_image(10)],
        ["AN", "PO"],
        PatientID="P77",
        StudyTime="101500",
        StudyID="1",
        SeriesNumber=1,
        InstanceNumber=1,
    )
    media = FileSet()
    media.add(dcmread(source))
    media.write(folder)
    source.unlink()
    return folder / "PT000000" / "ST000000" / "SE000000" / "IM000000"


@pytest.fixture
def clinic_folder(tmp_path) -> Path:
    """Returns a mixed clinic folder: every real-world variant once (the expected outcome is in CLINIC_OUTCOMES)."""
    root = tmp_path / "clinic"
    # raw study as in the public set: no SOPClassUID in the dataset, no ImageType, values <= 255 in uint16
    raw = dict(PatientID="P01", StudyInstanceUID=STUDY_UID, ImageType=None)
    write_nm(root / "raw" / "s01.dcm", [counts_image(1), counts_image(2)], ["AN", "PO"], sop_in_dataset=False, **raw)
    derived = dict(Modality="OT", PatientID="P01", StudyInstanceUID=STUDY_UID, ImageType=None, PixelSpacing=None)
    write_nm(root / "derived" / "s01_colour.dcm", [rgb(1)], sop_class=SC_STORAGE, **derived)
    mask = np.where(counts_image(1, 64, 32) > 7, 255, 0).astype(np.uint8)
    write_nm(root / "derived" / "s01_mask.dcm", [mask], sop_class=SC_STORAGE, **derived)
    write_nm(
        root / "upload" / "photo.dcm",
        [rgb(2), rgb(3), rgb(4)],
        sop_class=SC_TRUE_COLOUR,
        Modality="OT",
        ImageType=["ORIGINAL", "PRIMARY"],
    )
    write_media_export(root / "media")
    (root / "media" / "IM000001").write_bytes(b"\x00" * 200 + b"a vendor's log, not DICOM")
    (root / "README.txt").write_text("exported 2026-12-07")  # not an input: named, and not DICOM
    (root / ".DS_Store").write_bytes(b"\x00" * 300)  # hidden: not an input
    write_nm(root / "nm_derived.dcm", [counts_image(3)], ["PO"], ImageType=["DERIVED", "SECONDARY", "WHOLE BODY"])
    write_nm(root / "nm_colour.dcm", [rgb(5)], ["PO"])
    write_nm(root / "nm_screen.dcm", [counts_image(4)], ["PO"], sop_class=SC_STORAGE, sop_in_dataset=False)
    write_nm(root / "palette.dcm", [counts_image(5)], ["PO"], PhotometricInterpretation="PALETTE COLOR")
    write_nm(root / "mono1.dcm", [counts_image(6)], ["PO"], PhotometricInterpretation="MONOCHROME1")
    write_nm(root / "rescaled.dcm", [counts_image(7)], ["PO"], RescaleSlope="2", RescaleIntercept="1")
    write_nm(root / "zero_slope.dcm", [counts_image(7)], ["PO"], RescaleSlope="0")
    tiny = [np.full((8, 8), i, np.uint16) for i in range(60)]
    write_nm(root / "dynamic.dcm", tiny, ["AN"], ImageType=["ORIGINAL", "PRIMARY", "DYNAMIC", "EMISSION"])
    write_nm(root / "dynamic_untyped.dcm", tiny, ImageType=None)
    write_nm(
        root / "windows.dcm",
        [counts_image(i) for i in range(4)],
        ["AN", "PO"],
        DetectorVector=[1, 2, 1, 2],
        EnergyWindowVector=[1, 1, 2, 2],
        EnergyWindowInformationSequence=[window("PEAK"), window("SCATTER")],
    )
    write_nm(root / "ct.dcm", [counts_image(8)], Modality="CT")
    return root


def window(name: str) -> Dataset:
    """Returns an EnergyWindowInformationSequence item."""
    item = Dataset()
    item.EnergyWindowName = name
    return item


MEDIA_IMAGE = "media/PT000000/ST000000/SE000000/IM000000"
CLINIC_ROWS = [
    "mono1.dcm#0",
    "raw/s01.dcm#0",
    "raw/s01.dcm#1",
    "rescaled.dcm#0",
    "windows.dcm#0",
    "windows.dcm#1",
    f"{MEDIA_IMAGE}#0",
    f"{MEDIA_IMAGE}#1",
]
CLINIC_OUTCOMES = {  # file -> reason code of its error or skip row
    "derived/s01_colour.dcm": "secondary_capture",
    "derived/s01_mask.dcm": "secondary_capture",
    "upload/photo.dcm": "secondary_capture",
    "nm_screen.dcm": "secondary_capture",
    "nm_colour.dcm": "color_image",
    "palette.dcm": "palette_color",
    "nm_derived.dcm": "derived_image",
    "ct.dcm": "not_nm",
    "zero_slope.dcm": "bad_rescale",
    "media/IM000001": "not_dicom",
    "media/DICOMDIR": "dicomdir",
    "dynamic.dcm": "not_static",
    "dynamic_untyped.dcm": "not_static",
    "windows.dcm": "secondary_energy_window",
}
CLINIC_SKIPPED = {"dicomdir": 1, "not_static": 2, "secondary_energy_window": 1}


def test_every_file_of_a_clinic_folder_is_a_row_an_error_or_a_skip_with_its_reason(clinic_folder):
    result = build_index(clinic_folder, layout=DICOM)
    index = result.index
    assert sorted(index["path"]) == sorted(CLINIC_ROWS)
    reasons = {row.file: row.reason.split(":")[0] for row in result.errors.itertuples()}
    assert reasons == CLINIC_OUTCOMES and len(result.errors) == len(CLINIC_OUTCOMES)  # one row per file left out
    errors, skipped = result.listing_account()
    assert skipped == CLINIC_SKIPPED
    assert sorted(errors.str.split(":").str[0]) == sorted(c for c in CLINIC_OUTCOMES.values() if c not in skipped)
    assert result.lines_listed == len(index) + len(errors) + sum(skipped.values()) == 8 + 14
    # the derived files share the raw study's patient and study: only its two acquired frames are rows
    assert sorted(index.loc[index["patient_id"] == "P01", "path"]) == ["raw/s01.dcm#0", "raw/s01.dcm#1"]
    assert list(index.set_index("path").loc[[f"{MEDIA_IMAGE}#0", f"{MEDIA_IMAGE}#1"], "view"]) == ["ANT", "POST"]
    windows = result.errors.set_index("file").loc["windows.dcm", "reason"]
    assert "frame(s) 2, 3 of energy window(s) 2 'SCATTER' not indexed" in windows
    assert list(index.set_index("path").loc[["windows.dcm#0", "windows.dcm#1"], "view"]) == ["ANT", "POST"]


def test_index_stage_counts_skips_apart_from_errors_and_balances(ray_session, clinic_folder, tmp_path):
    from engine.stages.index import run_index
    from tests.conftest import test_config

    summary = run_index(test_config(clinic_folder, tmp_path / "run", "data.layout=dicom"))
    assert summary.balanced and summary.rows_ok == len(CLINIC_ROWS)
    assert dict(summary.skipped) == CLINIC_SKIPPED
    assert sum(summary.errors.values()) == len(CLINIC_OUTCOMES) - sum(CLINIC_SKIPPED.values())
    assert summary.rows_in == summary.rows_ok + sum(summary.errors.values()) + sum(summary.skipped.values())
    stored = read_table(str(tmp_path / "run"), "errors").query("stage == 'index'")
    assert dict(zip(stored["file"], stored["reason"].str.split(":").str[0], strict=True)) == CLINIC_OUTCOMES
    qc = read_table(str(tmp_path / "run"), "qc")  # every kept frame decodes: rescaled, MONOCHROME1, extensionless
    assert sorted(qc["image_id"]) == sorted(CLINIC_ROWS)


@pytest.mark.parametrize(
    ("frames", "header", "detail"),
    [
        (60, {"ImageType": ["ORIGINAL", "PRIMARY", "DYNAMIC", "EMISSION"]}, "ImageType value 3 'DYNAMIC' (60 frame"),
        (8, {"ImageType": ["ORIGINAL", "PRIMARY", "GATED TOMO", "EMISSION"]}, "'GATED TOMO'"),
        (4, {"ImageType": ["DERIVED", "PRIMARY", "RECON TOMO"]}, "'RECON TOMO'"),  # skipped, not a derived error
        (60, {"ImageType": None}, "60 frames in one energy window but its detector views explain 2"),
        (3, {"ImageType": None, "TimeSliceVector": [1, 2, 3]}, "3 frames indexed by TimeSliceVector"),
        (65, {}, f"NumberOfFrames 65 > {MAX_FRAMES}"),
    ],
    ids=["dynamic", "gated-tomo", "recon-tomo", "untyped-60", "time-slices", "over-max"],
)
def test_dynamic_gated_and_tomographic_files_give_no_frames_and_one_reason(tmp_path, frames, header, detail):
    path = write_nm(tmp_path / "s.dcm", [np.full((8, 8), i, np.uint16) for i in range(frames)], ["AN", "PO"], **header)
    with path.open("rb") as handle:
        study = read_nm_study(handle)
    assert study.frames == [] and len(study.left_out) == 1
    assert study.left_out[0].startswith("not_static: ") and detail in study.left_out[0]


def test_a_static_spot_view_is_indexed_but_not_whole_body(tmp_path):
    path = write_nm(tmp_path / "s.dcm", [counts_image(1)], ["AN"], ImageType=["ORIGINAL", "PRIMARY", "STATIC"])
    with path.open("rb") as handle:
        study = read_nm_study(handle)
    assert [(f.view, f.is_whole_body) for f in study.frames] == [("ANT", False)] and study.left_out == []


def test_rescale_slope_and_intercept_give_the_true_counts(tmp_path):
    stored = counts_image(1, 64, 32)
    path = write_nm(tmp_path / "r.dcm", [stored], RescaleSlope="2", RescaleIntercept="3")
    with path.open("rb") as handle:
        counts = read_frame_counts(handle, 0)
    assert counts.dtype == np.uint16
    np.testing.assert_array_equal(counts, stored.astype(int) * 2 + 3)
    path = write_nm(tmp_path / "half.dcm", [stored], RescaleSlope="0.5", RescaleIntercept="-1")
    with path.open("rb") as handle:
        counts = read_frame_counts(handle, 0)
    assert counts.dtype == np.float32  # fractional counts are kept, negative ones clipped to 0
    np.testing.assert_allclose(counts, np.maximum(stored * 0.5 - 1, 0))
    eight = write_nm(tmp_path / "e.dcm", [stored.astype(np.uint8)], RescaleSlope="2")
    with eight.open("rb") as handle:  # 8-bit stored counts with a slope are counts, not grey levels
        assert read_frame_counts(handle, 0).dtype == np.uint16
    # the model sees the rescaled counts: the same canvas as a file storing them directly, under every rule
    write_nm(tmp_path / "direct.dcm", [stored * 2 + 3])
    for rule in ("max", "p99.5", "fixed:0.5"):
        out = decode_batch(
            {"path": np.array(["r.dcm#0", "direct.dcm#0"], dtype=object)}, str(tmp_path), 128, 64, count_scale=rule
        )
        assert list(out["error"]) == ["", ""]
        np.testing.assert_array_equal(out["canvas"][0], out["canvas"][1])
        assert out["counts_per_grey"][0] == out["counts_per_grey"][1]


def test_monochrome1_is_reflected_so_that_more_counts_is_brighter(tmp_path):
    stored = counts_image(2, 64, 32)
    path = write_nm(tmp_path / "m1.dcm", [stored], ["PO"], PhotometricInterpretation="MONOCHROME1")
    with path.open("rb") as handle:
        counts = read_frame_counts(handle, 0)
    np.testing.assert_array_equal(counts, stored.max() - stored)
    assert counts[stored == stored.max()].max() == 0 and counts[stored == stored.min()].min() == stored.max()
    write_nm(tmp_path / "m2.dcm", [stored.max() - stored], ["PO"])
    out = decode_batch({"path": np.array(["m1.dcm#0", "m2.dcm#0"], dtype=object)}, str(tmp_path), 128, 64)
    np.testing.assert_array_equal(out["canvas"][0], out["canvas"][1])


@pytest.mark.parametrize(
    ("frames", "header", "code"),
    [
        ([counts_image(1)], {"PhotometricInterpretation": "PALETTE COLOR"}, "palette_color"),
        ([rgb(1)], {}, "color_image"),
        ([counts_image(1)], {"RescaleSlope": "0"}, "bad_rescale"),
    ],
    ids=["palette", "rgb", "zero-slope"],
)
def test_frames_without_counts_are_refused_at_decode_with_their_code(tmp_path, frames, header, code):
    write_nm(tmp_path / "x.dcm", frames, **header)
    with (tmp_path / "x.dcm").open("rb") as handle, pytest.raises(DicomError, match=rf"^{code}: "):
        read_frame_counts(handle, 0)
    out = decode_batch({"path": np.array(["x.dcm#0"], dtype=object)}, str(tmp_path), 128, 64)
    assert out["error"][0].startswith(f"{code}: ") and not out["canvas"].any()


def test_an_extensionless_ps310_file_decodes_by_its_frame_path(tmp_path):
    image = write_media_export(tmp_path / "media")
    relative = f"{image.relative_to(tmp_path).as_posix()}#1"
    out = decode_batch({"path": np.array([relative], dtype=object)}, str(tmp_path), 128, 64)
    assert out["error"][0] == "" and out["canvas"][0].any()


def test_a_clinic_folder_on_an_object_store_indexes_like_the_local_disk(clinic_folder):
    import uuid

    import pyarrow.fs as pafs

    memory = pytest.importorskip("fsspec.implementations.memory").MemoryFileSystem()
    prefix = f"/clinic-{uuid.uuid4().hex[:8]}"
    for path in clinic_folder.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"{prefix}/{path.relative_to(clinic_folder).as_posix()}", path.read_bytes())
    try:
        remote = build_index(prefix, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(memory)), layout=DICOM)
    finally:
        memory.rm(prefix, recursive=True)
    local = build_index(clinic_folder, layout=DICOM)
    pd.testing.assert_frame_equal(remote.index, local.index)
    pd.testing.assert_frame_equal(remote.errors, local.errors)
    assert remote.lines_listed == local.lines_listed
