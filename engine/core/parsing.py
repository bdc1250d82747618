"""Pure parsers for BS-80K folder names, label files, Pascal-VOC XML and image headers.

Bad input never raises: it becomes a `ParseError` whose `reason` is `"code: detail"` (`bad_label`, …).
VOC's 1-based inclusive corners become 0-based boxes, x2/y2 exclusive, once: x1 = xmin - 1, x2 = xmax.
"""

from __future__ import annotations

import math
import re
import struct
import xml.etree.ElementTree as StdElementTree
from dataclasses import dataclass

import defusedxml
import defusedxml.ElementTree as SafeElementTree

SIDED_PARTS = ("ankle", "chest", "elbow", "knee", "sho")  # BS-80K region folders with L/R
UNSIDED_PARTS = ("head", "pelvis", "vertbra", "wholeBody")  # BS-80K folders without a side
VIEWS = ("ANT", "POST")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BOX_CLASSES = {"normal": "Normal", "abnormal": "Abnormal"}  # BS-80K VOC object names
STAGE = "index"

# Parts are listed explicitly, so a part ending in L/R can never swallow the side (the original greedy regex did).
_FOLDER_RE = re.compile(
    rf"^(?:(?P<sided>{'|'.join(SIDED_PARTS)})(?P<side>[LR])|(?P<unsided>{'|'.join(UNSIDED_PARTS)}))"
    rf"(?P<view>{'|'.join(VIEWS)})$"
)
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DataError(ValueError):
    """Invalid input data that cannot be turned into error rows (e.g. a missing data root)."""


@dataclass(frozen=True)
class FolderInfo:
    """One BS-80K folder name split into body part, side ("L"/"R"/None) and view ("ANT"/"POST")."""

    folder: str
    part: str
    side: str | None
    view: str


@dataclass(frozen=True)
class LabelLine:
    """One accepted label-file line; `line` is the 1-based physical line number."""

    filename: str
    label: int
    line: int


@dataclass(frozen=True)
class ParseError:
    """One error row: where (file, 1-based line or None), which stage, and `code: detail`."""

    file: str
    line: int | None
    stage: str
    reason: str
    image_id: str | None = None

    @property
    def code(self) -> str:
        """Returns the machine-friendly reason code, e.g. "bad_label"."""
        return self.reason.split(":", 1)[0]

    @property
    def message(self) -> str:
        """Returns the human message `"{file}:{line}: {reason}"`."""
        return f"{self.file}{'' if self.line is None else f':{self.line}'}: {self.reason}"


@dataclass(frozen=True)
class VocBox:
    """One ground-truth box in original-image pixels, 0-based, x2/y2 exclusive; `repaired` says how."""

    cls: str
    x1: int
    y1: int
    x2: int
    y2: int
    repaired: str | None


def parse_folder_name(name: str) -> FolderInfo | None:
    """Returns kneeLANT -> (knee, L, ANT), wholeBodyANT -> (wholeBody, None, ANT); None if not one of the 28."""
    match = _FOLDER_RE.match(name)
    if match is None:
        return None
    part = match["sided"] or match["unsided"]
    return FolderInfo(folder=name, part=part, side=match["side"], view=match["view"])


def parse_label_file(text: str, file: str, folder: str | None = None) -> tuple[list[LabelLine], list[ParseError]]:
    """Returns the accepted `filename<whitespace>label` lines and one error per other non-blank line.

    Accepts a UTF-8 BOM, CRLF/CR/LF, runs of spaces/tabs and trailing whitespace; blank lines are
    skipped silently; of duplicated filenames the first good line wins. `file` names the error rows;
    with `folder`, errors whose filename is safe get `image_id = f"{folder}/{filename}"`.
    """
    kept: list[LabelLine] = []
    errors: list[ParseError] = []
    first_seen: dict[str, LabelLine] = {}
    for number, raw in enumerate(_LINE_BREAK_RE.split(text), start=1):
        tokens = raw.lstrip("\ufeff").split()
        if not tokens:
            continue
        filename = tokens[0]
        reason = _label_tokens_problem(tokens)
        if reason is None:
            label = int(tokens[1])
            earlier = first_seen.get(filename)
            if earlier is None:
                first_seen[filename] = LabelLine(filename=filename, label=label, line=number)
                kept.append(first_seen[filename])
                continue
            reason = _duplicate_reason(filename, label, earlier)
        is_named = folder is not None and not reason.startswith("unsafe_path")
        image_id = f"{folder}/{filename}" if is_named else None
        errors.append(ParseError(file=file, line=number, stage=STAGE, reason=reason, image_id=image_id))
    return kept, errors


