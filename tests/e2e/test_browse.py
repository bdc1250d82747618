"""`make browse`: the DuckDB image table, the served files, the boxes drawn, and the pages in a headless Chromium;
a patient's two whole-body views read together (issue 28): the table opens on the scored images, the most
suspicious patient first, and the image page links the boxes confirmed across the two views."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from werkzeug.serving import make_server

from engine.config import ConfigError
from engine.config_sections import BrowseConfig
from engine.core.metrics.localization import overlap_areas, pixel_boxes
from engine.io.browse_pages import PAIR_COLOURS, ImageQuery, draw_boxes, parse_query
from engine.io.overlays import BOX_COLOUR, GT_ABNORMAL_COLOUR, GT_NORMAL_COLOUR
from engine.io.tables import TableWriter, read_table, write_part
from engine.stages.browse import RunCatalog, create_app
from tests.conftest import test_config

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ALL = 10**6  # a page size that holds every row
PAGE = 97  # a page size well under the session index's row count that does not divide it
EVERY_ROW = {"scored": False, "sort": "image_id", "descending": False}  # the whole index by name (rows=all)


@pytest.fixture(scope="module")
def cam_run(scored_run: Path) -> Path:
    return scored_run


@pytest.fixture(scope="module")
def server(cam_run: Path, data_root: Path):
    """The browse app over the run, on a free port of 127.0.0.1, in a thread; yields its base URL."""
    cfg = test_config(data_root, cam_run)
    live = make_server(BrowseConfig().host, 0, create_app(cfg, BrowseConfig()), threaded=True)
    thread = threading.Thread(target=live.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{live.port}", live
    live.shutdown()
    thread.join(timeout=10)


def selected_thr(run_dir: Path) -> float:
    return float(read_table(str(run_dir), "thresholds")["thr"].iloc[-1])


def all_rows(run_dir: Path):
    return RunCatalog(str(run_dir), selected_thr(run_dir)).images(ImageQuery(**EVERY_ROW), ALL)[0].set_index("image_id")


def test_the_table_lists_the_whole_index_with_outcomes_at_the_selected_threshold(cam_run: Path) -> None:
    rows = all_rows(cam_run)
    index = read_table(str(cam_run), "index").set_index("image_id")
    assert sorted(rows.index) == sorted(index.index)
    preds = read_table(str(cam_run), "preds").query("stage == 'cam'").set_index("image_id")
    thr = selected_thr(cam_run)
    assert len(preds) and rows["y_prob"].notna().sum() == len(preds)
    for image_id, pred in preds.iterrows():
        label = int(index.loc[image_id, "label"])
        expected = ("T" if (pred["y_prob"] >= thr) == (label == 1) else "F") + ("P" if pred["y_prob"] >= thr else "N")
        assert rows.loc[image_id, "outcome"] == expected
        assert rows.loc[image_id, "y_prob"] == pytest.approx(float(pred["y_prob"]))
    assert rows.drop(index=preds.index)["outcome"].isna().all()  # unscored images: listed, no outcome


def test_best_box_hit_agrees_with_the_localisation_pixel_rule(cam_run: Path) -> None:
    rows = all_rows(cam_run)
    boxes = read_table(str(cam_run), "boxes").query("rank == 0").set_index("image_id")
    gt = read_table(str(cam_run), "gt_boxes").query("cls == 'Abnormal'")
    meta = read_table(str(cam_run), "meta").set_index("image_id")
    checked = 0
    for image_id, group in gt[gt["image_id"].isin(boxes.index)].groupby("image_id"):
        size = int(meta.loc[image_id, "orig_w"]), int(meta.loc[image_id, "orig_h"])
        ours = pixel_boxes(boxes.loc[[image_id], ["x1_orig", "y1_orig", "x2_orig", "y2_orig"]].to_numpy(), *size)
        truth = pixel_boxes(group[["x1", "y1", "x2", "y2"]].to_numpy(), *size)
        assert rows.loc[image_id, "best_box"] == ("hit" if (overlap_areas(ours, truth)[0] > 0).any() else "miss")
        checked += 1
    assert checked >= 1
    assert rows[rows["n_abnormal"] == 0]["best_box"].isna().all()


def test_best_box_hits_when_it_shares_a_pixel_centre_with_an_abnormal_box(cam_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(cam_run / "tables", copy / "tables")
    abnormal = read_table(str(copy), "gt_boxes").query("cls == 'Abnormal'")
    single = abnormal.groupby("image_id")["cls"].transform("size") == 1  # no second lesion box to hit instead
    gt = abnormal[single].head(3)
    index = read_table(str(copy), "index").set_index("image_id")
    assert len(gt) == 3
    # x2 = GT x1 + 0.6 covers the centre of pixel column x1 (hit); + 0.4 does not (miss); far away: miss; rank 1 ignored
    edges = [0.6, 0.4, -50.0]
    frame = pd.DataFrame(
        [
            {
                "image_id": g.image_id,
                "rank": 0,
                "x1_orig": max(g.x1 + e - 4, 0),
                "x2_orig": g.x1 + e,
                "y1_orig": g.y1,
                "y2_orig": g.y2,
                "split": "test",
                "folder": index.loc[g.image_id, "folder"],
            }
            for g, e in zip(gt.itertuples(), edges, strict=True)
        ]
    )
    frame = pd.concat([frame, frame.iloc[[1]].assign(rank=1, x1_orig=gt.iloc[1].x1, x2_orig=gt.iloc[1].x2)])
    for column in (
        "x1",
        "y1",
        "x2",
        "y2",
        "score",
        "score_raw",
        "y_prob",
        "box_size",
        "nms_iou",
        "boxes_max",
        "min_score",
    ):
        frame[column] = 1.0
    frame["box_method"] = "cam_peaks"
    frame["cross_view"], frame["cross_rank"] = np.nan, -1
    shutil.rmtree(copy / "tables" / "boxes")
    writer = TableWriter(str(copy), "boxes", replace=("boxes",))
    writer.write("boxes", frame)
    writer.commit()
    rows = RunCatalog(str(copy), None).images(ImageQuery(**EVERY_ROW), ALL)[0].set_index("image_id")
    assert rows.loc[gt["image_id"], "best_box"].tolist() == ["hit", "miss", "miss"]


def test_sorting_filtering_and_paging_return_consistent_pages(cam_run: Path) -> None:
    catalog = RunCatalog(str(cam_run), selected_thr(cam_run))
    everything = catalog.images(ImageQuery(**EVERY_ROW), ALL)[0]
    test_post, total = catalog.images(
        ImageQuery(sort="y_prob", descending=True, filters={"split": "test", "view": "POST"}, scored=False), ALL
    )
    assert total == int(((everything["split"] == "test") & (everything["view"] == "POST")).sum()) == len(test_post)
    probs = test_post["y_prob"].dropna().to_numpy()
    assert len(probs) > 1 and np.all(np.diff(probs) <= 0)
    size = PAGE  # 16 pages of the session's 1498 index rows, the last one partial: 32 queries, not 428
    pages = [catalog.images(ImageQuery(**EVERY_ROW, page=p), size)[0] for p in range(-(-len(everything) // size))]
    assert len(pages) > 2 and [len(page) for page in pages[:-1]] == [size] * (len(pages) - 1)
    assert [i for page in pages for i in page["image_id"]] == everything["image_id"].tolist()


def test_url_arguments_fall_back_to_safe_defaults() -> None:
    query = parse_query({"sort": "image_id; DROP TABLE x", "page": "-3", "split": "test", "order": "asc"})
    assert (query.sort, query.page, query.filters, query.descending) == ("patient_prob", 0, {"split": "test"}, False)
    assert parse_query({"page": "two"}).page == 0
    assert parse_query({}) == ImageQuery(sort="patient_prob", descending=True, scored=True)  # the page a user opens
    assert parse_query({"sort": "y_prob"}).descending is False and parse_query({"rows": "all"}).scored is False


def test_qc_flags_show_when_a_qc_table_exists_and_each_flag_filters(cam_run: Path, tmp_path: Path) -> None:
    qc = read_table(str(cam_run), "qc").set_index("image_id")
    flags = ("noise_frame", "low_count", "small_body", "body_cut")
    expected = {i: ", ".join(f for f in flags if row[f]) or None for i, row in qc.iterrows()}
    assert any(expected.values()), "the generated data have flagged images"
    rows = all_rows(cam_run)
    assert {i: (None if pd.isna(v) else v) for i, v in rows["qc"].items()} == expected
    catalog = RunCatalog(str(cam_run), None)
    flagged, total = catalog.images(ImageQuery(has_qc=True, scored=False), ALL)
    assert total == sum(v is not None for v in expected.values()) and set(flagged["image_id"]) <= set(qc.index)
    assert catalog.qc_flags() == sorted({f for v in expected.values() if v for f in v.split(", ")})
    for flag in catalog.qc_flags():  # the `QC flag` filter: exactly the images raising it
        chosen, total = catalog.images(ImageQuery(qc_flag=flag, scored=False), ALL)
        assert set(chosen["image_id"]) == {i for i, v in expected.items() if v and flag in v.split(", ")}
    copy = tmp_path / "run"  # without a qc table only the flags scoring copied into preds.qc_flags remain
    shutil.copytree(cam_run / "tables", copy / "tables", ignore=shutil.ignore_patterns("qc"))
    scored = read_table(str(cam_run), "preds").query("stage == 'cam'").set_index("image_id")["qc_flags"]
    left = all_rows(copy)["qc"]
    assert left.drop(index=scored.index).isna().all()
    assert {i: (None if pd.isna(v) else v) for i, v in left[scored.index].items()} == {
        i: ", ".join(f) or None for i, f in scored.items()
    }


def test_browse_config_reads_overrides_and_rejects_unknown_keys(data_root: Path, tmp_path: Path) -> None:
    cfg = test_config(data_root, tmp_path)
    assert cfg.browse == BrowseConfig() and BrowseConfig().host == "127.0.0.1"
    assert test_config(data_root, tmp_path, "browse.port=9001").browse.port == 9001
    with pytest.raises(ConfigError, match=r"unknown key 'browse.prot'"):
        test_config(data_root, tmp_path, "browse.prot=9001")


def test_gt_boxes_are_drawn_outside_the_box_solid_abnormal_and_dashed_normal() -> None:
    gt = pd.DataFrame({"cls": ["Abnormal", "Normal"], "x1": [10, 40], "y1": [10, 10], "x2": [20, 70], "y2": [20, 40]})
    none = pd.DataFrame(columns=["rank", "score", "x1_orig", "y1_orig", "x2_orig", "y2_orig"])
    out = draw_boxes(np.zeros((60, 90, 3), np.uint8), none, gt)
    assert not out[10:20, 10:20].any() and not out[10:40, 40:70].any()  # the boxed pixels stay visible
    assert (out[8, 8:22] == GT_ABNORMAL_COLOUR).all() and (out[9, 8:22] == GT_ABNORMAL_COLOUR).all()  # 2 px, solid
    top = (out[9, 39:71] == GT_NORMAL_COLOUR).all(axis=1)
    assert 0.3 < top.mean() < 0.8  # dashed: drawn and gaps


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)  # sent as written: no client-side normalisation
    conn.endheaders()
    response = conn.getresponse()
    return response.status, response.read()


def test_files_are_served_only_from_under_the_run_dir_and_the_data_root(server, data_root: Path) -> None:
    base, live = server
    assert live.server_address[0] == "127.0.0.1"
    scan = next(data_root.glob("wholeBodyPOST/*.jpg")).relative_to(data_root).as_posix()
    assert raw_get(base, f"/files/data/{scan}") == (200, (data_root / scan).read_bytes())
    (data_root.parent / "secret.txt").write_text("root:x:0:0")
    os.symlink(data_root.parent / "secret.txt", data_root / "link.txt")
    try:
        for path in (
            "/files/data/../secret.txt",
            "/files/data/%2e%2e/secret.txt",
            "/files/data/..%2fsecret.txt",
            "/files/run/..%2F..%2F..%2Fsecret.txt",
            "/files/data//etc/passwd",
            "/files/data/%2Fetc%2Fpasswd",
            f"/files/data/{data_root.parent / 'secret.txt'}",
            "/files/data/link.txt",
            "/files/etc/passwd",
            "/files/data/nothing-here.jpg",
            "/files/data/C:%5Cwindows",
        ):
            status, body = raw_get(base, path)
            assert status in (403, 404), path
            assert b"root:" not in body, path
    finally:
        os.unlink(data_root / "link.txt")


def chrome():
    """Returns a headless Debian Chromium driven through the system chromedriver, or skips with the reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def column(driver, key: str) -> list[str]:
    return [cell.text for cell in driver.find_elements("css selector", f"#images td.c-{key}")]


