"""`make browse`'s materialised tables: the same rows as the live `scored` view over the run's Parquet tables, and
rebuilt when the threshold or the run's tables change while the server runs (issue 31)."""

from __future__ import annotations

import re
import shutil
import threading
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal
from werkzeug.serving import make_server

from engine.config_sections import BrowseConfig
from engine.io.browse_pages import FILTERS, ImageQuery
from engine.io.tables import TableWriter, read_table
from engine.stages.browse import RunCatalog, create_app, image_sql
from tests.conftest import test_config
from tests.e2e.test_browse import selected_thr

PAGE = 37  # a page size well under the session index's row count that does not divide it


def live_page(catalog: RunCatalog, query: ImageQuery, page_size: int) -> tuple[pd.DataFrame, int]:
    """Returns what `catalog.images` returned before issue 31: the query run on the `scored` view itself."""
    count, page, params = image_sql(query, page_size, "scored")
    total = int(catalog.con.execute(count, params).df()["n"].iloc[0])
    return catalog.con.execute(page, [*params, page_size, query.page * page_size]).df(), total


def test_every_kind_of_table_query_reads_the_rows_the_live_view_gives(scored_run: Path) -> None:
    catalog = RunCatalog(str(scored_run), selected_thr(scored_run))
    everything = live_page(catalog, ImageQuery(scored=False), 10**6)[0]
    flags = catalog.qc_flags()
    some_id = everything["image_id"].iloc[len(everything) // 2]
    queries = [
        ImageQuery(),  # the page a user opens: scored images, the most suspicious patient first
        ImageQuery(descending=False),
        ImageQuery(filters={"view": "POST"}),
        ImageQuery(sort="image_id", descending=False, scored=False),
        ImageQuery(page=3, scored=False),
        ImageQuery(sort="y_prob", descending=True, scored=False),
        ImageQuery(sort="y_prob", page=2, scored=False),
        ImageQuery(sort="patient_prob", page=1, scored=False),
        ImageQuery(sort="outcome", filters={"split": "test", "view": "POST"}, scored=False),
        ImageQuery(sort="best_box", descending=True, filters={"label": "1"}, scored=False),
        ImageQuery(sort="n_abnormal", descending=True, page=1, scored=False),
        ImageQuery(sort="qc", descending=True, has_qc=True, scored=False),
        ImageQuery(text=some_id[-6:].upper(), scored=False),  # case-insensitive substring
        ImageQuery(sort="folder", page=10**4, scored=False),  # past the end: empty
        *(ImageQuery(qc_flag=flag, sort="view", scored=False) for flag in flags),
    ]
    nonempty = 0
    for query in queries:
        rows, total = catalog.images(query, PAGE)
        expected, expected_total = live_page(catalog, query, PAGE)
        assert total == expected_total, query
        assert_frame_equal(rows, expected, check_dtype=False, obj=str(query))
        nonempty += len(rows) > 0
    assert nonempty >= len(queries) - 1 and flags
    live_choices = {
        c: everything[c].dropna().astype(str).drop_duplicates().sort_values().tolist() for c in FILTERS if c != "label"
    }
    assert {c: v for c, v in catalog.choices().items() if c != "label"} == live_choices
    assert catalog.choices()["label"] == sorted({str(int(v)) for v in everything["label"].dropna()})


def test_the_scored_rows_are_materialised_in_the_default_order_with_a_patient_probability(scored_run: Path) -> None:
    catalog = RunCatalog(str(scored_run), selected_thr(scored_run))
    stored = catalog.con.execute("SELECT image_id, y_prob, patient_prob FROM scored_rows").df()
    scored = stored["y_prob"].notna()
    assert scored.any() and not scored.iloc[scored.sum() :].any()  # the scored rows first
    assert (
        stored["image_id"].iloc[: scored.sum()].tolist() == catalog.images(ImageQuery(), 10**6)[0]["image_id"].tolist()
    )
    assert stored.loc[scored, "patient_prob"].notna().all()  # fused, else the image's own
    indexes = catalog.con.execute("SELECT index_name FROM duckdb_indexes() WHERE table_name = 'scored_rows'").df()
    assert {"scored_rows_image", "scored_rows_patient"} <= set(indexes["index_name"])


def test_an_image_reads_the_same_boxes_gt_and_patient_views_as_the_run_tables(scored_run: Path) -> None:
    catalog = RunCatalog(str(scored_run), None)
    boxes = read_table(str(scored_run), "boxes")
    gt = read_table(str(scored_run), "gt_boxes")
    image_id = gt.loc[gt["image_id"].isin(boxes["image_id"]), "image_id"].iloc[0]  # a scored image with GT
    ours = catalog.boxes(image_id)
    theirs = boxes[boxes["image_id"] == image_id].sort_values("rank")
    assert len(ours) == len(theirs) > 0
    assert ours["rank"].tolist() == theirs["rank"].tolist()
    assert ours["x1_orig"].tolist() == pytest.approx(theirs["x1_orig"].tolist())
    assert len(catalog.gt_boxes(image_id)) == int((gt["image_id"] == image_id).sum())
    views = catalog.patient_views(image_id)
    live = catalog.con.execute(
        """SELECT o.* FROM scored s JOIN scored o ON o.patient_id = s.patient_id
           AND o.part IS NOT DISTINCT FROM s.part AND o.side IS NOT DISTINCT FROM s.side
           AND (o.image_id = s.image_id OR o.view IS DISTINCT FROM s.view)
           WHERE s.image_id = ? ORDER BY o.view, o.image_id""",
        [image_id],
    ).df()
    assert_frame_equal(views, live, check_dtype=False)
    assert image_id in views["image_id"].tolist() and set(views["view"]) == {"ANT", "POST"}
    assert catalog.patient_views("no/such.jpg").empty


def get(base: str, path: str) -> str:
    with urllib.request.urlopen(base + path, timeout=120) as response:
        assert response.status == 200
        return response.read().decode()


def count(html: str) -> int:
    return int(re.search(r'id="count"[^>]*>\s*(\d+) images', html).group(1))


def write_threshold(run_dir: Path, thr: float) -> None:
    """Commits a `thresholds` table whose last row selects `thr`, as `make threshold` does (replaced, committed)."""
    table = read_table(str(run_dir), "thresholds")
    writer = TableWriter(str(run_dir), "threshold", overwrite=True, replace=("thresholds",))
    writer.write("thresholds", table.assign(thr=thr))
    writer.commit()


@pytest.fixture
def served_copy(scored_run: Path, data_root: Path, tmp_path: Path):
    """A copy of the scored run served by `make browse` on a free port of 127.0.0.1: (run dir, base URL, catalog)."""
    copy = tmp_path / "run"
    shutil.copytree(scored_run, copy)
    app = create_app(test_config(data_root, copy), BrowseConfig())
    live = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=live.serve_forever, daemon=True)
    thread.start()
    yield copy, f"http://127.0.0.1:{live.port}", app.extensions["browse_catalog"]
    live.shutdown()
    thread.join(timeout=10)


