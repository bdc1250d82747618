"""`make tables`: what a run holds: rows, files and bytes on disk of each table, and each stage's last summary line.

Rows come from the Parquet footers (no table is loaded: at full-index scale `heatmaps` alone is many GB), bytes
are every file under `<run.dir>/tables/<name>/`; the summary lines are rebuilt from `<run.dir>/summaries/*.json`,
oldest first. It writes nothing: no table, no summary file, no saved config.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from engine.config import Config
from engine.io.commit import join, recover
from engine.io.fs import resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import table_dir
from engine.stages._stage import Stage

COLUMNS = ["table", "rows", "files", "bytes", "bytes_per_row"]


def _listing(fs: pafs.FileSystem, path: str, recursive: bool = False) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))


def table_usage(fs: pafs.FileSystem, root: str, name: str) -> dict[str, object]:
    """Returns one table's row count (its Parquet footers), file count and bytes on disk."""
    files = [f for f in _listing(fs, table_dir(root, name), recursive=True) if f.type == pafs.FileType.File]
    rows = sum(pq.read_metadata(f.path, filesystem=fs).num_rows for f in files if f.path.endswith(".parquet"))
    size = sum(f.size or 0 for f in files)
    per_row = round(size / rows, 1) if rows else float("nan")
    return {"table": name, "rows": rows, "files": len(files), "bytes": size, "bytes_per_row": per_row}


def summary_line(record: dict, name: str) -> str:
    """Returns the first line a stage printed (`== cam: 40 in, 40 ok, ...`), rebuilt from its summary JSON."""
    summary = StageSummary(
        str(record.get("stage", name)),
        rows_in=int(record.get("rows_in", 0)),
        rows_ok=int(record.get("rows_ok", 0)),
        errors=Counter(record.get("errors_by_reason", {})),
        skipped=Counter(record.get("skipped", {})),
        seconds=float(record.get("seconds", 0.0)),
    )
    return summary.render().splitlines()[0]


def summary_lines(fs: pafs.FileSystem, root: str) -> list[str]:
    """Returns each stage's last summary line, in the order the stages last ran (the files' modification times)."""
    listed = _listing(fs, join(root, "summaries"))
    found = [f for f in listed if f.type == pafs.FileType.File and f.base_name.endswith(".json")]
    lines = []
    for info in sorted(found, key=lambda f: (f.mtime_ns or 0, f.base_name)):
        name = info.base_name.removesuffix(".json")
        try:
            with fs.open_input_stream(info.path) as stream:
                lines.append(summary_line(json.loads(stream.read()), name))
        except (OSError, ValueError) as exc:
            lines.append(f"== {name}: unreadable summary ({exc})")
    return lines


def run_tables(cfg: Config) -> StageSummary:
    """Prints every table of `run.dir` (rows, files, bytes, bytes per row; a total) and the stages' summary lines.

    Raises:
        ValueError: `run.dir` holds neither tables nor summaries.
    """
    summary = StageSummary("tables")
    fs, root = resolve_fs(cfg.run.dir)
    recover(fs, root)  # as read_table: a commit a kill cut short is finished first
    names = sorted(f.base_name for f in _listing(fs, join(root, "tables")) if f.type == pafs.FileType.Directory)
    lines = summary_lines(fs, root)
    if not names and not lines:
        raise ValueError(f"{cfg.run.dir}: no tables and no summaries (run `make index` first)")
    rows = []
    summary.rows_in = len(names)
    for name in names:
        try:
            rows.append(table_usage(fs, root, name))
            summary.rows_ok += 1
        except (OSError, ValueError) as exc:  # a file that is no Parquet (pyarrow's ArrowInvalid is a ValueError)
            summary.add_errors([f"unreadable_table: {name}: {exc}"])
    usage = pd.DataFrame(rows, columns=COLUMNS)
    totals = {c: int(usage[c].sum()) for c in ("rows", "files", "bytes")}
    usage.loc[len(usage)] = {"table": "total", **totals, "bytes_per_row": float("nan")}
    summary.extra["tables"] = "\n" + textwrap.indent(usage.to_string(index=False, na_rep="-"), "   ")
    summary.extra["summaries"] = "\n" + textwrap.indent("\n".join(lines), "   ") if lines else "none"
    return summary.finish()


STAGE = Stage(
    name="tables",
    run=run_tables,
    help="a run's tables (rows, files, bytes on disk) and each stage's last summary line; writes nothing",
)