def click_and_load(driver, element_id: str) -> None:
    """Clicks a control that loads a new table page and waits until the new page has replaced the old one.

    A click returns before the browser has navigated: reading the table at once may read the old page, or an
    element the navigation just removed. Waiting on the old table going stale reads the new one on any machine.
    """
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element("id", "images")
    driver.find_element("id", element_id).click()
    WebDriverWait(driver, 60).until(expected_conditions.staleness_of(old))
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_a_headless_browser_sorts_filters_and_opens_an_image_page_whose_images_load(server, cam_run: Path) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, _ = server
    driver = chrome()
    try:
        driver.get(base + "/")
        scored = read_table(str(cam_run), "preds").query("stage == 'cam'")["image_id"].nunique()
        assert driver.find_element("id", "count").text.startswith(f"{scored} images")  # it opens on the scored
        assert len(column(driver, "image_id")) == min(scored, BrowseConfig().page_size)
        Select(driver.find_element("id", "f-rows")).select_by_value("all")
        click_and_load(driver, "apply")
        total = len(read_table(str(cam_run), "index"))
        assert driver.find_element("id", "count").text.startswith(f"{total} images")
        assert len(column(driver, "image_id")) == min(total, BrowseConfig().page_size)
        click_and_load(driver, "sort-y_prob")  # ascending
        click_and_load(driver, "sort-y_prob")  # again: descending
        probs = [float(v) for v in column(driver, "y_prob") if v != "–"]
        assert len(probs) > 1 and probs == sorted(probs, reverse=True)
        Select(driver.find_element("id", "f-split")).select_by_value("test")
        Select(driver.find_element("id", "f-view")).select_by_value("POST")
        click_and_load(driver, "apply")
        assert set(column(driver, "split")) == {"test"} and set(column(driver, "view")) == {"POST"}
        driver.save_screenshot("/tmp/browse_table.png")
        table = driver.find_element("id", "images")
        driver.find_elements("css selector", "#images td.c-image_id a")[0].click()
        WebDriverWait(driver, 60).until(expected_conditions.staleness_of(table))  # the image page replaced it
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
        views = {e.get_attribute("id") for e in driver.find_elements("css selector", ".view")}
        assert views == {"view-ANT", "view-POST"}
        images = driver.find_elements("css selector", ".view img")
        assert len(images) >= 5  # scan + boxes per view, and the CAM of the scored POST view
        for img in images:
            loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            assert loaded and loaded > 0, img.get_attribute("src")
        driver.save_screenshot("/tmp/browse_image.png")
        driver.get(base + "/")
        Select(driver.find_element("id", "f-rows")).select_by_value("all")  # flagged images may not be scored
        Select(driver.find_element("id", "f-qc_flag")).select_by_value("noise_frame")  # the QC flag filter
        click_and_load(driver, "apply")
        flagged = column(driver, "qc")
        assert flagged and all("noise_frame" in v for v in flagged)
        assert len(driver.find_elements("css selector", "#images td.c-qc.qc-flagged")) == len(flagged)
    finally:
        driver.quit()


