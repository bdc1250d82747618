"""Ray plumbing: start or attach to Ray, build the image stream and the model actor pool.

The only module that imports `ray.data`. On one machine Ray starts embedded; with `RAY_ADDRESS`
(or `ray.address`) set, the same calls attach to that cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import ray
import ray.data

import engine
import schemas
from engine.config import Config, ConfigError, RayConfig
from engine.core.localization.columns import QC_BODY_COLUMNS
from engine.core.sizing import index_block_sizes
from engine.runtime.console import Progress, epoch_line, quiet_driver_loggers, ray_init_options
from engine.runtime.decode import BatchDecoder, DecodeSettings
from engine.runtime.udfs import CamSettings, ClassifyCamStage

log = logging.getLogger(__name__)

STREAM_COLUMNS = ("image_id", "patient_id", "view", "split", "folder", "label", "path")
T = TypeVar("T")


def cluster_address(cfg: RayConfig) -> str:
    """Returns the Ray cluster to attach to (`ray.address`, else RAY_ADDRESS); "" means an embedded Ray."""
    return cfg.address or os.environ.get("RAY_ADDRESS", "")


def init_ray(cfg: RayConfig) -> None:
    """Attaches to `ray.address` / `RAY_ADDRESS` when set, else starts an embedded local Ray."""
    if ray.is_initialized():
        return
    address = cluster_address(cfg)
    quiet_driver_loggers()
    if address:
        # Nodes import engine/ and schemas/ from this upload, not from a checkout on their own disk.
        code = {"py_modules": [engine, schemas], "excludes": ["__pycache__"]} if cfg.ship_code else None
        ray.init(address=address, runtime_env=code, **ray_init_options())
    else:
        kwargs = {"num_cpus": cfg.num_cpus} if cfg.num_cpus else {}
        # "local": never attach to a `ray start` cluster that ray.init() would find in Ray's temp dir.
        ray.init(address="local", include_dashboard=False, configure_logging=False, **ray_init_options(), **kwargs)
    quiet_driver_loggers()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the stages draw their own (engine/runtime/console.py), on the driver
    ctx.print_on_execution_start = False


def run_on_worker(fn: Callable[..., T], *args: Any, num_cpus: float = 1.0) -> T:
    """Returns fn(*args) computed in a Ray task on a cluster node (which sees the data; the driver may not)."""
    return ray.get(ray.remote(num_cpus=num_cpus)(fn).remote(*args))


def use_gpu(setting: str) -> bool:
    """Returns True when a GPU should be used: `true`, or `auto` with GPUs in the Ray cluster."""
    if setting in ("true", "True", "1"):
        return True
    if setting in ("false", "False", "0"):
        return False
    return ray.cluster_resources().get("GPU", 0) > 0


def train_fit_problem(
    cluster: dict[str, float], workers: int, cpus_per_worker: float, decode_cpus: float, gpu: bool
) -> str | None:
    """Returns why `make train` cannot run on a cluster of these resources, or None when it fits.

    The Train workers hold their resources for the whole run and Ray Data schedules the decode tasks
    only on what is left: when nothing is left the stream never starts and training waits forever.
    """
    worker_cpus = 0.0 if gpu else workers * cpus_per_worker
    need_cpus, have_cpus = worker_cpus + decode_cpus, cluster.get("CPU", 0.0)
    if need_cpus > have_cpus:
        return (
            f"train needs {workers} x {0 if gpu else cpus_per_worker:g} CPUs (train.num_workers x "
            f"train.cpus_per_worker) + {decode_cpus:g} for a decode task (ray.decode_num_cpus) = {need_cpus:g} "
            f"CPUs, but the Ray cluster has {have_cpus:g}: lower train.num_workers, train.cpus_per_worker or "
            f"ray.decode_num_cpus (fractions work, e.g. train.cpus_per_worker=0.5 ray.decode_num_cpus=0.5)"
        )
    if gpu and workers > cluster.get("GPU", 0.0):
        return (f"train needs {workers} GPUs (train.num_workers, 1 GPU each), but the Ray cluster has "
                f"{cluster.get('GPU', 0.0):g}: lower train.num_workers or set train.use_gpu=false")  # fmt: skip
    return None


def check_train_fits(cfg: Config, gpu: bool) -> None:
    """Raises ConfigError when an embedded Ray cannot hold the Train workers and a decode task at once.

    An attached cluster may still grow (autoscaling), so there the same finding is only a warning.
    """
    problem = train_fit_problem(ray.cluster_resources(), cfg.train.num_workers, cfg.train.cpus_per_worker,
                                cfg.ray.decode_num_cpus, gpu)  # fmt: skip
    if problem is None:
        return
    if cluster_address(cfg.ray):
        log.warning("%s (the cluster may still add nodes; otherwise training waits forever)", problem)
        return
    raise ConfigError(problem)


def stream_frame(rows: pd.DataFrame, carry: tuple[str, ...] = ()) -> pd.DataFrame:
    """Returns the index columns that travel with each image: STREAM_COLUMNS, the QC body box and `carry`.

    `label` becomes int64 with -1 for unlabeled rows (a clinic's scans).
    """
    names = dict.fromkeys((*STREAM_COLUMNS, *QC_BODY_COLUMNS, *carry))
    frame = rows.loc[:, [c for c in names if c in rows]].reset_index(drop=True)
    frame["label"] = frame["label"].astype("Float64").fillna(-1).astype(np.int64)
    return frame


def decode_settings(cfg: Config) -> DecodeSettings:
    """Returns the decode + letterbox settings of `cfg`; `threads` is what a decoding model actor uses."""
    threads = cfg.infer.decode_threads or max(1, math.ceil(cfg.infer.num_cpus))
    return DecodeSettings(data_root=cfg.data.root, canvas_h=cfg.canvas.height, canvas_w=cfg.canvas.width,
                          count_scale=cfg.data.count_scale, threads=threads)  # fmt: skip


def image_stream(rows: pd.DataFrame, cfg: Config, carry: tuple[str, ...] = ()) -> ray.data.Dataset:
    """Returns a Dataset of letterboxed uint8 canvases + meta + `error` for the given index rows (decode tasks).

    The driver ships only the (small) index rows; workers read the bytes from `data.root`. `carry` names further
    columns of `rows` that travel with each image (STREAM_COLUMNS and the QC body box always do).
    """
    udf = BatchDecoder(dataclasses.replace(decode_settings(cfg), threads=1))  # one decode task, one thread
    return row_stream(stream_frame(rows, carry), cfg, udf)


def index_stream(frame: pd.DataFrame, cfg: Config, block_sizes: list[int] | None = None) -> ray.data.Dataset:
    """Returns a Dataset of `frame`'s rows in blocks of `block_sizes` rows, in order (None: decode-task blocks, at
    most `ray.max_input_blocks` of them); no work on them yet."""
    if block_sizes is None:
        batch_rows = max(cfg.ray.decode_batch_size, 1)
        # from_pandas costs the driver ~5 ms per block (82.5k rows: 29 s in 16-row blocks, 0.7 s in 1024-row ones).
        block_rows = max(batch_rows, math.ceil(len(frame) / max(cfg.ray.max_input_blocks, 1)))
        block_sizes = [block_rows] * math.ceil(len(frame) / block_rows)
    starts = np.cumsum([0, *block_sizes[:-1]], dtype=np.int64)
    chunks = [frame.iloc[int(a) : int(a) + size] for a, size in zip(starts, block_sizes, strict=True)] or [frame]
    return ray.data.from_pandas(chunks)


def row_stream(frame: pd.DataFrame, cfg: Config, udf: Callable[[dict], dict]) -> ray.data.Dataset:
    """Returns a Dataset of `udf` mapped over numpy batches of `frame` (decode tasks, `ray.decode_*` sizes)."""
    return index_stream(frame, cfg).map_batches(
        udf, batch_size=max(cfg.ray.decode_batch_size, 1), num_cpus=cfg.ray.decode_num_cpus, batch_format="numpy"
    )


def scored_stream(rows: pd.DataFrame, cfg: Config, settings: CamSettings) -> ray.data.Dataset:
    """Returns the model stream of `make infer` / `make cam` over index `rows`, decoding where `infer.decode` says.

    `tasks`: Ray Data decode tasks letterbox the images and ship the canvases to the model actors through the
    object store. `actor`: only the index rows travel; each model actor decodes its batch on `infer.decode_threads`
    threads before the model runs. Both give the same rows, errors included (`decode_batch` either way).
    """
    if cfg.infer.decode == "tasks":
        return model_stream(image_stream(rows, cfg), cfg, settings)
    settings = dataclasses.replace(settings, decode=decode_settings(cfg))
    return model_stream(actor_index_stream(stream_frame(rows), cfg), cfg, settings)


def actor_index_stream(frame: pd.DataFrame, cfg: Config) -> ray.data.Dataset:
    """Returns `frame`'s index rows for model actors that decode them (engine.core.sizing.index_block_sizes)."""
    sizes = index_block_sizes(len(frame), call_rows(cfg), cfg.infer.actors, in_flight=tasks_in_flight(cfg))
    return index_stream(frame, cfg, sizes)


