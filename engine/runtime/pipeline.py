"""Ray plumbing: start or attach to Ray, build the image stream and the actor pools of the batch UDFs.

The only module that imports `ray.data`. On one machine Ray starts embedded; with `RAY_ADDRESS`
(or `ray.address`) set, the same calls attach to that cluster. Its functions take small frozen settings (built by
the stage from its config sections), never the whole Config.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import ray
import ray.data

import engine
import schemas
from engine.config import RayConfig
from engine.core.localization.columns import QC_BODY_COLUMNS
from engine.core.sizing import index_block_sizes
from engine.runtime.console import Progress, quiet_driver_loggers, ray_init_options
from engine.runtime.decode import BatchDecoder, DecodeSettings
from engine.runtime.udfs.cam import CamSettings, ClassifyCamStage

STREAM_COLUMNS = ("image_id", "patient_id", "view", "split", "folder", "label", "path")
T = TypeVar("T")


@dataclass(frozen=True)
class StreamSettings:
    """How index rows enter Ray Data and what one decode task takes (`ray.decode_*`, `ray.max_input_blocks`)."""

    decode_batch_size: int = 16  # images per decode + letterbox task
    decode_num_cpus: float = 1.0  # CPUs reserved per decode task
    max_input_blocks: int = 1000  # index rows enter the stream in at most this many blocks (~5 ms each)

    @classmethod
    def of(cls, ray_cfg: RayConfig) -> StreamSettings:
        """Returns the stream settings of the `ray` section."""
        return cls(ray_cfg.decode_batch_size, ray_cfg.decode_num_cpus, ray_cfg.max_input_blocks)


@dataclass(frozen=True)
class PoolSpec:
    """An actor pool of one batch UDF: its actors, what each holds, the rows of one call and the calls at once."""

    actors: int  # actors in the pool
    rows_per_call: int  # rows of one UDF call (Ray Data's batch_size)
    num_cpus: float | None = None  # CPUs reserved per actor; None: Ray's default
    num_gpus: float = 0.0  # GPUs per actor (0 without a GPU)
    calls_per_actor: int | None = None  # calls one actor runs at once, on threads; None: Ray's default (one)
    tasks_in_flight: int | None = None  # blocks (Ray tasks) queued on one actor at a time; None: Ray's default


@dataclass(frozen=True)
class ScoringFeed:
    """How `make infer` / `make cam` feed index rows to the model actors (`infer.*`, `ray.*`)."""

    pool: PoolSpec  # the model actors
    decode: DecodeSettings  # `threads`: what a decoding model actor uses (decode tasks use one)
    stream: StreamSettings
    in_actor: bool = True  # infer.decode=actor: the model actors decode their rows; False: Ray Data decode tasks


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


def stream_frame(rows: pd.DataFrame, carry: tuple[str, ...] = ()) -> pd.DataFrame:
    """Returns the index columns that travel with each image: STREAM_COLUMNS, the QC body box and `carry`.

    `label` becomes int64 with -1 for unlabeled rows (a clinic's scans).
    """
    names = dict.fromkeys((*STREAM_COLUMNS, *QC_BODY_COLUMNS, *carry))
    frame = rows.loc[:, [c for c in names if c in rows]].reset_index(drop=True)
    frame["label"] = frame["label"].astype("Float64").fillna(-1).astype(np.int64)
    return frame


def image_stream(
    rows: pd.DataFrame, decode: DecodeSettings, stream: StreamSettings, carry: tuple[str, ...] = ()
) -> ray.data.Dataset:
    """Returns a Dataset of letterboxed uint8 canvases + meta + `error` for the given index rows (decode tasks).

    The driver ships only the (small) index rows; workers read the bytes from `decode.data_root`. `carry` names
    further columns of `rows` that travel with each image (STREAM_COLUMNS and the QC body box always do).
    """
    udf = BatchDecoder(dataclasses.replace(decode, threads=1))  # one decode task, one thread
    return row_stream(stream_frame(rows, carry), stream, udf)


def index_stream(frame: pd.DataFrame, stream: StreamSettings, block_sizes: list[int] | None = None) -> ray.data.Dataset:
    """Returns a Dataset of `frame`'s rows in blocks of `block_sizes` rows, in order (None: decode-task blocks, at
    most `stream.max_input_blocks` of them); no work on them yet."""
    if block_sizes is None:
        batch_rows = max(stream.decode_batch_size, 1)
        # from_pandas costs the driver ~5 ms per block (82.5k rows: 29 s in 16-row blocks, 0.7 s in 1024-row ones).
        block_rows = max(batch_rows, math.ceil(len(frame) / max(stream.max_input_blocks, 1)))
        block_sizes = [block_rows] * math.ceil(len(frame) / block_rows)
    starts = np.cumsum([0, *block_sizes[:-1]], dtype=np.int64)
    chunks = [frame.iloc[int(a) : int(a) + size] for a, size in zip(starts, block_sizes, strict=True)] or [frame]
    return ray.data.from_pandas(chunks)


def row_stream(frame: pd.DataFrame, stream: StreamSettings, udf: Callable[[dict], dict]) -> ray.data.Dataset:
    """Returns a Dataset of `udf` mapped over numpy batches of `frame` (decode tasks, `stream`'s sizes)."""
    return task_stream(index_stream(frame, stream), udf, stream.decode_batch_size, stream.decode_num_cpus)


def task_stream(
    ds: ray.data.Dataset, udf: Callable[[dict], dict], rows_per_call: int, num_cpus: float
) -> ray.data.Dataset:
    """Returns `ds` mapped through `udf` in Ray tasks (no state kept between calls), `rows_per_call` rows a call."""
    return ds.map_batches(udf, batch_size=max(rows_per_call, 1), num_cpus=num_cpus, batch_format="numpy")


def scored_stream(rows: pd.DataFrame, settings: CamSettings, feed: ScoringFeed) -> ray.data.Dataset:
    """Returns the model stream of `make infer` / `make cam` over index `rows`: an actor pool of ClassifyCamStage.

    `feed.in_actor` False: Ray Data decode tasks letterbox the images and ship the canvases to the model actors
    through the object store. True: only the index rows travel; each model actor decodes its batch on
    `feed.decode.threads` threads before the model runs. Both give the same rows, errors included (`decode_batch`
    either way). With `feed.pool.calls_per_actor` > 1 an actor runs that many batches at once on threads, so that
    one batch's host-to-device copy and box extraction overlap another's forward pass (ClassifyCamStage gives each
    thread its own CUDA stream).
    """
    if not feed.in_actor:
        return actor_stream(image_stream(rows, feed.decode, feed.stream), ClassifyCamStage, (settings,), feed.pool)
    settings = dataclasses.replace(settings, decode=feed.decode)
    ds = actor_index_stream(stream_frame(rows), feed.pool, feed.stream)
    return actor_stream(ds, ClassifyCamStage, (settings,), feed.pool)


def actor_index_stream(frame: pd.DataFrame, pool: PoolSpec, stream: StreamSettings) -> ray.data.Dataset:
    """Returns `frame`'s index rows for `pool`'s actors to decode (engine.core.sizing.index_block_sizes)."""
    in_flight = {} if pool.tasks_in_flight is None else {"in_flight": pool.tasks_in_flight}
    return index_stream(frame, stream, index_block_sizes(len(frame), pool.rows_per_call, pool.actors, **in_flight))


def actor_stream(ds: ray.data.Dataset, udf_cls: type, args: tuple[Any, ...], pool: PoolSpec) -> ray.data.Dataset:
    """Returns `ds` mapped through an actor pool of `udf_cls(*args)` sized by `pool`: the one actor-pool builder.

    `udf_cls` is any batch UDF class (`__init__` loads the heavy state once per actor, `__call__` maps one numpy
    batch of `pool.rows_per_call` rows); a field of `pool` left None keeps Ray's default.
    """
    strategy: dict[str, Any] = {"size": pool.actors}
    if pool.calls_per_actor is not None:
        strategy["max_concurrent_calls_per_actor"] = pool.calls_per_actor
        strategy["enable_true_multi_threading"] = pool.calls_per_actor > 1
    if pool.tasks_in_flight is not None:
        strategy["max_tasks_in_flight_per_actor"] = pool.tasks_in_flight
    resources = {} if pool.num_cpus is None else {"num_cpus": pool.num_cpus}
    return ds.map_batches(
        udf_cls,
        fn_constructor_args=args,
        batch_size=pool.rows_per_call,
        num_gpus=pool.num_gpus,
        compute=ray.data.ActorPoolStrategy(**strategy),
        batch_format="numpy",
        **resources,
    )


def iter_results(
    ds: ray.data.Dataset, batch_size: int = 256, progress: str = "", total: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
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
