"""StageSummary: the one-screen account every stage prints and writes as JSON beside its tables, and its error rows."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.io.fs import resolve_fs
from engine.io.tables import TableWriter


class AccountError(RuntimeError):
    """A stage's rows in differ from its rows ok + error rows: something was lost or counted twice."""


@dataclass
class StageSummary:
    """Rows in, rows ok, errors by reason, tables written, time and rate of one stage run."""

    stage: str
    rows_in: int = 0
    rows_ok: int = 0
    errors: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)  # rows left out on purpose, by reason (not errors, no row)
    tables: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def add_errors(self, reasons: list[str] | Any) -> None:
        """Counts error reasons by their code (the text before the first ':')."""
        for reason in reasons:
            self.errors[str(reason).split(":", 1)[0]] += 1

    def add_skipped(self, reason: str, count: int) -> None:
        """Counts `count` rows left out on purpose (e.g. `qc_noise_frame`, `equal_split`); they balance the account."""
        if count:
            self.skipped[reason] += int(count)

    def finish(self) -> StageSummary:
        """Stops the clock; returns self."""
        self.seconds = time.time() - self.started
        return self

    @property
    def balanced(self) -> bool:
        """True when rows in = rows ok + error rows + rows skipped on purpose."""
        return self.rows_in == self.rows_ok + sum(self.errors.values()) + sum(self.skipped.values())

    def require_balanced(self) -> None:
        """Raises AccountError unless rows in = rows ok + error rows (the message gives all three)."""
        if not self.balanced:
            raise AccountError(
                f"{self.stage}: {self.rows_in} rows in, but {self.rows_ok} ok + {sum(self.errors.values())} errors"
                f" + {sum(self.skipped.values())} skipped: "
                "rows were lost or counted twice, nothing is committed"
            )

    def commit(self, writer: TableWriter) -> dict[str, int]:
        """Commits `writer` only when the account balances (else aborts it); returns and keeps rows per table.

        Raises:
            AccountError: the account does not balance.
            OutputError: a table's unique key repeats within a partition (TableWriter.commit).
        """
        try:
            self.require_balanced()
        except AccountError:
            writer.abort()
            raise
        self.tables = writer.commit()
        return self.tables

    def to_dict(self) -> dict[str, Any]:
        """Returns the summary as JSON-ready dict."""
        rate = self.rows_in / self.seconds if self.seconds > 0 else 0.0
        return {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_ok": self.rows_ok,
            "errors": sum(self.errors.values()),
            "errors_by_reason": dict(sorted(self.errors.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "balanced": self.balanced,
            "tables": self.tables,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(rate, 2),
            **self.extra,
        }

    def render(self) -> str:
        """Returns the human summary (one screen)."""
        d = self.to_dict()
        lines = [
            f"== {self.stage}: {d['rows_in']} in, {d['rows_ok']} ok, {d['errors']} errors "
            f"({'balanced' if d['balanced'] else 'UNBALANCED'}) in {d['seconds']:.1f} s, {d['rows_per_s']:.1f} rows/s"
        ]
        for reason, count in d["errors_by_reason"].items():
            lines.append(f"   error {reason}: {count}")
        for reason, count in d["skipped"].items():
            lines.append(f"   skipped {reason}: {count}")
        if self.tables:
            lines.append("   rows written: " + ", ".join(f"{name} {rows}" for name, rows in self.tables.items()))
        lines.extend(_packed_extras(self.extra))
        return "\n".join(lines)

    def save(self, run_dir: str) -> str:
        """Stops the clock and writes `<run_dir>/summaries/<stage>.json`; returns its path."""
        self.finish()
        fs, root = resolve_fs(run_dir)
        fs.create_dir(f"{root}/summaries", recursive=True)
        path = f"{root}/summaries/{self.stage}.json"
        with fs.open_output_stream(path) as out:
            out.write(json.dumps(_jsonable(self.to_dict()), indent=2, default=str).encode())
        return path


def _jsonable(value: Any) -> Any:
    """Returns `value` with numpy scalars as Python numbers (json would write them as strings, or fail on keys)."""
    if isinstance(value, dict):
        return {_jsonable(k) if isinstance(k, np.generic) else k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


LINE_WIDTH = 110  # scalar extras share a line up to this width ("   epochs: 4; best_epoch: 3; ...")


def pack_items(
    items: list[str], first: str = "   ", rest: str = "   ", sep: str = "; ", width: int = LINE_WIDTH
) -> list[str]:
    """Returns `items` joined by `sep` on lines of at most `width` characters, greedily, in order.

    The first line starts with `first`, the others with `rest`; an item longer than a line gets a line of its own.
    """
    lines: list[str] = []
    line = ""
    for item in items:
        prefix = rest if lines else first
        if line and len(prefix + line + sep + item) > width:
            lines.append(prefix + line)
            line = item
        else:
            line = f"{line}{sep}{item}" if line else item
    return lines + ([(rest if lines else first) + line] if line else [])


def _packed_extras(extra: dict[str, Any]) -> list[str]:
    """Returns the extras as lines: scalars packed `key: value; key: value` to LINE_WIDTH, a dict per line.

    Empty values are left out (the JSON summary keeps them); a multi-line value keeps its own lines.
    """
    lines: list[str] = []
    scalars: list[str] = []
    for key, value in extra.items():
        text = _short(value)
        if text == "":
            continue
        if isinstance(value, dict) or "\n" in text:
            lines += [*pack_items(scalars), f"   {key}: {text}"]
            scalars = []
        else:
            scalars.append(f"{key}: {text}")
    return lines + pack_items(scalars)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    return str(value)


def write_errors(
    writer: TableWriter, files: Any, image_ids: Any, reasons: list[str], splits: Any, summary: StageSummary
) -> None:
    """Writes `errors` rows of this stage and counts them in the summary."""
    n = len(reasons)
    writer.write(
        "errors",
        {
            "file": list(files),
            "line": [None] * n,
            "image_id": list(image_ids),
            "stage": [writer.stage] * n,
            "reason": reasons,
            "split": list(splits),
        },
    )
    summary.add_errors(reasons)