# Issue 28: a patient's two whole-body views read together.
# The boxes written for one test patient, original px of its 256 px wide scans: (rank, x1, y1, x2, y2, score,
# cross_view, cross_rank). P0 and A1 lie at the same place of the body (ANT mirrors POST: x -> 256 - x) and confirm
# each other; P1, A0 and A2 have no box of the other view at their place.
POST_BOXES = ((0, 20, 100, 44, 124, 0.9, 0.8, 1), (1, 150, 400, 174, 424, 0.5, 0.0, -1))
ANT_BOXES = (
    (0, 30, 600, 54, 624, 0.85, 0.0, -1),
    (1, 212, 100, 236, 124, 0.8, 0.9, 0),
    (2, 100, 800, 124, 824, 0.3, 0.0, -1),
)


@dataclass(frozen=True)
class BothViews:
    """A run whose patient `patient` has both whole-body views scored, with boxes linked across them."""

    run_dir: Path
    patient: str
    ant: str  # image ids
    post: str
    fallback: str  # a scored patient without patient_preds: its images sort by their own probability


def both_views_run(source: Path, target: Path) -> BothViews:
    """Copies the scored run `source` to `target` and makes one test patient's two whole-body views both scored (a
    cam prediction added for its ANT when the run scored POST only), with the boxes POST_BOXES and ANT_BOXES, and
    `patient_preds` of the test split: `cam` rows (that patient the most suspicious, the others in the reverse of
    their images' order, one scored patient without a row) beside `infer` rows with other values, which browse
    must not read where cam has the patient (the images' probabilities are cam's)."""
    shutil.copytree(source, target)
    run = str(target)
    index = read_table(run, "index")
    preds = read_table(run, "preds")
    cam = preds[preds["stage"] == "cam"]
    whole = index[index["folder"].isin(["wholeBodyANT", "wholeBodyPOST"])]
    post = next(
        row
        for row in cam[cam["folder"] == "wholeBodyPOST"].sort_values("image_id").itertuples()
        if ((whole["patient_id"] == row.patient_id) & (whole["view"] == "ANT")).any()
    )
    ant_id = whole.loc[(whole["patient_id"] == post.patient_id) & (whole["view"] == "ANT"), "image_id"].iloc[0]
    if ant_id not in set(cam["image_id"]):
        label = index.set_index("image_id").loc[ant_id, "label"]
        added = cam[cam["image_id"] == post.image_id].assign(
            image_id=ant_id, view="ANT", folder="wholeBodyANT", y_prob=np.float32(post.y_prob / 2), y_true=label
        )
        write_part(run, "preds", added.assign(qc_flags=[[]]), "both-views")
    boxes = read_table(run, "boxes")
    template = boxes.iloc[0].to_dict()
    rows = [
        {
            **template,
            "image_id": image_id,
            "folder": folder,
            "split": "test",
            "rank": rank,
            "x1_orig": x1,
            "y1_orig": y1,
            "x2_orig": x2,
            "y2_orig": y2,
            "score": score,
            "cross_view": cross,
            "cross_rank": cross_rank,
        }
        for image_id, folder, table in (
            (post.image_id, "wholeBodyPOST", POST_BOXES),
            (ant_id, "wholeBodyANT", ANT_BOXES),
        )
        for rank, x1, y1, x2, y2, score, cross, cross_rank in table
    ]
    kept = boxes[~boxes["image_id"].isin([post.image_id, ant_id])]
    writer = TableWriter(run, "boxes", overwrite=True, replace=("boxes",))
    writer.write("boxes", pd.concat([kept, pd.DataFrame(rows)], ignore_index=True))
    writer.commit()
    scored = read_table(run, "preds").query("stage == 'cam'")[["image_id", "y_prob"]]
    scored = scored.merge(index[["image_id", "patient_id"]], on="image_id")
    by_patient = scored.groupby("patient_id")["y_prob"].max().sort_values(ascending=False)
    others = [p for p in by_patient.index if p != post.patient_id]
    fallback, fused = others[-1], {post.patient_id: 0.99}
    fused.update({p: 0.05 + 0.01 * n for n, p in enumerate(others[:-1])})  # the reverse of their images' order
    kept = read_table(run, "patient_preds").query("split != 'test'")
    made = pd.DataFrame(
        [
            {"patient_id": p, "y_prob": v, "y_true": 0, "y_pred": 0, "thr": 0.5, "fusion": "max", "n_views": 2}
            | {"views": "ANT+POST", "run_id": "test", "stage": stage, "split": "test"}
            for stage in ("cam", "infer")
            for p, v in fused.items()
        ]
    )
    made.loc[made["stage"] == "infer", "y_prob"] = 1.0 - made.loc[made["stage"] == "infer", "y_prob"]
    shutil.rmtree(target / "tables" / "patient_preds", ignore_errors=True)
    write_part(run, "patient_preds", pd.concat([kept, made], ignore_index=True), "both-views")
    fallback_image = scored.loc[scored["patient_id"] == fallback, "image_id"].iloc[0]
    return BothViews(target, str(post.patient_id), ant_id, post.image_id, fallback_image)


