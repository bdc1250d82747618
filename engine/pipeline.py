"""Ray plumbing: start or attach to Ray, build the image stream and the model actor pool.

The only module that imports `ray.data`. On one machine Ray starts embedded; with `RAY_ADDRESS`
(or `ray.address`) set, the same calls attach to that cluster.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import ray
import ray.data

import engine
import schemas
from engine.config import Config, ConfigError, RayConfig
from engine.inference import CamSettings, ClassifyCamStage
from engine.stages import QC_BODY_COLUMNS, decode_batch

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
    if address:
        # Nodes import engine/ and schemas/ from this upload, not from a checkout on their own disk.
        code = {"py_modules": [engine, schemas], "excludes": ["__pycache__"]} if cfg.ship_code else None
        ray.init(address=address, runtime_env=code)
    else:
        kwargs = {"num_cpus": cfg.num_cpus} if cfg.num_cpus else {}
        # "local": never attach to a `ray start` cluster that ray.init() would find in Ray's temp dir.
        ray.init(address="local", include_dashboard=False, configure_logging=False, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
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


def train_fit_problem(cluster: dict[str, float], workers: int, cpus_per_worker: float, decode_cpus: float,
                      gpu: bool) -> str | None:
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


def image_stream(rows: pd.DataFrame, cfg: Config) -> ray.data.Dataset:
    """Returns a Dataset of letterboxed uint8 canvases + meta + `error` for the given index rows.

    The driver ships only the (small) index rows; workers read the bytes from `data.root`.
    """
    frame = rows.loc[:, [c for c in (*STREAM_COLUMNS, *QC_BODY_COLUMNS) if c in rows]].reset_index(drop=True)
    frame["label"] = frame["label"].astype("Float64").fillna(-1).astype(np.int64)  # -1: unlabeled (a clinic's scans)
    udf = partial(
        decode_batch, data_root=cfg.data.root, canvas_h=cfg.canvas.height, canvas_w=cfg.canvas.width,
        count_scale=cfg.data.count_scale,
    )
    return row_stream(frame, cfg, udf)


def row_stream(frame: pd.DataFrame, cfg: Config, udf: Callable[[dict], dict]) -> ray.data.Dataset:
    """Returns a Dataset of `udf` mapped over numpy batches of `frame` (decode tasks, `ray.decode_*` sizes)."""
    batch_rows = max(cfg.ray.decode_batch_size, 1)
    # from_pandas costs the driver ~5 ms per block (82.5k rows: 29 s in 16-row blocks, 0.7 s in 1024-row ones).
    block_rows = max(batch_rows, math.ceil(len(frame) / max(cfg.ray.max_input_blocks, 1)))
    chunks = [frame.iloc[i : i + block_rows] for i in range(0, len(frame), block_rows)] or [frame]
    return ray.data.from_pandas(chunks).map_batches(
        udf, batch_size=batch_rows, num_cpus=cfg.ray.decode_num_cpus, batch_format="numpy"
    )


def model_stream(ds: ray.data.Dataset, cfg: Config, settings: CamSettings) -> ray.data.Dataset:
    """Returns `ds` mapped through an actor pool of ClassifyCamStage (one GPU each when used).

    With `infer.calls_per_actor` > 1 an actor runs that many batches at once on threads, so that one batch's
    host-to-device copy and box extraction overlap another's forward pass (ClassifyCamStage gives each thread
    its own CUDA stream).
    """
    return ds.map_batches(
        ClassifyCamStage,
        fn_constructor_args=(settings,),
        batch_size=cfg.infer.batch_size,
        num_gpus=cfg.infer.num_gpus if settings.use_gpu else 0,
        num_cpus=cfg.infer.num_cpus,
        compute=ray.data.ActorPoolStrategy(
            size=cfg.infer.actors,
            max_concurrent_calls_per_actor=cfg.infer.calls_per_actor,
            enable_true_multi_threading=cfg.infer.calls_per_actor > 1,
            max_tasks_in_flight_per_actor=max(4, 2 * cfg.infer.calls_per_actor),
        ),
        batch_format="numpy",
    )


def iter_results(ds: ray.data.Dataset, batch_size: int = 256) -> Iterator[dict[str, np.ndarray]]:
    """Yields the stream's output to the driver in numpy batches (streaming, bounded memory)."""
    yield from ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)
