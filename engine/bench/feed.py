"""The feed benchmark: what the image stream costs per image, against a plain decode + letterbox loop.

Every path does the same work on the same whole-body images: read the file, `decode_batch` (decode, count
scale, letterbox onto the canvas). The model is replaced by `NullModelStage`, which does nothing, so that
what is left is the stream's own cost. `feed_efficiency` = stream img/s / (decode CPUs x plain img/s per core),
with the stream's steady rate (`steady_rate`); `feed_whole_efficiency` the same with the whole run's rate (every
row over the seconds from building the stream to the last row at the driver: start-up and drain included).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pandas as pd

from engine.config import Config
from engine.io.summary import StageSummary
from engine.runtime.decode import BatchDecoder, DecodeSettings
from engine.stages._scoring import scoring_feed

FEED_TARGET = 0.8  # the feed's target, for the steady and the whole-run ratio alike: stated, not checked (a benchmark)
WINDOW = (0.25, 0.1)  # `steady_rate`'s window: the share of the rows left out before (start-up) and after (drain)


def batch_nbytes(batch: dict[str, np.ndarray]) -> int:
    """Returns the bytes a numpy batch carries: array buffers, and the UTF-8 bytes of its string cells."""
    total = 0
    for values in batch.values():
        array = np.asarray(values)
        if array.dtype != object:
            total += array.nbytes
        else:
            total += sum(len(v.encode()) if isinstance(v, str) else 8 for v in array.ravel())
    return total


class NullModelStage:
    """A model actor without a model: it decodes its rows when given `decode` (as `infer.decode=actor` does,
    `model_batch` rows at a time) and returns each row's id and error, the bytes it was sent, its share of the
    call's seconds and when it ended."""

    def __init__(self, decode: DecodeSettings | None, model_batch: int) -> None:
        self.decoder = BatchDecoder(decode) if decode is not None else None
        self.model_batch = model_batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["image_id"])
        sent = batch_nbytes(batch)
        if self.decoder is not None:  # every chunk is decoded; what a model would read of it is its canvas
            errors = np.concatenate([chunk["error"] for chunk in self.decoder.chunks(batch, self.model_batch)])
        else:
            errors = batch["error"]
        busy = np.full(n, (time.perf_counter() - start) / max(n, 1))  # seconds inside this call, per row
        return {
            "image_id": batch["image_id"],
            "error": errors,
            "sent_bytes": np.full(n, sent / max(n, 1)),
            "busy_s": busy,
            "done_at": np.full(n, time.time()),  # when this call finished (wall clock, shared by the processes)
        }