@pytest.fixture(scope="module")
def both(scored_run: Path, tmp_path_factory: pytest.TempPathFactory) -> BothViews:
    return both_views_run(scored_run, tmp_path_factory.mktemp("both") / "run")


def expected_default_order(run_dir: Path) -> pd.DataFrame:
    """Returns the scored images in the order the table page must open on, recomputed with pandas from the tables:
    the patient's fused probability (cam's patient_preds of the image's split, else the image's own probability)
    descending, then the image's probability descending, then image_id."""
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'")[["image_id", "y_prob", "split"]]
    index = read_table(str(run_dir), "index")[["image_id", "patient_id", "is_whole_body"]]
    fused = read_table(str(run_dir), "patient_preds").query("stage == 'cam'")[["patient_id", "split", "y_prob"]]
    rows = preds.merge(index, on="image_id").merge(fused, on=["patient_id", "split"], how="left", suffixes=("", "_p"))
    rows["patient_prob"] = rows["y_prob_p"].where(rows["is_whole_body"], np.nan).fillna(rows["y_prob"])
    return rows.sort_values(["patient_prob", "y_prob", "image_id"], ascending=[False, False, True]).reset_index()


def page_ids(page: str) -> list[str]:
    return re.findall(r'<td class="c-image_id"><a href="/image/[^"]+">([^<]+)</a>', page)


