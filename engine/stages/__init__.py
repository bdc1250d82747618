"""One module (or package) per make target; `_run`, `_rows` and `_scoring` hold the helpers they share, `_stage` the
declaration each of them ends with. No stage imports another.

`stage(name)` imports `engine.stages.<name>` and returns its `STAGE`; `stage_names()` reads the folder, so a new
module is a new stage (`make <name>`, `python -m jobs <name>`) with no list to edit. `make bench`'s harness sits
above the stages (it runs some of them beside a plain loop) and declares itself in `engine/bench/__init__.py`.
"""

from __future__ import annotations

import importlib
import pkgutil

from engine.stages._stage import Stage

ELSEWHERE = {"bench": "engine.bench"}  # stages declared outside this folder: name -> module


def stage_names() -> list[str]:
    """Returns every stage's name, sorted: the modules and packages here whose name does not start with "_", and
    the stages declared elsewhere."""
    here = {module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")}
    return sorted(here | set(ELSEWHERE))


def stage(name: str) -> Stage:
    """Returns the declaration (`STAGE`) of stage `name`, importing its module.

    Raises:
        ValueError: no stage is called `name`, or its module declares no `STAGE` of that name.
    """
    names = stage_names()
    if name not in names:
        raise ValueError(f"no stage {name!r}: expected one of {', '.join(names)}")
    module = importlib.import_module(ELSEWHERE.get(name, f"{__name__}.{name}"))
    declared = getattr(module, "STAGE", None)
    if not isinstance(declared, Stage) or declared.name != name:
        raise ValueError(f"{module.__name__} declares no STAGE = Stage(name={name!r}, ...)")
    return declared
