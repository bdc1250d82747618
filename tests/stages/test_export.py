"""`make export`: a DICOM run's scored frames back as DICOM Secondary Captures (and Segmentations) of their studies."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from engine.core.masks.segmenters import encode_rle
from engine.core.render.export_draw import BOX_RGB, MASK_RGB, boxes_text, draw_findings, safe_name
from engine.core.scans.counts import counts_to_gray8, parse_count_scale
from engine.io.dicom_export import ExportError, ExportSettings, segmentation, segmentation_blocker
from engine.io.tables import TableWriter, read_table
from engine.stages.cam import run_cam
from engine.stages.export import run_export
from engine.stages.index import run_index
from tests.conftest import test_config
from tests.e2e.test_clinic_e2e import whole_body_counts
from tests.io.test_dicom import VIEWS, write_nm

SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
# NM Detector module geometry (LPS): anterior detector in front of the patient, posterior one behind, facing back.
GEOMETRY = {
    "AN": ([-150.0, -300.0, 900.0], [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
    "PO": ([150.0, 300.0, 900.0], [-1.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
}
SETTINGS = ExportSettings(series_number=9001, series_description="test export")


def detectors(codes: list[str], geometry: bool) -> list[Dataset]:
    """Returns DetectorInformationSequence items with view codes and, with `geometry`, position and orientation."""
    items = []
    for code in codes:
        view, item = Dataset(), Dataset()
        view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = code, "99LOCAL", VIEWS[code]
        item.ViewCodeSequence = [view]
        if geometry:
            item.ImagePositionPatient, item.ImageOrientationPatient = GEOMETRY[code]
        items.append(item)
    return items


def write_study(path: Path, seed: int, patient: str, frame_of_reference: bool) -> dict[str, str]:
    """Writes a 2-frame (anterior, posterior) NM study; returns its identifiers."""
    ids = {
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "PatientID": patient,
        "PatientName": f"Doe^{patient}",
        "AccessionNumber": f"ACC{seed}",
    }
    extra = {"FrameOfReferenceUID": generate_uid()} if frame_of_reference else {}
    write_nm(
        path,
        [whole_body_counts(seed), whole_body_counts(seed + 1)],
        ["AN", "PO"],
        **ids,
        **extra,
        DetectorInformationSequence=detectors(["AN", "PO"], frame_of_reference),
    )
    return {**ids, **extra}


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """Returns a data root with study A (Frame of Reference + detector geometry) and study B (neither)."""
    root = tmp_path_factory.mktemp("export_clinic") / "dicom"
    studies = {
        "a/study_a.dcm": write_study(root / "a" / "study_a.dcm", 11, "P1", True),
        "b/study_b.dcm": write_study(root / "b" / "study_b.dcm", 21, "P2", False),
    }
    return root, studies


def write_kept_masks(run_dir: Path) -> None:
    """Writes a `masks` table: one kept mask (inside its rank-0 box, original px) per scored frame with boxes."""
    boxes = read_table(str(run_dir), "boxes").query("rank == 0")
    index = read_table(str(run_dir), "index").set_index("image_id")
    rows = []
    for box in boxes.itertuples():
        shape = (512, 128)
        mask = np.zeros(shape, dtype=bool)
        x1, y1, x2, y2 = (int(round(v)) for v in (box.x1_orig, box.y1_orig, box.x2_orig, box.y2_orig))
        mask[max(y1, 0) + 2 : min(y2, shape[0]) - 2, max(x1, 0) + 2 : min(x2, shape[1]) - 2] = True
        counts, h, w = encode_rle(mask)
        assert index.loc[box.image_id, "path"].endswith(("#0", "#1"))
        rows.append(
            {
                "image_id": box.image_id,
                "rank": 0,
                "rle_counts": counts,
                "rle_h": h,
                "rle_w": w,
                "area": int(mask.sum()),
                "mask_x1": np.nan,
                "mask_y1": np.nan,
                "mask_x2": np.nan,
                "mask_y2": np.nan,
                "contrast": 0.5,
                "cam_inside": 0.5,
                "cam_ring": 0.1,
                "agreement_iou": np.nan,
                "score": 0.9,
                "y_prob": box.y_prob,
                "segmenter": "threshold",
                "segmenter_version": "test",
                "qc_flags": [],
                "kept": True,
                "split": box.split,
                "folder": box.folder,
            }
        )
    writer = TableWriter(str(run_dir), "masks", replace=("masks",))
    writer.check(["masks"])
    writer.write("masks", pd.DataFrame(rows))
    writer.commit()


@pytest.fixture(scope="module")
def exported(ray_session, trained_run: Path, clinic, tmp_path_factory: pytest.TempPathFactory):
    """Returns (cfg, run dir, studies, the export summary): index + cam with the trained model, masks, export."""
    root, studies = clinic
    run_dir = tmp_path_factory.mktemp("export_run") / "run"
    cfg = test_config(root, run_dir, "data.layout=dicom", f"model.from_run={trained_run}")
    run_index(cfg)
    run_cam(cfg)
    write_kept_masks(run_dir)
    return cfg, run_dir, studies, run_export(cfg)


def test_export_writes_one_secondary_capture_per_scored_frame_in_a_new_series_of_its_study(exported) -> None:
    cfg, run_dir, studies, summary = exported
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'")
    exports = read_table(str(run_dir), "exports")
    assert summary.balanced and summary.rows_in == len(preds) == summary.rows_ok == len(exports) > 0
    assert summary.extra["studies"] == 2 and summary.extra["secondary_captures"] == len(exports)
    for row in exports.itertuples():
        source = studies[row.source_file]
        sc = pydicom.dcmread(run_dir / row.sc_file)
        assert row.sc_file.startswith(f"export/{source['StudyInstanceUID']}/")
        assert sc.SOPClassUID == SC_STORAGE and sc.Modality == "OT"
        assert sc.StudyInstanceUID == source["StudyInstanceUID"] == row.study_uid
        assert (sc.PatientID, str(sc.PatientName), sc.AccessionNumber) == (
            source["PatientID"],
            source["PatientName"],
            source["AccessionNumber"],
        )
        assert sc.StudyDate == "20240131" and row.study_date == "2024-01-31"
        assert sc.SeriesInstanceUID == row.sc_series_uid != source["SeriesInstanceUID"]
        assert sc.SOPInstanceUID == row.sc_sop_uid
        assert sc.SourceImageSequence[0].ReferencedFrameNumber == row.frame_number
        assert sc.PatientOrientation == (["L", "F"] if row.view == "ANT" else ["R", "F"])
        assert sc.pixel_array.shape == (512, 128, 3)
    series = exports.groupby("study_uid")["sc_series_uid"].nunique()
    assert (series == 1).all() and exports["sc_series_uid"].nunique() == 2  # one new series per study


def test_the_boxes_and_masks_are_drawn_on_the_frame_the_model_scored(exported) -> None:
    cfg, run_dir, _, _ = exported
    boxes = read_table(str(run_dir), "boxes")
    for row in read_table(str(run_dir), "exports").itertuples():
        frame = pydicom.dcmread(cfg.data.root + "/" + row.source_file).pixel_array[row.frame_number - 1]
        gray = counts_to_gray8(frame, parse_count_scale(cfg.data.count_scale))[0]
        pixels = pydicom.dcmread(run_dir / row.sc_file).pixel_array
        changed = (pixels != gray[:, :, None]).any(axis=2)
        mine = boxes[boxes["image_id"] == row.image_id].sort_values("rank")
        assert len(mine) == row.n_boxes and row.masks_drawn == (1 if len(mine) else 0)
        if not len(mine):
            assert not changed.any()
            continue
        assert changed.any()
        x1, y1, x2, y2 = (int(round(v)) for v in mine.iloc[0][["x1_orig", "y1_orig", "x2_orig", "y2_orig"]])
        corner = pixels[min(max(y1, 0), 511), min(max(x1, 0), 127)]
        assert tuple(corner) == BOX_RGB
        assert (pixels[changed] == MASK_RGB).all(axis=1).any()  # the kept mask's outline
        outside = np.ones_like(changed)
        for b in mine.itertuples():
            y1, x1 = max(int(b.y1_orig) - 2, 0), max(int(b.x1_orig) - 2, 0)
            outside[y1 : int(b.y2_orig) + 2, x1 : int(b.x2_orig) + 2] = 0
        assert not (changed & outside).any()  # nothing drawn outside the boxes


def test_the_summary_gives_each_study_its_probability_flags_boxes_and_files(exported) -> None:
    cfg, run_dir, studies, _ = exported
    exports = read_table(str(run_dir), "exports")
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'").set_index("image_id")
    boxes = read_table(str(run_dir), "boxes")
    assert set(exports["study_uid"]) == {s["StudyInstanceUID"] for s in studies.values()}
    for row in exports.itertuples():
        assert row.y_prob == pytest.approx(preds.loc[row.image_id, "y_prob"])
        expected = boxes[boxes["image_id"] == row.image_id].sort_values("rank")
        got = np.asarray(row.boxes, dtype=np.float64).reshape(-1, 4)
        assert row.n_boxes == len(got) == len(expected)
        np.testing.assert_allclose(got, expected[["x1_orig", "y1_orig", "x2_orig", "y2_orig"]].to_numpy(), rtol=1e-6)
        assert list(row.qc_flags) == list(preds.loc[row.image_id, "qc_flags"])
        assert row.positive == (row.y_prob >= row.threshold)
    per_study = exports.groupby("study_uid").size()
    scored = preds.reset_index().assign(file=lambda f: f["image_id"].str.split("#").str[0])
    assert per_study.sort_index().tolist() == scored.groupby("file").size().sort_index().tolist()
    for uid, group in exports.groupby("study_uid"):
        csv = pd.read_csv(run_dir / "export" / uid / "summary.csv")
        assert list(csv["image_id"]) == list(group["image_id"])
        assert list(csv["boxes"].fillna("")) == [boxes_text(np.asarray(b)) for b in group["boxes"]]


def test_a_segmentation_is_written_where_the_source_has_a_frame_of_reference_and_the_summary_says_why_not(
    exported,
) -> None:
    _, run_dir, studies, summary = exported
    exports = read_table(str(run_dir), "exports")
    masked = exports[exports["masks_drawn"] > 0]
    with_for = masked[masked["source_file"] == "a/study_a.dcm"]
    without = masked[masked["source_file"] == "b/study_b.dcm"]
    assert len(with_for) and len(without), "each study needs a frame with a pseudo box"
    assert with_for["seg_written"].all() and with_for["seg_reason"].eq("").all()
    seg = pydicom.dcmread(run_dir / with_for["seg_file"].iloc[0])
    source = studies["a/study_a.dcm"]
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert (seg.StudyInstanceUID, seg.PatientID, seg.FrameOfReferenceUID) == (
        source["StudyInstanceUID"],
        source["PatientID"],
        source["FrameOfReferenceUID"],
    )
    assert seg.SeriesInstanceUID not in (source["SeriesInstanceUID"], with_for["sc_series_uid"].iloc[0])
    frames = sorted(
        int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for f in seg.PerFrameFunctionalGroupsSequence
    )
    assert frames == sorted(with_for["frame_number"].tolist())
    assert hd.seg.segread(run_dir / with_for["seg_file"].iloc[0]).number_of_segments == 1
    assert (~without["seg_written"]).all() and without["seg_file"].isna().all()
    assert without["seg_reason"].str.startswith("no_frame_of_reference: ").all()
    assert "highdicom issue #284" in without["seg_reason"].iloc[0]
    assert summary.extra["segmentations"] == 1 and summary.extra["no_segmentation"] == {"no_frame_of_reference": 1}


def test_a_re_export_replaces_the_folder_with_new_series(exported, tmp_path: Path) -> None:
    cfg, run_dir, _, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = test_config(Path(cfg.data.root), copy, "data.layout=dicom", f"model.from_run={cfg.model.from_run}")
    first = read_table(str(copy), "exports")
    summary = run_export(cfg)
    again = read_table(str(copy), "exports")
    assert summary.balanced and len(again) == len(first)
    assert not set(again["sc_series_uid"]) & set(first["sc_series_uid"])
    files = sorted(p.relative_to(copy).as_posix() for p in (copy / "export").rglob("*.dcm"))
    assert files == sorted([*again["sc_file"], *again["seg_file"].dropna().unique()])


def test_a_missing_or_unreadable_source_file_becomes_an_errors_row_naming_it(exported, tmp_path: Path) -> None:
    cfg, run_dir, _, _ = exported
    root, copy = tmp_path / "dicom", tmp_path / "run"
    shutil.copytree(cfg.data.root, root)
    shutil.copytree(run_dir, copy)
    (root / "b" / "study_b.dcm").unlink()
    summary = run_export(test_config(root, copy, "data.layout=dicom", f"model.from_run={cfg.model.from_run}"))
    errors = read_table(str(copy), "errors").query("stage == 'export'")
    lost = read_table(str(copy), "preds").query("stage == 'cam'")["image_id"].str.startswith("b/")
    assert summary.balanced and summary.errors == {"missing_file": int(lost.sum())}
    assert set(errors["file"]) == {"b/study_b.dcm"} and errors["reason"].str.startswith("missing_file: ").all()
    assert summary.rows_ok == int((~lost).sum()) == len(read_table(str(copy), "exports"))
    (root / "a" / "study_a.dcm").write_bytes(b"\x00" * 10 + b"not a DICOM file")
    summary = run_export(test_config(root, copy, "data.layout=dicom", f"model.from_run={cfg.model.from_run}"))
    errors = read_table(str(copy), "errors").query("stage == 'export'").set_index("file")
    assert summary.balanced and summary.rows_ok == 0 and sum(summary.errors.values()) == len(lost)
    assert errors.loc[["a/study_a.dcm"], "reason"].str.startswith("unreadable_dicom: ").all()
    assert read_table(str(copy), "exports").empty and not list((copy / "export").rglob("*.dcm"))


def test_a_run_of_image_files_is_skipped_with_a_reason(scored_run: Path, data_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(scored_run, run_dir)
    summary = run_export(test_config(data_root, run_dir))
    scored = len(read_table(str(run_dir), "preds").query("stage == 'cam'"))
    assert summary.balanced and summary.rows_in == scored and summary.skipped == {"not_dicom": scored}
    assert summary.extra["export"].startswith(f"skipped: none of the {scored} scored rows comes from a DICOM file")
    assert read_table(str(run_dir), "exports").empty and not (run_dir / "export").exists()


def nm_header(frame_of_reference: bool = True, codes: tuple[str, ...] = ("AN", "PO"), geometry: bool = True) -> Dataset:
    """Returns a 2-frame NM header (as read_source_header returns it) without pixel data."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.20", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = generate_uid(), generate_uid(), "P9"
    ds.PatientName, ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "ANONYMOUS", "NM", 32, 8, 2
    ds.PixelSpacing = [2.4, 2.4]
    ds.DetectorInformationSequence = detectors(list(codes), geometry)
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
    return ds