def unsafe_filename_problem(filename: str) -> str | None:
    """Returns why a listed filename could escape its folder, or None when it is a plain name."""
    if filename.startswith(("/", "\\")):
        return "is absolute"
    if ".." in filename:
        return "contains '..'"
    if "/" in filename or "\\" in filename:
        return "contains a path separator"
    if _DRIVE_RE.match(filename):
        return "starts with a drive letter"
    if any(ord(char) < 32 or ord(char) == 127 for char in filename):
        return "contains a control character"
    return None


def _label_tokens_problem(tokens: list[str]) -> str | None:
    """Returns the `code: detail` reason for one non-blank label line, or None when it is good."""
    filename = tokens[0]
    unsafe = unsafe_filename_problem(filename)
    if unsafe is not None:
        return f"unsafe_path: {filename!r} {unsafe}; never opened"
    if len(tokens) == 1:
        return f"missing_label: {filename!r} has no label (expected 'filename<TAB>0|1')"
    if len(tokens) > 2:
        return f"extra_tokens: expected 'filename label', got {len(tokens)} tokens {tokens!r}"
    if not filename.lower().endswith(IMAGE_EXTENSIONS):
        return f"bad_extension: {filename!r} does not end in one of {', '.join(IMAGE_EXTENSIONS)}"
    if tokens[1] not in ("0", "1"):
        return f"bad_label: {tokens[1]!r} not in {{0,1}}"
    return None


def _duplicate_reason(filename: str, label: int, earlier: LabelLine) -> str:
    """Returns the duplicate_line reason, saying whether the labels agree or conflict."""
    agreement = "the same label" if label == earlier.label else f"conflicting label {earlier.label} vs {label}"
    return f"duplicate_line: {filename!r} already on line {earlier.line} with {agreement}; kept line {earlier.line}"


def parse_voc_xml(
    data: bytes, file: str, image_w: int | None, image_h: int | None
) -> tuple[list[VocBox], list[ParseError], tuple[int, int] | None]:
    """Returns the XML's boxes (0-based, x2/y2 exclusive), its error rows and its declared (w, h).

    DTDs/entities are refused (`unsafe_xml`) before any expansion. Boxes are clipped to (image_w, image_h)
    when both are given, else to a valid <size>.
    """
    root, document_error = _parse_xml_root(data)
    if root is None:
        return [], [_xml_error(file, document_error)], None
    xml_size = _voc_size(root)
    size = (image_w, image_h) if image_w and image_h else xml_size
    objects = root.findall("object")
    if not objects:
        return [], [_xml_error(file, "no_objects: <annotation> has no <object>")], xml_size
    boxes: list[VocBox] = []
    errors: list[ParseError] = []
    for position, obj in enumerate(objects, start=1):
        box, code, detail = _parse_voc_object(obj, size)
        if box is None:
            errors.append(_xml_error(file, f"{code}: object {position}: {detail}"))
        else:
            boxes.append(box)
    return boxes, errors, xml_size


def _xml_error(file: str, reason: str) -> ParseError:
    """Returns an XML error row; XML rows carry no line so that line-bearing rows are label lines."""
    return ParseError(file=file, line=None, stage=STAGE, reason=reason)


def _parse_xml_root(data: bytes) -> tuple[StdElementTree.Element | None, str]:
    """Returns the <annotation> root, or None and the `unsafe_xml`/`malformed_xml` reason."""
    try:
        root = SafeElementTree.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        return None, f"unsafe_xml: {type(exc).__name__} refused (DTDs and entities are not allowed)"
    except (StdElementTree.ParseError, ValueError, LookupError) as exc:
        return None, f"malformed_xml: {exc}"
    if root.tag != "annotation":
        return None, f"malformed_xml: root element <{root.tag}> is not <annotation>"
    return root, ""


