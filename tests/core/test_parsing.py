"""Folder names, label files, Pascal-VOC XML and image headers: pure parsers, bad input as error rows."""

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.parsing import (
    FolderInfo,
    LabelLine,
    VocBox,
    parse_folder_name,
    parse_image_size,
    parse_label_file,
    parse_voc_xml,
)

VIEWS = ("ANT", "POST")
SIDED_FOLDERS = [
    (f"{p}{s}{v}", p, s, v) for p in ("ankle", "chest", "elbow", "knee", "sho") for s in "LR" for v in VIEWS
]
UNSIDED_FOLDERS = [(f"{p}{v}", p, None, v) for p in ("head", "pelvis", "vertbra", "wholeBody") for v in VIEWS]
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<annotation><object><name>&lol9;</name></object></annotation>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotation><object><name>&xxe;</name></object></annotation>"""


def voc(objects: list[tuple], size: tuple[int, int] | None = (256, 1024)) -> bytes:
    """Returns a VOC XML document; objects are (name, xmin, ymin, xmax, ymax) with any value types."""
    size_xml = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    parts = [
        f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        "</bndbox></object>"
        for name, x1, y1, x2, y2 in objects
    ]
    return f"<annotation><filename>1.jpg</filename>{size_xml}{''.join(parts)}</annotation>".encode()


def codes(errors: list) -> list[str]:
    """Returns the reason codes of error rows."""
    return [error.code for error in errors]


def test_all_28_bs80k_folder_names_parse_into_part_side_and_view():
    folders = SIDED_FOLDERS + UNSIDED_FOLDERS
    assert len(folders) == 28
    for name, part, side, view in folders:
        assert parse_folder_name(name) == FolderInfo(folder=name, part=part, side=side, view=view)


def test_knee_left_anterior_keeps_its_side_unlike_the_seeds_greedy_regex():
    assert parse_folder_name("kneeLANT") == FolderInfo("kneeLANT", "knee", "L", "ANT")
    assert parse_folder_name("wholeBodyPOST") == FolderInfo("wholeBodyPOST", "wholeBody", None, "POST")
    assert parse_folder_name("headANT") == FolderInfo("headANT", "head", None, "ANT")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "knee",
        "kneeANT",
        "headLANT",
        "wholeBodyLPOST",
        "kneeLant",
        "kneeLANTx",
        "KNEELANT",
        "wholebodyANT",
        "kneeXANT",
        "fooANT",
        " kneeLANT",
        "kneeLANT/",
        "shoulderLANT",
        "ant",
        "post",
        "__MACOSX",
    ],
)
def test_folder_names_outside_the_28_are_unknown(name):
    assert parse_folder_name(name) is None


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("3.jpg\t2", "bad_label"),
        ("3.jpg\t-1", "bad_label"),
        ("3.jpg\tyes", "bad_label"),
        ("3.jpg\t1.0", "bad_label"),
        ("3.jpg", "missing_label"),
        ("3.jpg\t1\textra", "extra_tokens"),
        ("3 copy.jpg\t1", "extra_tokens"),
        ("../3.jpg\t1", "unsafe_path"),
        ("/etc/passwd\t0", "unsafe_path"),
        ("sub/3.jpg\t1", "unsafe_path"),
        ("sub\\3.jpg\t1", "unsafe_path"),
        ("C:3.jpg\t0", "unsafe_path"),
        ("..\t0", "unsafe_path"),
        ("a..jpg\t0", "unsafe_path"),
        ("\\\\server\\3.jpg\t0", "unsafe_path"),
        ("3.jpg\x00\t0", "unsafe_path"),
        ("3.gif\t1", "bad_extension"),
        ("3\t1", "bad_extension"),
        ("3.jpg.txt\t0", "bad_extension"),
    ],
)
def test_each_bad_label_line_is_one_error_row_and_the_good_lines_are_kept(line, code):
    kept, errors = parse_label_file(f"1.jpg\t0\n{line}\n2.jpg\t1\n", "F/F.txt")
    assert kept == [LabelLine("1.jpg", 0, 1), LabelLine("2.jpg", 1, 3)]
    assert [(error.file, error.line, error.stage, error.code) for error in errors] == [("F/F.txt", 2, "index", code)]


def test_bad_label_reason_names_the_value_and_the_allowed_set():
    _, errors = parse_label_file("3.jpg\t2\n", "F/F.txt")
    assert errors[0].reason == "bad_label: '2' not in {0,1}"
    assert errors[0].message == "F/F.txt:1: bad_label: '2' not in {0,1}"


def test_unsafe_filenames_get_no_image_id_while_other_errors_name_the_image():
    _, errors = parse_label_file("../x.jpg\t0\n3.jpg\t7\n", "F/F.txt", folder="F")
    assert [(error.code, error.image_id) for error in errors] == [("unsafe_path", None), ("bad_label", "F/3.jpg")]


@pytest.mark.parametrize("line", ["3.JPG\t1", "3.jpeg 1", "3.PNG    1   ", " 3.jpg \t 1\t", "3.Jpeg\t\t1"])
def test_extension_case_runs_of_spaces_tabs_and_trailing_whitespace_are_accepted(line):
    kept, errors = parse_label_file(line, "F/F.txt")
    assert errors == []
    assert kept == [LabelLine(line.split()[0], 1, 1)]


def test_duplicated_filenames_keep_the_first_line_and_say_whether_labels_conflict():
    kept, errors = parse_label_file("1.jpg\t0\n1.jpg\t0\n2.jpg\t1\n1.jpg\t1\n", "F/F.txt")
    assert kept == [LabelLine("1.jpg", 0, 1), LabelLine("2.jpg", 1, 3)]
    assert [(error.line, error.code) for error in errors] == [(2, "duplicate_line"), (4, "duplicate_line")]
    assert "already on line 1 with the same label" in errors[0].reason
    assert "conflicting label 0 vs 1" in errors[1].reason


def test_a_bad_first_line_does_not_claim_the_filename():
    kept, errors = parse_label_file("1.jpg\t9\n1.jpg\t1\n", "F/F.txt")
    assert kept == [LabelLine("1.jpg", 1, 2)]
    assert codes(errors) == ["bad_label"]


def test_blank_and_whitespace_only_lines_are_skipped_but_keep_physical_line_numbers():
    kept, errors = parse_label_file("\n1.jpg\t0\n   \n\t\n2.jpg\t1\n\n", "F/F.txt")
    assert errors == []
    assert kept == [LabelLine("1.jpg", 0, 2), LabelLine("2.jpg", 1, 5)]


@pytest.mark.parametrize("ending", ["\r\n", "\r", "\n"])
def test_bom_and_any_line_ending_parse_the_same_as_a_clean_file(ending):
    clean = parse_label_file("1.jpg\t0\n2.jpg\t1\n3.jpg\t2\n", "F/F.txt")
    messy = parse_label_file("\ufeff" + ending.join(["1.jpg\t0", "2.jpg  1 ", "3.jpg\t2", ""]), "F/F.txt")
    assert messy == clean
    assert clean[0][0].filename == "1.jpg"


names = st.from_regex(r"[0-9A-Za-z_-]{1,12}", fullmatch=True)
extensions = st.sampled_from([".jpg", ".JPG", ".jpeg", ".png", ".PNG"])
valid_lines = st.lists(
    st.tuples(names, extensions, st.sampled_from([0, 1])), max_size=30, unique_by=lambda t: t[0] + t[1]
)


@given(
    lines=valid_lines,
    separators=st.lists(st.sampled_from(["\t", " ", "   ", "\t\t", " \t "]), min_size=30, max_size=30),
    trailing=st.lists(st.sampled_from(["", " ", "\t", "  \t"]), min_size=30, max_size=30),
    endings=st.lists(st.sampled_from(["\n", "\r\n", "\r", "\n\n", "\r\n \r\n"]), min_size=30, max_size=30),
    has_bom=st.booleans(),
)
def test_any_whitespace_and_line_endings_keep_every_valid_line(lines, separators, trailing, endings, has_bom):
    text = "\ufeff" if has_bom else ""
    for i, (stem, extension, label) in enumerate(lines):
        text += f"{stem}{extension}{separators[i]}{label}{trailing[i]}{endings[i]}"
    kept, errors = parse_label_file(text, "F/F.txt")
    assert errors == []
    assert [(line.filename, line.label) for line in kept] == [(s + e, label) for s, e, label in lines]
    assert [line.line for line in kept] == sorted({line.line for line in kept})


def test_voc_one_based_inclusive_corners_become_zero_based_exclusive_boxes():
    boxes, errors, size = parse_voc_xml(voc([("Abnormal", 1, 1, 10, 20), ("Normal", 5, 6, 5, 6)]), "a.xml", None, None)
    assert errors == []
    assert size == (256, 1024)
    assert boxes == [VocBox("Abnormal", 0, 0, 10, 20, None), VocBox("Normal", 4, 5, 5, 6, None)]


def test_voc_class_names_are_case_insensitive_and_normalised():
    boxes, errors, _ = parse_voc_xml(voc([("abnormal", 1, 1, 2, 2), (" NORMAL ", 1, 1, 2, 2)]), "a.xml", None, None)
    assert errors == []
    assert [box.cls for box in boxes] == ["Abnormal", "Normal"]


def test_voc_swapped_corners_are_repaired_and_said_so():
    boxes, _, _ = parse_voc_xml(voc([("Normal", 10, 1, 1, 20), ("Normal", 10, 20, 1, 1)]), "a.xml", None, None)
    assert boxes == [VocBox("Normal", 0, 0, 10, 20, "swapped_x"), VocBox("Normal", 0, 0, 10, 20, "swapped_x,swapped_y")]


def test_voc_boxes_are_clipped_to_the_given_image_size_before_the_xml_size():
    xml = voc([("Normal", 0, 5, 300, 50), ("Normal", 1, 1, 10, 10)])
    boxes, errors, size = parse_voc_xml(xml, "a.xml", 100, 40)
    assert errors == []
    assert size == (256, 1024)
    assert boxes == [VocBox("Normal", 0, 4, 100, 40, "clipped"), VocBox("Normal", 0, 0, 10, 10, None)]
    boxes, _, _ = parse_voc_xml(xml, "a.xml", None, None)
    assert boxes[0] == VocBox("Normal", 0, 4, 256, 50, "clipped")


def test_voc_without_any_size_is_clipped_only_at_zero():
    boxes, errors, size = parse_voc_xml(voc([("Normal", -5, 1, 5000, 9000)], size=None), "a.xml", None, None)
    assert (errors, size) == ([], None)
    assert boxes == [VocBox("Normal", 0, 0, 5000, 9000, "clipped")]


def test_voc_box_entirely_outside_the_image_is_an_error_and_dropped():
    xml = voc([("Normal", 300, 1, 400, 10), ("Abnormal", 1, 1, 4, 4), ("Normal", 1, 1025, 5, 1030)])
    boxes, errors, _ = parse_voc_xml(xml, "a.xml", None, None)
    assert boxes == [VocBox("Abnormal", 0, 0, 4, 4, None)]
    assert codes(errors) == ["box_outside_image", "box_outside_image"]
    assert errors[0].reason == "box_outside_image: object 1: box (299, 0, 400, 10) is empty inside the 256x1024 image"
    assert (errors[0].file, errors[0].line, errors[0].stage) == ("a.xml", None, "index")


def test_voc_float_coordinates_are_rounded_and_other_text_is_a_bad_box():
    xml = voc([("Normal", "12.0", "1.6", " 20 ", "30.4"), ("Normal", "abc", 1, 2, 2), ("Normal", "nan", 1, 2, 2)])
    boxes, errors, _ = parse_voc_xml(xml, "a.xml", None, None)
    assert boxes == [VocBox("Normal", 11, 1, 20, 30, "rounded")]
    assert codes(errors) == ["bad_box", "bad_box"]
    no_bndbox = b"<annotation><object><name>Normal</name></object></annotation>"
    assert codes(parse_voc_xml(no_bndbox, "a.xml", None, None)[1]) == ["bad_box"]


def test_voc_unknown_class_is_an_error_and_the_other_boxes_are_kept():
    boxes, errors, _ = parse_voc_xml(voc([("Tumor", 1, 1, 2, 2), ("Abnormal", 1, 1, 2, 2)]), "a.xml", None, None)
    assert [box.cls for box in boxes] == ["Abnormal"]
    assert [error.reason for error in errors] == ["bad_class: object 1: 'Tumor' not in {Normal, Abnormal}"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"<annotation><object>", "malformed_xml"),
        (b"", "malformed_xml"),
        (b"\x89PNG garbage", "malformed_xml"),
        (b"<html><object/></html>", "malformed_xml"),
        (voc([]), "no_objects"),
        (EXTERNAL_ENTITY, "unsafe_xml"),
        (b'<!DOCTYPE annotation SYSTEM "http://example.com/x.dtd"><annotation/>', "unsafe_xml"),
    ],
)
def test_broken_xml_documents_give_one_error_row_and_no_boxes(data, code):
    boxes, errors, _ = parse_voc_xml(data, "a.xml", 256, 1024)
    assert boxes == []
    assert codes(errors) == [code]


@pytest.mark.timeout(10)
def test_billion_laughs_payload_is_refused_as_unsafe_xml_without_expanding():
    boxes, errors, size = parse_voc_xml(BILLION_LAUGHS, "a.xml", None, None)
    assert (boxes, size) == ([], None)
    assert codes(errors) == ["unsafe_xml"]


@pytest.mark.parametrize(
    ("extension", "params"), [(".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".png", [])]
)
def test_image_size_is_read_from_the_jpeg_or_png_header(extension, params):
    data = cv2.imencode(extension, np.zeros((64, 16), np.uint8), params)[1].tobytes()
    assert parse_image_size(data) == (16, 64)
    assert parse_image_size(data[:2]) is None


def test_image_size_skips_app_segments_before_the_frame_header():
    data = cv2.imencode(".jpg", np.zeros((1024, 256), np.uint8))[1].tobytes()
    app1 = b"\xff\xe1" + (5002).to_bytes(2, "big") + b"\x00" * 5000
    assert parse_image_size(data[:2] + app1 + data[2:]) == (256, 1024)
    assert parse_image_size(data[:2] + app1) is None
    assert parse_image_size(b"not an image") is None
