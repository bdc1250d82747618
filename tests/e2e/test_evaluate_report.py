"""`make evaluate` + `make report` end to end on a real local Ray: train -> cam (test, val) -> evaluate -> report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urljoin

import cv2
import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import schemas
from engine.config_sections import BrowseConfig
from engine.core.localization.box_methods import gt_by_image, meta_of, score_method, valid_heatmaps
from engine.core.localization.boxes import BoxParams
from engine.core.metrics.localization import LocSettings
from engine.core.scans.letterbox import original_to_canvas
from engine.io.browse_pages import PAIR_COLOURS
from engine.io.codecs import heatmap_column
from engine.io.overlays import BOX_COLOUR
from engine.io.tables import TableWriter, read_table, write_part
from engine.stages._population import scored_frame
from engine.stages.browse import create_app
from engine.stages.cam import run_cam
from engine.stages.evaluate.outputs import export_coco
from engine.stages.evaluate.run import run_evaluate
from engine.stages.report import run_report
from tests.conftest import test_config
from tests.e2e.test_browse import ANT_BOXES, POST_BOXES, both_views_run, chrome, edge_colour
from tests.eval_recount import recount

# The seed's 48 px boxes at a quarter of the full canvas; a small tuning grid keeps the test short.
EVAL = (
    "evaluate.seed_size=12",
    "evaluate.tune_sizes=[8,12,24]",
    "evaluate.tune_nms_iou=[0.0,0.15]",
    "evaluate.tune_min_scores=[0.0,0.5]",
    "evaluate.tune_cutoffs=[0.0,0.5]",
)


@pytest.fixture(scope="module")
def evaluated_run(ray_session, data_root: Path, scored_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's trained run with CAM over test and val, a landscape-canvas baseline, evaluated and reported."""
    run_dir = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(scored_run, run_dir)  # trained 2 epochs, threshold chosen, cam over test
    run_cam(test_config(data_root, run_dir, "cam.split=val"))
    # The seed's landscape canvas (512 x 1024 at full scale): the same model scored on it, with its own run dir.
    baseline = run_dir.parent / "baseline"
    shutil.copytree(run_dir, baseline, ignore=shutil.ignore_patterns("heatmaps", "boxes", "meta", "preds", "errors"))
    run_cam(test_config(data_root, baseline, "canvas.height=128", "canvas.width=256", "model.override_contract=true"))
    cfg = test_config(data_root, run_dir, *EVAL, f"evaluate.baseline_run={baseline}")
    summary = run_evaluate(cfg)
    report = run_report(cfg)
    return run_dir, cfg, summary, report


SPOT_METHODS = (
    "spots_peak",
    "spots_scan",
    "spots_cam",
    "spots_cam_contrast",
    "spots_cam_asym",
    "spots_cam_site",
    "spots_full",
)


def metric(loc: pd.DataFrame, method: str, name: str, split: str = "test") -> pd.Series:
    rows = loc[(loc["method"] == method) & (loc["metric"] == name) & (loc["split"] == split) & (loc["folder"] == "*")]
    assert len(rows) == 1, (method, name, split)
    return rows.iloc[0]


