"""The feed (`infer.decode`): decoding inside the model actor gives the rows, errors and figures of decode tasks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from engine.bench.feed import batch_nbytes, lost_seconds, steady_rate
from engine.core.localization.columns import row_slices
from engine.core.model.classifier import arch_info, build_classifier
from engine.core.sizing import index_block_sizes
from engine.io.checkpoints import save_model
from engine.runtime.decode import BatchDecoder, DecodeSettings, decode_batch
from tests.conftest import test_config

BAD = {"missing": "gone/none.jpg", "corrupt": "scans/corrupt.jpg", "escape": "../outside.jpg", "empty": "scans/e.png"}


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A data root of 13 readable scans of different sizes and four bad paths, as index rows in mixed order."""
    root = tmp_path_factory.mktemp("feed") / "data"
    (root / "scans").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(13):
        image = rng.poisson(3.0, size=(200 + 40 * i, 64 + 8 * i)).clip(0, 255).astype(np.uint8)
        name = f"scans/{i}.{'png' if i % 3 else 'jpg'}"
        cv2.imwrite(str(root / name), image)
        paths.append(name)
    (root / "scans" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "scans" / "e.png").write_bytes(b"")
    (root.parent / "outside.jpg").write_bytes((root / "scans" / "0.jpg").read_bytes())
    paths[3:3], paths[9:9] = [BAD["missing"], BAD["corrupt"]], [BAD["escape"], BAD["empty"]]
    rows = pd.DataFrame(
        {
            "image_id": [f"id{i}" for i in range(len(paths))],
            "patient_id": [str(i) for i in range(len(paths))],
            "view": "POST",
            "split": "test",
            "folder": "scans",
            "label": [i % 2 for i in range(len(paths))],
            "path": paths,
        }
    )
    return root, rows


def _columns(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: rows[c].to_numpy() for c in rows}


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_decoder_threads_give_the_rows_of_one_decode_batch_call_in_order(scans, threads: int) -> None:
    root, rows = scans
    settings = DecodeSettings(data_root=str(root), canvas_h=256, canvas_w=128, threads=threads)
    got = BatchDecoder(settings)(_columns(rows))
    want = decode_batch(_columns(rows), str(root), 256, 128, "max")
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    errors = dict(zip(got["path"], got["error"], strict=True))
    assert errors[BAD["missing"]].startswith("missing_file")
    assert all(errors[BAD[k]] for k in ("corrupt", "escape", "empty")), errors
    assert sum(e != "" for e in got["error"]) == 4  # the 13 readable scans decode
    assert got["canvas"][[e == "" for e in got["error"]]].any(axis=(1, 2)).all()


def test_row_slices_cover_every_row_once_in_order() -> None:
    batch = {"a": np.arange(5), "b": np.array(list("vwxyz"), dtype=object)}
    got = list(row_slices(batch, 2))
    assert [first for first, _ in got] == [0, 2, 4]
    assert [list(part["b"]) for _, part in got] == [["v", "w"], ["x", "y"], ["z"]]
    assert list(row_slices({"a": np.arange(0)}, 2)) == []


@pytest.mark.parametrize("threads", [1, 3])
def test_decoder_chunks_reuse_one_buffer_and_give_the_rows_of_decode_batch_whatever_it_held(scans, threads) -> None:
    root, rows = scans
    decoder = BatchDecoder(DecodeSettings(data_root=str(root), canvas_h=256, canvas_w=128, threads=threads))
    for order in (rows, rows.iloc[::-1]):  # the second pass draws bad rows where good ones were, and other sizes
        want = decode_batch(_columns(order), str(root), 256, 128, "max")
        canvases, first = [], 0
        for chunk in decoder.chunks(_columns(order), 5):
            n = len(chunk["path"])
            assert n == min(5, len(order) - first)
            for key in want:
                np.testing.assert_array_equal(chunk[key], want[key][first : first + n], err_msg=key)
            canvases.append(chunk["canvas"])
            first += n
        assert first == len(order)
        assert all(np.shares_memory(canvases[0], c) for c in canvases)  # one buffer, no canvas allocated per chunk
        assert not want["canvas"][want["error"] != ""].any()  # failed rows are zero canvases


@pytest.mark.parametrize(
    ("n_rows", "call", "actors"),
    [(1, 64, 1), (640, 64, 1), (82_500, 256, 2), (38_400, 128, 2), (82_500, 64, 64), (100, 32, 8), (0, 32, 2)],
)
def test_index_blocks_are_whole_calls_that_shrink_as_the_stream_drains(n_rows: int, call: int, actors: int) -> None:
    sizes = index_block_sizes(n_rows, call, actors, in_flight=4, max_calls=16)
    assert sum(sizes) == n_rows  # every row once, in order
    assert all(size % call == 0 for size in sizes[:-1]) and all(0 < size <= 16 * call for size in sizes)
    assert sizes == sorted(sizes, reverse=True)  # the largest blocks first, the smallest last
    if n_rows >= 8 * actors * 4 * call:  # large streams start in the largest blocks and drain in single calls
        assert sizes[0] == 16 * call
        assert sizes[-actors * 4 :] == [call] * (actors * 4 - 1) + [sizes[-1]]
        assert len(sizes) < n_rows / (16 * call) + actors * 4 * 4  # and few blocks in all (one Ray task each)


