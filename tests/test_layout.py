"""The house plan of engine/ (docs/ARCHITECTURE.md): core stays pure, rooms import only downwards, no stage
module imports another stage, Ray stays in runtime/, the whole Config stays above runtime/, and the modules of a
core package import each other without a cycle."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
# Which rooms each room may import from (besides itself and the top-level engine modules such as engine.config).
MAY_IMPORT = {"core": set(), "io": {"core"}, "runtime": {"core", "io"}, "stages": {"core", "io", "runtime"}}
# Where `import ray` may appear: runtime/ is the Ray room; bench/ measures Ray itself (its feed and run compare Ray
# Data against a plain loop and read Ray's own counters), so it keeps a narrow, stated exception.
RAY_ROOMS = ("runtime", "bench")
# Rooms that receive config sections (ModelConfig, MasksConfig, ...), never the whole engine.config.Config.
SECTION_ROOMS = ("core", "io", "runtime")
CORE_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ENGINE / "core").rglob("*.py") if p.stem != "__init__"
)
# The child makes ray and pyarrow unimportable, then imports every core module in turn: pandas 3 loads pyarrow whenever
# it can, so "not in sys.modules" alone would blame every frame-using module; with the block a core module (or anything
# it imports from engine) that needs them fails to import, and one that reaches them by a side door shows in
# sys.modules right after its import. One interpreter for all modules (not one each) keeps the check to seconds.
CHILD = """
import importlib, importlib.abc, json, sys, traceback

class Unavailable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("ray", "pyarrow"):
            raise ImportError(f"{name} is unavailable in this check")
        return None

sys.meta_path.insert(0, Unavailable())
found = {}
for module in sys.argv[1:]:
    try:
        importlib.import_module(module)
        error = ""
    except Exception:
        error = traceback.format_exc()[-2000:]
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("ray", "pyarrow"))
    found[module] = {"error": error, "loaded": loaded}
print(json.dumps(found))
"""


@functools.cache
def _core_imports() -> dict[str, dict]:
    """Returns, per core module, the error of importing it where ray and pyarrow cannot load, and what it loaded."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *CORE_MODULES], cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


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


def _ray_imports(path: Path) -> list[tuple[int, str]]:
    """Returns (line, module) of every `ray` / `ray.*` import in `path` (lazy ones too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.partition(".")[0] == "ray"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").partition(".")[0] == "ray":
            found.append((node.lineno, node.module))
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


def test_only_runtime_imports_ray() -> None:
    """`import ray` / `from ray...` appear under engine/runtime/ only (and engine/bench/, see RAY_ROOMS)."""
    offences = []
    for path in sorted(ENGINE.rglob("*.py")):
        parts = path.relative_to(ENGINE).parts
        if len(parts) > 1 and parts[0] in RAY_ROOMS:
            continue
        offences += [f"{path.relative_to(ROOT)}:{line}: imports {name}" for line, name in _ray_imports(path)]
    assert not offences, "Ray outside engine/runtime:\n" + "\n".join(offences)


def test_runtime_io_and_core_take_config_sections_not_the_whole_config() -> None:
    """No module under engine/runtime, engine/io or engine/core imports engine.config's `Config` (the stages pick
    the sections a function needs; the section dataclasses themselves may be imported)."""
    offences = []
    for room in SECTION_ROOMS:
        for path in sorted((ENGINE / room).rglob("*.py")):
            offences += [
                f"{path.relative_to(ROOT)}:{line}: imports engine.config.Config"
                for line, target in _engine_imports(path)
                if target == "engine.config.Config"
            ]
    assert not offences, "the whole Config below the stages:\n" + "\n".join(offences)


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Returns module -> the other `modules` (name -> file) it imports, lazy imports included; an import of
    `pkg.mod.name` counts as one of `pkg.mod`."""
    edges = {}
    for name, path in modules.items():
        targets = set()
        for _, target in _engine_imports(path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Returns the cycles of an import graph: its strongly connected groups of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_cycle_finder_finds_cycles_and_reads_imports() -> None:
    """The finder itself: a two-module and a three-module cycle beside an acyclic tail; and the graph of a real core
    package holds a known edge (engine/core/masks/sam.py imports the segmenters)."""
    edges = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": set(), "x": {"y"}, "y": {"z"}, "z": {"x", "d"}}
    assert _cycles(edges) == [["a", "b"], ["x", "y", "z"]]
    masks = {_module_name(p): p for p in sorted((ENGINE / "core" / "masks").glob("*.py")) if p.stem != "__init__"}
    assert "engine.core.masks.segmenters" in _import_graph(masks)["engine.core.masks.sam"]


def test_no_import_cycle_inside_a_core_package() -> None:
    """The modules of each engine/core package (and the top-level core modules) import each other without a cycle,
    lazy imports included: a package's shared helpers sit in one module the others import."""
    packages: dict[Path, dict[str, Path]] = {}
    for path in sorted((ENGINE / "core").rglob("*.py")):
        packages.setdefault(path.parent, {})[_module_name(path)] = path
    offences = []
    for folder, modules in sorted(packages.items()):
        modules = {name: path for name, path in modules.items() if path.stem != "__init__"}
        cycles = _cycles(_import_graph(modules))
        offences += [f"{folder.relative_to(ROOT)}: {' <-> '.join(cycle)}" for cycle in cycles]
    assert not offences, "an import cycle in a core package:\n" + "\n".join(offences)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_ray_or_pyarrow(module: str) -> None:
    """Each engine/core module imports where ray and pyarrow cannot load, and loads neither."""
    found = _core_imports()[module]
    assert found["error"] == "", f"{module} needs ray or pyarrow:\n{found['error']}"
    assert found["loaded"] == [], f"{module} loaded {found['loaded']}"
