"""A stage declares itself once, in its own module: `STAGE = Stage(...)` at the end of `engine/stages/<name>.py`.

The command line (`python -m jobs <name>`), its `--help`, the driver-side checks of engine/preflight.py and the
Makefile's targets all read this declaration, so a new stage is its module, its config section, its schema (when
it writes a new table) and its tests. A stage module imports Ray, torch and timm only inside its functions:
importing it to read the declaration stays light (preflight answers before the heavy imports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.config import Config
    from engine.io.summary import StageSummary


@dataclass(frozen=True)
class Need:
    """One input of a stage: a table (folder under `<run.dir>/tables`) or a file under the run dir."""

    path: str  # relative to run.dir: `tables/<name>` or a file such as `model/best.pt`
    made_by: str  # the command that makes it


INDEX, SPLITS = Need("tables/index", "make index"), Need("tables/splits", "make split")
MODEL, THRESHOLD = Need("model/best.pt", "make train"), Need("tables/thresholds", "make threshold")
HEATMAPS, BOXES = Need("tables/heatmaps", "make cam"), Need("tables/boxes", "make cam")


@dataclass(frozen=True)
class Stage:
    """A make target: what it runs, reads and writes, and its one line of help.

    `python -m jobs <name> --check-enabled` runs nothing and answers a stage's on/off switch in the exit code: 0 when
    the config section named after the stage has `enabled: true`, 1 when false (`make all` asks segtrain's).
    """

    name: str  # `make <name>`, `python -m jobs <name>`
    run: Callable[[Config], StageSummary | None]  # does the work; its summary is printed (None: a stage that serves)
    help: str  # one line for `make help` and `python -m jobs --list`
    sections: tuple[str, ...] = ()  # config sections it reads besides seed, data, run and log (its --help lists them)
    needs: tuple[Need, ...] = ()  # inputs checked before Ray starts (engine/preflight.py)
    writes: tuple[str, ...] = ()  # tables it writes
    more_needs: Callable[[Config], tuple[Need, ...]] | None = None  # inputs that only some settings need
    serves: bool = False  # runs until Ctrl-C (`make browse`): no input checks, start line or summary; Ctrl-C exits 0
    data: Callable[[Config], str] | None = None  # the data it reads when not data.root (its start line names it)

    def inputs(self, cfg: Config) -> tuple[Need, ...]:
        """Returns what this stage reads with `cfg`: `needs`, then `more_needs(cfg)`."""
        return (*self.needs, *(self.more_needs(cfg) if self.more_needs else ()))
