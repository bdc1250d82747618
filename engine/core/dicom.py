"""NM DICOM studies: header -> one record per frame (view, patient, spacing, date), and one frame's counts.

A gamma-camera whole-body export is one file per study with Modality `NM` and one frame per view (DICOM PS3.3
C.8.4, NM Image and NM Detector modules). Frame `i` was taken by detector `DetectorVector[i]` (1-based; frame `i`
-> detector `i + 1` when the vector is absent), whose `DetectorInformationSequence` item carries the view in
`ViewCodeSequence[0]` (`CodeValue` AN / PO, `CodeMeaning` Anterior / Posterior). Frames are addressed by their
0-based index: `<file>#<frame>` in the index's `path` (`split_frame_path`).
Failures raise `DicomError` whose message starts with a reason code (`unreadable_dicom`, `not_nm`, `bad_frames`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.pixels

DICOM_EXTENSIONS = (".dcm", ".dicom")
NM_MODALITY = "NM"
VIEW_CODES = {"AN": "ANT", "PO": "POST"}  # ViewCodeSequence CodeValue -> index view
UNKNOWN_VIEW = "unknown"
MAX_FRAMES = 64  # a whole-body study holds 1-2 frames; more is a dynamic or SPECT acquisition, not a scan
# PatientID values that name nobody (anonymiser placeholders); the file stem stands in for them.
ANONYMOUS_ID_RE = re.compile(r"^(?:|anon\w*|anonymous|unknown|none|n/?a|0+|x+)$", re.IGNORECASE)
_FRAME_PATH_RE = re.compile(r"^(?P<file>.+)#(?P<frame>\d+)$")


class DicomError(ValueError):
    """A DICOM file that cannot be indexed or decoded; the message starts with a reason code."""


@dataclass(frozen=True)
class DicomFrame:
    """One frame of an NM study, as the index records it."""

    frame: int  # 0-based index in the file
    view: str  # ANT, POST or unknown
    patient_id: str | None  # PatientID, None when empty or an anonymiser placeholder
    pixel_spacing_y_mm: float | None  # PixelSpacing[0]: distance between rows
    pixel_spacing_x_mm: float | None  # PixelSpacing[1]: distance between columns
    study_date: str | None  # StudyDate as YYYY-MM-DD, None when absent or not a DICOM date
    is_whole_body: bool  # ImageType value 3 is WHOLE BODY (PS3.3 C.8.4.8), or unstated


def split_frame_path(path: str) -> tuple[str, int | None]:
    """Returns (file path, 0-based frame or None) of an index path; `a/b.dcm#1` -> (`a/b.dcm`, 1)."""
    match = _FRAME_PATH_RE.match(path)
    if match is None:
        return path, None
    return match["file"], int(match["frame"])


def is_dicom_name(name: str) -> bool:
    """Returns whether a file name has a DICOM extension (`.dcm`, `.dicom`, any case)."""
    return name.lower().endswith(DICOM_EXTENSIONS)


def read_nm_frames(source: BinaryIO) -> list[DicomFrame]:
    """Returns the frames of an NM DICOM file, reading its header only (never the pixel data).

    Raises:
        DicomError: `unreadable_dicom` (not DICOM, truncated or malformed header), `not_nm`, `bad_frames`.
    """
    try:
        return _nm_frames(pydicom.dcmread(source, stop_before_pixels=True))
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom parses lazily and raises many types on broken files
        raise DicomError(f"unreadable_dicom: {type(exc).__name__}: {exc}") from exc


def _nm_frames(header: pydicom.Dataset) -> list[DicomFrame]:
    """Returns the frame records of a parsed header (read_nm_frames)."""
    modality = str(header.get("Modality", "") or "")
    if modality != NM_MODALITY:
        raise DicomError(f"not_nm: Modality {modality!r}, only {NM_MODALITY!r} (nuclear medicine) is scored")
    frames = _frame_count(header)
    spacing = _spacing(header)
    image_type = [str(value).upper() for value in (header.get("ImageType") or [])]
    whole_body = len(image_type) < 3 or image_type[2] == "WHOLE BODY"
    patient = str(header.get("PatientID", "") or "").strip()
    return [
        DicomFrame(frame, _frame_view(header, frame), None if ANONYMOUS_ID_RE.match(patient) else patient,
                   *spacing, _iso_date(header.get("StudyDate")), whole_body)
        for frame in range(frames)
    ]  # fmt: skip


def _frame_count(header: pydicom.Dataset) -> int:
    """Returns NumberOfFrames (1 when absent), or raises bad_frames outside 1..MAX_FRAMES."""
    try:
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"bad_frames: NumberOfFrames {header.get('NumberOfFrames')!r} is not a number") from exc
    if not 1 <= frames <= MAX_FRAMES:
        raise DicomError(f"bad_frames: NumberOfFrames {frames} outside 1..{MAX_FRAMES}")
    return frames


def _frame_view(header: pydicom.Dataset, frame: int) -> str:
    """Returns the view of one frame from its detector's ViewCodeSequence, or `unknown`."""
    detectors = header.get("DetectorInformationSequence") or []
    vector = header.get("DetectorVector")
    try:
        detector = int(list(vector)[frame]) - 1 if vector is not None else frame
    except (IndexError, TypeError, ValueError):
        detector = frame
    if not 0 <= detector < len(detectors):
        return UNKNOWN_VIEW
    codes = detectors[detector].get("ViewCodeSequence") or []
    if not codes:
        return UNKNOWN_VIEW
    value = str(codes[0].get("CodeValue", "") or "").strip().upper()
    meaning = str(codes[0].get("CodeMeaning", "") or "").strip().lower()
    if value in VIEW_CODES:
        return VIEW_CODES[value]
    return {"anterior": "ANT", "posterior": "POST"}.get(meaning, UNKNOWN_VIEW)


