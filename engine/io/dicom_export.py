"""Results back as DICOM (`make export`): Secondary Capture images and Segmentations built with highdicom from a
source NM study's header, and the folder `<run.dir>/export/` they are staged in and swapped into.

Every object carries the source study's identifiers verbatim (PatientID, PatientName, StudyInstanceUID, StudyDate,
AccessionNumber, ...; copied after highdicom built it, so that a valid but unusual value such as an anonymiser's
`ANONYMOUS` name is kept as it is) in a new series. A Segmentation needs the source's Frame of Reference and the
geometry of each frame: highdicom 0.28 refuses a multi-frame source without a FrameOfReferenceUID (highdicom issue
#284), and it reads a multi-frame source's geometry only from functional groups, which an NM Image object does not
have. The NM Detector module holds it instead (each frame's detector item: ImagePositionPatient,
ImageOrientationPatient), so highdicom is handed a header-only copy of the source with that geometry written as
functional groups; the Segmentation then references the source instance and frame numbers themselves.
"""

from __future__ import annotations

import copy
import io
import logging
import uuid
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pyarrow.fs as pafs
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from engine.core.scans.decode import DecodeError
from engine.io.commit import Move, exists, join, swap_steps
from engine.io.fs import resolve_fs, safe_relative_path

log = logging.getLogger(__name__)

EXPORT_DIR = "export"  # <run.dir>/export/<StudyInstanceUID>/...
# Patient and study attributes copied verbatim from the source into every exported object.
STUDY_IDENTIFIERS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
# Type 2 attributes highdicom's Segmentation reads from its source (absent ones are added empty to its copy).
_SEG_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_SEX_VALUES = ("M", "F", "O")
# Patient orientation (row direction, column direction) of a planar view: anterior seen from the front, posterior
# from behind (real whole-body exports store the posterior frame as acquired, not mirrored); head at the top.
VIEW_ORIENTATION = {"ANT": ("L", "F"), "POST": ("R", "F")}
NO_FRAME_OF_REFERENCE = (
    "no_frame_of_reference: the source has no FrameOfReferenceUID; highdicom makes no Segmentation of a multi-frame "
    "(NM) source without one (highdicom issue #284)"
)


class ExportError(ValueError):
    """A source that cannot be exported; the message starts with a reason code."""


@dataclass(frozen=True)
class ExportSettings:
    """What every exported object says about its making."""

    series_number: int  # the Secondary Capture series; the Segmentation series is series_number + 1
    series_description: str
    manufacturer: str = "BS-80K engine"
    model_name: str = "bs80k weak localisation"
    software_version: str = "1"


def read_source_header(fs: pafs.FileSystem, root: str, relative: str) -> Dataset:
    """Returns the header (no pixel data) of the DICOM file `relative` under `root`; never reads outside `root`.

    Raises:
        ExportError: `unsafe_path`, `missing_file`, `read_error`, `unreadable_dicom`, `no_study_uid` (a source without
            a StudyInstanceUID has no study to return results to).
    """
    try:
        path = safe_relative_path(root, relative)
    except DecodeError as exc:
        raise ExportError(str(exc)) from exc
    try:
        with fs.open_input_file(path) as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise ExportError(f"missing_file: {relative}") from exc
    except OSError as exc:
        raise ExportError(f"read_error: {type(exc).__name__}: {exc}") from exc
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        study_uid = str(header.get("StudyInstanceUID", "") or "").strip()
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on broken files; each becomes a reason
        raise ExportError(f"unreadable_dicom: {type(exc).__name__}: {exc}") from exc
    if not study_uid:
        raise ExportError(f"no_study_uid: {relative} has no StudyInstanceUID; its results have no study to join")
    return header


def sop_class_uid(header: Dataset) -> str:
    """Returns the SOPClassUID, else the file meta's MediaStorageSOPClassUID (real NM exports lack the first)."""
    return _uid(header, "SOPClassUID", "MediaStorageSOPClassUID")


def sop_instance_uid(header: Dataset) -> str:
    """Returns the source's SOPInstanceUID, else the file meta's MediaStorageSOPInstanceUID."""
    return _uid(header, "SOPInstanceUID", "MediaStorageSOPInstanceUID")


def _uid(header: Dataset, keyword: str, meta_keyword: str) -> str:
    meta = getattr(header, "file_meta", None)
    return str(header.get(keyword) or (meta.get(meta_keyword) if meta is not None else "") or "")


def carry_identifiers(target: Dataset, header: Dataset) -> None:
    """Copies the source's patient and study attributes (STUDY_IDENTIFIERS) verbatim onto `target`, in place."""
    for keyword in STUDY_IDENTIFIERS:
        if keyword in header:
            target[keyword] = copy.deepcopy(header[keyword])


