"""The only Parquet writer and reader: Hive-partitioned tables under `<run.dir>/tables/<name>/`.

Writes are staged: a stage writes every table it produces under `<run.dir>/_staging/<stage>-<id>/`
and `commit()` swaps them in at the end through a journal (engine/io/commit.py), so a kill at any point
leaves either all the old outputs of the stage or all the new ones once the next writer or reader has
recovered. Each stage owns `tables/<name>/stage=<stage>/` for tables partitioned by stage (and its
`split=` partition when it scores one split), and the whole `tables/<name>/` otherwise. Paths may be
local or storage URIs (pyarrow filesystems); on object stores the swap is per file (engine/io/commit.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from engine.io.commit import Move, exists, join, move_tree, recover, swap_steps
from engine.io.fs import resolve_fs

log = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """An output location that exists (and may not be replaced) or cannot be written."""


# Columns that name one row of a table within a partition: commit() refuses a partition where they repeat.
FLUSH_BYTES = 64 << 20  # a table's buffered rows are staged at this size too (heatmap lists: ~0.8 GB at 50,000 rows)
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "index": ("image_id",),
    "splits": ("image_id",),
    "preds": ("image_id",),
    "heatmaps": ("image_id",),
    "meta": ("image_id",),
    "boxes": ("image_id", "rank"),
}


def to_arrow(name: str, data: pd.DataFrame | Mapping[str, Any] | pa.Table) -> pa.Table:
    """Returns `data` as an Arrow table with exactly the columns and types of `schemas.<name>`.

    Raises:
        KeyError: a column of the schema is missing from `data`.
    """
    schema = schemas.TABLES[name].SCHEMA
    if isinstance(data, pa.Table):
        return data.select(schema.names).cast(schema)
    columns = data if isinstance(data, Mapping) else {c: data[c] for c in data.columns}
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise KeyError(f"table {name}: missing columns {missing}")
    arrays = []
    for f in schema:
        values = columns[f.name]
        if isinstance(values, pa.Array | pa.ChunkedArray):
            arrays.append(values.cast(f.type))
        else:
            if isinstance(values, pd.Series):
                values = values.astype(object).where(values.notna(), None).to_list()
            elif isinstance(values, np.ndarray) and not pa.types.is_list(f.type):
                values = values.tolist() if values.dtype == object else values
            arrays.append(pa.array(values, type=f.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_dir(run_dir: str, name: str) -> str:
    """Returns `<run_dir>/tables/<name>` (path or URI)."""
    return join(run_dir, "tables", name)


def _owned_path(root: str, name: str, stage: str, split: str | None = None) -> str:
    """Returns the folder a stage run owns in table `name`: its stage and split partitions, if any."""
    cols = schemas.TABLES[name].PARTITION_COLS
    parts = [f"stage={stage}"] if "stage" in cols else []
    if split is not None and "split" in cols:
        parts.append(f"split={split}")
    return join(root, name, *parts)


def _write_dataset(fs: pafs.FileSystem, base: str, name: str, table: pa.Table, basename: str) -> None:
    partition_cols = list(schemas.TABLES[name].PARTITION_COLS)
    if not partition_cols:
        fs.create_dir(base, recursive=True)
        pq.write_table(table, f"{base}/{basename.format(i=0)}", filesystem=fs, compression="zstd")
        return
    part_schema = pa.schema([table.schema.field(c) for c in partition_cols])
    pads.write_dataset(
        table,
        base,
        filesystem=fs,
        format="parquet",
        partitioning=pads.partitioning(part_schema, flavor="hive"),
        basename_template=basename,
        existing_data_behavior="overwrite_or_ignore",
        file_options=pads.ParquetFileFormat().make_write_options(compression="zstd"),
        max_rows_per_group=1 << 16,
    )


class TableWriter:
    """Stages a stage's tables and commits them all at the end.

    Args:
        run_dir: the run directory (path or URI).
        stage: the producing stage; partitions tables that have a `stage` column.
        overwrite: replace what this stage wrote before; otherwise an existing output raises at once.
        replace: tables this stage always rewrites whole (e.g. `boxes` for `make boxes`).
        split: when set, the run owns only this split's partition of tables partitioned by split.
        flush_rows: rows buffered per table before a file is written (bounded memory, few files).
    """

    def __init__(
        self,
        run_dir: str,
        stage: str,
        overwrite: bool = False,
        replace: tuple[str, ...] = (),
        split: str | None = None,
        flush_rows: int = 50_000,
    ) -> None:
        self.run_dir = run_dir
        self.stage = stage
        self.split = split
        self.flush_rows = flush_rows
        self._buffers: dict[str, list[pa.Table]] = {}
        self.overwrite = overwrite
        self.replace = replace
        self.fs, self.root = resolve_fs(run_dir)
        self.staging = join(self.root, "_staging", f"{stage}-{uuid.uuid4().hex[:12]}")
        self.rows: dict[str, int] = {}
        self._parts: dict[str, int] = {}
        self._repeated: dict[str, dict[str, Any]] = {}

    def check(self, names: list[str] | tuple[str, ...]) -> None:
        """Fails fast when an output exists and may not be replaced, or the run dir is unwritable.

        Raises:
            OutputError: with the existing path and the override that allows replacing it.
        """
        recover(self.fs, self.root)  # a commit a kill interrupted is finished before anything else
        tables_root = join(self.root, "tables")
        for name in names:
            owned = _owned_path(tables_root, name, self.stage, self.split)
            if exists(self.fs, owned) and not (self.overwrite or name in self.replace):
                raise OutputError(f"{owned} exists: pass run.overwrite=true to replace the {self.stage} outputs")
        self._clear_stale_staging()
        probe = join(self.staging, ".probe")
        try:
            self.fs.create_dir(self.staging, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.staging}: {exc}") from exc

    def _clear_stale_staging(self) -> None:
        """Deletes what killed earlier runs of this stage left in `_staging/` (never committed, never read)."""
        base = join(self.root, "_staging")
        if not exists(self.fs, base):
            return
        for info in self.fs.get_file_info(pafs.FileSelector(base)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith(f"{self.stage}-"):
                log.warning("removing staging left by an interrupted %s run: %s", self.stage, info.path)
                self.fs.delete_dir(info.path)

    def write(self, name: str, data: pd.DataFrame | Mapping[str, Any] | pa.Table) -> int:
        """Buffers rows of table `name` (files are staged every `flush_rows`); returns the rows added."""
        table = to_arrow(name, data)
        self._check_owned(name, table)
        self.rows[name] = self.rows.get(name, 0) + table.num_rows
        buffer = self._buffers.setdefault(name, [])
        if table.num_rows:
            buffer.append(table)
        if sum(t.num_rows for t in buffer) >= self.flush_rows or sum(t.nbytes for t in buffer) >= FLUSH_BYTES:
            self._flush(name)
        return table.num_rows

    def _check_owned(self, name: str, table: pa.Table) -> None:
        """Raises OutputError for rows outside this run's partitions: commit() would silently drop them."""
        cols = schemas.TABLES[name].PARTITION_COLS
        owned = {"stage": self.stage} if "stage" in cols else {}
        if self.split is not None and "split" in cols:
            owned["split"] = self.split
        for col, value in owned.items():
            foreign = sorted({str(v) for v in table.column(col).unique().to_pylist()} - {value})
            if foreign:
                raise OutputError(f"table {name}: rows with {col}={foreign}, but this writer owns {col}={value!r}")

    def _repeated_key(self, name: str) -> dict[str, Any] | None:
        """Returns the first partition + UNIQUE_KEYS value that repeats among the staged files of `name`, or None.

        Read at commit from the staged files' key columns only: the writer keeps nothing per row while it writes
        (a set of keys per row grew the driver by ~1 KB per image over the full index).
        """
        path = join(self.staging, name)
        if name not in UNIQUE_KEYS or not exists(self.fs, path):
            return None
        columns = [*schemas.TABLES[name].PARTITION_COLS, *UNIQUE_KEYS[name]]
        staged = pads.dataset(path, filesystem=self.fs, format="parquet", partitioning="hive")
        counts = staged.to_table(columns=columns).group_by(columns, use_threads=False).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts["count_all"], 1))
        return {c: repeated.column(c)[0].as_py() for c in columns} if repeated.num_rows else None

    def _flush(self, name: str) -> None:
        buffer = self._buffers.pop(name, [])
        if not buffer:
            return
        table = pa.concat_tables(buffer)
        part = self._parts.get(name, 0)
        self._parts[name] = part + 1
        basename = f"{self.stage}-{part:05d}-{{i}}.parquet"
        _write_dataset(self.fs, join(self.staging, name), name, table, basename)

    def commit(self) -> dict[str, int]:
        """Swaps every staged table into `<run_dir>/tables/`; returns rows per table.

        Raises:
            OutputError: a unique key (UNIQUE_KEYS) repeats within a partition; nothing is committed.
        """
        for _ in self.commit_steps():
            pass
        return dict(self.rows)

    def commit_steps(self) -> Iterator[str]:
        """Runs `commit()` one filesystem step at a time; yields each step's label (a kill may fall between)."""
        for name in list(self._buffers):
            self._flush(name)
        for name in self.rows:
            key = self._repeated_key(name)
            if key is not None:
                self._repeated[name] = key
                break
        if self._repeated:
            self.abort()
            name, key = next(iter(self._repeated.items()))
            raise OutputError(
                f"table {name}: {UNIQUE_KEYS[name]} repeats within a partition ({key}): "
                f"nothing of the {self.stage} run is committed"
            )
        tables_root = join(self.root, "tables")
        moves = []
        for i, name in enumerate(self.rows):
            staged = _owned_path(self.staging, name, self.stage, self.split)
            if not exists(self.fs, staged):
                self._write_empty(name, staged)
            final = _owned_path(tables_root, name, self.stage, self.split)
            moves.append(Move(final, staged, join(self.staging, "_old", str(i))))
        yield from swap_steps(self.fs, self.root, self.staging.rsplit("/", 1)[1], moves)
        self.abort()
        yield "staging deleted"

    def _write_empty(self, name: str, final: str) -> None:
        """Makes folder `final` with a zero-row file where the partitions are known (readers still see the schema)."""
        self.fs.create_dir(final, recursive=True)
        cols = schemas.TABLES[name].PARTITION_COLS
        known = {"stage": self.stage, "split": self.split}
        if all(known.get(c) is not None for c in cols):
            empty = schemas.TABLES[name].SCHEMA.empty_table().drop_columns(list(cols))
            pq.write_table(empty, f"{final}/{self.stage}-empty.parquet", filesystem=self.fs)

    def abort(self) -> None:
        """Deletes the staging area (nothing is committed)."""
        if exists(self.fs, self.staging):
            self.fs.delete_dir(self.staging)


