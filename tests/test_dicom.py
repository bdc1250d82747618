"""NM DICOM studies written with pydicom: header records, frame counts, the `dicom` layout and its decode."""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from engine.core.counts import counts_to_gray8, parse_count_scale
from engine.core.dicom import DicomError, read_frame_counts, read_nm_frames, split_frame_path
from engine.core.letterbox import letterbox
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


def write_nm(path: Path, frames: list[np.ndarray], codes: list[str] | None = None, **header: object) -> Path:
    """Writes an NM DICOM file of uint16 frames, one detector (with its view code) per frame."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = NM_STORAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = NM_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyDate = "NM", "P0042", "20240131"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.Rows, ds.Columns = frames[0].shape
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
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
        setattr(ds, key, value)
    ds.PixelData = np.stack(frames).astype("<u2").tobytes()
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
    assert {(f.patient_id, f.pixel_spacing_y_mm, f.pixel_spacing_x_mm, f.study_date, f.is_whole_body)
            for f in frames} == {("P0042", 2.4, 2.5, "2024-01-31", True)}  # fmt: skip


def test_detector_vector_maps_frames_to_detectors_and_a_meaning_alone_names_the_view(tmp_path):
    frames = [counts_image(1), counts_image(2)]
    path = write_nm(tmp_path / "s.dcm", frames, ["XX", "AN"], DetectorVector=[2, 1])
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["ANT", "unknown"]  # XX has no known meaning
    path = write_nm(tmp_path / "m.dcm", frames, ["Posterior"])  # CodeMeaning "Posterior", odd CodeValue
    with path.open("rb") as handle:
        assert [f.view for f in read_nm_frames(handle)] == ["POST", "unknown"]  # frame 1 has no detector item


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
        "2024-01-31", "2024-01-31", None]  # fmt: skip
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
    assert reasons <= {"unreadable_dicom", "not_nm", "bad_frames", "undecodable"}
    assert "unreadable_dicom" in reasons