def test_a_new_threshold_rebuilds_the_served_table_and_the_old_one_gives_the_same_rows_again(served_copy) -> None:
    run_dir, base, catalog = served_copy
    thr = selected_thr(run_dir)
    outcomes = ("TP", "FP", "FN", "TN")
    before = {o: count(get(base, f"/?outcome={o}")) for o in outcomes}
    rows_before = catalog.images(ImageQuery(), 10**6)[0]
    assert before["TP"] + before["FP"] > 0 and catalog.builds == 1  # requests alone do not rebuild
    assert f"{thr:.4f}" in get(base, "/")

    write_threshold(run_dir, 1.5)  # above every probability: nothing is called positive
    page = get(base, "/?outcome=FN")
    assert catalog.builds == 2 and "1.5000" in page
    after = {o: count(get(base, f"/?outcome={o}")) for o in outcomes}
    assert after["TP"] == after["FP"] == 0
    assert after["FN"] == before["TP"] + before["FN"] and after["TN"] == before["TN"] + before["FP"]
    assert count(get(base, "/?outcome=FN")) == count(page) and catalog.builds == 2

    write_threshold(run_dir, thr)
    assert {o: count(get(base, f"/?outcome={o}")) for o in outcomes} == before and catalog.builds == 3
    assert_frame_equal(catalog.images(ImageQuery(), 10**6)[0], rows_before)


def test_a_new_commit_of_a_table_rebuilds_the_served_table(served_copy) -> None:
    run_dir, base, catalog = served_copy
    missed = count(get(base, "/?best_box=no+box"))
    with_gt = count(get(base, "/?best_box=hit")) + count(get(base, "/?best_box=miss")) + missed
    assert with_gt > missed
    boxes = read_table(str(run_dir), "boxes")
    gt = read_table(str(run_dir), "gt_boxes").query("cls == 'Abnormal'")
    kept = boxes["image_id"].isin(gt["image_id"]).idxmax()  # one image with GT keeps its boxes, the others lose them
    image_id = boxes.loc[kept, "image_id"]
    writer = TableWriter(str(run_dir), "boxes", overwrite=True, replace=("boxes",))
    writer.write("boxes", boxes[boxes["image_id"] == image_id])
    writer.commit()
    assert count(get(base, "/?best_box=no+box")) == with_gt - 1 and catalog.builds == 2
    assert len(catalog.boxes(image_id)) == int((boxes["image_id"] == image_id).sum())
    assert catalog.boxes(boxes.loc[boxes["image_id"] != image_id, "image_id"].iloc[0]).empty
