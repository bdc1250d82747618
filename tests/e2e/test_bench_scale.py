"""`make bench-scale` (engine/bench/scale.py): its memory sampling of a real process tree, its progress reading, its
browse timings over real HTTP and the section it appends. The full run (82k images, ~15 min) is not part of the
suite; these check each of its parts on real processes and the session's scored run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.bench.scale import MemoryTrace, memory_figures, report_lines, run_sampled, time_browse
from tests.conftest import test_config

# A parent that prints progress lines as `make cam` does, while a child it started holds ~120 MB.
TREE = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "b = bytearray(120 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
                              "import time; time.sleep(2.5)"])
    for done in range(0, 101, 10):
        print(f"cam: {done}/100 images ({done}%), 10.0 images/s", flush=True)
        time.sleep(0.2)
    child.wait()
    """
)


def test_the_sampler_sees_the_driver_and_every_process_under_it_and_dates_the_progress(tmp_path: Path) -> None:
    seen: list[str] = []
    wall, trace = run_sampled([sys.executable, "-c", TREE], 0.1, seen.append)
    assert wall > 2 and len(trace.seconds) >= 10 and len(seen) == 11
    assert [done for _, done, _ in trace.progress] == list(range(0, 101, 10))
    assert all(total >= driver > 0 for driver, total in zip(trace.driver, trace.total, strict=True))
    assert max(t - d for d, t in zip(trace.driver, trace.total, strict=True)) > 100 * 2**20  # the child's bytes
    figures = memory_figures(trace, 100)
    assert figures["at_10"]["second"] <= figures["at_90"]["second"] <= figures["end"]["second"]
    with pytest.raises(subprocess.CalledProcessError):
        run_sampled([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 0.1, seen.append)


def test_growth_is_read_between_the_samples_at_10_and_90_percent_of_the_images() -> None:
    trace = MemoryTrace()
    for second in range(11):  # the driver grows 1 MB a second while 100 images a second are scored
        trace.add(float(second), (100 + second) * 2**20, (1000 + 2 * second) * 2**20)
        trace.read_line(float(second), f"cam: {100 * second}/1000 images ({10 * second}%), 100.0 images/s")
    figures = memory_figures(trace, 1000)
    assert (figures["at_10"]["second"], figures["at_90"]["second"]) == (1.0, 9.0)
    assert figures["driver_bytes_per_image"] == pytest.approx(8 * 2**20 / 800)
    assert figures["driver_growth_pct"] == pytest.approx(100 * 8 / 101)
    assert figures["driver_peak"] == 110 * 2**20 and figures["end"]["total"] == 1020 * 2**20
    assert figures["at_count"] == {}  # 20k and 40k images were never reached


def test_memory_is_read_at_20k_and_40k_images_where_the_run_reached_them() -> None:
    trace = MemoryTrace()
    for second in range(7):  # 10,000 images a second; the driver holds 100 MB + 1 MB a second
        trace.add(float(second), (100 + second) * 2**20, (900 + second) * 2**20)
        trace.read_line(float(second), f"cam: {10_000 * second}/60000 images, 10000.0 images/s")
    figures = memory_figures(trace, 60_000)
    assert figures["at_count"] == {
        20_000: {"second": 2.0, "driver": 102 * 2**20, "total": 902 * 2**20},
        40_000: {"second": 4.0, "driver": 104 * 2**20, "total": 904 * 2**20},
    }
    figures_all = {
        "date": "2026-12-08",
        "device": "cpu",
        "patients": 2400,
        "command": "make bench-scale",
        "cam_args": [],
        "stage_s": {"cam": 6.0},
        "cam": {
            "rows_in": 60_000,
            "rows_ok": 60_000,
            "errors": 0,
            "skipped": 0,
            "seconds": 6.0,
            "wall_s": 7.0,
            "img_per_s": 10_000.0,
        },
        "memory": figures,
        "tables": [],
        "browse": {"startup_s": 1.0, "first_request_ms": 5.0, "pages": {}},
    }
    rows = [line for line in report_lines(figures_all) if line.startswith("| RSS at")]
    assert [row.split(" (")[0] for row in rows] == [
        "| RSS at 10 % of the images",
        "| RSS at 20,000 images",
        "| RSS at 40,000 images",
        "| RSS at 90 % of the images",
        "| RSS at the end",
    ]
    assert "driver 102.0 MB, whole run 902.0 MB" in rows[1] and "60,000 images" in rows[-1]


def test_browse_pages_are_timed_over_http_and_every_figure_reaches_the_section(scored_run, data_root) -> None:
    cfg = test_config(data_root, scored_run)
    browse = time_browse(cfg, repeats=2)
    pages = browse["pages"]
    assert len(pages) == 8 and {p["status"] for p in pages.values()} == {200}
    assert all(p["kb"] > 1 and 0 < p["median_ms"] <= p["max_ms"] for p in pages.values())
    assert browse["startup_s"] > 0 and "image page" in pages
    if browse["browser"] is not None:  # the browse tests' headless Chromium, where installed
        assert set(browse["browser"]) == set(pages) and all(ms > 0 for ms in browse["browser"].values())
    trace = MemoryTrace()
    for second in range(5):
        trace.add(float(second), 2**30, 4 * 2**30)
    figures = {
        "date": "2026-12-07",
        "device": "cpu",
        "patients": 60,
        "command": "make bench-scale SCALE_PATIENTS=60",
        "cam_args": ["cam.scope=all"],
        "stage_s": {"synth": 1.0, "cam": 2.0},
        "cam": {
            "rows_in": 1500,
            "rows_ok": 1490,
            "errors": 10,
            "skipped": 0,
            "seconds": 2.0,
            "wall_s": 3.0,
            "img_per_s": 745.0,
        },
        "memory": memory_figures(trace, 1490),
        "tables": [{"table": "preds", "rows": 1490, "files": 3, "bytes": 3 * 2**20, "bytes_per_row": 2111.0}],
        "browse": browse,
    }
    text = "\n".join(report_lines(figures))
    assert "**745 images/s**" in text and "1,500 in = 1,490 ok + 10 errors" in text
    assert "driver 1.0 GB" not in text and "driver 1,024.0 MB" in text and "preds 1,490, 3, 3.0 MB (2,111)" in text
    assert all(f"`{page['path']}`" in text for page in pages.values())
    assert ("Chromium load" in text) == (browse["browser"] is not None)
