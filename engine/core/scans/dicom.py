"""NM DICOM studies: header -> the frames the index keeps (view, patient, spacing, date), and one frame's counts.

A gamma-camera whole-body export is one file per study with Modality `NM` and one frame per view (DICOM PS3.3
C.8.4, NM Image and NM Detector modules). Frame `i` was taken by detector `DetectorVector[i]` (1-based; frame `i`
-> detector `i + 1` when the vector is absent), whose `DetectorInformationSequence` item carries the view in
`ViewCodeSequence[0]` (`CodeValue` AN / PO, or a code whose words name one view: `CodeMeaning` Anterior /
Posterior, a vendor's `RT ANT LT` / `LT POST RT`); without one, a `ViewPosition` of one value per frame names it.
Frames are addressed by their 0-based index: `<file>#<frame>` in the index's `path` (`split_frame_path`).

Real clinic folders hold more than raw studies. `read_nm_study` keeps only static whole-body
frames and says why everything else is left out; each reason is a string that starts with its code:

- refused (`DicomError`, an error row), the first that applies in this order: `unreadable_dicom`, `no_image` (no
  Rows/Columns: not an image object), `secondary_capture` (a Secondary Capture SOP class in the dataset or in the
  file meta: raw NM exports may state it only there), `color_image` (SamplesPerPixel > 1), `palette_color`,
  `not_nm` (Modality other than NM), `bad_frames`, then for static NM images `derived_image` (ImageType DERIVED or
  SECONDARY) and `bad_rescale` (a RescaleSlope that is not a positive number).
- left out on purpose (SKIP_CODES, one skip row per file): `dicomdir` (a PS3.10 media directory), `not_static`
  (ImageType value 3 DYNAMIC / GATED / TOMO / GATED TOMO / RECON TOMO / RECON GATED TOMO, frames indexed by a
  time, phase, rotation or slice vector, more than MAX_FRAMES frames, or more frames in one energy window than
  its detector views explain) and `secondary_energy_window` (the frames of every energy window but the primary
  one, EnergyWindowVector 1; the primary window's frames are kept).

`read_frame_counts` returns a frame's counts: RescaleSlope/RescaleIntercept applied, MONOCHROME1 reflected so
that a higher value is more counts, colour and PALETTE COLOR refused. `has_dicom_preamble` tells a PS3.10 file
by its first 132 bytes (media exports name files `IM000000`, without an extension).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.pixels

DICOM_EXTENSIONS = (".dcm", ".dicom")
PREAMBLE_BYTES = 132  # a PS3.10 file: a 128-byte preamble, then b"DICM"
NM_MODALITY = "NM"
VIEW_CODES = {"AN": "ANT", "PO": "POST"}  # ViewCodeSequence CodeValue -> index view
UNKNOWN_VIEW = "unknown"
MAX_FRAMES = 64  # a whole-body study holds 1-2 frames; more is a dynamic or SPECT acquisition, not a scan
PAIR_FRAMES = 2  # frames of one energy window a file without per-frame detectors may hold (an ANT/POST pair)
MEDIA_DIRECTORY_UID = "1.2.840.10008.1.3.10"  # DICOMDIR
SECONDARY_CAPTURE_UIDS = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
)
# ImageType value 3 of NM acquisitions that are not one static picture per view (PS3.3 C.8.4.8.1.1)
NOT_STATIC_KINDS = frozenset({"DYNAMIC", "GATED", "TOMO", "GATED TOMO", "RECON TOMO", "RECON GATED TOMO"})
# Frame Increment Pointer vectors that index frames by time, phase, rotation or slice, never by view
MOTION_VECTORS = (
    "TimeSliceVector",
    "PhaseVector",
    "RRIntervalVector",
    "TimeSlotVector",
    "RotationVector",
    "AngularViewVector",
    "SliceVector",
)
SKIP_CODES = frozenset({"dicomdir", "not_static", "secondary_energy_window"})  # left out on purpose, not errors
ERROR_CODES = frozenset(
    {
        "unreadable_dicom",
        "bad_frames",
        "no_image",
        "secondary_capture",
        "color_image",
        "palette_color",
        "derived_image",
        "not_nm",
        "bad_rescale",
        "undecodable",
    }
)
REASON_CODES = ERROR_CODES | SKIP_CODES  # every code this module's reasons start with
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


@dataclass(frozen=True)
class NmStudy:
    """What the index takes from one NM file: the frames it keeps and why the others are left out."""

    frames: list[DicomFrame]  # static frames of the primary energy window, in file order
    left_out: list[str] = field(default_factory=list)  # one `code: detail` (SKIP_CODES) per group of frames left out


def split_frame_path(path: str) -> tuple[str, int | None]:
    """Returns (file path, 0-based frame or None) of an index path; `a/b.dcm#1` -> (`a/b.dcm`, 1)."""
    match = _FRAME_PATH_RE.match(path)
    if match is None:
        return path, None
    return match["file"], int(match["frame"])


def is_dicom_name(name: str) -> bool:
    """Returns whether a file name has a DICOM extension (`.dcm`, `.dicom`, any case)."""
    return name.lower().endswith(DICOM_EXTENSIONS)


def has_dicom_preamble(head: bytes) -> bool:
    """Returns whether a file's first bytes are a PS3.10 preamble: `DICM` at bytes 128..132."""
    return head[128:PREAMBLE_BYTES] == b"DICM"


