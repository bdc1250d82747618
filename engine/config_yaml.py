"""YAML -> typed dataclasses: line-tracking loader, type, choice and range checks, dotted overrides (generic).

Field annotations drive the checks: `Literal["a", "b"]` lists the allowed choices and
`Annotated[float, Range(0, 1)]` the allowed range; a value outside them is a `ConfigError` naming
`file:line`, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

import yaml

# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as text: accept such numbers for float keys.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """An unknown key, a wrong type or an unreadable config file."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Inclusive bounds of a numeric field (`None`: unbounded); `low_open` excludes the lower bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def check(self, value: float, where: str, key: str) -> None:
        """Raises ConfigError when `value` lies outside the bounds."""
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and value > self.high
        if too_low or too_high:
            raise ConfigError(f"{where}: key '{key}' must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        """Returns the bounds as text: `in [0, 1]`, `>= 1` or `> 0`."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"<= {self.high:g}"


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key as `(dotted key) -> line`."""


def load_yaml_with_lines(text: str, source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Returns the YAML mapping and, per dotted key, its location `source:line`."""
    lines: dict[str, str] = {}
    node = yaml.compose(text, Loader=_LineLoader)
    if node is None:
        return {}, lines

    def walk(n: yaml.Node, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = f"{source}:{key_node.start_mark.line + 1}"
                walk(value_node, dotted + ".")

    walk(node, "")
    data = yaml.safe_load(text) or {}
    return data, lines


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_text(hint: Any) -> bool:
    """True for `str` and for a `Literal` of strings (maybe inside `Annotated`): overrides keep their raw text."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is typing.Literal:
        return all(isinstance(choice, str) for choice in typing.get_args(hint))
    return hint is str


def _choice(value: Any, choices: tuple[Any, ...], where: str, key: str) -> Any:
    """Returns `value` when it is one of `choices` (YAML `true`/`false` match the texts "true"/"false")."""
    if isinstance(value, bool) and all(isinstance(c, str) for c in choices):
        value = str(value).lower()
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return value
    allowed = ", ".join(str(c) for c in choices)
    raise ConfigError(f"{where}: key '{key}' must be one of {allowed}; got {value!r}")


def _coerce(value: Any, hint: Any, where: str, key: str) -> Any:
    """Checks `value` against the annotation `hint`; returns it converted (lists -> tuples)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        value = _coerce(value, base, where, key)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, where, key)
        return value
    if origin is typing.Literal:
        return _choice(value, typing.get_args(hint), where, key)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)
    elif hint is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    elif origin is tuple and isinstance(value, list | tuple):
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(v, inner, where, key) for v in value)
    elif origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where, key)
            except ConfigError:
                continue
    raise ConfigError(f"{where}: key '{key}' expects {getattr(hint, '__name__', hint)}, got {value!r}")


def build_dataclass(cls: type, data: dict[str, Any], prefix: str, source: str, lines: dict[str, str]) -> Any:
    """Returns `cls(**data)` with nested dataclasses built and every value type-checked."""
    types_by_name = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        where = lines.get(dotted, source)
        if key not in types_by_name:
            known = ", ".join(types_by_name)
            raise ConfigError(f"{where}: unknown key '{dotted}' (known: {known})")
        hint = types_by_name[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key '{dotted}' must be a mapping, got {value!r}")
            kwargs[key] = build_dataclass(hint, value, dotted + ".", source, lines)
        else:
            kwargs[key] = _coerce(value, hint, where, dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a section's __post_init__ check: name the line of the first key it was given
        where = next((lines[f"{prefix}{key}"] for key in data if f"{prefix}{key}" in lines), source)
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'}: {exc}") from exc


def _override_value(root: type, override: str, key: str, raw: str) -> Any:
    """Returns the YAML value of `key=raw`; text keys keep unquoted text as typed (`use_gpu=false`, `dir=007`)."""
    hint: Any = root
    for part in key.split("."):
        hint = _field_types(hint).get(part) if dataclasses.is_dataclass(hint) else None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        if _is_text(hint):
            return raw.strip()
        raise ConfigError(f"override '{override}': invalid YAML value: {exc}") from exc
    return raw.strip() if _is_text(hint) and not isinstance(value, str) else value


def apply_override(root: type, data: dict[str, Any], override: str, lines: dict[str, str]) -> None:
    """Sets dotted `key=value` in `data` (typed by dataclass `root`) and records where it came from."""
    if "=" not in override:
        raise ConfigError(f"override '{override}': expected key=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    value = _override_value(root, override, key, raw)
    node = data
    parts = key.split(".")
    hint: Any = root
    for part in parts[:-1]:
        hint = _field_types(hint).get(part) if dataclasses.is_dataclass(hint) else None
        child = node.setdefault(part, {}) if hint is None or dataclasses.is_dataclass(hint) else None
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value
    lines[key] = f"override '{override}'"
    for depth in range(1, len(parts)):  # an unknown section then names the override, not the file
        lines.setdefault(".".join(parts[:depth]), f"override '{override}'")
