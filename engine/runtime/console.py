"""What a job prints: Ray's own logs quiet unless asked for, progress lines, one line per epoch.

Ray's chatter is switched off with Ray's own settings, never by filtering text: `ray.init(log_to_driver=False)`
keeps every worker's and actor's output in the Ray session's log files (Ray's temp dir, `session_latest/logs`), the
driver's `ray` loggers (ray.data's included, which sets its own level) are raised to ERROR.

Ray's C++ core (the driver's core worker) writes straight to file descriptor 2, below Python: on stages with a
model actor pool it logs "Actor ... has constructor arguments in the object store and max_restarts > 0" for every
Ray Data actor pool (https://github.com/ray-project/ray/issues/57733, open; the restarts are what survives a
killed model actor, tests/runtime/test_faults.py, so they stay on). `route_native_stderr` therefore points descriptor 2
at a log file per job and gives Python's `sys.stderr` a copy of the terminal: every Python line (progress,
warnings, tracebacks, `error:` lines) still reaches the terminal, native libraries' output goes to the file,
whose path a failing job prints. `log.level=debug` (or `--verbose` on a job's command line) leaves Ray's logging
and descriptor 2 as Ray sets them.

Progress goes to stderr: a tqdm bar on a terminal; without one (CI, `make demo | tee`) a plain line at most every
`log.progress_s` seconds, so a long stage writes a few lines, not one per batch.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from engine.config_sections import LogConfig

_settings: dict[str, Any] = {"verbose": False, "progress_s": 30.0}  # set once per process by `configure` (jobs/_cli.py)
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air")


def configure(cfg: LogConfig) -> None:
    """Sets this process's verbosity from the `log` config section (called by the job CLI before any stage)."""
    _settings.update(verbose=cfg.level == "debug", progress_s=cfg.progress_s)
    if cfg.level == "debug":
        logging.getLogger("engine").setLevel(logging.DEBUG)  # otherwise the engine's warnings only (jobs/_cli.py)


def is_verbose() -> bool:
    """Returns True when Ray's own logs should reach the terminal (`log.level=debug`)."""
    return bool(_settings["verbose"])


def ray_init_options() -> dict[str, Any]:
    """Returns the `ray.init` keywords of the current verbosity (worker output reaches the driver only if verbose)."""
    return {"log_to_driver": is_verbose()}


def quiet_driver_loggers() -> None:
    """Raises the driver's Ray loggers to ERROR and hides Ray's deprecation warnings, unless verbose.

    Called before and after `ray.init` (ray.data configures its logger when imported, at level DEBUG).
    """
    if is_verbose():
        return
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from ray.util.annotations import RayDeprecationWarning

    warnings.filterwarnings("ignore", category=RayDeprecationWarning)


def native_log_path(stage: str) -> str:
    """Returns the file a job's native stderr goes to: `$TMPDIR/bs80k-logs/<stage>-<pid>.log`."""
    folder = os.path.join(tempfile.gettempdir(), "bs80k-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{stage or 'job'}-{os.getpid()}.log")


def route_native_stderr(stage: str) -> str:
    """Points file descriptor 2 at the job's native log, keeps `sys.stderr` on the terminal; returns the log's path.

    A no-op returning "" when verbose (Ray's own lines stay on the terminal) or when `sys.stderr` is not the
    process's own (pytest, a notebook: the embedding program keeps its streams) or under `python -X importtime`
    (the import profile is what the caller asked to see on stderr). Child processes started afterwards
    (Ray's raylet, GCS, workers) inherit the log file as their stderr. An empty log is removed at exit.
    """
    embedded = sys.stderr is not sys.__stderr__ or "importtime" in sys._xoptions
    if is_verbose() or embedded or _settings.get("native_log"):
        return str(_settings.get("native_log", ""))
    path = native_log_path(stage)
    sys.stderr.flush()
    terminal = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    _settings["native_log"] = path
    atexit.register(_remove_if_empty, path)
    return path


def _remove_if_empty(path: str) -> None:
    try:
        if os.path.getsize(path) == 0:
            os.remove(path)
    except OSError:
        pass


def format_duration(seconds: float) -> str:
    """Returns `seconds` as `42s`, `3m05s` or `1h02m`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(label: str, done: int, total: int | None, elapsed_s: float, unit: str) -> str:
    """Returns one plain progress line: `cam: 120/400 images (30%), 12.0 images/s, 23s left`."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if not total:
        return f"{label}: {done} {unit}, {rate:.1f} {unit}/s, {format_duration(elapsed_s)} elapsed"
    left = (total - done) / rate if rate > 0 else float("nan")
    eta = format_duration(left) if left == left else "?"
    return f"{label}: {done}/{total} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s, {eta} left"


class Progress:
    """A progress display over `total` items: tqdm on a terminal, else a plain line every `interval_s` seconds.

    `leave=False` clears the bar when done (the epoch line replaces it); without a terminal `close` always writes
    one closing line with the count and the rate.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        stream: TextIO | None = None,
        interval_s: float | None = None,
        leave: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.total, self.unit, self.done = label, total, unit, 0
        self.stream = stream or sys.stderr
        self.interval_s = float(_settings["progress_s"] if interval_s is None else interval_s)
        self.clock = clock  # seconds; a test passes its own
        self.started = self.last_line = clock()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=f" {unit}", file=self.stream, mininterval=0.5, leave=leave)

    def update(self, count: int) -> None:
        """Counts `count` more items done."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = self.clock()
        if now - self.last_line >= self.interval_s and self.done != self.total:  # the closing line says 100%
            self.last_line = now
            self._line(progress_line(self.label, self.done, self.total, now - self.started, self.unit))

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def write(self, line: str) -> None:
        """Prints a whole line (an epoch line) without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Ends the display; without a terminal, one last line with the final count and rate."""
        if self.bar is not None:
            self.bar.close()
        elif self.done:
            elapsed = self.clock() - self.started
            self._line(done_line(self.label, self.done, self.total, elapsed, self.unit))


def done_line(label: str, done: int, total: int | None, elapsed_s: float, unit: str) -> str:
    """Returns the closing progress line: `cam: 400/400 images, 12.0 images/s in 33s`."""
    count = f"{done}/{total}" if total else str(done)
    return f"{label}: {count} {unit}, {done / max(elapsed_s, 1e-9):.1f} {unit}/s in {format_duration(elapsed_s)}"


def epoch_line(metrics: dict[str, Any], epochs: int) -> str:
    """Returns the one terminal line of a finished epoch (`epoch` counted from 1): val_auc for make train,
    val_dice for make segtrain."""
    score = "val_auc" if "val_auc" in metrics else "val_dice"
    return (
        f"epoch {metrics['epoch']}/{epochs} train_loss {metrics['train_loss']:.4f} val_loss {metrics['val_loss']:.4f} "
        f"{score} {metrics[score]:.4f} {metrics['img_per_s']:.1f} img/s{' *best' if metrics['is_best'] else ''}"
    )
