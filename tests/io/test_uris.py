"""Storage URIs and pyarrow filesystems: `file://` roots end to end, sub-trees, in-memory and S3 filesystems."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from engine.core.parsing import DataError
from engine.io.index_tables import IndexResult
from engine.io.indexing import build_index
from engine.io.tables import TableWriter, read_table
from engine.runtime.decode import decode_batch
from engine.stages._rows import select_rows
from engine.stages.cam import run_cam
from engine.stages.index import run_index
from engine.stages.split import run_split
from engine.stages.train import run_train
from tests.conftest import test_config


def _assert_same_index(expected: IndexResult, actual: IndexResult) -> None:
    pd.testing.assert_frame_equal(expected.index, actual.index)
    pd.testing.assert_frame_equal(expected.gt_boxes, actual.gt_boxes)
    pd.testing.assert_frame_equal(expected.errors, actual.errors)
    assert expected.lines_listed == actual.lines_listed


def test_file_uri_and_subtree_roots_index_exactly_like_the_local_path(data_root: Path) -> None:
    local = build_index(data_root)
    assert len(local.index) > 1000 and len(local.gt_boxes) > 0
    _assert_same_index(local, build_index(data_root.as_uri()))
    disk = pafs.LocalFileSystem()
    _assert_same_index(local, build_index("", filesystem=pafs.SubTreeFileSystem(str(data_root), disk)))
    outer = pafs.SubTreeFileSystem(str(data_root.parent.parent), disk)
    nested = pafs.SubTreeFileSystem(data_root.parent.name, outer)
    _assert_same_index(local, build_index(data_root.name, filesystem=nested))


def test_a_missing_uri_root_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: data root is not a directory"):
        build_index((tmp_path / "nowhere").as_uri())


def _jpeg(width: int = 32, height: int = 128) -> bytes:
    return cv2.imencode(".jpg", np.zeros((height, width), np.uint8))[1].tobytes()


def _voc(cls: str) -> bytes:
    box = f"<object><name>{cls}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>10</xmax><ymax>20</ymax></bndbox>"
    return f"<annotation><size><width>256</width><height>1024</height></size>{box}</object></annotation>".encode()


POST_LABELS = b"1.jpg\t1\n2.jpg\t0\n3.jpg\t1\n4.jpg\t0\n5.jpg\t2\n../secret.jpg\t0\n/etc/passwd\t0\n"
# Every error reason an object store can produce (it has no symlinks).
MESSY = {
    "wholeBodyPOST/wholeBodyPOST.txt": POST_LABELS,
    "wholeBodyPOST/1.jpg": _jpeg(),
    "wholeBodyPOST/2.jpg": b"not a jpeg",
    "wholeBodyPOST/3.jpg": _jpeg(),
    "wholeBodyPOST/9.jpg": _jpeg(),
    "wholeBodyPOST/post/1.xml": _voc("Abnormal"),
    "wholeBodyPOST/post/2.xml": _voc("Abnormal"),
    "wholeBodyPOST/post/3.xml": b"<annotation><object>",
    "kneeLANT/kneeLANT.txt": b"1.jpg\t0\n\xff2.jpg\t1\n",
    "kneeLANT/1.jpg": _jpeg(8, 8),
    "headPOST/1.jpg": _jpeg(8, 8),
    "randomFolder/x.jpg": _jpeg(8, 8),
    "README.md": b"ignored",
}


class RecordingHandler(pafs.FSSpecHandler):
    """A real in-memory filesystem (fsspec) that records every path it lists or opens."""

    def __init__(self, fs) -> None:
        super().__init__(fs)
        self.touched: list[str] = []

    def get_file_info_selector(self, selector):
        self.touched.append(selector.base_dir)
        return super().get_file_info_selector(selector)

    def open_input_stream(self, path):
        self.touched.append(path)
        return super().open_input_stream(path)

    def open_input_file(self, path):
        self.touched.append(path)
        return super().open_input_file(path)


@pytest.fixture
def memory_fs():
    """An fsspec in-memory filesystem under a unique prefix (stands in for an object store)."""
    memory = pytest.importorskip("fsspec.implementations.memory").MemoryFileSystem()
    prefix = f"/bs80k-{uuid.uuid4().hex[:8]}"
    yield memory, prefix
    memory.rm(prefix, recursive=True)


def test_a_non_local_filesystem_indexes_like_the_local_disk_and_opens_nothing_outside(tmp_path: Path, memory_fs):
    memory, prefix = memory_fs
    memory.pipe_file(f"{prefix}/secret.jpg", _jpeg())  # beside the data root, where "../secret.jpg" points
    for relative, content in MESSY.items():
        (tmp_path / "root" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "root" / relative).write_bytes(content)
        memory.pipe_file(f"{prefix}/root/{relative}", content)
    handler = RecordingHandler(memory)
    remote = build_index(f"{prefix}/root", filesystem=pafs.PyFileSystem(handler))
    local = build_index(tmp_path / "root")
    _assert_same_index(local, remote)
    assert [(row.file, row.reason.split(":")[0]) for row in remote.errors.itertuples()] == [
        ("headPOST/headPOST.txt", "missing_label_file"),
        ("kneeLANT/kneeLANT.txt", "bad_encoding"),
        ("kneeLANT/kneeLANT.txt", "missing_file"),
        ("randomFolder", "unknown_folder"),
        ("wholeBodyPOST/9.jpg", "unlisted_file"),
        ("wholeBodyPOST/post/2.xml", "label_box_mismatch"),
        ("wholeBodyPOST/post/3.xml", "malformed_xml"),
        ("wholeBodyPOST/wholeBodyPOST.txt", "missing_file"),
        ("wholeBodyPOST/wholeBodyPOST.txt", "bad_label"),
        ("wholeBodyPOST/wholeBodyPOST.txt", "unsafe_path"),
        ("wholeBodyPOST/wholeBodyPOST.txt", "unsafe_path"),
    ]
    assert list(remote.index["image_id"]) == [
        "kneeLANT/1.jpg",
        "wholeBodyPOST/1.jpg",
        "wholeBodyPOST/2.jpg",
        "wholeBodyPOST/3.jpg",
    ]
    assert f"{prefix}/root/wholeBodyPOST/post/1.xml" in handler.touched
    assert [path for path in handler.touched if not path.startswith(f"{prefix}/root")] == []


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> str:
    """A local S3 API (moto's server on loopback, no network) with an empty bucket; returns `s3://<bucket>`."""
    moto_server = pytest.importorskip("moto.server", reason="S3 test needs moto[server] (a test extra)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"bs80k-{uuid.uuid4().hex[:8]}"
    pafs.FileSystem.from_uri(f"s3://{bucket}?allow_bucket_creation=true")[0].create_dir(bucket)
    yield f"s3://{bucket}"
    server.stop()


def test_s3_data_root_indexes_decodes_and_run_dir_commits_tables(s3_bucket: str, data_root: Path) -> None:
    s3, bucket = pafs.FileSystem.from_uri(s3_bucket)
    pafs.copy_files(
        str(data_root / "wholeBodyPOST"),
        f"{bucket}/data/wholeBodyPOST",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=s3,
    )
    remote = build_index(f"{s3_bucket}/data")
    local = build_index(data_root)
    post = local.index[local.index["folder"] == "wholeBodyPOST"].reset_index(drop=True)
    pd.testing.assert_frame_equal(remote.index, post)
    assert len(remote.gt_boxes) == int((local.gt_boxes["view"] == "POST").sum()) > 0
    batch = decode_batch({"path": remote.index["path"].to_numpy()[:4]}, f"{s3_bucket}/data", 256, 128)
    assert list(batch["error"]) == [""] * 4 and batch["canvas"].shape == (4, 256, 128) and batch["canvas"].any()
    writer = TableWriter(f"{s3_bucket}/run", "index", split="all")
    writer.check(["index"])
    writer.write("index", remote.index)
    assert writer.commit() == {"index": len(remote.index)}  # S3 cannot move folders: staged files move one by one
    back = read_table(f"{s3_bucket}/run", "index").sort_values("image_id")
    assert back["image_id"].tolist() == sorted(remote.index["image_id"])
    assert back["label"].tolist() == remote.index.sort_values("image_id")["label"].tolist()
    assert not s3.get_file_info(pafs.FileSelector(f"{bucket}/run/_staging", recursive=True, allow_not_found=True))


@pytest.mark.slow
def test_file_uri_data_and_run_dirs_run_index_split_train_and_cam(
    ray_session, data_root: Path, split_run: Path, tmp_path: Path
) -> None:
    run_path = tmp_path / "run"
    cfg = test_config(data_root.as_uri(), run_path.as_uri(), "train.epochs=1")
    assert cfg.data.root.startswith("file:///") and cfg.run.dir.startswith("file:///")
    for stage in (run_index, run_split):
        assert stage(cfg).balanced
    pd.testing.assert_frame_equal(read_table(cfg.run.dir, "splits"), read_table(str(split_run), "splits"))
    run_train(cfg)
    epochs = read_table(cfg.run.dir, "epochs")
    assert epochs["epoch"].tolist() == [1] and int(epochs["images"].iloc[0]) > 0
    assert list((run_path / "train_state").glob("checkpoint_*")) and (run_path / "model" / "best.pt").is_file()
    summary = run_cam(cfg)
    selected = select_rows(cfg, ("test",), qc_exclude=False)  # cam scores QC-flagged images too
    assert summary.balanced and summary.rows_ok == len(selected) > 0
    for name in ("index", "splits", "epochs", "preds", "heatmaps", "boxes", "meta"):
        frame = pads.dataset(run_path / "tables" / name, format="parquet", partitioning="hive").to_table()
        assert frame.num_rows == len(read_table(cfg.run.dir, name)) > 0, name
    preds = read_table(cfg.run.dir, "preds")
    assert sorted(preds.loc[preds["stage"] == "cam", "image_id"]) == sorted(selected["image_id"])
    assert json.loads((run_path / "summaries" / "cam.json").read_text())["rows_ok"] == len(selected)
    refs = read_table(cfg.run.dir, "heatmaps")["overlay_canvas"].dropna()
    assert len(refs) == 2 and all((run_path / ref).is_file() for ref in refs)
    assert not (run_path / "_staging").exists() or not any((run_path / "_staging").iterdir())