def model_stream(ds: ray.data.Dataset, cfg: Config, settings: CamSettings) -> ray.data.Dataset:
    """Returns `ds` mapped through an actor pool of ClassifyCamStage (one GPU each when used).

    With `infer.calls_per_actor` > 1 an actor runs that many batches at once on threads, so that one batch's
    host-to-device copy and box extraction overlap another's forward pass (ClassifyCamStage gives each thread
    its own CUDA stream).
    """
    settings = dataclasses.replace(settings, model_batch=cfg.infer.batch_size)
    return actor_stream(ds, ClassifyCamStage, (settings,), cfg, use_gpu=settings.use_gpu)


def call_rows(cfg: Config) -> int:
    """Returns the rows of one model actor call: `infer.call_batches` model batches of `infer.batch_size`."""
    return cfg.infer.batch_size * cfg.infer.call_batches


def tasks_in_flight(cfg: Config) -> int:
    """Returns the blocks (Ray tasks) queued on one model actor at a time: two per concurrent call, at least 4."""
    return max(4, 2 * cfg.infer.calls_per_actor)


def actor_stream(
    ds: ray.data.Dataset, udf_cls: type, args: tuple[Any, ...], cfg: Config, use_gpu: bool
) -> ray.data.Dataset:
    """Returns `ds` mapped through an actor pool of `udf_cls(*args)` sized by `infer.*` (the model stages' pool).

    `udf_cls` is any batch UDF class (`__init__` loads the heavy state once per actor, `__call__` maps one numpy
    batch of `call_rows(cfg)` rows); `infer.num_gpus` GPUs per actor only with `use_gpu`.
    """
    return ds.map_batches(
        udf_cls,
        fn_constructor_args=args,
        batch_size=call_rows(cfg),
        num_gpus=cfg.infer.num_gpus if use_gpu else 0,
        num_cpus=cfg.infer.num_cpus,
        compute=ray.data.ActorPoolStrategy(
            size=cfg.infer.actors,
            max_concurrent_calls_per_actor=cfg.infer.calls_per_actor,
            enable_true_multi_threading=cfg.infer.calls_per_actor > 1,
            max_tasks_in_flight_per_actor=tasks_in_flight(cfg),
        ),
        batch_format="numpy",
    )