def _voc_size(root: StdElementTree.Element) -> tuple[int, int] | None:
    """Returns the positive integer (width, height) from <size>, or None."""
    width, _ = _parse_coordinate(root.findtext("size/width"))
    height, _ = _parse_coordinate(root.findtext("size/height"))
    return (width, height) if (width or 0) > 0 and (height or 0) > 0 else None


def _parse_voc_object(obj: StdElementTree.Element, size: tuple[int, int] | None) -> tuple[VocBox | None, str, str]:
    """Returns the object's box, or None with an error code and detail."""
    name = (obj.findtext("name") or "").strip()
    cls = BOX_CLASSES.get(name.lower())
    if cls is None:
        return None, "bad_class", f"{name!r} not in {{Normal, Abnormal}}"
    corners: list[int] = []
    repairs: list[str] = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = obj.findtext(f"bndbox/{tag}")
        value, is_rounded = _parse_coordinate(text)
        if value is None:
            return None, "bad_box", f"<{tag}> {text!r} is not an integer"
        corners.append(value)
        if is_rounded and "rounded" not in repairs:
            repairs.append("rounded")
    return _convert_voc_corners(cls, corners, size, repairs)


def _parse_coordinate(text: str | None) -> tuple[int | None, bool]:
    """Returns (integer value, was_rounded); floats such as "12.0" or "12.6" are rounded half up."""
    text = (text or "").strip()
    if _INT_RE.match(text):
        return int(text), False
    if _FLOAT_RE.match(text):
        value = float(text)
        if math.isfinite(value):
            return math.floor(value + 0.5), True
    return None, False


def _convert_voc_corners(
    cls: str, corners: list[int], size: tuple[int, int] | None, repairs: list[str]
) -> tuple[VocBox | None, str, str]:
    """Returns the 0-based x2/y2-exclusive box after swap and clip repairs, or a box_outside_image error."""
    xmin, ymin, xmax, ymax = corners
    if xmin > xmax:
        xmin, xmax = xmax, xmin
        repairs.append("swapped_x")
    if ymin > ymax:
        ymin, ymax = ymax, ymin
        repairs.append("swapped_y")
    x1, y1, x2, y2 = xmin - 1, ymin - 1, xmax, ymax  # VOC: 1-based inclusive -> 0-based exclusive
    width, height = size if size is not None else (x2, y2)  # no size known: clip only at 0
    clipped = (max(x1, 0), max(y1, 0), min(x2, width), min(y2, height))
    if clipped != (x1, y1, x2, y2):
        repairs.append("clipped")
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        frame = "unknown-size image" if size is None else f"{width}x{height} image"
        return None, "box_outside_image", f"box ({x1}, {y1}, {x2}, {y2}) is empty inside the {frame}"
    return VocBox(cls, *clipped, repaired=",".join(repairs) or None), "", ""


def parse_image_size(header: bytes) -> tuple[int, int] | None:
    """Returns (width, height) from a JPEG's first SOFn segment or a PNG's IHDR, or None if not in `header`."""
    if header.startswith(_PNG_SIGNATURE) and header[12:16] == b"IHDR" and len(header) >= 24:
        width, height = struct.unpack(">II", header[16:24])
        return (width, height) if width and height else None
    if not header.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(header):
        if header[offset] != 0xFF:
            return None
        marker = header[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            offset += 2
            continue
        if marker in _JPEG_SOF_MARKERS and offset + 9 <= len(header):
            height, width = struct.unpack(">HH", header[offset + 5 : offset + 9])
            return (width, height) if width and height else None
        if marker in (0xD9, 0xDA) or marker in _JPEG_SOF_MARKERS:  # EOI/SOS before SOF, or truncated SOF
            return None
        offset += 2 + struct.unpack(">H", header[offset + 2 : offset + 4])[0]
    return None