def test_evaluate_scores_every_method_with_counts_from_the_gt_table(evaluated_run) -> None:
    run_dir, cfg, summary, _ = evaluated_run
    loc = read_table(str(run_dir), "loc_metrics")
    assert set(loc["method"]) == {
        "peaks",
        "peaks_unrefined",
        "peaks_tuned",
        "seed_rule",
        "seed",
        "centre_prior",
        "body_prior",
        "max_box_acc",
        "cam",  # the CAM's own PxAP: generated data carries true lesion masks (engine.io.evaluate_masks)
        *SPOT_METHODS,
    }
    assert set(loc.loc[loc["method"] == "peaks_tuned", "split"]) == {"val", "test"}
    for method in SPOT_METHODS:  # each ablation row is tuned on val and scored on val and test
        rows = loc[loc["method"] == method]
        assert set(rows["split"]) == {"val", "test"} and set(rows["tuned_on"]) == {"val"}
        assert metric(loc, method, "n_target_images")["value"] == metric(loc, "peaks", "n_target_images")["value"]
    for method in ("spots_peak", "spots_scan"):  # no model: no classifier cutoff
        assert set(loc.loc[loc["method"] == method, "cutoff"]) == {0.0}
    assert set(loc.loc[loc["method"] == "cam", "metric"]) == {"mask_pxap"}
    test_ids = read_table(str(run_dir), "heatmaps").query("split == 'test'")["image_id"]
    gt = read_table(str(run_dir), "gt_boxes")
    abnormal = gt[(gt["cls"] == "Abnormal") & gt["image_id"].isin(test_ids)]
    assert abnormal["image_id"].nunique() > 0
    for method in ("peaks", "peaks_unrefined", "peaks_tuned", "seed_rule", "seed", "centre_prior", "body_prior"):
        assert metric(loc, method, "n_target_images")["value"] == abnormal["image_id"].nunique()
        assert metric(loc, method, "n_gt_abnormal")["value"] == len(abnormal)
        assert metric(loc, method, "n_images")["value"] == len(test_ids)
    assert summary.balanced and summary.rows_in == len(test_ids)
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{run_dir}/tables/loc_metrics/**/*.parquet')").fetchall()
    assert count[0][0] == len(loc)


def test_pointing_game_chance_hits_and_precision_match_a_brute_force_recount(evaluated_run) -> None:
    """Every figure recounted from the stored tables with plain numpy (refined peaks included), no engine code."""
    run_dir, cfg, _, _ = evaluated_run
    loc = read_table(str(run_dir), "loc_metrics")
    count = recount(run_dir, "test", "wholeBodyPOST", cfg.evaluate.tolerance_px)
    assert count.target_images >= 1 and 0 < count.covered_pixels / count.target_pixels < 0.1
    assert metric(loc, "peaks", "pointing_chance")["value"] == pytest.approx(count.covered_pixels / count.target_pixels)
    assert metric(loc, "peaks", "pointing_game")[["numerator", "denominator"]].tolist() == [
        count.pointing_hits,
        count.target_images,
    ]
    hit = metric(loc, "peaks", "hit@1")
    assert hit[["numerator", "denominator"]].tolist() == [count.hits_at_1, count.target_images]
    assert metric(loc, "peaks", "hit@5")["numerator"] == count.hits_at_5
    precision = metric(loc, "peaks", "precision@iou0.3")  # over every scored image's boxes
    assert precision[["numerator", "denominator"]].tolist() == [count.true_positives_iou03, count.boxes]
    assert metric(loc, "peaks", "n_images")["value"] == count.images


def test_peaks_unrefined_ignores_the_stored_refined_centres(evaluated_run) -> None:
    run_dir, cfg, _, _ = evaluated_run
    loc = read_table(str(run_dir), "loc_metrics")
    heat = read_table(str(run_dir), "heatmaps")
    assert heat["peak_index"].notna().all()  # cam.refine ran: the two methods can differ
    plain = recount(run_dir, "test", "wholeBodyPOST", cfg.evaluate.tolerance_px, refined=False)
    row = metric(loc, "peaks_unrefined", "pointing_game")
    assert row[["numerator", "denominator"]].tolist() == [plain.pointing_hits, plain.target_images]
    for name in ("box_size", "nms_iou", "max_boxes", "min_score"):
        assert row[name] == metric(loc, "peaks", "pointing_game")[name]


