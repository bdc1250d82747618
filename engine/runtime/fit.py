"""Ray Train for `make train` and `make segtrain`: one TorchTrainer per run, fitted while the driver shows progress.

The stage builds the two streams, the loop's settings and a `FitSpec`; `fit` starts the workers, each of which
runs the per-worker loop (engine/runtime/training.py, engine/runtime/segtrain_loop.py) with `{"settings": ...,
"events": ...}` as its config. Only `train` is split among the workers; rank 0 scores the whole `val` stream.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from engine.config import ConfigError, RayConfig, TrainConfig
from engine.runtime.console import Progress, epoch_line
from engine.runtime.pipeline import cluster_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSpec:
    """One Ray Train run: its workers, where it keeps its checkpoints (a re-run resumes from them), its length."""

    workers: int  # Ray Train workers (train.num_workers)
    use_gpu: bool  # one GPU per worker, then no CPUs reserved
    cpus_per_worker: float  # CPUs reserved per CPU worker (train.cpus_per_worker)
    max_failures: int  # worker-group restarts before the run fails (train.max_failures)
    run_dir: str  # Ray Train's storage: a local path (made absolute) or a storage URI
    state: str  # the folder under `run_dir` that holds the checkpoints: `train_state`, `segtrain_state`
    epochs: int  # for the driver's display
    steps_per_epoch: int  # batches per epoch of one worker, for the driver's bar

    @classmethod
    def of(cls, train: TrainConfig, use_gpu: bool, run_dir: str, state: str, epochs: int, steps: int) -> FitSpec:
        """Returns the spec of a run with `train.*`'s workers, CPUs and restarts (train and segtrain share them)."""
        return cls(train.num_workers, use_gpu, train.cpus_per_worker, train.max_failures, run_dir, state, epochs, steps)


def fit(loop: Callable[[dict[str, Any]], None], settings: Any, spec: FitSpec, train: Any, val: Any) -> Any:
    """Runs `loop` on the Ray Train workers of `spec` over the `train` and `val` streams; returns Ray Train's result.

    Each worker's config is `{"settings": settings, "events": <queue>}`: rank 0 puts its progress on the queue
    (`fit_with_progress`). Ingest keeps block order, so that a resumed run replays the batches it would have seen.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    storage = spec.run_dir if "://" in spec.run_dir else os.path.abspath(spec.run_dir)
    events = progress_queue()
    trainer = TorchTrainer(
        loop,
        train_loop_config={"settings": settings, "events": events},
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.workers,
            use_gpu=spec.use_gpu,
            resources_per_worker=None if spec.use_gpu else {"CPU": spec.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=spec.state,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": train, "val": val},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=ordered_ingest()),
    )
    return fit_with_progress(trainer, events, spec.epochs, spec.steps_per_epoch)


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
        return (
            f"train needs {workers} GPUs (train.num_workers, 1 GPU each), but the Ray cluster has "
            f"{cluster.get('GPU', 0.0):g}: lower train.num_workers or set train.use_gpu=false"
        )
    return None


def check_train_fits(ray_cfg: RayConfig, workers: int, cpus_per_worker: float, gpu: bool) -> None:
    """Raises ConfigError when an embedded Ray cannot hold the Train workers and a decode task at once.

    An attached cluster may still grow (autoscaling), so there the same finding is only a warning.
    """
    problem = train_fit_problem(ray.cluster_resources(), workers, cpus_per_worker, ray_cfg.decode_num_cpus, gpu)
    if problem is None:
        return
    if cluster_address(ray_cfg):
        log.warning("%s (the cluster may still add nodes; otherwise training waits forever)", problem)
        return
    raise ConfigError(problem)


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
