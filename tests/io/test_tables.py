"""Parquet tables: every schema round trips through plain pyarrow, pandas and DuckDB; staged, owned writes."""

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import schemas
from engine.io.codecs import heatmap_column, stored_heatmaps
from engine.io.fs import resolve_fs
from engine.io.tables import OutputError, TableWriter, read_table, table_dir, to_arrow, write_part

STAGE = "infer"
PARTITION_VALUES = {
    "stage": [STAGE, STAGE],
    "split": ["test", "test"],
    "folder": ["wholeBodyANT", "wholeBodyPOST"],
    "view": ["ANT", "POST"],
}
HEATMAPS = [[0.0, 0.5, 1.0, 0.25, 0.125, 0.75], [1.0, 0.0, 0.0, 0.0, 0.5, 0.0625]]  # exact in float16


def two_rows(name: str) -> dict[str, list]:
    """Returns two rows of table `name`, one distinct value per column and row, all exact in their type."""
    columns: dict[str, list] = {}
    for field in schemas.TABLES[name].SCHEMA:
        if field.name in PARTITION_VALUES:
            columns[field.name] = PARTITION_VALUES[field.name]
        elif pa.types.is_string(field.type):
            columns[field.name] = [f"{field.name}-a", f"{field.name}-b"]
        elif pa.types.is_boolean(field.type):
            columns[field.name] = [True, False]
        elif pa.types.is_integer(field.type):
            columns[field.name] = [1, 2]
        elif pa.types.is_floating(field.type):
            columns[field.name] = [0.5, 0.25]
        elif pa.types.is_list(field.type) and pa.types.is_string(field.type.value_type):
            columns[field.name] = [["leak", "empty"], []]
        elif pa.types.is_list(field.type) and pa.types.is_integer(field.type.value_type):
            columns[field.name] = [[int(v * 8) for v in row] for row in HEATMAPS]
        elif pa.types.is_list(field.type):
            columns[field.name] = HEATMAPS
        else:
            raise AssertionError(f"two_rows: no test values for {field.type}")
    return columns