def patient_orientation(header: Dataset, view: str) -> tuple[str, str] | None:
    """Returns the frame's (row, column) patient orientation: the source's PatientOrientation, else the view's."""
    stated = [str(v) for v in (header.get("PatientOrientation") or [])]
    if len(stated) == 2 and all(stated):
        return stated[0], stated[1]
    return VIEW_ORIENTATION.get(view)


def _pixel_spacing(header: Dataset) -> tuple[float, float] | None:
    try:
        row, column = (float(v) for v in header.get("PixelSpacing"))
    except (TypeError, ValueError):
        return None
    return (row, column) if row > 0 and column > 0 else None


def secondary_capture(
    header: Dataset,
    rgb: np.ndarray,
    frame: int,
    view: str,
    series_uid: str,
    instance_number: int,
    settings: ExportSettings,
    comment: str,
) -> Dataset:
    """Returns a Secondary Capture image of `rgb` ((H, W, 3) uint8, drawn on frame `frame` of the source) in series
    `series_uid` of the source's study, referencing the source frame it shows.

    Raises:
        ValueError: highdicom refused the image (its message).
    """
    orientation = patient_orientation(header, view)
    image = hd.sc.SCImage(
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=str(header.StudyInstanceUID),
        series_instance_uid=series_uid,
        series_number=settings.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=settings.manufacturer,
        pixel_spacing=_pixel_spacing(header),
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=settings.series_description,
        manufacturer_model_name=settings.model_name,
        software_versions=settings.software_version,
    )
    if orientation is None:
        image.PatientOrientation = None  # unknown view: left empty (Type 2) rather than guessed
    carry_identifiers(image, header)
    source = Dataset()
    source.ReferencedSOPClassUID = sop_class_uid(header)
    source.ReferencedSOPInstanceUID = sop_instance_uid(header)
    source.ReferencedFrameNumber = frame + 1
    image.SourceImageSequence = [source]
    image.DerivationDescription = "pseudo boxes (red) and kept pseudo masks (magenta) drawn on the source frame"
    image.BurnedInAnnotation = "NO"
    image.ImageComments = comment[:10240]
    return image


def segmentation_blocker(header: Dataset, frames: list[int]) -> str:
    """Returns why no Segmentation can be made of the masks on `frames` (0-based) of the source, or "" when one can.

    A Segmentation needs the source's FrameOfReferenceUID, its PixelSpacing, each masked frame's detector position
    and orientation (NM Detector module), one orientation shared by the masked frames, and distinct positions.
    """
    if not str(header.get("FrameOfReferenceUID", "") or ""):
        return NO_FRAME_OF_REFERENCE
    if _pixel_spacing(header) is None:
        return "no_geometry: the source has no PixelSpacing"
    geometry = [_frame_geometry(header, f) for f in range(frame_count(header))]
    missing = [f for f in frames if not 0 <= f < len(geometry) or geometry[f] is None]
    if missing:
        return (
            f"no_geometry: frame(s) {[f + 1 for f in missing]} have no ImagePositionPatient and "
            "ImageOrientationPatient in their detector's item (DetectorInformationSequence)"
        )
    orientations = {tuple(np.round(geometry[f][1], 4)) for f in frames}
    if len(orientations) > 1:
        return "mixed_orientation: the masked frames' detectors face different ways; highdicom needs one orientation"
    return ""


def frame_count(header: Dataset) -> int:
    """Returns the source's NumberOfFrames (1 when absent or malformed)."""
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _frame_geometry(header: Dataset, frame: int) -> tuple[list[float], list[float]] | None:
    """Returns (ImagePositionPatient, ImageOrientationPatient) of frame `frame` from its detector's item
    (DetectorVector maps frames to detectors, 1-based; frame i -> detector i + 1 without it), else from the
    dataset's root for a single-frame source; None when either is absent or malformed."""
    detectors = header.get("DetectorInformationSequence") or []
    vector = header.get("DetectorVector")
    try:
        detector = int(list(vector)[frame]) - 1 if vector is not None else frame
    except (IndexError, TypeError, ValueError):
        detector = frame
    item = detectors[detector] if 0 <= detector < len(detectors) else (header if frame_count(header) == 1 else None)
    if item is None:
        return None
    try:
        position = [float(v) for v in item.get("ImagePositionPatient") or []]
        orientation = [float(v) for v in item.get("ImageOrientationPatient") or []]
    except (TypeError, ValueError):
        return None
    return (position, orientation) if len(position) == 3 and len(orientation) == 6 else None