def test_the_segmentation_writer_references_the_masked_frames_of_its_source() -> None:
    header = nm_header()
    header.file_meta = FileMetaDataset()
    header.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
    del header.SOPClassUID  # as in real NM exports: the SOP class only in the file meta
    masks = np.zeros((2, 32, 8), dtype=bool)
    masks[1, 10:14, 2:6] = True
    seg = segmentation(header, masks, generate_uid(), 1, SETTINGS)
    assert seg.NumberOfFrames == 1 and str(seg.PatientName) == "ANONYMOUS"  # an odd name is kept as it is
    item = seg.PerFrameFunctionalGroupsSequence[0]
    assert item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber == 2
    assert item.PlanePositionSequence[0].ImagePositionPatient == GEOMETRY["PO"][0]
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert shared.PlaneOrientationSequence[0].ImageOrientationPatient == GEOMETRY["PO"][1]
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert referenced.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.20" and "SOPClassUID" not in header
    both = masks.copy()
    both[0, 3:5, 3:5] = True
    assert segmentation_blocker(header, [0, 1]).startswith("mixed_orientation: ")
    with pytest.raises(ExportError, match=r"^mixed_orientation: "):
        segmentation(header, both, generate_uid(), 1, SETTINGS)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"frame_of_reference": False}, "no_frame_of_reference"),
        ({"geometry": False}, "no_geometry"),
    ],
)
def test_the_segmentation_writer_refuses_a_source_without_frame_of_reference_or_geometry(kwargs, reason) -> None:
    masks = np.zeros((2, 32, 8), dtype=bool)
    masks[1, 10:14, 2:6] = True
    with pytest.raises(ExportError, match=rf"^{reason}: "):
        segmentation(nm_header(**kwargs), masks, generate_uid(), 1, SETTINGS)
    with pytest.raises(ExportError, match=r"^no_kept_masks: "):
        segmentation(nm_header(), np.zeros((2, 32, 8), dtype=bool), generate_uid(), 1, SETTINGS)


