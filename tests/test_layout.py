"""The house plan of engine/ (docs/ARCHITECTURE.md): core stays pure, rooms import only downwards, and no stage
module imports another stage."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
# Which rooms each room may import from (besides itself and the top-level engine modules such as engine.config).
MAY_IMPORT = {"core": set(), "io": {"core"}, "runtime": {"core", "io"}, "stages": {"core", "io", "runtime"}}
CORE_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ENGINE / "core").rglob("*.py") if p.stem != "__init__"
)
# The child makes ray and pyarrow unimportable, then imports one module: pandas 3 loads pyarrow whenever it can, so
# "not in sys.modules" alone would blame every frame-using module; with the block a core module (or anything it
# imports from engine) that needs them fails to import, and one that reaches them by a side door shows in sys.modules.
CHILD = """
import importlib, importlib.abc, sys

class Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "pyarrow"):
            raise ImportError(f"{name} is unavailable in this check")
        return None

sys.meta_path.insert(0, Unavailable())
importlib.import_module(sys.argv[1])
print(",".join(sorted(m for m in sys.modules if m.partition(".")[0] in ("ray", "pyarrow"))))
"""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _engine_imports(path: Path) -> list[tuple[int, str]]:
    """Returns (line, imported module) of every `engine.*` import in `path` (lazy ones too; `from engine.x import y`
    counts as `engine.x.y`, so that importing a submodule by name is seen)."""
    package = _module_name(path).split(".") if path.stem == "__init__" else _module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("engine")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this file's package
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            if base == "engine" or base.startswith("engine."):
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in MAY_IMPORT else None


def test_no_stage_module_imports_another_stage() -> None:
    """A stage module may import the shared `engine.stages._*` modules and its own package's modules, never another
    stage; the shared modules import no stage."""
    offences = []
    for path in sorted((ENGINE / "stages").rglob("*.py")):
        parts = _module_name(path).split(".")
        own = parts[2] if len(parts) > 2 else ""  # engine.stages.cam -> cam; engine.stages.evaluate.run -> evaluate
        for line, target in _engine_imports(path):
            names = target.split(".")
            if names[:2] != ["engine", "stages"] or len(names) < 3:
                continue
            if not names[2].startswith("_") and names[2] != own:
                offences.append(f"{path.relative_to(ROOT)}:{line}: imports {target}")
    assert not offences, "a stage imports another stage:\n" + "\n".join(offences)


def test_rooms_import_only_the_rooms_below_them() -> None:
    """core <- io <- runtime <- stages: a room never imports a room above it."""
    offences = []
    for path in sorted(ENGINE.rglob("*.py")):
        room = _room(_module_name(path))
        if room is None:
            continue
        for line, target in _engine_imports(path):
            other = _room(target)
            if other is not None and other != room and other not in MAY_IMPORT[room]:
                offences.append(f"{path.relative_to(ROOT)}:{line}: engine/{room} imports {target}")
    assert not offences, "an import goes up the house:\n" + "\n".join(offences)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_ray_or_pyarrow(module: str) -> None:
    """Each engine/core module imports in a fresh interpreter where ray and pyarrow cannot load, and loads neither."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, module], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{module} needs ray or pyarrow:\n{result.stderr[-2000:]}"
    assert result.stdout.strip() == "", f"{module} loaded {result.stdout.strip()}"
