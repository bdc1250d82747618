"""`make bench` in quick mode: it runs, prints its figures, and the engine's tables equal the plain loop's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.bench.run import run_bench
from engine.config import load_config
from engine.io.tables import read_table
from tests.conftest import REPO


def test_quick_bench_reports_figures_and_engine_matches_plain_loop(ray_session, tmp_path: Path) -> None:
    run_dir, results = tmp_path / "run", tmp_path / "BENCH.md"
    cfg = load_config(
        REPO / "conf" / "bench.yaml",
        [
            f"run.dir={run_dir}",
            f"bench.data_root={tmp_path / 'data'}",
            "bench.patients=3",
            "bench.images=12",
            "bench.scale=2",
            "bench.model_batches=1",
            f"bench.out={results}",
            "canvas.height=256",
            "canvas.width=128",
            "boxes.size=12",
            "infer.batch_size=4",
            "infer.actors=1",
            "bench.feed_images=40",
            "bench.feed_scale=2",
            "bench.feed_canvas=[256, 128]",
            "bench.feed_repeats=2",
        ],
    )
    summary = run_bench(cfg)
    figures = summary.extra
    for key in ("model_only_eager_img_per_s", "plain_loop_img_per_s", "engine_img_per_s", "peak_mem_mb_large"):
        assert figures[key] > 0, key
    assert figures["large_images"] == 24
    account = summary.to_dict()
    feed_rows = 2 * (40 + 2 * 80)  # two feeds (tasks, actor), each at N and twice at 2 x N
    in_and_out = (account["rows_in"], account["rows_ok"] + account["errors"])
    assert in_and_out == (36 + feed_rows, 36 + feed_rows) and account["balanced"]
    for mode in ("tasks", "actor"):
        assert figures[f"feed_{mode}_img_per_s"] > 0 and figures[f"feed_efficiency_{mode}"] > 0, mode
        runs = figures[f"feed_efficiency_{mode}_runs"]
        assert len(runs) == 2 and figures[f"feed_efficiency_{mode}"] == min(runs)  # the lower middle of two
        # the whole run (start-up and drain included) of the same run: rows over its seconds, over the same baseline
        whole, whole_runs = figures[f"feed_whole_efficiency_{mode}"], figures[f"feed_whole_efficiency_{mode}_runs"]
        assert len(whole_runs) == 2 and min(whole_runs) > 0 and whole in whole_runs, mode
        images, seconds = figures[f"feed_{mode}_whole_images"], figures[f"feed_{mode}_whole_s"]
        assert images == 2 * 40 and seconds > 0, mode
        whole_rate = figures[f"feed_{mode}_whole_img_per_s"]
        assert whole_rate == pytest.approx(images / seconds, rel=1e-3, abs=0.1), mode
        per_core = figures[f"feed_{mode}_plain_per_core_img_per_s"]
        assert whole == pytest.approx(whole_rate / (figures["feed_decode_cpus"] * per_core), rel=1e-2, abs=2e-3), mode
        lost = figures[f"feed_{mode}_startup_lost_s"] + figures[f"feed_{mode}_drain_lost_s"]
        assert lost == pytest.approx(seconds - images / figures[f"feed_{mode}_img_per_s"], rel=1e-2, abs=1e-2), mode
    assert len(figures["feed_plain_per_core_img_per_s"]) == 1 + 2 * 2  # before, then after each large run
    assert min(figures["feed_plain_per_core_img_per_s"]) > 0 and figures["feed_canvas"] == "256x128"
    # decode tasks ship each 256 x 128 canvas through the object store; an actor that decodes gets index rows only
    assert figures["feed_tasks_store_kb_per_image"] >= 256 * 128 / 1024
    assert figures["feed_actor_store_kb_per_image"] < 1
    assert set(figures["plain_loop_profile_s"]) >= {"decode", "letterbox", "forward", "cam", "boxes", "write"}
    assert "engine_over_plain_loop" in results.read_text()
    plain = read_table(str(run_dir / "bench_plain"), "heatmaps").set_index("image_id").sort_index()
    engine = read_table(str(run_dir), "heatmaps").set_index("image_id").loc[plain.index]
    assert np.allclose(np.stack(plain["heatmap"]), np.stack(engine["heatmap"]), atol=2e-3)
    key = ["image_id", "rank"]
    plain_boxes = read_table(str(run_dir / "bench_plain"), "boxes").sort_values(key).reset_index(drop=True)
    engine_boxes = read_table(str(run_dir), "boxes")
    engine_boxes = engine_boxes[engine_boxes["image_id"].isin(plain.index)].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        plain_boxes[key + ["x1", "y1", "x2", "y2"]], engine_boxes[key + ["x1", "y1", "x2", "y2"]]
    )
    assert len(engine_boxes) >= len(plain)  # real work: every image has peaks and boxes
    assert engine["peak_index"].map(len).min() > 0  # and refined peak centres (cam.refine)
    np.testing.assert_allclose(
        np.concatenate(plain["peak_x"].to_list()), np.concatenate(engine["peak_x"].to_list()), atol=1e-2
    )


def test_the_bench_job_names_the_data_it_generates_and_reads_not_data_root(tmp_path: Path) -> None:
    from jobs._cli import preamble

    cfg = load_config(REPO / "conf" / "bench.yaml", [f"bench.data_root={tmp_path / 'gen'}", "data.root=elsewhere"])
    assert preamble("bench", cfg).endswith(f"data {tmp_path / 'gen'}")
    assert preamble("cam", cfg).endswith("data elsewhere")
