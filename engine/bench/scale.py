"""`make bench-scale`: the full index as a user lives with it, measured the way a user runs it.

Generates `--patients` synthetic patients (3225: ~82k images; `make synth`, kept when it exists), then runs
`make index`, `split`, a tiny model trained briefly (`train`, `threshold`) and `make cam cam.scope=all` on a small
canvas (128 x 64, two actors, no overlays: the model's share stays small, so the run measures the engine), each as
the job process a user starts. While cam runs it samples the resident memory (RSS) of its driver and of every
process under it (reported at 10 % and 90 % of the images, at 20k and 40k images and at the end), and times
`make evaluate` over the scored run. Then it reads the bytes of each table (`make tables`), serves `make browse`
over the run on a free port of 127.0.0.1 and times table pages (sort, filter, search, last page) and an image
page over plain HTTP. It prints the figures and appends them to BENCHMARKS.md. Not part of `make test`.

    python -m engine.bench.scale --patients 800 [key=value ...]   (make bench-scale SCALE_PATIENTS=800)
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import psutil

MB = 1024 * 1024
# the small canvas and the run's shape (issue 31): every job gets these, then the user's own overrides
SCALE_ARGS = ("canvas.height=128", "canvas.width=64")
TRAIN_ARGS = ("train.epochs=1",)
# every view is scored (as in make bench), and a progress line every 2 s dates the 10 % and 90 % of the images
CAM_ARGS = ("cam.scope=all", "infer.actors=2", "cam.overlays=0", "model.other_views=score", "log.progress_s=2")


PROGRESS = re.compile(r"^cam: (\d+)/(\d+) images")  # engine/runtime/console.py's progress_line


@dataclass
class MemoryTrace:
    """RSS samples of one process (the driver) and of it with every process under it (the whole run), and the
    images its progress lines had counted (second, images done, images in all)."""

    seconds: list[float] = field(default_factory=list)
    driver: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)
    progress: list[tuple[float, int, int]] = field(default_factory=list)

    def add(self, second: float, driver: int, total: int) -> None:
        self.seconds.append(second)
        self.driver.append(driver)
        self.total.append(total)

    def read_line(self, second: float, line: str) -> None:
        """Notes a progress line's count of images done."""
        found = PROGRESS.match(line.strip())
        if found:
            self.progress.append((second, int(found.group(1)), int(found.group(2))))

    def at_images(self, share: float) -> tuple[float, int, int]:
        """Returns (second, driver RSS, whole-run RSS) of the first sample once `share` of the images were done
        (by the progress lines; without any, `share` of the run's time)."""
        if not self.seconds:
            raise ValueError("no memory samples")
        passed = [second for second, done, total in self.progress if done >= share * total]
        if passed:
            cut = passed[0]
        else:
            cut = self.seconds[0] + share * (self.seconds[-1] - self.seconds[0])
        i = next((k for k, sec in enumerate(self.seconds) if sec >= cut), len(self.seconds) - 1)
        return self.seconds[i], self.driver[i], self.total[i]

    def at_count(self, images: int) -> tuple[float, int, int] | None:
        """Returns (second, driver RSS, whole-run RSS) of the first sample once `images` were done by the progress
        lines, or None when no progress line reached that count."""
        passed = [second for second, done, _ in self.progress if done >= images]
        if not passed or not self.seconds:
            return None
        i = next((k for k, sec in enumerate(self.seconds) if sec >= passed[0]), len(self.seconds) - 1)
        return self.seconds[i], self.driver[i], self.total[i]

    def images_between(self, low: float, high: float) -> int:
        """Returns the images done between the progress lines at `low` and `high` shares (0 without lines)."""
        done = [d for _, d, t in self.progress if d >= low * t], [d for _, d, t in self.progress if d >= high * t]
        return done[1][0] - done[0][0] if done[0] and done[1] else 0


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """Returns (RSS of `proc`, summed RSS of `proc` and its descendants), bytes."""
    driver = proc.memory_info().rss
    total = driver
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return driver, total


