"""The image stream: one row per selected index row, bad images as error rows, on a real local Ray."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.runtime.decode import DecodeSettings
from engine.runtime.pipeline import StreamSettings, image_stream, iter_results
from engine.stages._rows import select_rows
from tests.conftest import test_config


@pytest.fixture(scope="module")
def messy_root(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the generated data whose first POST images are broken in different ways."""
    root = tmp_path_factory.mktemp("messy") / "data"
    shutil.copytree(data_root, root)
    post = root / "wholeBodyPOST"
    good = cv2.imread(str(post / "1.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    good = np.round(good * (255.0 / max(good.max(), 1.0))).astype(np.uint8)  # full range: the 16-bit copy maps back
    (post / "1.jpg").write_bytes(b"")
    (post / "2.jpg").write_bytes((post / "2.jpg").read_bytes()[:2000])
    (post / "3.jpg").write_text("this is not an image")
    (post / "4.jpg").write_bytes(cv2.imencode(".png", good)[1].tobytes())  # PNG named .jpg: decodes
    (post / "5.jpg").write_bytes(cv2.imencode(".png", good.astype(np.uint16) * 200)[1].tobytes())  # 16-bit
    (post / "6.jpg").unlink()
    return root


def test_stream_yields_one_row_or_error_per_index_row(ray_session, messy_root: Path, split_run: Path) -> None:
    cfg = test_config(messy_root, split_run)
    rows = select_rows(cfg, None, qc_exclude=False)  # the stream decodes QC-flagged images too
    out = {}
    stream = image_stream(rows, DecodeSettings.of(cfg.data, cfg.canvas), StreamSettings.of(cfg.ray))
    for batch in iter_results(stream, batch_size=16):
        for i, image_id in enumerate(batch["image_id"]):
            assert image_id not in out, f"{image_id} yielded twice"
            out[image_id] = (batch["error"][i], batch["canvas"][i], batch["new_w"][i])
    assert sorted(out) == sorted(rows["image_id"])
    reasons = {k: v[0].split(":")[0] for k, v in out.items() if v[0]}
    assert reasons == {
        "wholeBodyPOST/1.jpg": "empty_file",
        "wholeBodyPOST/2.jpg": "truncated_jpeg",
        "wholeBodyPOST/3.jpg": "undecodable",
        "wholeBodyPOST/6.jpg": "missing_file",
    }
    error, canvas, new_w = out["wholeBodyPOST/4.jpg"]
    assert error == "" and canvas.shape == (256, 128) and canvas.dtype == np.uint8 and new_w == 64
    sixteen_bit = out["wholeBodyPOST/5.jpg"][1].astype(int)  # scaled by its own maximum back to the 8-bit picture
    assert out["wholeBodyPOST/5.jpg"][0] == "" and np.abs(sixteen_bit - canvas.astype(int)).max() <= 1
    assert out["wholeBodyPOST/1.jpg"][1].max() == 0