def test_baselines_are_scored_beside_ours_and_printed_in_the_summary(evaluated_run) -> None:
    run_dir, cfg, summary, _ = evaluated_run
    loc = read_table(str(run_dir), "loc_metrics")
    targets = metric(loc, "peaks", "n_target_images")["value"]
    for method in ("centre_prior", "body_prior"):
        assert metric(loc, method, "pointing_game")["denominator"] == targets
        assert metric(loc, method, "n_boxes")["value"] > 0
    box_acc = [metric(loc, "max_box_acc", f"max_box_acc@iou{t}") for t in ("0.3", "0.5")]
    assert [r["denominator"] for r in box_acc] == [targets] * 2 and box_acc[0]["value"] >= box_acc[1]["value"]
    saved = json.loads((run_dir / "summaries" / "evaluate.json").read_text())
    assert "max_box_acc@iou0.5=" in saved["max_box_acc"] and "pointing_game=" in saved["body_prior"]
    assert all("pointing_game=" in saved[key] for key in ("peaks", "peaks_unrefined", "centre_prior")), saved
    assert set(saved["max_box_acc_threshold"]) == {"max_box_acc@iou0.3", "max_box_acc@iou0.5"}


def oracle_maps(frame: pd.DataFrame, gt: dict, cell_px: int) -> list[np.ndarray]:
    """Returns one map per row, 1 at the cells (cell_px canvas px square) of its Abnormal box centres, else 0."""
    maps = []
    for row in frame.itertuples(index=False):
        meta = meta_of(row)
        grid = np.zeros((meta.canvas_h // cell_px, meta.canvas_w // cell_px), dtype=np.float16)
        abnormal = gt.get(row.image_id, (np.zeros((0, 4)),))[0]
        for x1, y1, x2, y2 in original_to_canvas(abnormal.reshape(-1, 4), meta):
            grid[int((y1 + y2) / 2 // cell_px), int((x1 + x2) / 2 // cell_px)] = 1.0
        maps.append(grid)
    return maps


def write_heatmaps(run_dir: Path, frame: pd.DataFrame, maps: list[np.ndarray], split: str) -> None:
    writer = TableWriter(str(run_dir), "cam", overwrite=True, split=split)
    stacked = np.stack(maps)
    columns = {c: frame[c].to_numpy() for c in frame.columns if c in schemas.TABLES["heatmaps"].SCHEMA.names}
    writer.write(
        "heatmaps",
        columns
        | {
            "heatmap": heatmap_column(stacked),
            "heatmap_h": [stacked.shape[1]] * len(maps),
            "heatmap_w": [stacked.shape[2]] * len(maps),
        },
    )
    writer.commit()


def test_a_cam_peaking_on_the_lesions_scores_far_above_chance_and_a_misplaced_one_does_not(
    evaluated_run, tmp_path: Path
) -> None:
    """A real signal, not a constant: heatmaps peaking at each image's own lesions vs at another image's lesions."""
    run_dir, cfg, _, _ = evaluated_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    args = (*EVAL, "evaluate.split=train", "evaluate.tune=false", "evaluate.coco=false", "cam.split=train")
    run_cam(test_config(Path(cfg.data.root), copy, *args))  # heatmaps + meta of the larger train split
    frame, _ = valid_heatmaps(scored_frame(str(copy), "train", read_table(str(copy), "index")))
    gt = gt_by_image(read_table(str(copy), "gt_boxes"))
    maps = oracle_maps(frame, gt, cell_px=4)
    targets = [i for i, image_id in enumerate(frame["image_id"]) if len(gt.get(image_id, (np.zeros(0),))[0])]
    assert len(targets) >= 8
    misplaced = list(maps)
    for i, j in zip(targets, targets[1:] + targets[:1], strict=True):
        misplaced[i] = maps[j]
    results = {}
    for name, chosen in (("oracle", maps), ("misplaced", misplaced)):
        write_heatmaps(copy, frame, chosen, "train")
        run_evaluate(test_config(Path(cfg.data.root), copy, *args))
        results[name] = metric(read_table(str(copy), "loc_metrics"), "peaks", "pointing_game", "train")["value"]
    chance = metric(read_table(str(copy), "loc_metrics"), "peaks", "pointing_chance", "train")["value"]
    assert results["oracle"] == 1.0 and chance < 0.05
    assert results["misplaced"] <= 0.5 * results["oracle"], (results, chance)


def test_tuning_sees_val_only_and_records_its_choice(evaluated_run) -> None:
    run_dir, cfg, _, _ = evaluated_run
    document = json.loads((run_dir / "evaluate.json").read_text())
    tuning = document["tuning"]
    assert tuning["split"] == "val" and tuning["grid_size"] == 3 * 2 * 2 * 3  # 3 cutoffs: 0, 0.5 and the thr
    chosen = tuning["chosen"]
    assert chosen["size"] in (8, 12, 24) and chosen == tuning["grid_top"][0]
    loc = read_table(str(run_dir), "loc_metrics")
    tuned = loc[loc["method"] == "peaks_tuned"]
    assert set(tuned["tuned_on"]) == {"val"} and set(tuned["box_size"]) == {chosen["size"]}
    assert np.allclose(tuned["cutoff"], chosen["cutoff"])
    assert document["methods"]["seed/test"]["canvas"] == [128, 256]


def test_tuning_without_val_heatmaps_is_skipped_with_the_reason(evaluated_run, tmp_path: Path) -> None:
    run_dir, cfg, _, _ = evaluated_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run_evaluate(test_config(Path(cfg.data.root), copy, *EVAL, "evaluate.tune_split=train", "evaluate.coco=false"))
    assert "cam.split=train" in json.loads((copy / "evaluate.json").read_text())["tuning"]["skipped"]
    assert "peaks_tuned" not in set(read_table(str(copy), "loc_metrics")["method"])


def test_untuned_coco_export_holds_every_image_and_box_of_the_split_in_original_pixels(evaluated_run, tmp_path) -> None:
    run_dir, cfg, _, _ = evaluated_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("prompts", "report"))
    written = export_coco(test_config(Path(cfg.data.root), copy), {})  # no tuning: the boxes table as it is
    assert set(written) == {"test", "val"}
    coco = json.loads(Path(written["test"]["predictions"]).read_text())
    boxes = read_table(str(copy), "boxes").query("split == 'test'").sort_values(["image_id", "rank"])
    boxes = boxes.reset_index(drop=True)
    assert len(coco["images"]) == len(read_table(str(copy), "heatmaps").query("split == 'test'"))
    assert len(coco["annotations"]) == len(boxes) > 0 and coco["info"]["tuned_on"] is None
    keys = {image["id"]: image["image_key"] for image in coco["images"]}
    first = coco["annotations"][0]
    assert keys[first["image_id"]] == boxes["image_id"].iloc[0] and first["category_id"] == 1
    expected = [
        boxes["x1_orig"][0],
        boxes["y1_orig"][0],
        boxes["x2_orig"][0] - boxes["x1_orig"][0],
        boxes["y2_orig"][0] - boxes["y1_orig"][0],
    ]
    assert first["bbox"] == pytest.approx(expected, abs=0.01)
    assert coco["info"]["box_params"] == [
        {
            "box_size": 12,
            "nms_iou": pytest.approx(cfg.boxes.nms_iou),
            "boxes_max": cfg.boxes.max,
            "min_score": cfg.boxes.min_score,
        }
    ]


def test_coco_files_per_split_carry_the_tuned_boxes_and_evaluate_in_pycocotools(evaluated_run) -> None:
    """coco_<split>.json + coco_<split>_gt.json: same images, split and y_prob, tuned boxes above the cutoff."""
    run_dir, cfg, _, _ = evaluated_run
    chosen = json.loads((run_dir / "evaluate.json").read_text())["tuning"]["chosen"]
    heat = read_table(str(run_dir), "heatmaps").set_index("image_id")
    meta = read_table(str(run_dir), "meta").set_index("image_id")
    gt_table = read_table(str(run_dir), "gt_boxes")
    for split in ("test", "val"):
        truth = COCO(str(run_dir / "prompts" / f"coco_{split}_gt.json"))
        document = json.loads((run_dir / "prompts" / f"coco_{split}.json").read_text())
        info = document["info"]
        assert info["tuned_on"] == "val" and info["cutoff"] == chosen["cutoff"] and info["split"] == split
        assert info["data_root"] == cfg.data.root and info["run_dir"] == cfg.run.dir and info["date_created"]
        assert info["box_params"][0]["size"] == chosen["size"] and document["licenses"]
        assert document["images"] == truth.dataset["images"]
        images = {i["id"]: i for i in document["images"]}
        assert sorted(i["image_key"] for i in images.values()) == sorted(heat.index[heat["split"] == split])
        for image in images.values():
            expected = heat.loc[image["image_key"], "y_prob"]
            assert image["split"] == split and image["y_prob"] == pytest.approx(expected, abs=1e-6)
        for ann in document["annotations"]:
            image = images[ann["image_id"]]
            assert image["y_prob"] >= chosen["cutoff"] and ann["segmentation"] == []  # no `make masks` here
            side = chosen["size"] / meta.loc[image["image_key"], "scale"]  # a canvas box side in original px
            assert ann["bbox"][2] == pytest.approx(side, abs=0.05) and ann["bbox"][3] == pytest.approx(side, abs=0.05)
        listed = gt_table[gt_table["image_id"].isin([i["image_key"] for i in images.values()])]
        assert len(truth.getAnnIds()) == len(listed) > 0
        assert len(truth.getAnnIds(catIds=[1])) == int((listed["cls"] == "Abnormal").sum())
        evaluation = COCOeval(truth, truth.loadRes(document["annotations"]), "bbox")
        evaluation.params.catIds = [1]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert 0.0 <= evaluation.stats[1] <= 1.0  # AP at IoU 0.5 over the Abnormal boxes


def served_report(cfg):
    """Returns a Flask test client of `make browse` over the run (the report served at /report/)."""
    return create_app(cfg, BrowseConfig()).test_client()


def test_report_references_only_existing_files_and_every_png_decodes(evaluated_run) -> None:
    run_dir, _, _, report = evaluated_run
    page = (run_dir / "report" / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) >= 8 and not [s for s in sources if "://" in s or s.startswith("/")]
    for source in sources:
        data = np.frombuffer((run_dir / "report" / source).read_bytes(), dtype=np.uint8)
        assert cv2.imdecode(data, cv2.IMREAD_COLOR) is not None, source
    for png in (run_dir / "report").rglob("*.png"):
        assert cv2.imdecode(np.fromfile(png, dtype=np.uint8), cv2.IMREAD_COLOR).size > 0
    assert set(re.findall(r'href="([^"]+)"', page)) == set(re.findall(r'href="(\.\./image/[^"]+)"', page))
    for section in (
        "ROC",
        "Confusion",
        "Localisation",
        "True positives",
        "False positives",
        "False negatives",
        "True negatives",
    ):
        assert section in page or section.lower() in page
    assert report.balanced and report.rows_ok == 5  # classification, training, localisation, gallery, patients


def test_the_localisation_section_says_in_one_line_whether_the_runs_boxes_beat_the_body_prior(evaluated_run):
    run_dir, _, _, _ = evaluated_run
    page = (run_dir / "report" / "index.html").read_text()
    loc = read_table(str(run_dir), "loc_metrics")
    names = ("pointing_game", "precision@iou0.3")
    pairs = [(metric(loc, "peaks", name)["value"], metric(loc, "body_prior", name)["value"]) for name in names]
    numbers = ", ".join(f"{name} {ours:.3f} vs {prior:.3f}" for name, (ours, prior) in zip(names, pairs, strict=True))
    line = re.search(
        r"<p><b>The run&#x27;s boxes \(peaks\) (beat|do not beat) the no-model body_prior([^:<]*): ([^<]+)\.</b></p>",
        page,
    )
    assert line and line.group(3) == numbers, line
    beaten = [p > q for p, q in pairs]
    assert (line.group(1) == "beat") == any(beaten) and (line.group(2) == "") == (all(beaten) or not any(beaten))
    assert '<img src="localisation.png" alt="localisation" style="max-width:100%">' in page  # the page's width


def test_the_gallery_covers_every_outcome_with_its_count_and_links_each_image_to_its_browse_page(evaluated_run):
    run_dir, cfg, _, _ = evaluated_run
    page = (run_dir / "report" / "index.html").read_text()
    heat = read_table(str(run_dir), "heatmaps").query("split == 'test' and folder == 'wholeBodyPOST'")
    rows = heat.merge(read_table(str(run_dir), "index")[["image_id", "label"]], on="image_id")
    called = rows["y_prob"] >= float(read_table(str(run_dir), "thresholds")["thr"].iloc[-1])
    client = served_report(cfg)
    for key, label, is_called in (("TP", 1, True), ("FP", 0, True), ("FN", 1, False), ("TN", 0, False)):
        total = int(((rows["label"] == label) & (called == is_called)).sum())
        shown = re.search(rf"\({key}\): (\d+) shown of (\d+)</h3>", page)
        assert shown and int(shown.group(2)) == total and int(shown.group(1)) == min(total, cfg.report.gallery), key
    served = client.get("/report/")
    assert served.status_code == 200 and served.data.decode() == page
    links = re.findall(r'<a href="(\.\./image/[^"]+)"><img src="([^"]+)"', page)
    assert len(links) == sum(int(n) for n in re.findall(r": (\d+) shown of", page)) > 0
    for href, src in links:
        image_page = client.get(urljoin("/report/", href))
        assert image_page.status_code == 200 and unquote(href.removeprefix("../image/")) in image_page.data.decode()
        png = client.get(urljoin("/report/", src))
        assert png.status_code == 200 and png.mimetype == "image/png"


def test_each_gallery_overlay_sits_beside_the_raw_scan_the_model_saw(evaluated_run, data_root: Path) -> None:
    run_dir, _, _, _ = evaluated_run
    page = (run_dir / "report" / "index.html").read_text()
    pairs = re.findall(r'<img src="([^"]+_raw\.png)" alt="raw ([^"]+)"><img src="([^"]+\.png)" alt="\2">', page)
    assert pairs and len(pairs) == len(re.findall(r"<figure>", page))
    paths = read_table(str(run_dir), "index").set_index("image_id")["path"]
    for raw, image_id, overlay in pairs:
        shown = cv2.imread(str(run_dir / "report" / raw), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(shown, cv2.imread(str(data_root / paths[image_id]), cv2.IMREAD_GRAYSCALE)), image_id
        assert cv2.imread(str(run_dir / "report" / overlay)).shape[:2] == shown.shape


def test_the_report_fits_an_800_px_wide_window_in_a_headless_browser(evaluated_run) -> None:
    run_dir, _, _, _ = evaluated_run
    driver = chrome()
    try:
        driver.set_window_size(800, 1000)
        driver.get((run_dir / "report" / "index.html").as_uri())
        width = driver.execute_script("return document.documentElement.scrollWidth")
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        tables = driver.execute_script("return Array.from(document.querySelectorAll('table')).map(t => t.scrollWidth)")
        assert viewport <= 800 and width <= viewport, (width, viewport, tables)
        assert driver.find_elements("css selector", "table.loc") and "Pointing" in driver.page_source
    finally:
        driver.quit()


def test_report_of_a_run_without_evaluation_names_the_missing_stage(evaluated_run, tmp_path: Path) -> None:
    run_dir, cfg, _, _ = evaluated_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("loc_metrics", "report"))
    summary = run_report(test_config(Path(cfg.data.root), copy))
    assert summary.errors == {"missing_input": 1} and summary.balanced
    assert "run `make evaluate` first" in (copy / "report" / "index.html").read_text()


def test_bad_heatmaps_missing_gt_and_nan_probabilities_are_counted_not_fatal(evaluated_run) -> None:
    run_dir, cfg, _, _ = evaluated_run
    frame = scored_frame(str(run_dir), "test", read_table(str(run_dir), "index")).head(3).copy()
    frame.at[frame.index[0], "heatmap"] = np.full(len(frame["heatmap"].iloc[0]), np.nan, dtype=np.float16)
    frame.at[frame.index[1], "y_prob"] = np.nan
    good, bad = valid_heatmaps(frame)
    assert bad == 1 and len(good) == 2
    no_boxes = pd.DataFrame(columns=["image_id", "rank", "x1_orig", "y1_orig", "x2_orig", "y2_orig"])
    run = score_method("peaks", good, no_boxes, [None, None], {}, BoxParams(), 0.5, LocSettings(), str(run_dir))
    metrics = run.overall()
    assert metrics["n_nan_prob"].value == 1 and metrics["n_target_images"].value == 0
    assert metrics["n_images"].value == 2 and metrics["n_boxes"].value == 0


def test_tuning_on_the_scored_split_is_refused(evaluated_run) -> None:
    run_dir, cfg, _, _ = evaluated_run
    with pytest.raises(ValueError, match=r"evaluate.tune_split='test' must differ from evaluate.split='test'"):
        run_evaluate(test_config(Path(cfg.data.root), run_dir, *EVAL, "evaluate.tune_split=test"))


def _with_extra_rows(copy: Path, split: str, extra_ids: list[str], dropped: str | None) -> None:
    """Rewrites the split's heatmaps + meta: other folders' images added (donor maps), one POST row dropped."""
    for name in ("heatmaps", "meta"):
        rows = read_table(str(copy), name, pads.field("split") == split)
        donors = rows.iloc[[i % len(rows) for i in range(len(extra_ids))]].copy()
        donors["image_id"], donors["folder"] = extra_ids, [i.split("/")[0] for i in extra_ids]
        rows = pd.concat([rows[rows["image_id"] != dropped], donors], ignore_index=True)
        writer = TableWriter(str(copy), "cam", overwrite=True, split=split)
        writer.write(name, rows)
        writer.commit()


def test_only_the_trained_views_whole_body_folder_is_scored_whatever_cam_wrote(evaluated_run, tmp_path) -> None:
    """Heatmaps of ANT and of a region folder (as `cam.scope=all` writes) are left out and counted, test and val."""
    run_dir, cfg, _, _ = evaluated_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    index = read_table(str(copy), "index").merge(read_table(str(copy), "splits")[["image_id", "split"]])
    expected = {}
    for split in ("test", "val"):
        rows = index[(index["split"] == split) & index["folder"].isin(["wholeBodyANT", "chestLPOST"])]
        extra = rows.groupby("folder").head(3)["image_id"].tolist()
        expected[split] = extra
        post = read_table(str(copy), "heatmaps", pads.field("split") == split)["image_id"].tolist()
        _with_extra_rows(copy, split, extra, post[0] if split == "test" else None)
    summary = run_evaluate(test_config(Path(cfg.data.root), copy, *EVAL, "evaluate.coco=false"))
    loc = read_table(str(copy), "loc_metrics")
    selected = index[(index["split"] == "test") & (index["folder"] == "wholeBodyPOST")]
    scored = set(read_table(str(copy), "heatmaps").query("folder == 'wholeBodyPOST' and split == 'test'")["image_id"])
    assert scored < set(selected["image_id"]) and len(scored) == len(selected) - 1
    for method in ("peaks", "peaks_tuned", "centre_prior", "body_prior"):
        assert metric(loc, method, "n_images")["value"] == len(scored), method
    assert set(loc["view"]) == {"POST"} and set(loc["folder"]) == {"*"}
    for split in ("test", "val"):
        left = pd.Series([i.split("/")[0] for i in expected[split]]).value_counts().to_dict()
        assert summary.extra[f"left_out_{split}"] == left
    tuning = json.loads((copy / "evaluate.json").read_text())["tuning"]
    assert tuning["images"] == int(((index["split"] == "val") & (index["folder"] == "wholeBodyPOST")).sum())
    # rows in = the view's selected images; ok = what the scorer counted; the dropped heatmap is an error
    assert summary.rows_in == len(selected) and summary.rows_ok == len(scored)
    assert summary.errors == {"no_heatmap": 1} and summary.balanced


def test_the_report_shows_view_and_patient_metrics_and_a_patients_two_views_with_the_linked_pair(
    scored_run: Path, data_root: Path, tmp_path: Path
) -> None:
    """Issue 28: `metrics` rows of every image, each view and the patients beside the image-level metrics, and the
    most suspicious patient's ANT and POST side by side, the box pair confirmed across them in one colour."""
    both = both_views_run(scored_run, tmp_path / "run")
    counts = {"tp": 3, "tn": 4, "fp": 1, "fn": 2, "n": 10}
    rows = [
        {"view": view, "auc": auc, "thr": 0.5, "accuracy": 0.7, "sensitivity": 0.6, "specificity": 0.8}
        | {"precision": 0.75, "f1": 0.66, "run_id": "test", "split": "test", **counts}
        for view, auc in (("BOTH", 0.7125), ("ANT", 0.6875), ("POST", 0.7375), ("patient", 0.8125))
    ]
    write_part(str(both.run_dir), "metrics", pd.DataFrame(rows), "test")
    summary = run_report(test_config(data_root, both.run_dir))
    page = (both.run_dir / "report" / "index.html").read_text()
    assert summary.errors == {"missing_input": 1}  # loc_metrics: `make evaluate` did not run
    table = re.search(r'<table[^>]*id="level-metrics".*?</table>', page, re.S).group(0)
    levels = re.findall(r"<th>(images \(\w+\)|patients \([^)]*\))</th>", table)
    assert levels == ["images (BOTH)", "images (ANT)", "images (POST)", "patients (max of their views)"]
    assert "0.8125" in table and "3/1/2/4" in table
    figure = re.search(rf'<figure class="patient" id="patient-{both.patient}">(.*?)</figure>', page, re.S)
    assert figure and page.index('<figure class="patient"') == page.index(figure.group(0))  # fused 0.99: first
    views = re.findall(r'<a class="view" href="\.\./image/([^"]+)"><img src="([^"]+)"', figure.group(1))
    assert [unquote(href) for href, _ in views] == [both.ant, both.post]  # side by side: ANT left, POST right
    assert "Confirmed across the views:" in figure.group(1) and "A1 ↔ P0" in figure.group(1)
    ant_png, post_png = ((both.run_dir / "report" / src).read_bytes() for _, src in views)
    assert edge_colour(post_png, POST_BOXES[0]) == edge_colour(ant_png, ANT_BOXES[1]) == PAIR_COLOURS[0]
    assert edge_colour(post_png, POST_BOXES[1]) == edge_colour(ant_png, ANT_BOXES[0]) == BOX_COLOUR
    sources = re.findall(r'src="([^"]+)"', page)
    assert not [s for s in sources if "://" in s or s.startswith("/") or not (both.run_dir / "report" / s).exists()]
    client = served_report(test_config(data_root, both.run_dir))
    for href, _ in views:
        page_of = client.get(urljoin("/report/", f"../image/{href}"))
        assert page_of.status_code == 200 and 'id="pair-1"' in page_of.data.decode()  # browse shows the same pair
    driver = chrome()
    try:
        driver.set_window_size(800, 1000)
        driver.get((both.run_dir / "report" / "index.html").as_uri())
        width = driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= driver.execute_script("return document.documentElement.clientWidth")
    finally:
        driver.quit()