def feed_rows(index: pd.DataFrame, images: int) -> pd.DataFrame:
    """Returns `images` whole-body index rows (the index's whole-body rows repeated), split set to `test`."""
    whole = index[index["part"] == "wholeBody"] if "part" in index else index
    if whole.empty:
        raise ValueError("the feed benchmark needs whole-body images in the index")
    rows = pd.concat([whole] * -(-images // len(whole)), ignore_index=True).head(images)
    return rows.assign(split="test")


def plain_rate(frame: pd.DataFrame, settings: DecodeSettings, batch_rows: int) -> float:
    """Returns img/s of the model actor's decode (`BatchDecoder.chunks` of `batch_rows` rows) over `frame` in this
    process on one thread: the same work, without Ray (after one warm-up batch)."""
    columns = {c: frame[c].to_numpy() for c in frame}
    decode = BatchDecoder(dataclasses.replace(settings, threads=1))
    for _ in decode.chunks({k: v[:batch_rows] for k, v in columns.items()}, batch_rows):  # imports, page cache
        pass
    start = time.perf_counter()
    for _ in decode.chunks(columns, batch_rows):
        pass
    return len(frame) / (time.perf_counter() - start)


def feed_config(cfg: Config) -> Config:
    """Returns `cfg` at the feed's canvas (`bench.feed_canvas`, the engine's default canvas unless set)."""
    height, width = cfg.bench.feed_canvas
    return dataclasses.replace(cfg, canvas=dataclasses.replace(cfg.canvas, height=height, width=width))


def stream_rate(rows: pd.DataFrame, cfg: Config, mode: str, cpus: int) -> dict[str, Any]:
    """Streams `rows` through `infer.actors` NullModelStage actors to the driver; returns rates, bytes, peak memory.

    `tasks`: decode tasks (`ray.decode_num_cpus` each) ship canvases to actors that hold no CPU, as GPU actors are
    fed. `actor`: index rows go to actors sharing the `cpus` CPUs, each decoding on as many threads as it holds.
    `actor_busy`: the share of the wall time each actor spent inside its calls. `whole_s`: from building the
    stream (its index rows into the object store) to the last row at the driver; `startup_lost_s` and
    `drain_lost_s` (`lost_seconds`): what the whole run took beyond the steady rate before and after its window.
    """
    from engine.bench.measure import MemorySampler  # torch: on the driver only, not in the null actor
    from engine.runtime.pipeline import actor_index_stream, actor_stream, image_stream, stream_frame

    begin = time.perf_counter()  # the whole run's clock: from the stream's first call, start-up included
    actors = cfg.infer.actors
    if mode == "tasks":
        cfg = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, num_cpus=0, calls_per_actor=1))
        feed = scoring_feed(cfg, use_gpu=False)
        ds, decode = image_stream(rows, feed.decode, feed.stream), None
    else:
        share = cpus / actors
        infer = dataclasses.replace(cfg.infer, num_cpus=share, decode_threads=max(1, round(share)), calls_per_actor=1)
        cfg = dataclasses.replace(cfg, infer=infer)
        feed = scoring_feed(cfg, use_gpu=False)
        ds, decode = actor_index_stream(stream_frame(rows), feed.pool, feed.stream), feed.decode
    stream = actor_stream(ds, NullModelStage, (decode, cfg.infer.batch_size), feed.pool)
    count, reasons, sent, busy, done = 0, [], 0.0, 0.0, []
    with MemorySampler(interval_s=2.0) as memory:  # PSS of every process: at 0.5 s it cost ~7 % of the rate here
        start, wall = time.perf_counter(), time.time()
        last_row = start
        for batch in stream.iter_batches(batch_size=256, batch_format="numpy", prefetch_batches=2):
            last_row = time.perf_counter()  # this batch's rows are at the driver
            count += len(batch["image_id"])
            reasons += [str(e) for e in batch["error"] if e != ""]
            sent += float(batch["sent_bytes"].sum())
            busy += float(batch["busy_s"].sum())
            done.append(batch["done_at"])
        seconds = time.perf_counter() - start
    done_at = np.sort(np.concatenate(done)) - wall if done else np.zeros(0)
    whole = last_row - begin
    steady = steady_rate(done_at)
    startup_lost, drain_lost = lost_seconds(done_at, steady, start - begin, last_row - start)
    return {
        "rows_in": len(rows),
        "images": count,
        "error_reasons": reasons,
        "seconds": seconds,
        "steady_img_per_s": steady,
        "whole_s": whole,
        "whole_img_per_s": count / whole if whole > 0 else 0.0,
        "startup_lost_s": startup_lost,
        "drain_lost_s": drain_lost,
        "first_call_done_s": float(done_at[0]) if count else seconds,
        "store_bytes_per_image": sent / max(count, 1),
        "actor_busy": busy / seconds / max(actors, 1),
        "peak_mem_mb": memory.peak_bytes / 2**20,
    }


def steady_rate(done_at: np.ndarray, skip: float = WINDOW[0], drain: float = WINDOW[1]) -> float:
    """Returns img/s of a stream from the sorted per-row times its actor calls finished, between the `skip` and
    the `1 - drain` quantiles of the rows: before, the actors' start-up and the canvases decode tasks buffered
    meanwhile (they go through faster than the stream can sustain); after, the drain, where the actors run out
    of blocks one by one. Both are fixed costs of a run (`first_results_s` reports the start-up), not its rate."""
    first, last = int(skip * len(done_at)), int(np.ceil((1 - drain) * len(done_at))) - 1
    if last - first < 1 or done_at[last] <= done_at[first]:
        return 0.0
    return (last - first) / float(done_at[last] - done_at[first])