def run_sampled(command: list[str], interval_s: float, log: Callable[[str], None]) -> tuple[float, MemoryTrace]:
    """Runs `command` to its end, sampling its memory every `interval_s`; returns (wall seconds, the trace).

    Raises:
        subprocess.CalledProcessError: the command failed.
    """
    trace = MemoryTrace()
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def pump() -> None:
        for line in child.stdout:
            lines.append(line)
            trace.read_line(time.perf_counter() - start, line)
            log(line.rstrip())

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    proc = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            trace.add(time.perf_counter() - start, *tree_rss(proc))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
        time.sleep(interval_s)
    reader.join(timeout=10)
    wall = time.perf_counter() - start
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command, "".join(lines[-40:]))
    return wall, trace


def job(stage: str, conf: str, *overrides: str) -> list[str]:
    """Returns the command line of `make <stage>` (python -m jobs) with the config and overrides."""
    return [sys.executable, "-m", "jobs", stage, "--config", conf, *overrides]


def table_bytes(run_dir: str) -> list[dict]:
    """Returns `make tables`' rows (rows, files, bytes, bytes per row) of each table the run holds."""
    from engine.io.fs import resolve_fs
    from engine.io.tables import table_dir
    from engine.stages.tables import table_usage

    fs, root = resolve_fs(run_dir)
    tables = os.path.dirname(table_dir(root, "index"))
    names = sorted(d for d in os.listdir(tables) if os.path.isdir(os.path.join(tables, d)) and d[0] not in "._")
    return [table_usage(fs, root, name) for name in names]