def iter_results(ds: ray.data.Dataset, batch_size: int = 256, progress: str = "",
                 total: int | None = None) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    """Yields the stream's output to the driver in numpy batches (streaming, bounded memory).

    With `progress` (a stage name) the driver shows `total` images' progress as they arrive.
    """
    bar = Progress(progress, total, "images") if progress else None
    try:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            yield batch
            if bar is not None:
                bar.update(len(next(iter(batch.values()), ())))
    finally:
        if bar is not None:
            bar.close()


def progress_queue() -> Any:
    """Returns a Ray queue for the Train workers' progress events (`fit_with_progress`); it holds no CPU."""
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})


def fit_with_progress(trainer: Any, events: Any, epochs: int, batches: int) -> Any:
    """Runs `trainer.fit()` while the driver shows rank 0's events: a batch bar per epoch and one line per epoch.

    Rank 0 puts `("batches", epoch, done)` and `("epoch", metrics)` on `events` (engine/runtime/training.py); the
    workers' own output stays in Ray's log files unless `log.level=debug`.
    """
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the driver's main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="train-fit", daemon=True)
    thread.start()
    bar: Progress | None = None
    while thread.is_alive() or not events.empty():
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            continue
        bar = _show_event(event, bar, epochs, batches)
    if bar is not None:
        bar.close()
    events.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _show_event(event: tuple, bar: Progress | None, epochs: int, batches: int) -> Progress | None:
    """Shows one rank-0 event; returns the bar of the epoch in progress (None after its epoch line)."""
    if event[0] == "batches":
        _, epoch, done = event
        bar = bar or Progress(f"train epoch {epoch}/{epochs}", batches, "batches", leave=False)
        bar.update(done - bar.done)
        return bar
    if bar is not None:
        bar.done = 0  # the epoch line says it all; no closing progress line as well
        bar.close()
    print(epoch_line(event[1], epochs), flush=True)
    return None


def ordered_ingest() -> object:
    """Returns Ray Data execution options that keep block order: the same seed gives the same batches,
    so a resumed run replays exactly what an uninterrupted one would have seen."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return options
