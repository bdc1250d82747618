"""`python -m jobs <stage> --help`: the config keys of the sections the stage declares reading (`Stage.sections`),
with their defaults and meanings.

Everything comes from the dataclasses of engine/config.py and engine/config_sections.py: the field names, their
defaults and the one-line comment each field carries in the source, so the help never drifts from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import tokenize
from functools import cache
from typing import TYPE_CHECKING, Any

from engine.config import Config

if TYPE_CHECKING:
    from engine.stages._stage import Stage

COMMON = ("seed", "data", "run", "log")


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Returns each field's trailing `# comment` in the source of dataclass `cls` (first line of the field)."""
    source = inspect.getsource(cls)
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            found[node.target.id] = next((comments[n] for n in lines if n in comments), "")
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else str(value)


def config_keys(sections: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """Returns (dotted key, default, meaning) for the top-level keys and the fields of `sections`, in order."""
    rows: list[tuple[str, str, str]] = []
    top = {f.name: f for f in dataclasses.fields(Config)}
    for name in sections:
        value = _default(top[name])
        if not dataclasses.is_dataclass(value):
            rows.append((name, _show(value), field_comments(Config).get(name, "")))
            continue
        comments = field_comments(type(value))
        for f in dataclasses.fields(value):
            rows.append((f"{name}.{f.name}", _show(getattr(value, f.name)), comments.get(f.name, "")))
    return rows


def stage_help(stage: Stage | str) -> str:
    """Returns the `--help` epilog of `stage` (its declaration, or a stage's name): the config keys of the common
    sections and of the ones it declares, default values and meanings."""
    if isinstance(stage, str):
        from engine.stages import stage as declaration

        stage = declaration(stage)
    sections = tuple(dict.fromkeys((*COMMON, *stage.sections)))
    rows = config_keys(sections)
    width = min(max(len(f"{k} = {d}") for k, d, _ in rows), 40)
    lines = [f"  {f'{k} = {d}':<{width}}  {m}" for k, d, m in rows]
    return "config keys (key = default, then what it means; set with key=value):\n" + "\n".join(lines)
