"""build_index on hand-made messy data roots: accounting, every error reason, determinism, path safety."""

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from engine.core.parsing import DataError
from engine.io.index_tables import ERROR_COLUMNS, GT_BOX_COLUMNS, INDEX_COLUMNS
from engine.io.indexing import build_index

ANT_TXT = "wholeBodyANT/wholeBodyANT.txt"
OPENED: list[str] = []  # paths opened or listed while `record_file_access` is active
_RECORDING = [False]


def _audit(event: str, args: tuple) -> None:
    is_path = bool(args) and isinstance(args[0], str | bytes | os.PathLike)
    if _RECORDING[0] and event in ("open", "os.scandir", "os.listdir") and is_path:
        OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # observes the real calls; nothing is replaced


@dataclass(frozen=True)
class Link:
    """A symlink to create in a data root."""

    target: Path


def jpeg(width: int = 32, height: int = 128) -> bytes:
    """Returns a real JPEG of the given size (whole-body images are scaled down for speed)."""
    return cv2.imencode(".jpg", np.zeros((height, width), np.uint8))[1].tobytes()


def voc(*objects: tuple[str, int, int, int, int]) -> bytes:
    """Returns a VOC XML that declares the BS-80K whole-body size, 256 x 1024."""
    boxes = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox>"
        "</object>"
        for n, a, b, c, d in objects
    )
    return f"<annotation><size><width>256</width><height>1024</height></size>{boxes}</annotation>".encode()


def messy_files(outside: Path) -> dict[str, bytes | Link]:
    """Returns relative path -> content of a data root holding every mess case once."""
    ant_lines = [
        "1.jpg\t1",
        "2.jpg   0",
        "",
        "3.jpg\t1",
        "4.jpg\t0 ",
        "5.jpg\t2",
        "6.jpg",
        "7.jpg\t0\tx",
        "1.jpg\t0",
        "8.jpg\t0",
        "../outside.jpg\t0",
        "/etc/passwd\t0",
        "notes.txt\t0",
        "11.jpg\t0",
        "12.jpg\t0",
        "13.jpg\t0",
        "14.jpg\t0",
        "15.jpg\t0",
    ]
    files: dict[str, bytes | Link] = {"wholeBodyANT/wholeBodyANT.txt": ("\ufeff" + "\r\n".join(ant_lines)).encode()}
    for stem in (1, 2, 3, 4, 5, 6, 7, 10, 12, 13, 14, 15):
        files[f"wholeBodyANT/{stem}.jpg"] = jpeg()
    files.update(
        {
            "wholeBodyANT/11.jpg": Link(outside / "secret.jpg"),
            "wholeBodyANT/readme.md": b"not an image",
            "wholeBodyANT/ant/1.xml": voc(("Abnormal", 2, 3, 10, 20), ("Normal", 1, 1, 4, 4)),
            "wholeBodyANT/ant/2.xml": voc(("Normal", 1, 1, 5, 5)),
            "wholeBodyANT/ant/3.xml": voc(("Normal", 1, 1, 5, 5)),
            "wholeBodyANT/ant/4.xml": b"<annotation><object>",
            "wholeBodyANT/ant/7.xml": voc(("Normal", 1, 1, 5, 5)),
            "wholeBodyANT/ant/13.xml": voc(("Normal", 100, 1, 120, 9), ("Normal", 1, 1, 5, 5)),
            "wholeBodyANT/ant/14.xml": b'<!DOCTYPE a [<!ENTITY x "&x;">]><annotation>&x;</annotation>',
            "wholeBodyANT/ant/15.xml": Link(outside / "secret.xml"),
            "outside.jpg": jpeg(),
            "wholeBodyPOST/wholeBodyPOST.txt": b"1.jpg\t1\n2.jpg\t0\n",
            "wholeBodyPOST/1.jpg": jpeg(),
            "wholeBodyPOST/2.jpg": b"not a jpeg",
            "wholeBodyPOST/post/1.xml": voc(("Abnormal", 5, 5, 200, 50)),
            "wholeBodyPOST/post/2.xml": voc(("Normal", 200, 1, 300, 9)),
            "kneeLANT/kneeLANT.txt": b"2.jpg\t1\n1.jpg\t0\n",
            "kneeLANT/1.jpg": jpeg(8, 8),
            "kneeLANT/2.JPG": jpeg(8, 8),
            "kneeLANT/2.jpg": jpeg(8, 8),
            "headPOST/1.jpg": jpeg(8, 8),
            "randomFolder/x.jpg": jpeg(8, 8),
            "pelvisANT": Link(outside / "pelvisANT"),
            "README.md": b"a file at the top is ignored",
        }
    )
    return files