def reason_code(reason: str) -> str:
    """Returns the code of a `code: detail` reason."""
    return reason.split(":", 1)[0]


def read_nm_study(source: BinaryIO) -> NmStudy:
    """Returns the frames of an NM DICOM file the index keeps and the reasons for the rest (module docstring).

    Reads the header only (never the pixel data). A file left out as a whole gives no frames and one reason.

    Raises:
        DicomError: `unreadable_dicom` (not DICOM, truncated or malformed header) or another refusal of the
            module docstring (`no_image`, `secondary_capture`, `color_image`, `palette_color`, `not_nm`,
            `bad_frames`, `derived_image`, `bad_rescale`).
    """
    try:
        return _nm_study(pydicom.dcmread(source, stop_before_pixels=True))
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom parses lazily and raises many types on broken files
        raise DicomError(f"unreadable_dicom: {type(exc).__name__}: {exc}") from exc


def read_nm_frames(source: BinaryIO) -> list[DicomFrame]:
    """Returns the frames read_nm_study keeps (none for a file left out as a whole: see its `left_out`)."""
    return read_nm_study(source).frames


def _nm_study(header: pydicom.Dataset) -> NmStudy:
    """Returns the kept frames and left-out reasons of a parsed header (read_nm_study)."""
    if _sop_classes(header) & {MEDIA_DIRECTORY_UID}:
        return NmStudy(
            [], ["dicomdir: a PS3.10 media directory (DICOMDIR), not an image; its files are read where they lie"]
        )
    _refuse_object(header)
    frames = _frame_count(header)
    not_static = _not_static(header, frames)
    if not_static:
        return NmStudy([], [f"not_static: {not_static}; not a static whole-body scan, not indexed"])
    _refuse_derived(header)
    _rescale(header)
    kept, left_out = _primary_window(header, frames)
    explained = max(_detector_count(header), PAIR_FRAMES)
    if len(kept) > explained:
        return NmStudy(
            [],
            [
                f"not_static: {len(kept)} frames in one energy window but its detector views explain"
                f" {explained} (a dynamic, gated or tomographic series?); not indexed"
            ],
        )
    spacing = _spacing(header)
    kind = _values(header, "ImageType")[2:3]
    whole_body = not kind or kind[0] == "WHOLE BODY"
    patient = str(header.get("PatientID", "") or "").strip()
    records = [
        DicomFrame(
            frame,
            _frame_view(header, frame, frames),
            None if ANONYMOUS_ID_RE.match(patient) else patient,
            *spacing,
            _iso_date(header.get("StudyDate")),
            whole_body,
        )
        for frame in kept
    ]
    return NmStudy(records, left_out)


def _values(header: pydicom.Dataset, keyword: str) -> list[str]:
    """Returns an element's values as upper-case stripped strings (one value or many; [] when absent)."""
    value = header.get(keyword)
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, pydicom.multival.MultiValue | list | tuple) else [value]
    return [str(item).strip().upper() for item in items]


def _sop_classes(header: pydicom.Dataset) -> set[str]:
    """Returns the SOP class UIDs a file states: the dataset's SOPClassUID and the file meta's (raw NM exports
    often state only the latter)."""
    meta = getattr(header, "file_meta", None)
    stated = [header.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta is not None else None]
    return {str(uid).strip() for uid in stated if uid}