def _spacing(header: pydicom.Dataset) -> tuple[float | None, float | None]:
    """Returns PixelSpacing as (row, column) mm, or (None, None) when absent or malformed."""
    try:
        row, column = (float(value) for value in header.get("PixelSpacing"))
    except (TypeError, ValueError):
        return None, None
    return row, column


def _iso_date(value: object) -> str | None:
    """Returns a DICOM DA (YYYYMMDD) as YYYY-MM-DD, or None."""
    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else None


def read_frame_counts(source: BinaryIO, frame: int) -> np.ndarray:
    """Returns frame `frame` of a DICOM file's pixel data as a 2-D array of counts (uint8 or uint16).

    Signed or wider integer counts are clipped to 0..65535; colour frames are refused.

    Raises:
        DicomError: `unreadable_dicom`, `bad_frames` (no such frame), `undecodable` (pixel data pydicom
            cannot decode, e.g. a compressed transfer syntax without its plugin).
    """
    try:
        frames = _frame_count(pydicom.dcmread(source, stop_before_pixels=True))
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in read_nm_frames
        raise DicomError(f"unreadable_dicom: {type(exc).__name__}: {exc}") from exc
    if not 0 <= frame < frames:
        raise DicomError(f"bad_frames: frame {frame} requested, the file holds {frames} (0..{frames - 1})")
    source.seek(0)
    try:
        pixels = pydicom.pixels.pixel_array(source, index=frame if frames > 1 else None)
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types; each becomes a reason
        raise DicomError(f"undecodable: pixel data of frame {frame}: {type(exc).__name__}: {exc}") from exc
    if pixels.ndim != 2:
        raise DicomError(f"undecodable: frame {frame} has shape {pixels.shape}, not (rows, columns) gray")
    if pixels.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(pixels)
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DicomError(f"undecodable: frame {frame} has dtype {pixels.dtype}, not integer counts")
    return np.clip(pixels, 0, np.iinfo(np.uint16).max).astype(np.uint16)