def http_ms(base: str, path: str) -> tuple[float, int, int]:
    """Returns (milliseconds, status, bytes) of one plain HTTP GET of `path`, the body read to its end."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    start = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    ms = (time.perf_counter() - start) * 1000
    conn.close()
    return ms, response.status, len(body)


def browse_pages(run_dir: str, page_size: int) -> dict[str, str]:
    """Returns the browse requests timed: name -> path (table pages of each kind and one image page)."""
    from engine.io.tables import read_table

    index = read_table(run_dir, "index")["image_id"].sort_values()
    preds = read_table(run_dir, "preds")
    image_id = str(preds["image_id"].iloc[len(preds) // 2]) if len(preds) else str(index.iloc[0])
    last = max(0, (len(index) - 1) // page_size)
    word = image_id.rsplit("/", 1)[-1].split(".")[0][:4]
    return {
        "table, first page": "/",
        "table, sort probability desc": "/?sort=y_prob&order=desc",
        "table, filter split+view, sort outcome": "/?split=test&view=POST&sort=outcome",
        "table, search": f"/?q={quote(word)}",
        "table, QC flagged, sort QC": "/?qc=1&sort=qc&order=desc",
        "table, last page (every row)": f"/?rows=all&page={last}",
        "table, page 100, sort best box": "/?sort=best_box&page=100",
        "image page": f"/image/{quote(image_id, safe='/')}",
    }


def time_browse(cfg, create_app: Callable | None = None, repeats: int = 5, chromium: bool = True) -> dict:
    """Serves `make browse` over `cfg.run.dir` on a free port of 127.0.0.1 and times its pages over HTTP.

    Returns: startup_s (the app built: tables materialised), first_request_ms, per page its median and max ms over
    `repeats` GETs after one warm-up GET, its status and size; with `chromium`, browser: each page's median load in
    a headless Chromium (None without one).
    """
    from werkzeug.serving import make_server

    if create_app is None:
        from engine.stages.browse import create_app
    start = time.perf_counter()
    app = create_app(cfg, cfg.browse)
    startup = time.perf_counter() - start
    live = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=live.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{live.port}"
    try:
        pages = {}
        first = None
        for name, path in browse_pages(cfg.run.dir, cfg.browse.page_size).items():
            warm, status, size = http_ms(base, path)
            first = warm if first is None else first
            times = [http_ms(base, path)[0] for _ in range(repeats)]
            pages[name] = {
                "path": path,
                "status": status,
                "kb": round(size / 1024, 1),
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
            }
        browser = browser_ms(base, {name: page["path"] for name, page in pages.items()}) if chromium else None
    finally:
        live.shutdown()
        thread.join(timeout=10)
    return {
        "startup_s": round(startup, 2),
        "first_request_ms": round(first or 0.0, 1),
        "pages": pages,
        "browser": browser,
    }


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_ms(base: str, paths: dict[str, str], repeats: int = 3) -> dict[str, float] | None:
    """Returns each page's median load in a headless Chromium (navigation start to the load event, ms, its images
    included), or None without Chromium, chromedriver or selenium (tests/e2e/test_browse.py's browser)."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    timing = "const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;"
    try:
        out = {}
        for name, path in paths.items():
            driver.get(base + path)  # a warm-up load
            times = []
            for _ in range(repeats):
                driver.get(base + path)
                times.append(float(driver.execute_script(timing)))
            out[name] = round(statistics.median(times), 1)
        return out
    finally:
        driver.quit()


def device() -> str:
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def size(value: float) -> str:
    """Returns bytes as kB below 1 MB, else MB."""
    return f"{value / 1024:,.0f} kB" if value < MB else f"{value / MB:,.1f} MB"


# the image counts at which the run's memory is reported besides 10 % / 90 % / the end (issue 31: 20k, 40k, 82k)
COUNTS = (20_000, 40_000)


def memory_figures(trace: MemoryTrace, images: int) -> dict:
    """Returns the driver's and the whole run's RSS at 10 % and 90 % of the images, at 20k and 40k images done
    (where the run reached them), at the end and at their peak, and the driver's growth from 10 % to 90 % (per
    cent, and bytes per image scored in between)."""
    (s10, d10, t10), (s90, d90, t90) = trace.at_images(0.1), trace.at_images(0.9)
    between = trace.images_between(0.1, 0.9) or round(0.8 * images)
    return {
        "at_10": {"second": s10, "driver": d10, "total": t10},
        "at_90": {"second": s90, "driver": d90, "total": t90},
        "end": {"second": trace.seconds[-1], "driver": trace.driver[-1], "total": trace.total[-1]},
        "at_count": {
            count: {"second": at[0], "driver": at[1], "total": at[2]}
            for count in COUNTS
            if count < images and (at := trace.at_count(count)) is not None
        },
        "driver_peak": max(trace.driver),
        "total_peak": max(trace.total),
        "driver_growth_pct": 100 * (d90 - d10) / d10,
        "driver_bytes_per_image": (d90 - d10) / max(between, 1),
        "total_growth_pct": 100 * (t90 - t10) / t10,
    }


def report_lines(figures: dict) -> list[str]:
    """Returns the BENCHMARKS.md section of one bench-scale run (markdown)."""
    cam, memory = figures["cam"], figures["memory"]
    lines = [
        f"\n## {figures['date']} — `make bench-scale`, {figures['patients']} patients, {cam['rows_in']:,} images, "
        f"{figures['device']}\n",
        f"`{figures['command']}`; cam: `{' '.join(figures['cam_args'])}`.\n",
        "| figure | value |",
        "|---|---|",
        f"| stage seconds (wall) | {', '.join(f'{k} {v:.0f} s' for k, v in figures['stage_s'].items())} |",
        f"| `make cam` scope=all | {cam['wall_s']:.1f} s wall, {cam['seconds']:.1f} s in the stage, "
        f"**{cam['img_per_s']:.0f} images/s**; {cam['rows_in']:,} in = {cam['rows_ok']:,} ok + {cam['errors']} "
        f"errors + {cam['skipped']} skipped |",
    ]
    marks = [("10 % of the images", memory["at_10"]), ("90 % of the images", memory["at_90"])]
    marks += [(f"{n:,} images", at) for n, at in memory.get("at_count", {}).items()]
    marks.sort(key=lambda mark: mark[1]["second"])
    for label, at in [*marks, (f"the end ({cam['rows_ok']:,} images)", memory["end"])]:
        lines.append(
            f"| RSS at {label} ({at['second']:.0f} s) | driver {size(at['driver'])}, whole run {size(at['total'])} |"
        )
    lines.append(
        f"| RSS peak; growth from 10 % to 90 % of the images | driver {size(memory['driver_peak'])}, whole run "
        f"{size(memory['total_peak'])}; driver {memory['driver_growth_pct']:+.1f} % "
        f"({memory['driver_bytes_per_image']:,.0f} B per image), whole run {memory['total_growth_pct']:+.1f} % |"
    )
    lines.append(
        "| tables: rows, files, bytes (bytes per row) | "
        + "; ".join(
            f"{t['table']} {t['rows']:,}, {t['files']}, {size(t['bytes'])} ({t['bytes_per_row']:,.0f})"
            for t in figures["tables"]
            if t["rows"]
        )
        + " |"
    )
    browse = figures["browse"]
    lines.append(
        f"| `make browse` start-up (tables materialised) | {browse['startup_s']:.2f} s; first request "
        f"{browse['first_request_ms']:.0f} ms |"
    )
    for name, page in browse["pages"].items():
        lines.append(
            f"| browse {name} (`{page['path']}`) | HTTP median {page['median_ms']:.0f} ms, max {page['max_ms']:.0f} "
            f"ms ({page['status']}, {page['kb']} kB)"
            + (f"; Chromium load {browse['browser'][name]:.0f} ms" if browse.get("browser") else "")
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3225, help="synthetic patients (3225: ~82k images)")
    parser.add_argument("--config", default="conf/demo.yaml", help="the jobs' config (the demo's: tiny model)")
    parser.add_argument("--data", default="data/bench_scale", help="generated data go to <data>/p<patients>")
    parser.add_argument("--run", default="runs/bench_scale", help="the run dir (replaced)")
    parser.add_argument("--out", default="BENCHMARKS.md", help="results file appended to ('' : print only)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument("overrides", nargs="*", help="key=value overrides given to every job")
    args = parser.parse_args(argv)

    data = f"{args.data.rstrip('/')}/p{args.patients}"
    common = [f"data.root={data}", f"run.dir={args.run}", *SCALE_ARGS, *args.overrides]
    if os.path.isdir(args.run):
        shutil.rmtree(args.run)
    stage_s: dict[str, float] = {}

    def log(line: str) -> None:
        print(f"  | {line}", flush=True)

    steps = [
        ("synth", [f"synth.out={data}", f"synth.patients={args.patients}"]),
        ("index", []),
        ("split", []),
        ("train", list(TRAIN_ARGS)),
        ("threshold", []),
    ]
    for stage, extra in steps:
        print(f"bench-scale: make {stage}", flush=True)
        stage_s[stage] = run_sampled(job(stage, args.config, *common, *extra), args.interval, log)[0]
    print("bench-scale: make cam " + " ".join(CAM_ARGS) + " (memory sampled)", flush=True)
    wall, trace = run_sampled(job("cam", args.config, *common, *CAM_ARGS), args.interval, log)
    stage_s["cam"] = wall
    with open(os.path.join(args.run, "summaries", "cam.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    # make evaluate over the scored index (its test split; val tunes), timed as a user waits for it
    print("bench-scale: make evaluate", flush=True)
    stage_s["evaluate"] = run_sampled(job("evaluate", args.config, *common), args.interval, log)[0]

    from engine.config import load_config

    cfg = load_config(args.config, common)
    print("bench-scale: make tables, make browse (timed over HTTP)", flush=True)
    tables = table_bytes(args.run)
    browse = time_browse(cfg)
    images = int(summary["rows_in"])
    figures = {
        "date": dt.date.today().isoformat(),
        "device": device(),
        "patients": args.patients,
        "command": f"make bench-scale SCALE_PATIENTS={args.patients}"
        + (f' ARGS="{" ".join(args.overrides)}"' if args.overrides else ""),
        "cam_args": [*SCALE_ARGS, *CAM_ARGS],
        "stage_s": stage_s,
        "cam": {
            "rows_in": images,
            "rows_ok": int(summary["rows_ok"]),
            "errors": int(summary["errors"]),
            "skipped": sum(summary.get("skipped", {}).values()),
            "seconds": float(summary["seconds"]),
            "wall_s": wall,
            "img_per_s": int(summary["rows_ok"]) / float(summary["seconds"]),
        },
        "memory": memory_figures(trace, int(summary["rows_ok"])),
        "tables": tables,
        "browse": browse,
    }
    lines = report_lines(figures)
    print("\n".join(lines), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        print(f"bench-scale: appended to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