def _refuse_object(header: pydicom.Dataset) -> None:
    """Raises the first refusal of an object that holds no NM counts: no_image, secondary_capture, color_image,
    palette_color, not_nm (module docstring)."""
    modality = str(header.get("Modality", "") or "")
    if "Rows" not in header or "Columns" not in header:
        raise DicomError(f"no_image: no Rows/Columns (Modality {modality!r}): not an image object; not indexed")
    capture = sorted(_sop_classes(header) & SECONDARY_CAPTURE_UIDS)
    if capture:
        raise DicomError(
            f"secondary_capture: SOP class {capture[0]} (Modality {modality!r}): a Secondary Capture"
            " (screen or derived image), not an acquisition; not indexed"
        )
    _refuse_colour(header)
    if modality != NM_MODALITY:
        raise DicomError(f"not_nm: Modality {modality!r}, only {NM_MODALITY!r} (nuclear medicine) is scored")


def _refuse_colour(header: pydicom.Dataset) -> str:
    """Returns the PhotometricInterpretation (upper case) of grey pixels; raises color_image or palette_color."""
    samples = header.get("SamplesPerPixel", 1)
    photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
    if _int(samples, 1) > 1:
        raise DicomError(
            f"color_image: {samples} samples per pixel ({photometric or 'no photometric'}): a colour"
            " rendering, not counts"
        )
    if photometric == "PALETTE COLOR":
        raise DicomError("palette_color: PALETTE COLOR pixels are indices into a colour map, not counts")
    return photometric


def _refuse_derived(header: pydicom.Dataset) -> None:
    """Raises derived_image for a static NM image whose ImageType is DERIVED or SECONDARY."""
    image_type = _values(header, "ImageType")
    if image_type[:1] == ["DERIVED"] or image_type[1:2] == ["SECONDARY"]:
        stated = "\\".join(image_type)
        raise DicomError(
            f"derived_image: ImageType {stated}: derived from another image, not an acquisition; not indexed"
        )


def _int(value: object, default: int) -> int:
    """Returns int(value), or `default` when it is not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _rescale(header: pydicom.Dataset) -> tuple[float, float]:
    """Returns (RescaleSlope, RescaleIntercept), (1, 0) when absent; bad_rescale unless the slope is positive."""
    try:
        slope, intercept = (
            float(header.get(name) if header.get(name) not in (None, "") else default)
            for name, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0))
        )
    except (TypeError, ValueError) as exc:
        raise DicomError(f"bad_rescale: RescaleSlope/RescaleIntercept are not numbers: {exc}") from exc
    if not (np.isfinite(slope) and np.isfinite(intercept) and slope > 0):
        raise DicomError(f"bad_rescale: RescaleSlope {slope:g}, RescaleIntercept {intercept:g}: the slope must be > 0")
    return slope, intercept


def _frame_count(header: pydicom.Dataset) -> int:
    """Returns NumberOfFrames (1 when absent), or raises bad_frames when it is not a positive number."""
    try:
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"bad_frames: NumberOfFrames {header.get('NumberOfFrames')!r} is not a number") from exc
    if frames < 1:
        raise DicomError(f"bad_frames: NumberOfFrames {frames} is not positive")
    return frames


def _not_static(header: pydicom.Dataset, frames: int) -> str:
    """Returns why the file is a dynamic, gated or tomographic acquisition, or "" for a static one."""
    kind = _values(header, "ImageType")[2:3]
    if kind and kind[0] in NOT_STATIC_KINDS:
        return f"ImageType value 3 {kind[0]!r} ({frames} frame(s))"
    moving = [name for name in MOTION_VECTORS if len(set(_values(header, name))) > 1]
    if moving:
        return f"{frames} frames indexed by {', '.join(moving)}"
    if frames > MAX_FRAMES:
        return f"NumberOfFrames {frames} > {MAX_FRAMES}"
    return ""


def _primary_window(header: pydicom.Dataset, frames: int) -> tuple[list[int], list[str]]:
    """Returns (frames of the primary energy window, one secondary_energy_window reason or none).

    The primary window is window 1 of EnergyWindowVector (1-based into EnergyWindowInformationSequence; its
    lowest value when 1 is absent). Without a vector of one value per frame every frame is kept.
    """
    vector = [_int(value, 0) for value in _values(header, "EnergyWindowVector")]
    if len(vector) != frames or len(set(vector)) < 2:
        return list(range(frames)), []
    primary = 1 if 1 in vector else min(vector)
    kept = [frame for frame, window in enumerate(vector) if window == primary]
    others = [frame for frame, window in enumerate(vector) if window != primary]
    names = [
        str(item.get("EnergyWindowName", "") or "").strip()
        for item in header.get("EnergyWindowInformationSequence") or []
    ]
    named = {window: names[window - 1] for window in set(vector) if 0 < window <= len(names) and names[window - 1]}
    windows = ", ".join(f"{w} {named[w]!r}" if w in named else str(w) for w in sorted(set(vector) - {primary}))
    reason = (
        f"secondary_energy_window: frame(s) {', '.join(map(str, others))} of energy window(s) {windows} not"
        f" indexed; only window {primary}'s frames ({', '.join(map(str, kept))}) are"
    )
    return kept, [reason]


def _detector_count(header: pydicom.Dataset) -> int:
    """Returns the detectors a file describes (DetectorInformationSequence items, else NumberOfDetectors)."""
    detectors = header.get("DetectorInformationSequence") or []
    return len(detectors) or _int(header.get("NumberOfDetectors"), 0)


def _frame_view(header: pydicom.Dataset, frame: int, frames: int) -> str:
    """Returns the view of one frame from its detector's ViewCodeSequence, else from ViewPosition (one value per
    frame, or one for a single frame, as some exports write it), or `unknown`."""
    view = _detector_view(header, frame)
    if view != UNKNOWN_VIEW:
        return view
    positions = _values(header, "ViewPosition")
    if len(positions) == frames or (frames == 1 and len(positions) == 1):
        return _view_in_words(positions[frame])
    return UNKNOWN_VIEW


def _detector_view(header: pydicom.Dataset, frame: int) -> str:
    """Returns the view of one frame's detector (DetectorVector -> DetectorInformationSequence), or `unknown`."""
    detectors = header.get("DetectorInformationSequence") or []
    vector = header.get("DetectorVector")
    try:
        detector = int(list(vector)[frame]) - 1 if vector is not None else frame
    except (IndexError, TypeError, ValueError):
        detector = int(vector) - 1 if frame == 0 and isinstance(vector, int) else frame  # one frame: one value
    if not 0 <= detector < len(detectors):
        return UNKNOWN_VIEW
    codes = detectors[detector].get("ViewCodeSequence") or []
    if not codes:
        return UNKNOWN_VIEW
    value = str(codes[0].get("CodeValue", "") or "").strip().upper()
    if value in VIEW_CODES:
        return VIEW_CODES[value]
    return _view_in_words(f"{value} {codes[0].get('CodeMeaning', '') or ''}")