def lost_seconds(
    done_at: np.ndarray, steady: float, setup_s: float, last_row_s: float
) -> tuple[float | None, float | None]:
    """Returns the seconds a whole run took beyond its `steady` rate before and after `steady_rate`'s window.

    `done_at`: the sorted per-row times the actor calls finished, `last_row_s`: when the last row reached the
    driver, both from the start of the iteration, which began `setup_s` after the stream's first call. Start-up:
    the seconds to the window's (WINDOW) first row less its rows before at the steady rate; drain: the seconds
    after the window's last row less its rows after at the steady rate. Their sum is the whole run's seconds less
    rows / steady rate. (None, None) without a steady rate.
    """
    if steady <= 0:
        return None, None
    first, last = int(WINDOW[0] * len(done_at)), int(np.ceil((1 - WINDOW[1]) * len(done_at))) - 1
    startup = setup_s + float(done_at[first]) - first / steady
    return startup, last_row_s - float(done_at[last]) - (len(done_at) - last) / steady


def driver_rate(rows: pd.DataFrame, cfg: Config) -> float:
    """Returns img/s of the decode tasks' canvases iterated on the driver (no actor), the issue's middle row."""
    from engine.runtime.pipeline import image_stream

    feed = scoring_feed(cfg, use_gpu=False)
    stream = image_stream(rows, feed.decode, feed.stream)
    start, count = time.perf_counter(), 0
    for batch in stream.iter_batches(batch_size=256, batch_format="numpy", prefetch_batches=2):
        count += len(batch["image_id"])
    return count / (time.perf_counter() - start)