def page_count(page: str) -> int:
    return int(re.search(r'id="count"[^>]*>\s*(\d+) images', page).group(1))


def test_the_table_opens_on_the_scored_images_the_most_suspicious_patient_first(both: BothViews, data_root: Path):
    expected = expected_default_order(both.run_dir)
    order = expected["image_id"].tolist()
    assert order[:2] == [both.post, both.ant] or order[:2] == [both.ant, both.post]  # fused 0.99: first
    assert order.index(both.fallback) < len(order) - 2  # its own probability, above the others' low fused ones
    plain = expected.sort_values(["y_prob", "image_id"], ascending=[False, True])["image_id"].tolist()
    assert order != plain  # the fused order is not the images' own
    catalog = RunCatalog(str(both.run_dir), selected_thr(both.run_dir))
    rows, total = catalog.images(ImageQuery(), ALL)
    assert total == len(order) and rows["image_id"].tolist() == order
    assert rows["patient_prob"].to_numpy() == pytest.approx(expected["patient_prob"].to_numpy(), abs=1e-6)
    assert rows.set_index("image_id").loc[both.post, "patient_views"] == "ANT+POST"  # cam's row, not infer's
    assert pd.isna(rows.set_index("image_id").loc[both.fallback, "patient_views"])

    client = create_app(test_config(data_root, both.run_dir), BrowseConfig(page_size=5)).test_client()
    page = client.get("/").data.decode()
    assert page_count(page) == len(order) and page_ids(page) == order[:5]
    assert "Scored images only" in page and 'id="sort-patient_prob"' in page and "▼" in page
    second = client.get(re.search(r'id="next" href="([^"]+)"', page).group(1).replace("&amp;", "&")).data.decode()
    assert page_ids(second) == order[5:10]
    everything = client.get("/?rows=all").data.decode()
    assert page_count(everything) == len(read_table(str(both.run_dir), "index"))
    unscored = set(read_table(str(both.run_dir), "index")["image_id"]) - set(order)
    assert set(page_ids(everything)) & unscored  # rows=all: the unscored rows come after the scored ones
    ascending = client.get("/?sort=patient_prob&order=asc").data.decode()
    lowest = expected.sort_values(["patient_prob", "y_prob", "image_id"], ascending=[True, True, True])
    assert page_ids(ascending) == lowest["image_id"].tolist()[:5]
    by_name = client.get("/?sort=image_id&order=asc&rows=all").data.decode()
    assert page_ids(by_name) == sorted(read_table(str(both.run_dir), "index")["image_id"])[:5]