def _view_in_words(text: str) -> str:
    """Returns ANT or POST when the words of `text` name exactly one of them (`Anterior`, `RT ANT LT`, `PO`), else
    unknown (`antero-posterior` names both)."""
    words = re.findall(r"[A-Z]+", text.upper())
    anterior = any(word == "AN" or word.startswith("ANT") for word in words)
    posterior = any(word == "PO" or word.startswith("POST") for word in words)
    return "ANT" if anterior and not posterior else "POST" if posterior and not anterior else UNKNOWN_VIEW


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
    """Returns frame `frame` of a DICOM file's pixel data as a 2-D array of counts.

    The counts are the stored values through RescaleSlope/RescaleIntercept (when stated; negative results
    clipped to 0), and for MONOCHROME1 reflected about the frame's maximum (`max - value`: the lowest stored
    value becomes the hottest pixel, the background 0), so that a higher value always means more counts. The
    dtype is uint8 (8-bit counts without a rescale: grey levels already, engine/core/scans/counts.py), uint16
    (integer counts up to 65535) or float32 (a fractional rescale, or larger counts).

    Raises:
        DicomError: `unreadable_dicom`, `bad_frames` (no such frame), `color_image`, `palette_color`,
            `bad_rescale`, `undecodable` (pixel data pydicom cannot decode, e.g. a compressed transfer syntax
            without its plugin, or not integer).
    """
    try:
        header = pydicom.dcmread(source, stop_before_pixels=True)
        frames = _frame_count(header)
        photometric = _refuse_colour(header)
        slope, intercept = _rescale(header)
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in read_nm_study
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
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DicomError(f"undecodable: frame {frame} has dtype {pixels.dtype}, not integer counts")
    counts = _rescaled(pixels, slope, intercept)
    if photometric == "MONOCHROME1" and counts.size:
        counts = counts.max() - counts
    return np.ascontiguousarray(counts)


def _rescaled(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Returns stored values as counts: `slope * value + intercept`, >= 0 (read_frame_counts' dtypes)."""
    if slope == 1 and intercept == 0 and pixels.dtype in (np.uint8, np.uint16):
        return pixels
    values = pixels.astype(np.float64) * slope + intercept
    np.maximum(values, 0, out=values)
    if slope.is_integer() and intercept.is_integer() and values.max(initial=0) <= np.iinfo(np.uint16).max:
        return values.astype(np.uint16)
    return values.astype(np.float32)