def run_feed(cfg: Config, index: pd.DataFrame, summary: StageSummary) -> dict[str, Any]:
    """Measures the plain loop and both feeds (`infer.decode` tasks and actor), each at N and `bench.feed_scale` x N.

    Each mode's large run is repeated `bench.feed_repeats` times, each between two plain runs; its figures are
    those of the median run by the steady ratio (`feed_efficiency_<mode>_runs` lists them all, and
    `feed_whole_efficiency_<mode>_runs` the whole-run ratio of each).
    Returns the figures keyed `feed_*` (each mode's rate: `steady_rate` of the large run, and its whole-run rate
    `feed_<mode>_whole_img_per_s` = `feed_<mode>_whole_images` / `feed_<mode>_whole_s`), prints them with whether
    each ratio meets FEED_TARGET, and counts every streamed row in `summary`: rows in, rows back without an error,
    and the error rows by reason.
    """
    import ray

    from engine.runtime.pipeline import stream_frame

    cfg = feed_config(cfg)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n, scale = cfg.bench.feed_images, cfg.bench.feed_scale
    rows = feed_rows(index, n)
    frame, settings = stream_frame(rows), scoring_feed(cfg, use_gpu=False).decode
    plain = [plain_rate(frame, settings, cfg.infer.batch_size)]  # again after each feed: the machine drifts
    out: dict[str, Any] = {
        "feed_canvas": f"{cfg.canvas.height}x{cfg.canvas.width}",
        "feed_images": n,
        "feed_decode_cpus": cpus,
        "feed_tasks_to_driver_img_per_s": round(driver_rate(rows, cfg), 1),
    }
    print(f"bench feed: plain decode + letterbox {plain[0]:.0f} img/s per core at {out['feed_canvas']}", flush=True)
    for mode in ("tasks", "actor"):
        small, larges, per_cores = stream_rate(rows, cfg, mode, cpus), [], []
        for _ in range(cfg.bench.feed_repeats):  # each large run between two plain runs: the machine drifts
            larges.append(stream_rate(feed_rows(index, n * scale), cfg, mode, cpus))
            plain.append(plain_rate(frame, settings, cfg.infer.batch_size))
            per_cores.append((plain[-2] + plain[-1]) / 2)
        effs = [run["steady_img_per_s"] / (cpus * per_core) for run, per_core in zip(larges, per_cores, strict=True)]
        wholes = [run["whole_img_per_s"] / (cpus * per_core) for run, per_core in zip(larges, per_cores, strict=True)]
        pick = int(np.argsort(effs)[(len(effs) - 1) // 2])  # the median run (the lower middle of an even count)
        large, eff, rate = larges[pick], effs[pick], larges[pick]["steady_img_per_s"]
        peak_large = max(run["peak_mem_mb"] for run in larges)
        print(
            f"bench feed: infer.decode={mode}: {rate:.0f} img/s ({eff:.2f} of the plain loop on {cpus} CPUs; "
            f"runs {', '.join(f'{e:.2f}' for e in effs)}), first results after {small['first_call_done_s']:.1f} s",
            flush=True,
        )
        lost = large["startup_lost_s"], large["drain_lost_s"]
        print(
            f"bench feed: infer.decode={mode}, whole run: {large['whole_img_per_s']:.0f} img/s ({wholes[pick]:.2f}; "
            f"runs {', '.join(f'{e:.2f}' for e in wholes)}), {large['images']} images in {large['whole_s']:.1f} s"
            + ("" if None in lost else f", {lost[0]:.1f} s start-up and {lost[1]:.1f} s drain beyond the steady rate"),
            flush=True,
        )
        out.update(
            {
                f"feed_{mode}_img_per_s": round(rate, 1),
                f"feed_efficiency_{mode}": round(eff, 3),
                f"feed_efficiency_{mode}_runs": [round(e, 3) for e in effs],
                f"feed_{mode}_whole_img_per_s": round(large["whole_img_per_s"], 1),
                f"feed_whole_efficiency_{mode}": round(wholes[pick], 3),
                f"feed_whole_efficiency_{mode}_runs": [round(e, 3) for e in wholes],
                f"feed_{mode}_whole_images": large["images"],
                f"feed_{mode}_whole_s": round(large["whole_s"], 3),
                f"feed_{mode}_startup_lost_s": None if lost[0] is None else round(lost[0], 3),
                f"feed_{mode}_drain_lost_s": None if lost[1] is None else round(lost[1], 3),
                f"feed_{mode}_small_img_per_s": round(small["steady_img_per_s"], 1),
                f"feed_{mode}_first_results_s": round(small["first_call_done_s"], 2),
                f"feed_{mode}_store_kb_per_image": round(small["store_bytes_per_image"] / 1024, 2),
                f"feed_{mode}_actor_busy": round(large["actor_busy"], 3),
                f"feed_{mode}_mem_large_over_small": round(peak_large / small["peak_mem_mb"], 3),
                f"feed_{mode}_plain_per_core_img_per_s": round(per_cores[pick], 1),
                f"feed_{mode}_peak_mem_mb_large": round(peak_large, 1),
            }
        )
        for run in (small, *larges):
            summary.rows_in += run["rows_in"]
            summary.rows_ok += run["images"] - len(run["error_reasons"])
            summary.add_errors(run["error_reasons"])
    out["feed_plain_per_core_img_per_s"] = [round(p, 1) for p in plain]
    for line in target_lines(out):
        print(f"bench feed: {line}", flush=True)
    return out


def target_lines(figures: dict[str, Any]) -> list[str]:
    """Returns the summary's lines saying which ratio is which and whether each mode's meets FEED_TARGET."""
    skip, drain = (round(100 * share) for share in WINDOW)
    lines = [
        f"steady = rows between the {skip} % and {100 - drain} % quantiles of the call-finish times over their "
        "seconds; whole run = all rows over the seconds from building the stream to the last row at the driver "
        f"(start-up and drain included); both over CPUs x plain img/s per core; the target is >= {FEED_TARGET} "
        "for both"
    ]
    for mode in ("tasks", "actor"):
        said = [
            f"{name} {figures[key]:.3f} ({'meets' if figures[key] >= FEED_TARGET else 'below'} the target)"
            for name, key in (("steady", f"feed_efficiency_{mode}"), ("whole run", f"feed_whole_efficiency_{mode}"))
        ]
        lines.append(f"infer.decode={mode}: {', '.join(said)}")
    return lines