def write_part(run_dir: str, name: str, data: pd.DataFrame | Mapping[str, Any], basename: str) -> int:
    """Writes one file per partition straight into the table, replacing files of the same basename.

    For incremental, idempotent writers such as per-epoch training outputs: a re-run of the same
    epoch writes the same file names. Each file is written under a temporary name, then renamed.
    """
    table = to_arrow(name, data)
    fs, root = resolve_fs(run_dir)
    tmp = join(root, "_staging", f"part-{uuid.uuid4().hex[:12]}")
    _write_dataset(fs, tmp, name, table, f"{basename}-{{i}}.parquet")
    move_tree(fs, tmp, join(root, "tables", name), merge=True)  # zero rows of a partitioned table: no file
    return table.num_rows


def read_table(
    run_dir: str, name: str, filter_expr: pads.Expression | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Returns table `name` of a run as a DataFrame (partition columns as plain strings).

    An absent table reads as an empty frame with the schema's columns; `heatmaps`' 8-bit maps read as float16 in
    [0, 1]. `columns`: only these columns (all by default).
    """
    fs, root = resolve_fs(run_dir)
    recover(fs, root)
    path = join(root, "tables", name)
    schema = schemas.TABLES[name].SCHEMA
    if not exists(fs, path):
        empty = schema.empty_table().to_pandas()
        return empty[columns] if columns is not None else empty
    legacy = name == "heatmaps" and _float16_heatmaps(fs, path)
    if legacy:  # a run scored before heatmaps were 8-bit (schema version 1): its float16 maps as they are
        schema = schema.set(schema.get_field_index("heatmap"), pa.field("heatmap", pa.list_(pa.float16())))
    dataset = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive", schema=schema)
    table = dataset.to_table(filter=filter_expr, columns=columns)
    if (
        name == "heatmaps" and not legacy and "heatmap" in table.schema.names
    ):  # 8-bit levels; every reader gets the map in [0, 1] (engine/io/codecs.py)
        from engine.io.codecs import decoded_heatmap_column

        index = table.schema.get_field_index("heatmap")
        table = table.set_column(index, "heatmap", decoded_heatmap_column(table["heatmap"]))
    return table.to_pandas()


def _float16_heatmaps(fs: pafs.FileSystem, path: str) -> bool:
    """Returns whether the heatmaps table at `path` holds float16 maps (written before schema version 2)."""
    found = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive")
    field = found.schema.field("heatmap") if "heatmap" in found.schema.names else None
    return field is not None and pa.types.is_list(field.type) and pa.types.is_float16(field.type.value_type)