def test_draw_findings_outlines_boxes_and_masks_and_leaves_the_rest() -> None:
    gray = np.full((40, 20), 7, dtype=np.uint8)
    mask = np.zeros((40, 20), dtype=bool)
    mask[12:16, 6:10] = True
    out = draw_findings(gray, np.array([[4.0, 10.0, 12.0, 18.0], [-5.0, 30.0, 40.0, 60.0]]), [mask])
    assert out.shape == (40, 20, 3) and out.dtype == np.uint8
    assert tuple(out[10, 4]) == BOX_RGB and tuple(out[10, 11]) == BOX_RGB and tuple(out[17, 11]) == BOX_RGB
    assert tuple(out[12, 6]) == MASK_RGB and tuple(out[14, 8]) == (7, 7, 7)  # outline only
    assert tuple(out[30, 0]) == BOX_RGB and tuple(out[39, 19]) == BOX_RGB  # clipped to the frame
    assert tuple(out[0, 0]) == (7, 7, 7)
    with pytest.raises(ValueError, match="mask of shape"):
        draw_findings(gray, np.zeros((0, 4)), [mask[:10]])
    assert safe_name("ward 3/ü.dcm") == "ward_3_.dcm" and safe_name("///") == "scan"
    assert boxes_text(np.array([[1, 2, 3, 4], [5, 6, 7, 8.25]])) == "1.0 2.0 3.0 4.0; 5.0 6.0 7.0 8.2"