def edge_colour(png: bytes, box: tuple) -> tuple[int, int, int]:
    """Returns the BGR pixel on the left edge of a box, half-way down."""
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    _, x1, y1, _, y2, *_ = box
    return tuple(int(v) for v in image[(y1 + y2) // 2, x1])


def test_the_image_page_shows_both_views_and_links_the_box_pair_confirmed_across_them(
    both: BothViews, data_root: Path
) -> None:
    client = create_app(test_config(data_root, both.run_dir), BrowseConfig()).test_client()
    for asked in (both.post, both.ant):
        page = client.get(f"/image/{asked}").data.decode()
        assert 'id="view-ANT"' in page and 'id="view-POST"' in page
        assert re.search(r'class="view asked"\s+id="view-' + ("POST" if asked == both.post else "ANT"), page)
        pairs = re.findall(r'<tr class="pair" id="pair-(\d+)">.*?<td class="labels">([^<]+)</td>', page, re.S)
        assert pairs == [("1", "A1 ↔ P0")]
        assert "cross_view 0.900, by P0" in page and "cross_view 0.800, by A1" in page
        confirmed = re.findall(r'<tr class="box confirmed" id="box-(\w+)">', page)
        unconfirmed = re.findall(r'<tr class="box unconfirmed" id="box-(\w+)">', page)
        assert sorted(confirmed) == ["A1", "P0"] and sorted(unconfirmed) == ["A0", "A2", "P1"]
        assert page.count("not in the other view") == 3
    post_png = client.get(f"/render/boxes/{both.post}").data
    ant_png = client.get(f"/render/boxes/{both.ant}").data
    assert edge_colour(post_png, POST_BOXES[0]) == edge_colour(ant_png, ANT_BOXES[1]) == PAIR_COLOURS[0]
    assert edge_colour(post_png, POST_BOXES[1]) == edge_colour(ant_png, ANT_BOXES[0]) == BOX_COLOUR


def test_a_headless_browser_opens_on_the_most_suspicious_patient_and_sees_its_two_views_linked(
    both: BothViews, data_root: Path
) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(test_config(data_root, both.run_dir), BrowseConfig())
    live = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=live.serve_forever, daemon=True)
    thread.start()
    driver = chrome()
    try:
        driver.get(f"http://127.0.0.1:{live.port}/")
        order = expected_default_order(both.run_dir)["image_id"].tolist()
        assert column(driver, "image_id") == order[: BrowseConfig().page_size]
        fused = [float(v.split()[0]) for v in column(driver, "patient_prob")]
        assert fused == sorted(fused, reverse=True) and fused[0] == pytest.approx(0.99)
        table = driver.find_element("id", "images")
        driver.find_elements("css selector", "#images td.c-image_id a")[0].click()
        WebDriverWait(driver, 60).until(expected_conditions.staleness_of(table))
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
        views = [e.get_attribute("id") for e in driver.find_elements("css selector", ".view")]
        assert views == ["view-ANT", "view-POST"]  # side by side: ANT left, POST right
        boxes = driver.find_elements("css selector", ".view img.boxes")
        assert len(boxes) == 2 and boxes[0].location["y"] == boxes[1].location["y"]
        assert boxes[0].location["x"] < boxes[1].location["x"]
        for img in driver.find_elements("css selector", ".view img"):
            loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)
            assert loaded and loaded > 0, img.get_attribute("src")
        assert driver.find_element("css selector", "#pair-1 td.labels").text == "A1 ↔ P0"
        driver.save_screenshot("/tmp/browse_both_views.png")
    finally:
        driver.quit()
        live.shutdown()
        thread.join(timeout=10)