def test_index_blocks_drain_the_demo_feed_in_single_calls() -> None:
    sizes = index_block_sizes(38_400, 128, 2, in_flight=4, max_calls=16)
    assert sizes[:4] == [2048] * 4 and sizes[-8:] == [128] * 8 and len(sizes) == 37


def test_steady_rate_leaves_out_the_start_up_and_the_buffered_burst() -> None:
    burst = np.full(300, 10.0)  # rows buffered during a 10 s start-up, all done at once
    steady = 10.0 + np.arange(1, 901) / 100  # then 100 img/s
    assert steady_rate(np.concatenate([burst, steady])) == pytest.approx(100.0, rel=0.01)
    drain = steady[-1] + np.arange(1, 101) / 10  # then the actors run out of blocks one by one: 10 img/s
    assert steady_rate(np.concatenate([burst, steady, drain])) == pytest.approx(100.0, rel=0.01)
    assert steady_rate(np.concatenate([burst, steady, drain]), drain=0.0) < 90.0
    assert steady_rate(np.array([1.0])) == 0.0


def test_lost_seconds_split_the_whole_run_beyond_the_steady_rate_into_start_up_and_drain() -> None:
    burst = np.full(300, 10.0)  # 10 s start-up, then 300 buffered rows at once
    steady = 10.0 + np.arange(1, 901) / 100  # 100 img/s
    drain = steady[-1] + np.arange(1, 101) / 10  # 10 img/s
    done_at = np.concatenate([burst, steady, drain])
    setup, last_row = 1.0, float(drain[-1]) + 0.5  # 1 s to build the stream; the last row at the driver 0.5 s later
    startup, drain_lost = lost_seconds(done_at, 100.0, setup, last_row)
    assert startup == pytest.approx(1.0 + 10.0 - 3.0, rel=0.01)  # the burst's 300 rows are 3 s at the steady rate
    assert drain_lost == pytest.approx(10.0 + 0.5 - 1.0, rel=0.01)  # 100 rows in 10 s instead of 1 s, and transit
    assert startup + drain_lost == pytest.approx(setup + last_row - len(done_at) / 100.0)  # whole s - rows / steady
    assert lost_seconds(done_at, 0.0, setup, last_row) == (None, None)


def test_batch_bytes_count_array_buffers_and_string_bytes() -> None:
    batch = {"canvas": np.zeros((2, 4, 8), np.uint8), "path": np.array(["ab", "cdé"], dtype=object)}
    assert batch_nbytes(batch) == 64 + 2 + 4


def _scored(cfg, rows: pd.DataFrame) -> pd.DataFrame:
    from engine.runtime.pipeline import iter_results, scored_stream, use_gpu
    from engine.stages._scoring import cam_settings, scoring_feed

    frames = []
    gpu = use_gpu(cfg.train.use_gpu)
    stream = scored_stream(rows, cam_settings(cfg, True, gpu), scoring_feed(cfg, gpu))
    for batch in iter_results(stream, batch_size=8):
        keep = {k: list(v) if v.ndim > 1 else v for k, v in batch.items() if k != "actor_pid"}
        frames.append(pd.DataFrame(keep))
    return pd.concat(frames).sort_values("image_id").reset_index(drop=True)


def test_cam_stream_decoding_in_the_actor_gives_the_rows_of_decode_tasks(ray_session, scans, tmp_path) -> None:
    root, rows = scans
    run_dir = tmp_path / "run"
    base = test_config(root, run_dir, "infer.batch_size=4", "ray.decode_batch_size=4", "infer.actors=1")
    save_model(str(run_dir), build_classifier(base.model), {**arch_info(base.model), "epoch": 0, "val_auc": None})
    tasks = _scored(test_config(root, run_dir, "infer.batch_size=4", "infer.decode=tasks"), rows)
    actor = _scored(test_config(root, run_dir, "infer.batch_size=4", "infer.decode=actor", "infer.num_cpus=2"), rows)
    assert sorted(actor["image_id"]) == sorted(rows["image_id"])  # every row once, bad ones included
    pd.testing.assert_series_equal(actor["error"], tasks["error"])
    assert (actor["error"] != "").sum() == 4
    ok = actor["error"] == ""
    np.testing.assert_allclose(actor["y_prob"][ok], tasks["y_prob"][ok], atol=1e-5)
    assert actor["y_prob"][~ok].isna().all()
    np.testing.assert_allclose(np.stack(actor["heatmap"][ok]), np.stack(tasks["heatmap"][ok]), atol=2e-3)
    for key in ("box_count", "orig_h", "orig_w", "pad_left", "pad_top", "new_h", "new_w"):
        np.testing.assert_array_equal(actor[key], tasks[key], err_msg=key)
    np.testing.assert_allclose(np.stack(actor["boxes"][ok]), np.stack(tasks["boxes"][ok]), atol=1e-3)
