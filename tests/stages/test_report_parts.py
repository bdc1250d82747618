"""Pure parts of `make report` and the COCO export on hand-made rows: gallery picks, GT drawing, metric notes, COCO."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from engine.core.masks.segmenters import encode_rle
from engine.core.metrics.localization import LocalizationAccumulator, LocSettings
from engine.core.metrics.notes import GROUP_ORDER, describe
from engine.core.render.plots import localisation_png
from engine.core.render.tables import (
    group_table_html,
    grouped_metrics,
    method_metrics_html,
    qc_counts_html,
    shift_reference_html,
)
from engine.io.overlays import GT_ABNORMAL_COLOUR, GT_NORMAL_COLOUR, render_overlay
from engine.stages.evaluate.outputs import (
    CATEGORIES,
    coco_images,
    gt_annotations,
    mask_segments,
    prediction_annotations,
)
from engine.stages.report import LOC_PLOTTED, PHYSIOLOGY, browse_link, prior_verdict, spread_pick


def test_spread_pick_spans_the_probability_order_and_ignores_row_order() -> None:
    frame = pd.DataFrame({"image_id": [f"f/{n}.jpg" for n in range(10)], "y_prob": np.linspace(0.1, 0.9, 10)})
    picked = spread_pick(frame, 4)
    assert picked["image_id"].tolist() == ["f/9.jpg", "f/6.jpg", "f/3.jpg", "f/0.jpg"]  # positions 0, 3, 6, 9
    shuffled = spread_pick(frame.sample(frac=1.0, random_state=1), 4)
    assert shuffled["image_id"].tolist() == picked["image_id"].tolist()
    assert len(spread_pick(frame.head(3), 4)) == 3


def test_browse_links_are_relative_to_the_served_report_and_quoted() -> None:
    assert browse_link("wholeBodyPOST/12 a.jpg") == "../image/wholeBodyPOST/12%20a.jpg"


def test_render_overlay_draws_gt_boxes_two_px_outside_solid_abnormal_and_dashed_normal() -> None:
    image, heat = np.zeros((60, 90), np.uint8), np.zeros((60, 90), np.float32)
    plain = render_overlay(image, heat, np.zeros((0, 4)), "")
    abnormal, normal = np.array([[10, 30, 20, 40]]), np.array([[40, 30, 70, 50]])
    out = render_overlay(image, heat, np.zeros((0, 4)), "", (abnormal, normal))
    assert (out[30:40, 10:20] == plain[30:40, 10:20]).all() and (out[30:50, 40:70] == plain[30:50, 40:70]).all()
    for row in (28, 29):  # two rings above each box
        assert (out[row, 8:22] == GT_ABNORMAL_COLOUR).all()
        dashed = (out[row, 39:71] == GT_NORMAL_COLOUR).all(axis=1)
        assert 0.3 < dashed.mean() < 0.8


def loc_values(pointing: tuple[float, float], precision: tuple[float, float]) -> pd.DataFrame:
    """Returns a hand-made metric x method table as the localisation section pivots `loc_metrics`.

    `pointing`, `precision`: (peaks, body_prior) on pointing_game and precision@iou0.3; the other cells realistic.
    """
    methods = ["peaks", "peaks_tuned", "peaks_unrefined", "seed_rule", "seed", "centre_prior", "body_prior"]
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.uniform(0.05, 0.9, (len(LOC_PLOTTED), len(methods))), LOC_PLOTTED, methods)
    table.loc["pointing_chance"] = 0.04
    table.loc[["max_box_acc@iou0.3", "max_box_acc@iou0.5"]] = np.nan
    table["max_box_acc"] = np.nan
    table.loc[["max_box_acc@iou0.3", "max_box_acc@iou0.5"], "max_box_acc"] = [0.61, 0.32]
    table["masks"] = np.nan  # mask metrics only: no bar
    table.loc["pointing_game", ["peaks", "body_prior"]] = pointing
    table.loc["precision@iou0.3", ["peaks", "body_prior"]] = precision
    return table


def test_the_verdict_says_in_one_line_whether_the_runs_boxes_beat_the_body_prior() -> None:
    beats = prior_verdict(loc_values((0.975, 0.95), (0.12, 0.096)))
    assert beats == (
        "The run's boxes (peaks) beat the no-model body_prior: pointing_game 0.975 vs 0.950, "
        "precision@iou0.3 0.120 vs 0.096."
    )
    assert prior_verdict(loc_values((0.95, 0.975), (0.086, 0.096))) == (
        "The run's boxes (peaks) do not beat the no-model body_prior: pointing_game 0.950 vs 0.975, "
        "precision@iou0.3 0.086 vs 0.096."
    )
    mixed = prior_verdict(loc_values((0.95, 0.975), (0.12, 0.096)))
    assert mixed.startswith("The run's boxes (peaks) beat the no-model body_prior on precision@iou0.3 only: ")
    assert "do not beat" in prior_verdict(loc_values((0.95, 0.95), (0.096, 0.096)))  # a tie does not beat


def test_the_verdict_cannot_be_told_without_both_rows() -> None:
    no_prior = prior_verdict(loc_values((0.95, 0.9), (0.1, 0.09)).drop(columns="body_prior"))
    assert no_prior == (
        "Whether the run's boxes (peaks) beat the no-model body_prior cannot be told: no value for "
        "pointing_game of body_prior, precision@iou0.3 of body_prior."
    )
    no_metric = prior_verdict(loc_values((0.95, 0.9), (0.1, 0.09)).drop(index="precision@iou0.3"))
    assert "cannot be told: no value for precision@iou0.3 of peaks, precision@iou0.3 of body_prior." in no_metric
    assert "no value for pointing_game of peaks." in prior_verdict(loc_values((np.nan, 0.9), (0.1, 0.09)))
    assert "cannot be told" in prior_verdict(pd.DataFrame())


@pytest.mark.parametrize("dropped", [[], ["body_prior"], ["peaks", "body_prior", "pointing_chance"]])
def test_the_localisation_figure_renders_with_and_without_the_prior(dropped: list[str]) -> None:
    table = loc_values((0.95, 0.975), (0.086, 0.096))
    table = table.drop(columns=[d for d in dropped if d in table], index=[d for d in dropped if d in table.index])
    png = cv2.imdecode(np.frombuffer(localisation_png(table, LOC_PLOTTED, 50), np.uint8), cv2.IMREAD_COLOR)
    assert png is not None and png.shape[1] == 400  # 8 in at 50 dpi: one figure, however many panels
    empty = localisation_png(pd.DataFrame(), LOC_PLOTTED, 50)
    assert cv2.imdecode(np.frombuffer(empty, np.uint8), cv2.IMREAD_COLOR) is not None


def test_every_localisation_metric_has_a_group_and_a_plain_description() -> None:
    names = list(LocalizationAccumulator(LocSettings()).compute())
    names += ["max_box_acc@iou0.3", "mask_box_iou", "mask_inside_fraction", "mask_hit_rate", "mask_dice", "mask_pxap"]
    names += ["mask_fp_per_normal", "mask_fp_image_rate", "mask_fp_per_normal_at_cutoff", "n_masks"]
    names += ["n_masks_below_cutoff"]
    for name in names:
        note = describe(name)
        assert note.group in GROUP_ORDER and len(note.text) > 10, name
        assert "{at}" not in note.text, name
    assert "IoU >= 0.3" in describe("precision@iou0.3").text
    assert "intersection over the GT box >= 0.5" in describe("recall@iogt0.5").text
    assert describe("hit@5").group == describe("pointing_game").group == "Pointing"


def test_grouped_tables_show_each_group_with_only_the_methods_that_scored_it() -> None:
    rows = [
        ("peaks", "pointing_game", 0.5, 2, 4),
        ("body_prior", "pointing_game", 0.25, 1, 4),
        ("masks", "mask_dice", 0.8, 4, 5),
        ("peaks", "n_images", 9.0, 9, None),
        ("peaks_tuned", "pointing_game", 0.75, 3, 4),
    ]
    loc = pd.DataFrame(rows, columns=["method", "metric", "value", "numerator", "denominator"])
    loc = loc.assign(split=["test"] * 4 + ["val"], view="POST", folder="*")
    groups = grouped_metrics(loc, "test")["POST/*"]
    assert list(groups) == ["Pointing", "Masks", "Counts"]  # GROUP_ORDER; the val row is not shown
    pointing = group_table_html(groups["Pointing"])
    assert "body_<wbr>prior" in pointing and "masks" not in pointing and "peaks_<wbr>tuned" not in pointing
    assert "0.500<br><small>2/4</small>" in pointing and describe("pointing_game").text in pointing
    assert ">9<" in group_table_html(groups["Counts"])  # a plain count alone


def test_a_group_of_many_methods_continues_in_a_second_table_of_the_same_rows() -> None:
    methods = [f"m{n}" for n in range(10)]
    rows = [(m, metric, 0.5, 1, 2) for m in methods for metric in ("pointing_game", "hit@5")]
    loc = pd.DataFrame(rows, columns=["method", "metric", "value", "numerator", "denominator"])
    tables = re.findall(r"<table.*?</table>", group_table_html(loc))
    assert [len(re.findall(r"<th", t)) - 1 for t in tables] == [8, 2]  # method columns per table
    assert all(t.count("<code>pointing_<wbr>game</code>") == 1 and "<code>hit@5</code>" in t for t in tables)
    assert ">m7<" in tables[0] and ">m8<" in tables[1] and ">m8<" not in tables[0]


def test_physiology_table_puts_each_methods_precision_beside_its_boxes_on_normal_gt() -> None:
    rows = [
        ("peaks", "precision@iou0.3", 0.1, 2, 20),
        ("peaks", "boxes_on_normal_gt", 0.5, 10, 20),
        ("body_prior", "boxes_on_normal_gt", 0.75, 3, 4),
        ("masks_tight", "precision@iou0.3", 0.4, 2, 5),
        ("masks_tight", "boxes_on_normal_gt", 0.2, 1, 5),
        ("cam", "mask_pxap", 0.3, 7, 7),
        ("peaks", "hit@5", 0.9, 9, 10),  # not a column of the table
    ]
    loc = pd.DataFrame(rows, columns=["method", "metric", "value", "numerator", "denominator"])
    table = method_metrics_html(loc, PHYSIOLOGY)
    header, *lines = table.split("<tr>")[1:]
    assert re.findall(r">([a-z_@.0-9<>]+)</th>", header.replace("<wbr>", "")) == [
        "method",
        "precision@iou0.3",
        "boxes_on_normal_gt",
        "mask_pxap",
    ]  # the metrics present, in PHYSIOLOGY's order; recall and fp_boxes_per_normal_image are absent
    assert [re.search(r">([a-z_<>]+)</td>", line).group(1).replace("<wbr>", "") for line in lines] == [
        "peaks",
        "body_prior",
        "masks_tight",
        "cam",
    ]
    assert "0.100<br><small>2/20</small></td><td>0.500<br><small>10/20</small></td><td>–" in lines[0]
    assert "<td>–</td><td>0.750<br><small>3/4</small>" in lines[1] and "hit@5" not in table


def coco_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """Writes a hand-made GT and prediction pair of two images; returns their paths and the kept mask."""
    images = pd.DataFrame(
        {
            "image_id": ["f/b.jpg", "f/a.jpg"],
            "path": ["f/b.jpg", "f/a.jpg"],
            "orig_w": [8, 8],
            "orig_h": [6, 6],
            "split": ["test"] * 2,
            "y_prob": [0.2, 0.9],
        }
    )
    listed, ids = coco_images(images)
    assert ids == {"f/a.jpg": 1, "f/b.jpg": 2} and listed[0]["split"] == "test" and listed[0]["y_prob"] == 0.9
    gt = pd.DataFrame(
        {
            "image_id": ["f/a.jpg", "f/a.jpg"],
            "cls": ["Abnormal", "Normal"],
            "x1": [1, 5],
            "y1": [1, 0],
            "x2": [3, 7],
            "y2": [3, 2],
        }
    )
    mask = np.zeros((6, 8), bool)
    mask[1:3, 1:3] = True
    counts, h, w = encode_rle(mask)
    stored = pd.DataFrame(
        {"image_id": ["f/a.jpg"], "rank": [0], "x1_orig": [0.0], "y1_orig": [0.0], "x2_orig": [4.0], "y2_orig": [4.0]}
    )
    masks = pd.DataFrame(
        {
            "image_id": ["f/a.jpg"],
            "rank": [0],
            "rle_counts": [counts],
            "rle_h": [h],
            "rle_w": [w],
            "area": [4],
            "kept": [True],
        }
    )
    # Tuned boxes: a smaller box around the same peak (centre 2, 2) and one elsewhere (no mask).
    tuned = pd.DataFrame(
        {
            "image_id": ["f/a.jpg", "f/a.jpg"],
            "rank": [0, 1],
            "x1_orig": [1.0, 4.0],
            "y1_orig": [1.0, 3.0],
            "x2_orig": [3.0, 6.0],
            "y2_orig": [3.0, 5.0],
            "score": [1.0, 0.4],
            "score_raw": [2.0, 0.8],
            "y_prob": [0.9, 0.9],
        }
    )
    predictions = prediction_annotations(tuned, ids, mask_segments(masks, tuned, stored))
    paths = []
    for name, rows in (("gt", gt_annotations(gt, ids)), ("pred", predictions)):
        document = {"info": {}, "licenses": [], "images": listed, "annotations": rows, "categories": CATEGORIES}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(document))
    return paths[0], paths[1], mask


def test_coco_gt_and_predictions_load_pair_and_evaluate_in_pycocotools(tmp_path: Path) -> None:
    gt_path, pred_path, mask = coco_pair(tmp_path)
    truth = COCO(str(gt_path))
    anns = truth.loadAnns(truth.getAnnIds(imgIds=[1]))
    assert [(a["category_id"], a["bbox"]) for a in anns] == [(1, [1, 1, 2, 2]), (2, [5, 0, 2, 2])]
    predicted = json.loads(pred_path.read_text())["annotations"]
    assert predicted[0]["segmentation"]["size"] == [6, 8] and predicted[1]["segmentation"] == []
    results = truth.loadRes(predicted)
    assert np.array_equal(results.annToMask(results.loadAnns([1])[0]).astype(bool), mask)
    evaluation = COCOeval(truth, results, "bbox")
    evaluation.params.catIds = [1]  # Abnormal: the class the pseudo boxes look for
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # the best box is the Abnormal box; the other ranks below it


def test_the_qc_table_lists_each_flag_once_with_both_counts_and_its_meaning() -> None:
    indexed = {"noise_frame": 3, "low_count": 1, "small_body": 0, "body_cut": 2}
    scored = {"noise_frame": 1, "low_count": 0, "domain_shift": 4, "view_mismatch": 2, "new_flag": 1}
    page = qc_counts_html(indexed, scored, 120, 30)
    names = re.findall(r"<code>([a-z_]+)</code>", page)
    assert names == ["noise_frame", "low_count", "small_body", "body_cut", "domain_shift", "view_mismatch", "new_flag"]
    assert "<code>noise_frame</code></td><td>3</td><td>1</td>" in page
    assert "<code>domain_shift</code></td><td>–</td><td>4</td>" in page  # judged at scoring only
    assert "<code>small_body</code></td><td>0</td><td>–</td>" in page and "of 120" in page and "of 30" in page


def test_the_shift_reference_table_shows_the_training_spread_beside_the_scored_median() -> None:
    record = {
        "stats": ["mean_grey"],
        "median": {"mean_grey": 3.6},
        "low": {"mean_grey": 1.0},
        "high": {"mean_grey": 6.0},
        "spread_quantile": 0.05,
    }
    page = shift_reference_html(record, {"mean_grey": 13.8})
    assert "<th>training p5</th>" in page and "<th>training p95</th>" in page
    assert "<td>1</td><td>3.6</td><td>6</td><td>13.8</td>" in page
    assert "<td>–</td></tr>" in shift_reference_html(record, {})