def plain(value):
    """Returns a reader's cell as a plain Python value (arrays as lists, missing as None)."""
    if isinstance(value, np.ndarray | list):
        return [v if isinstance(v, str) else float(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def rows_of(frame: pd.DataFrame, name: str) -> list[dict]:
    """Returns the frame's rows as plain dicts, sorted by the schema's first column."""
    key = schemas.TABLES[name].SCHEMA.names[0]
    records = [{k: plain(v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]
    return sorted(records, key=lambda row: row[key])


def expected_rows(name: str) -> list[dict]:
    """Returns `two_rows(name)` as row dicts sorted like `rows_of`."""
    columns = two_rows(name)
    records = [{k: v[i] for k, v in columns.items()} for i in range(2)]
    return sorted(records, key=lambda row: row[schemas.TABLES[name].SCHEMA.names[0]])


def read_pyarrow(path: str) -> pd.DataFrame:
    return pads.dataset(path, format="parquet", partitioning="hive").to_table().to_pandas()


def read_duckdb(path: str) -> pd.DataFrame:
    return duckdb.sql(f"SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning=true)").df()


READERS = {"pyarrow": read_pyarrow, "pandas": pd.read_parquet, "duckdb": read_duckdb}


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def commit_rows(run_dir: Path, name: str, *batches: dict, **writer_args) -> dict[str, int]:
    """Writes the batches of table `name` with one TableWriter and commits; returns rows per table."""
    writer = TableWriter(str(run_dir), STAGE, **writer_args)
    writer.check([name])
    for batch in batches:
        writer.write(name, batch)
    return writer.commit()


@pytest.mark.parametrize("name", sorted(schemas.TABLES))
@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_table_round_trips_two_rows_through_plain_readers(tmp_path, name, reader):
    empty = schemas.TABLES[name].SCHEMA.empty_table().to_pandas()
    assert commit_rows(tmp_path, name, empty, two_rows(name)) == {name: 2}
    frame = READERS[reader](table_dir(str(tmp_path), name))
    assert sorted(frame.columns) == sorted(schemas.TABLES[name].SCHEMA.names)
    assert rows_of(frame, name) == expected_rows(name)


@pytest.mark.parametrize("name", sorted(schemas.TABLES))
def test_every_table_file_holds_the_plain_schema_without_partition_columns_or_ray_types(tmp_path, name):
    module = schemas.TABLES[name]
    commit_rows(tmp_path, name, two_rows(name))
    files = parquet_files(tmp_path / "tables" / name)
    assert files
    for path in files:
        file_schema = pq.read_schema(path)
        stored = [f for f in module.SCHEMA if f.name not in module.PARTITION_COLS]
        assert file_schema.names == [f.name for f in stored]
        assert [f.type for f in file_schema] == [f.type for f in stored]
        assert not any(isinstance(f.type, pa.ExtensionType) for f in file_schema)
        metadata_keys = [key.decode() for key in (file_schema.metadata or {})]
        metadata_keys += [key.decode() for f in file_schema for key in (f.metadata or {})]
        assert not [key for key in metadata_keys if key.lower().startswith(("ray", "arrow.extension"))]
    partitions = [p.split("=")[0] for p in files[0].relative_to(tmp_path / "tables" / name).parent.parts]
    assert tuple(partitions) == module.PARTITION_COLS


@pytest.mark.parametrize("name", sorted(schemas.TABLES))
def test_every_table_committed_empty_reads_back_empty_with_its_columns(tmp_path, name):
    assert commit_rows(tmp_path, name, schemas.TABLES[name].SCHEMA.empty_table().to_pandas()) == {name: 0}
    frame = read_table(str(tmp_path), name)
    assert frame.empty
    assert list(frame.columns) == schemas.TABLES[name].SCHEMA.names
    dataset = pads.dataset(table_dir(str(tmp_path), name), partitioning="hive", schema=schemas.TABLES[name].SCHEMA)
    assert dataset.count_rows() == 0


OWNED_BY_A_SPLIT_RUN = sorted(n for n, m in schemas.TABLES.items() if set(m.PARTITION_COLS) <= {"stage", "split"})


@pytest.mark.parametrize("name", OWNED_BY_A_SPLIT_RUN)
@pytest.mark.parametrize("reader", ["pandas", "duckdb"])
def test_an_empty_table_whose_partitions_the_run_fixes_reads_in_duckdb_and_pandas(tmp_path, name, reader):
    commit_rows(tmp_path, name, schemas.TABLES[name].SCHEMA.empty_table().to_pandas(), split="test")
    frame = READERS[reader](table_dir(str(tmp_path), name))
    assert len(frame) == 0
    assert sorted(frame.columns) == sorted(schemas.TABLES[name].SCHEMA.names)


def test_an_empty_stage_output_does_not_break_duckdb_reading_another_stages_rows(tmp_path):
    commit_rows(tmp_path, "errors", schemas.TABLES["errors"].SCHEMA.empty_table().to_pandas(), split="test")
    writer = TableWriter(str(tmp_path), "cam", split="test")
    writer.write("errors", two_rows("errors") | {"stage": ["cam", "cam"], "line": [None, 3]})
    writer.commit()
    frame = read_duckdb(table_dir(str(tmp_path), "errors")).sort_values("image_id")
    assert frame[["image_id", "stage", "split"]].to_dict("records") == [
        {"image_id": "image_id-a", "stage": "cam", "split": "test"},
        {"image_id": "image_id-b", "stage": "cam", "split": "test"},
    ]
    assert pd.isna(frame["line"].iloc[0])
    assert frame["line"].iloc[1] == 3


def test_heatmaps_are_stored_as_8_bit_levels_that_duckdb_pandas_and_read_table_read_back(tmp_path):
    maps = np.array(HEATMAPS, np.float32).reshape(2, 3, 2)
    rows = two_rows("heatmaps") | {"heatmap": heatmap_column(maps), "heatmap_h": [3, 3], "heatmap_w": [2, 2]}
    commit_rows(tmp_path, "heatmaps", rows)
    path = table_dir(str(tmp_path), "heatmaps")
    levels = [[round(v * 255) for v in row] for row in HEATMAPS]  # 0.5 -> 128 (127.5 rounded to even)
    in_duckdb = duckdb.sql(
        f"SELECT image_id, heatmap, heatmap_h, heatmap_w FROM read_parquet('{path}/**/*.parquet', "
        "hive_partitioning=true) ORDER BY image_id"
    ).fetchall()
    assert [(r[0], list(r[1])) for r in in_duckdb] == [("image_id-a", levels[0]), ("image_id-b", levels[1])]
    in_pandas = pd.read_parquet(path).sort_values("image_id")
    assert in_pandas.iloc[0]["heatmap"].dtype == np.uint8
    engine = read_table(str(tmp_path), "heatmaps").sort_values("image_id")
    first = engine.iloc[0]
    assert first["heatmap"].dtype == np.float16
    grid = first["heatmap"].reshape(first["heatmap_h"], first["heatmap_w"])
    np.testing.assert_allclose(grid.astype(np.float32), maps[0], atol=0.5 / 255 + 1e-3)
    np.testing.assert_array_equal(grid, stored_heatmaps(maps[0]))  # what the model actor placed its boxes on


def test_nothing_is_visible_under_tables_before_commit(tmp_path):
    writer = TableWriter(str(tmp_path), STAGE, flush_rows=1)
    writer.check(["preds"])
    writer.write("preds", two_rows("preds"))
    writer.write("preds", two_rows("preds") | {"image_id": ["more-a", "more-b"]})
    assert parquet_files(tmp_path)  # flushed to the staging area...
    assert not parquet_files(tmp_path / "tables")  # ...but readers see nothing yet
    assert read_table(str(tmp_path), "preds").empty
    writer.commit()
    assert len(read_table(str(tmp_path), "preds")) == 4
    assert parquet_files(tmp_path) == parquet_files(tmp_path / "tables")  # staging removed


def test_abort_leaves_no_table_and_no_staged_file(tmp_path):
    writer = TableWriter(str(tmp_path), STAGE, flush_rows=1)
    writer.check(["preds", "errors"])
    writer.write("preds", two_rows("preds"))
    writer.abort()
    assert not parquet_files(tmp_path)
    assert not (tmp_path / "tables").exists()


def test_many_small_batches_are_flushed_and_all_read_back(tmp_path):
    writer = TableWriter(str(tmp_path), STAGE, flush_rows=3)
    for i in range(7):
        batch = two_rows("errors") | {"image_id": [f"img-{i}-a", f"img-{i}-b"], "stage": [STAGE, STAGE]}
        writer.write("errors", batch)
    assert writer.commit() == {"errors": 14}
    assert sorted(read_table(str(tmp_path), "errors")["image_id"]) == sorted(
        f"img-{i}-{s}" for i in range(7) for s in "ab"
    )


def test_check_refuses_an_existing_stage_output_unless_overwrite(tmp_path):
    commit_rows(tmp_path, "preds", two_rows("preds"))
    with pytest.raises(OutputError, match=r"tables/preds/stage=infer exists: pass run\.overwrite=true"):
        TableWriter(str(tmp_path), STAGE).check(["preds"])
    TableWriter(str(tmp_path), "cam").check(["preds"])  # another stage's partition is free
    TableWriter(str(tmp_path), STAGE, replace=("preds",)).check(["preds"])
    new_rows = two_rows("preds") | {"image_id": ["new-a", "new-b"]}
    commit_rows(tmp_path, "preds", new_rows, overwrite=True)
    assert sorted(read_table(str(tmp_path), "preds")["image_id"]) == ["new-a", "new-b"]


def test_check_refuses_an_existing_unpartitioned_table(tmp_path):
    commit_rows(tmp_path, "thresholds", two_rows("thresholds"))
    with pytest.raises(OutputError, match=r"tables/thresholds exists"):
        TableWriter(str(tmp_path), STAGE).check(["thresholds"])


def test_overwriting_one_stage_keeps_the_rows_of_another_stage(tmp_path):
    for stage in ("infer", "cam"):
        writer = TableWriter(str(tmp_path), stage)
        writer.write("preds", two_rows("preds") | {"stage": [stage, stage], "image_id": [f"{stage}-a", f"{stage}-b"]})
        writer.commit()
    writer = TableWriter(str(tmp_path), "infer", overwrite=True)
    writer.check(["preds"])
    writer.write("preds", two_rows("preds") | {"image_id": ["again-a", "again-b"]})
    writer.commit()
    assert sorted(read_table(str(tmp_path), "preds")["image_id"]) == ["again-a", "again-b", "cam-a", "cam-b"]


def test_a_split_writer_owns_only_its_split(tmp_path):
    for split in ("test", "val"):
        rows = two_rows("preds") | {"split": [split, split], "image_id": [f"{split}-a", f"{split}-b"]}
        commit_rows(tmp_path, "preds", rows, split=split)
    assert sorted(read_table(str(tmp_path), "preds")["image_id"]) == ["test-a", "test-b", "val-a", "val-b"]
    rows = two_rows("preds") | {"split": ["val", "val"], "image_id": ["val2-a", "val2-b"]}
    commit_rows(tmp_path, "preds", rows, split="val", overwrite=True)
    assert sorted(read_table(str(tmp_path), "preds")["image_id"]) == ["test-a", "test-b", "val2-a", "val2-b"]
    with pytest.raises(OutputError, match=r"stage=infer/split=test exists"):
        TableWriter(str(tmp_path), STAGE, split="test").check(["preds"])


def test_rows_outside_the_writers_partition_are_refused_not_dropped(tmp_path):
    writer = TableWriter(str(tmp_path), STAGE, split="test")
    with pytest.raises(OutputError, match=r"table preds: rows with split=\['val'\], but this writer owns split='test'"):
        writer.write("preds", two_rows("preds") | {"split": ["test", "val"]})
    with pytest.raises(OutputError, match=r"rows with stage=\['cam'\], but this writer owns stage='infer'"):
        writer.write("errors", two_rows("errors") | {"stage": ["cam", "cam"]})


def test_write_part_rewrites_the_same_basename_in_place(tmp_path):
    epoch = {
        "epoch": [1],
        "train_loss": [0.5],
        "val_loss": [0.5],
        "val_auc": [0.5],
        "lr": [0.5],
        "images": [8],
        "train_errors": [0],
        "seconds": [1.0],
        "img_per_s": [8.0],
        "is_best": [True],
    }
    assert write_part(str(tmp_path), "epochs", epoch, "epoch-001") == 1
    write_part(str(tmp_path), "epochs", epoch | {"train_loss": [0.25]}, "epoch-001")
    write_part(str(tmp_path), "epochs", epoch | {"epoch": [2]}, "epoch-002")
    frame = read_table(str(tmp_path), "epochs").sort_values("epoch")
    assert frame[["epoch", "train_loss"]].to_dict("records") == [
        {"epoch": 1, "train_loss": 0.25},
        {"epoch": 2, "train_loss": 0.5},
    ]


def test_write_part_into_a_partitioned_table_is_idempotent(tmp_path):
    rows = two_rows("preds")
    write_part(str(tmp_path), "preds", rows, "epoch-001")
    write_part(str(tmp_path), "preds", rows, "epoch-001")
    assert len(read_table(str(tmp_path), "preds")) == 2
    assert len(parquet_files(tmp_path / "tables" / "preds")) == 2  # one file per folder partition
    assert not parquet_files(tmp_path / "_staging")


def test_write_part_of_no_rows_into_a_partitioned_table_writes_nothing(tmp_path):
    empty = schemas.TABLES["preds"].SCHEMA.empty_table().to_pandas()
    assert write_part(str(tmp_path), "preds", empty, "epoch-001") == 0
    assert not parquet_files(tmp_path)


def test_check_fails_fast_when_the_run_dir_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    writer = TableWriter(str(tmp_path / "afile" / "run"), STAGE)
    with pytest.raises(OutputError, match=r"cannot write to .*afile/run/_staging"):
        writer.check(["preds"])


def test_a_file_uri_run_dir_writes_and_reads_like_a_path(tmp_path):
    uri = f"file://{tmp_path}/run"
    writer = TableWriter(uri, STAGE)
    writer.check(["preds"])
    writer.write("preds", two_rows("preds"))
    writer.commit()
    assert parquet_files(tmp_path / "run" / "tables" / "preds")
    assert rows_of(read_table(uri, "preds"), "preds") == expected_rows("preds")
    assert rows_of(read_table(str(tmp_path / "run"), "preds"), "preds") == expected_rows("preds")
    with pytest.raises(OutputError, match="exists"):
        TableWriter(uri, STAGE).check(["preds"])


def test_resolve_fs_makes_local_paths_absolute_and_strips_file_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_fs("runs/a")[1] == str(tmp_path / "runs" / "a")
    assert resolve_fs(f"file://{tmp_path}/b")[1] == f"{tmp_path}/b"


def test_read_table_of_an_absent_table_is_empty_with_the_schema_columns(tmp_path):
    frame = read_table(str(tmp_path), "boxes")
    assert frame.empty
    assert list(frame.columns) == schemas.TABLES["boxes"].SCHEMA.names


def test_to_arrow_names_missing_columns():
    rows = two_rows("errors")
    del rows["reason"]
    with pytest.raises(KeyError, match=r"table errors: missing columns \['reason'\]"):
        to_arrow("errors", rows)


def test_to_arrow_casts_a_dataframe_to_the_schema_types_and_keeps_nulls():
    frame = pd.DataFrame(two_rows("errors"))
    frame["line"] = pd.array([7, None], dtype="Int64")
    table = to_arrow("errors", frame)
    assert table.schema == schemas.TABLES["errors"].SCHEMA
    assert table.column("line").to_pylist() == [7, None]


def test_a_repeated_image_id_within_a_partition_is_refused_and_nothing_is_committed(tmp_path):
    commit_rows(tmp_path, "preds", two_rows("preds"))
    writer = TableWriter(str(tmp_path), STAGE, overwrite=True)
    writer.check(["preds"])
    writer.write("preds", two_rows("preds") | {"image_id": ["twice", "once"]})
    writer.write("preds", two_rows("preds") | {"image_id": ["twice", "new"]})  # same stage/split/folder as "twice"
    with pytest.raises(OutputError, match=r"table preds: \('image_id',\) repeats within a partition .*'twice'"):
        writer.commit()
    assert rows_of(read_table(str(tmp_path), "preds"), "preds") == expected_rows("preds")
    assert not parquet_files(tmp_path / "_staging")


def test_one_image_id_in_two_partitions_and_boxes_of_one_image_with_two_ranks_are_committed(tmp_path):
    rows = two_rows("preds") | {"image_id": ["same", "same"]}  # two folders: two partitions
    assert commit_rows(tmp_path, "preds", rows) == {"preds": 2}
    boxes = two_rows("boxes") | {"image_id": ["img", "img"], "rank": [0, 1]}
    assert commit_rows(tmp_path, "boxes", boxes) == {"boxes": 2}


def _old_and_new(tmp_path: Path) -> tuple[TableWriter, dict[str, list], dict[str, list]]:
    """Commits the "old" rows of three cam tables, then stages "new" ones; returns (writer, old ids, new ids)."""
    names = ("preds", "heatmaps", "errors")
    for generation in ("old", "new"):
        writer = TableWriter(str(tmp_path), "cam", overwrite=True, split="test")
        writer.check(names)
        for name in names:
            ids = [f"{generation}-a", f"{generation}-b"]
            writer.write(name, two_rows(name) | {"stage": ["cam"] * 2, "image_id": ids})
        if generation == "old":
            writer.commit()
    ids = {g: {n: [f"{g}-a", f"{g}-b"] for n in names} for g in ("old", "new")}
    return writer, ids["old"], ids["new"]


def _table_ids(run_dir: Path) -> dict[str, list]:
    return {n: sorted(read_table(str(run_dir), n)["image_id"]) for n in ("preds", "heatmaps", "errors")}


def test_a_commit_killed_after_any_step_recovers_to_all_old_or_all_new_tables(tmp_path):
    writer, _, _ = _old_and_new(tmp_path / "count")
    steps = list(writer.commit_steps())
    assert len(steps) >= 2 * 3 + 2  # at least: journal, 3 aside, swap, 3 new (a kill may fall between any two)
    for done in range(len(steps) + 1):
        run_dir = tmp_path / f"killed-after-{done}"
        writer, old, new = _old_and_new(run_dir)
        commit = writer.commit_steps()
        for _ in range(done):
            next(commit)
        del commit  # the process dies here: no further step, no cleanup
        recovered = _table_ids(run_dir)  # the next reader finishes (or ignores) the interrupted commit
        assert recovered == (old if done == 0 else new), f"killed after {steps[done - 1] if done else 'nothing'}"
        next_run = TableWriter(str(run_dir), "cam", overwrite=True, split="test")
        next_run.check(["preds"])  # the next cam start clears what the killed one left
        next_run.abort()
        assert not list(run_dir.glob("_staging/cam-*")) and not list(run_dir.glob("_commits/*"))
        assert _table_ids(run_dir) == recovered


def test_a_commit_in_progress_in_another_live_process_is_left_alone(tmp_path):
    import json
    import subprocess
    import sys

    writer, old, _ = _old_and_new(tmp_path)
    commit = writer.commit_steps()
    next(commit)  # the journal is written...
    journal = next((tmp_path / "_commits").glob("*.json"))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        body = json.loads(journal.read_text())
        journal.write_text(json.dumps(body | {"pid": other.pid}))  # ...by a process that is still running
        assert _table_ids(tmp_path) == old  # a reader does not race the live commit
        assert journal.exists()
    finally:
        other.kill()
        other.wait()
    assert _table_ids(tmp_path) != old  # once its writer is gone, the commit is finished


def test_a_run_scored_before_8_bit_heatmaps_still_reads_its_float16_maps(tmp_path):
    old = schemas.TABLES["heatmaps"].SCHEMA
    old = old.set(old.get_field_index("heatmap"), pa.field("heatmap", pa.list_(pa.float16())))
    rows = two_rows("heatmaps") | {"heatmap": HEATMAPS, "heatmap_h": [3, 3], "heatmap_w": [2, 2]}
    table = pa.Table.from_pydict({f.name: rows[f.name] for f in old}, schema=old)
    folder = tmp_path / "tables" / "heatmaps" / "split=test" / "folder=wholeBodyPOST"
    folder.mkdir(parents=True)
    pq.write_table(table.drop_columns(["split", "folder"]), folder / "part-0.parquet")
    frame = read_table(str(tmp_path), "heatmaps").sort_values("image_id")
    assert frame["heatmap"].iloc[1].dtype == np.float16
    np.testing.assert_array_equal(frame["heatmap"].iloc[1], np.array(HEATMAPS[1], np.float16))