def _geometry_view(header: Dataset, orientation: list[float]) -> Dataset:
    """Returns a header-only copy of the source with its NM detector geometry as the functional groups highdicom
    reads (shared pixel measures and `orientation`, one plane position per frame), and empty Type 2 attributes
    added where the source has none. Frames without geometry get a position off every other frame's plane; the
    Segmentation leaves them out (no mask on them: segmentation_blocker checks the masked frames)."""
    view = copy.deepcopy(header)
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in view:
            del view[keyword]
    view.SOPClassUID, view.SOPInstanceUID = sop_class_uid(header), sop_instance_uid(header)
    for keyword in _SEG_TYPE2:
        if keyword not in view:
            setattr(view, keyword, "")
    if str(view.get("PatientSex", "") or "") not in _SEX_VALUES:
        view.PatientSex = ""  # highdicom accepts M, F, O or empty; the output gets the source's value back
    view.PatientName = ""  # highdicom warns on names without `^`; carry_identifiers copies the source's
    measures = Dataset()
    measures.PixelSpacing = list(_pixel_spacing(header) or (1.0, 1.0))
    measures.SliceThickness = 1.0
    plane = Dataset()
    plane.ImageOrientationPatient = list(orientation)
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [plane]
    view.SharedFunctionalGroupsSequence = [shared]
    normal = np.cross(orientation[:3], orientation[3:])
    per_frame = []
    for frame in range(frame_count(header)):
        geometry = _frame_geometry(header, frame)
        position = geometry[0] if geometry is not None else list(np.asarray(normal) * -1e6 * (frame + 1))
        item, spot = Dataset(), Dataset()
        spot.ImagePositionPatient = [float(v) for v in position]
        item.PlanePositionSequence = [spot]
        per_frame.append(item)
    view.PerFrameFunctionalGroupsSequence = per_frame
    return view


def segmentation(
    header: Dataset,
    masks: np.ndarray,
    series_uid: str,
    instance_number: int,
    settings: ExportSettings,
) -> Dataset:
    """Returns a binary DICOM Segmentation (one segment: the kept pseudo masks) of the source, in series `series_uid`.

    Args:
        header: the source's header (read_source_header).
        masks: (frames, H, W) bool, one plane per source frame (frames without a mask all False: left out).

    Raises:
        ExportError: the source cannot carry a Segmentation (segmentation_blocker's reason) or highdicom refused it
            (`highdicom_refused: ...`).
    """
    frames = [int(f) for f in np.flatnonzero(masks.reshape(masks.shape[0], -1).any(axis=1))]
    if not frames:
        raise ExportError("no_kept_masks: no mask on any frame of the source")
    blocker = segmentation_blocker(header, frames)
    if blocker:
        raise ExportError(blocker)
    orientation = _frame_geometry(header, frames[0])[1]  # type: ignore[index]
    algorithm = hd.AlgorithmIdentificationSequence(
        name=settings.model_name, version=settings.software_version, family=codes.cid7162.ArtificialIntelligence
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="pseudo lesion (weak localisation)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=[_geometry_view(header, orientation)],
            pixel_array=masks.astype(bool),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=series_uid,
            series_number=settings.series_number + 1,
            sop_instance_uid=generate_uid(),
            instance_number=instance_number,
            manufacturer=settings.manufacturer,
            manufacturer_model_name=settings.model_name,
            software_versions=settings.software_version,
            device_serial_number="0",
            series_description=settings.series_description,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ExportError(f"highdicom_refused: {type(exc).__name__}: {exc}") from exc
    carry_identifiers(seg, header)
    return seg


def dataset_bytes(dataset: Dataset) -> bytes:
    """Returns `dataset` as a DICOM file (PS3.10: preamble, file meta)."""
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


class ExportFolder:
    """The files of one `make export` run: staged under `<run.dir>/_staging/export-files-<id>/`, swapped into
    `<run.dir>/export/` by `publish()` (through the commit journal of engine/io/commit.py: a kill leaves the old
    folder or the new one), deleted by `discard()`. A re-run replaces the whole folder."""

    def __init__(self, run_dir: str) -> None:
        self.fs, self.root = resolve_fs(run_dir)
        self.name = f"export-files-{uuid.uuid4().hex[:12]}"
        self.staged = join(self.root, "_staging", self.name)
        self.files = 0

    def write(self, relative: str, data: bytes) -> str:
        """Stages one file at `export/<relative>`; returns its path relative to the run dir."""
        path = join(self.staged, relative)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)
        self.files += 1
        return f"{EXPORT_DIR}/{relative}"

    def publish(self) -> None:
        """Replaces `<run.dir>/export/` by the staged files (an earlier export is deleted, with a warning)."""
        final = join(self.root, EXPORT_DIR)
        if exists(self.fs, final):
            log.warning("make export: replacing %s", final)
        move = Move(final, self.staged, join(self.root, "_staging", f"{self.name}-old"))
        for _ in swap_steps(self.fs, self.root, self.name, [move]):
            pass

    def discard(self) -> None:
        """Deletes the staged files (a failed run leaves the earlier export as it was)."""
        if exists(self.fs, self.staged):
            self.fs.delete_dir(self.staged)