def build_root(root: Path, files: dict[str, bytes | Link], seed: int) -> Path:
    """Writes `files` under root in a seeded random order; returns root."""
    items = list(files.items())
    random.Random(seed).shuffle(items)
    for relative, content in items:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            path.symlink_to(content.target)
        else:
            path.write_bytes(content)
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside every data root, with files a malicious root could point at."""
    folder = tmp_path / "outside"
    (folder / "pelvisANT").mkdir(parents=True)
    (folder / "pelvisANT" / "pelvisANT.txt").write_text("1.jpg\t0\n")
    (folder / "pelvisANT" / "1.jpg").write_bytes(jpeg(8, 8))
    (folder / "secret.jpg").write_bytes(jpeg())
    (folder / "secret.xml").write_bytes(voc(("Abnormal", 1, 1, 5, 5)))
    return folder


@pytest.fixture
def messy(tmp_path: Path, outside: Path) -> Path:
    """A data root with every mess case, written in one shuffled order."""
    return build_root(tmp_path / "root", messy_files(outside), seed=0)


def error_keys(errors: pd.DataFrame) -> list[tuple]:
    """Returns (file, line or None, image_id or None, reason code) per error row."""
    return [
        (
            row.file,
            None if pd.isna(row.line) else int(row.line),
            None if pd.isna(row.image_id) else row.image_id,
            row.reason.split(":")[0],
        )
        for row in errors.itertuples()
    ]


def test_every_mess_case_ends_in_its_error_reason_and_nothing_else_is_lost(messy):
    result = build_index(messy)
    assert sorted(error_keys(result.errors), key=str) == sorted(
        [
            (ANT_TXT, 6, "wholeBodyANT/5.jpg", "bad_label"),
            (ANT_TXT, 7, "wholeBodyANT/6.jpg", "missing_label"),
            (ANT_TXT, 8, "wholeBodyANT/7.jpg", "extra_tokens"),
            (ANT_TXT, 9, "wholeBodyANT/1.jpg", "duplicate_line"),
            (ANT_TXT, 10, "wholeBodyANT/8.jpg", "missing_file"),
            (ANT_TXT, 11, None, "unsafe_path"),
            (ANT_TXT, 12, None, "unsafe_path"),
            (ANT_TXT, 13, "wholeBodyANT/notes.txt", "bad_extension"),
            (ANT_TXT, 14, "wholeBodyANT/11.jpg", "unsafe_path"),
            ("wholeBodyANT/10.jpg", None, "wholeBodyANT/10.jpg", "unlisted_file"),
            ("wholeBodyANT/ant/3.xml", None, "wholeBodyANT/3.jpg", "label_box_mismatch"),
            ("wholeBodyANT/ant/4.xml", None, "wholeBodyANT/4.jpg", "malformed_xml"),
            ("wholeBodyANT/ant/13.xml", None, "wholeBodyANT/13.jpg", "box_outside_image"),
            ("wholeBodyANT/ant/14.xml", None, "wholeBodyANT/14.jpg", "unsafe_xml"),
            ("wholeBodyANT/ant/15.xml", None, "wholeBodyANT/15.jpg", "unsafe_path"),
            ("kneeLANT/2.JPG", None, "kneeLANT/2.JPG", "unlisted_file"),
            ("headPOST/headPOST.txt", None, None, "missing_label_file"),
            ("randomFolder", None, None, "unknown_folder"),
            ("pelvisANT", None, None, "unsafe_path"),
        ],
        key=str,
    )
    assert set(result.errors["stage"]) == {"index"}
    assert result.lines_listed == 17 + 2 + 2
    assert result.lines_listed == len(result.index) + int(result.errors["line"].notna().sum())


def test_index_rows_are_sorted_numerically_and_carry_labels_views_and_xml_flags(messy):
    index = build_index(messy).index
    ant = index[index["folder"] == "wholeBodyANT"]
    assert list(index["image_id"]) == ["kneeLANT/1.jpg", "kneeLANT/2.jpg"] + [
        f"wholeBodyANT/{n}.jpg" for n in (1, 2, 3, 4, 12, 13, 14, 15)
    ] + ["wholeBodyPOST/1.jpg", "wholeBodyPOST/2.jpg"]
    assert list(ant["label"]) == [1, 0, 1, 0, 0, 0, 0, 0]
    assert list(ant["line"]) == [1, 2, 4, 5, 15, 16, 17, 18]
    assert list(ant["has_xml"]) == [True, True, True, True, False, True, True, False]
    assert ant["xml_path"].iloc[0] == "wholeBodyANT/ant/1.xml"
    assert ant["xml_path"].isna().tolist() == [False, False, False, False, True, False, False, True]
    knee = index[index["folder"] == "kneeLANT"].iloc[1]
    assert (knee.part, knee.side, knee.view, knee.patient_id, knee.path, knee.label) == (
        "knee",
        "L",
        "ANT",
        "2",
        "kneeLANT/2.jpg",
        1,
    )
    assert (knee.is_whole_body, knee.has_xml, pd.isna(knee.xml_path)) == (False, False, True)
    assert (index["side"].isna().sum(), index["is_whole_body"].sum()) == (10, 10)


def test_gt_boxes_are_zero_based_exclusive_and_clipped_to_the_real_image_size(messy):
    boxes = build_index(messy).gt_boxes
    rows = [(r.image_id, r.view, r.patient_id, r.cls, r.x1, r.y1, r.x2, r.y2, r.repaired) for r in boxes.itertuples()]
    rows = [row[:-1] + (None if pd.isna(row[-1]) else row[-1],) for row in rows]
    assert rows == [
        ("wholeBodyANT/1.jpg", "ANT", "1", "Abnormal", 1, 2, 10, 20, None),
        ("wholeBodyANT/1.jpg", "ANT", "1", "Normal", 0, 0, 4, 4, None),
        ("wholeBodyANT/2.jpg", "ANT", "2", "Normal", 0, 0, 5, 5, None),
        ("wholeBodyANT/3.jpg", "ANT", "3", "Normal", 0, 0, 5, 5, None),
        ("wholeBodyANT/13.jpg", "ANT", "13", "Normal", 0, 0, 5, 5, None),
        ("wholeBodyPOST/1.jpg", "POST", "1", "Abnormal", 4, 4, 32, 50, "clipped"),  # the JPEG is 32 px wide
        ("wholeBodyPOST/2.jpg", "POST", "2", "Normal", 199, 0, 256, 9, "clipped"),  # unreadable: XML's 256 px
    ]  # 13.xml's box at x 99..120 lies outside the 32-px image and is an error row instead


def test_frames_have_exactly_the_documented_columns_and_dtypes_even_when_empty(messy, tmp_path):
    for result in (build_index(messy), build_index(tmp_path / "outside" / "pelvisANT")):
        for frame, columns in (
            (result.index, INDEX_COLUMNS),
            (result.gt_boxes, GT_BOX_COLUMNS),
            (result.errors, ERROR_COLUMNS),
        ):
            assert list(frame.columns) == list(columns)
            assert [str(dtype) for dtype in frame.dtypes] == list(columns.values())
    assert list(INDEX_COLUMNS.values()) == [
        "str",
        "str",
        "str",
        "str",
        "str",
        "str",
        "str",
        "Int8",
        "bool",
        "bool",
        "str",
        "Int32",
        "Float32",
        "Float32",
        "str",
    ]
    assert list(ERROR_COLUMNS.values()) == ["str", "Int32", "str", "str", "str"]


def test_creation_order_does_not_change_any_frame(tmp_path, outside):
    first = build_index(build_root(tmp_path / "a", messy_files(outside), seed=1))
    for seed in (2, 3):
        other = build_index(build_root(tmp_path / f"r{seed}", messy_files(outside), seed=seed))
        pd.testing.assert_frame_equal(first.index, other.index)
        pd.testing.assert_frame_equal(first.gt_boxes, other.gt_boxes)
        pd.testing.assert_frame_equal(first.errors, other.errors)
        assert first.lines_listed == other.lines_listed


def test_paths_outside_the_data_root_are_never_opened_or_listed(messy, outside):
    OPENED.clear()
    _RECORDING[0] = True
    try:
        result = build_index(messy)
    finally:
        _RECORDING[0] = False
    assert len(result.index) == 12
    root = messy.resolve()
    assert any(Path(path).name == "1.xml" for path in OPENED)  # the hook does see the index's reads
    assert [path for path in OPENED if not Path(path).resolve().is_relative_to(root)] == []
    assert not any(Path(path).name in ("passwd", "outside.jpg", "secret.jpg", "secret.xml") for path in OPENED)


def test_a_missing_data_root_raises_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nowhere: data root is not a directory"):
        build_index(tmp_path / "nowhere")


def test_non_utf8_label_file_and_escaping_xml_folder_are_reported_and_the_rest_indexed(tmp_path, outside):
    (outside / "post").mkdir()
    (outside / "post" / "1.xml").write_bytes(voc(("Abnormal", 1, 1, 5, 5)))
    files = {
        "wholeBodyPOST/wholeBodyPOST.txt": b"1.jpg\t1\n\xff2.jpg\t0\n",
        "wholeBodyPOST/1.jpg": jpeg(),
        "wholeBodyPOST/post": Link(outside / "post"),
    }
    result = build_index(build_root(tmp_path / "root", files, seed=0))
    assert error_keys(result.errors) == [
        ("wholeBodyPOST/post", None, None, "unsafe_path"),
        ("wholeBodyPOST/wholeBodyPOST.txt", None, None, "bad_encoding"),
        ("wholeBodyPOST/wholeBodyPOST.txt", 2, "wholeBodyPOST/\ufffd2.jpg", "missing_file"),
    ]
    assert list(result.index["has_xml"]) == [False]
    assert result.gt_boxes.empty
    assert result.lines_listed == len(result.index) + int(result.errors["line"].notna().sum()) == 2
