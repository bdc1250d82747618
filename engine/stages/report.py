"""`make report`: one self-contained offline HTML page of a run (`<run.dir>/report/index.html`), PNGs beside it.

Sections: classification (ROC, precision-recall, sensitivity/specificity vs threshold, confusion matrix at the
selected threshold), training curves (`epochs`), localisation (`loc_metrics` from `make evaluate`: one line on
whether the run's boxes beat the no-model body prior, a panel per metric, every method's precision beside its share
of boxes on physiological uptake (Normal GT boxes) and its PxAP with the one classifier-gate rule of the mask
methods, tables grouped and explained by ``core.metrics.notes``) and a gallery of overlays in original px for true
positives, false positives, false negatives and true negatives, each image linked to its page in `make browse`
(``../image/<image_id>``, which resolves when `make browse` serves this page at ``/report/``; opened as a file the
links lead nowhere). Beside the image-level classification metrics stand the per-view and patient rows of
`metrics` (`make infer`: a patient's views fused, patient_preds), and a last section shows a few patients' two
whole-body views side by side with their pseudo boxes, a box confirmed in the other view (boxes.cross_view) drawn
in its pair's colour as `make browse` draws it. A section whose inputs are missing says which stage to run; it
never stops the others.
"""

from __future__ import annotations

import html
import json
import logging
from collections import Counter
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from engine.config import Config
from engine.core.metrics.classification import binary_metrics
from engine.core.metrics.notes import MASK_GATE
from engine.core.render import plots as plots
from engine.core.render.tables import (
    classification_html,
    group_table_html,
    grouped_metrics,
    method_metrics_html,
    methods_html,
    parameters,
    qc_counts_html,
    shift_reference_html,
)
from engine.core.scans.decode import DecodeError
from engine.io.fs import read_run_json, resolve_fs
from engine.io.summary import StageSummary
from engine.io.tables import read_table
from engine.stages._rows import QC_FLAGS, UNSPLIT, read_qc_reference, view_folders
from engine.stages._run import StageRun
from engine.stages._scoring import selected_threshold
from engine.stages._stage import Stage

log = logging.getLogger(__name__)

LOC_PLOTTED = (
    "pointing_game",
    "pointing_chance",
    "hit@1",
    "hit@5",
    "precision@iou0.3",
    "recall@iou0.3",
    "boxes_on_normal_gt",
    "precision@iou0.5",
    "recall@iou0.5",
    "max_box_acc@iou0.3",
    "max_box_acc@iou0.5",
    "mask_pxap",
)
# The table of every method's precision beside its boxes on physiological uptake (Normal GT boxes) and its PxAP.
PHYSIOLOGY = ("precision@iou0.3", "recall@iou0.3", "boxes_on_normal_gt", "fp_boxes_per_normal_image", "mask_pxap")
RUN_METHOD = "peaks"  # the boxes the run writes (`make cam` / `make boxes`): the method the report judges
PRIOR_METHOD = "body_prior"  # the no-model prior it has to beat
VERDICT_METRICS = ("pointing_game", "precision@iou0.3")  # the two it has to beat it on
OUTCOMES = (
    ("tp", "True positives", 1, True),
    ("fp", "False positives", 0, True),
    ("fn", "False negatives", 1, False),
    ("tn", "True negatives", 0, False),
)  # key, title, label, called
# a clinic's unlabeled scans, shown when there are some
UNLABELED = (("pos", "Unlabeled, called abnormal", None, True), ("neg", "Unlabeled, called normal", None, False))
QC_MARK_COLOUR = (0, 140, 255)  # BGR orange: the frame drawn around a QC-flagged gallery overlay
STYLE = """body{font-family:sans-serif;margin:16px;max-width:800px;color:#222}h1{font-size:20px;word-break:break-all}
h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}table{border-collapse:collapse;font-size:12px;
margin:6px 0}td,th{border:1px solid #ccc;padding:2px 4px;text-align:right;vertical-align:top}th{background:#f3f3f3}
td:first-child{text-align:left}td.name{max-width:230px}td.text{text-align:left}small{color:#555}
.plots img{max-width:48%;margin:4px}.gallery{display:flex;flex-wrap:wrap;gap:10px}.missing{color:#a33}
figure{margin:0;font-size:12px;max-width:530px}figure img{max-width:49%;margin-right:4px;border:1px solid #999}
.methods{font-size:12px}.key span{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px}
.qcmark{background:#ff8c00;color:#fff;font-weight:bold;padding:0 4px;border-radius:3px}"""


class ReportInputError(ValueError):
    """A report section whose input table or file is missing: names the stage that writes it."""


class _Out:
    """Writes report files under `<run.dir>/report/` (path or URI); remembers what it wrote."""

    def __init__(self, run_dir: str) -> None:
        self.fs, root = resolve_fs(run_dir)
        self.root = f"{root}/report"
        self.files: list[str] = []

    def write(self, relative: str, data: bytes) -> str:
        path = f"{self.root}/{relative}"
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(path) as out:
            out.write(data)
        self.files.append(relative)
        return relative


def _img(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'


def _table(frame: pd.DataFrame, index: bool = True) -> str:
    frame = frame.rename_axis(index=[None] * frame.index.nlevels, columns=None) if index else frame
    return frame.to_html(border=0, na_rep="–", float_format=lambda v: f"{v:.4g}", escape=True, index=index)


def scored_preds(cfg: Config) -> tuple[pd.DataFrame, str]:
    """Returns the classification predictions shown (make infer's split, else make cam's) and their source."""
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[preds["folder"].isin(view_folders(cfg.data.view))]  # `make cam cam.scope=all` scores every folder
    for stage, split in (("infer", cfg.infer.split), ("cam", cfg.evaluate.split)):
        chosen = preds[(preds["stage"] == stage) & (preds["split"] == split)]
        if len(chosen):
            return chosen, f"stage={stage}, split={split}"
    raise ReportInputError("no test predictions: run `make infer` (or `make cam`) first")


def selected_thr(cfg: Config) -> float:
    """Returns the run's selected threshold; raises ReportInputError without one."""
    try:
        return selected_threshold(cfg.run.dir)
    except ValueError as exc:
        raise ReportInputError("no selected threshold: run `make threshold` first") from exc


def _classification(cfg: Config, out: _Out) -> str:
    preds, source = scored_preds(cfg)
    thr = selected_thr(cfg)
    finite = np.isfinite(preds["y_prob"].to_numpy(dtype=np.float64))
    y_true, y_prob = preds["y_true"].to_numpy()[finite], preds["y_prob"].to_numpy(dtype=np.float64)[finite]
    if len(np.unique(y_true)) < 2:
        raise ReportInputError(f"predictions ({source}) hold one class only: no ROC")
    m = binary_metrics(y_true, y_prob, thr)
    dpi = cfg.report.dpi
    names = [
        out.write("roc.png", plots.roc_png(y_true, y_prob, thr, dpi)),
        out.write("pr.png", plots.pr_png(y_true, y_prob, thr, dpi)),
        out.write("sens_spec.png", plots.sens_spec_png(y_true, y_prob, thr, dpi)),
        out.write("confusion.png", plots.confusion_png(m.tn, m.fp, m.fn, m.tp, thr, dpi)),
    ]
    row = {k: getattr(m, k) for k in ("n", "auc", "sensitivity", "specificity", "precision", "f1", "accuracy", "thr")}
    note = f"<p>Predictions: {html.escape(source)}; {int((~finite).sum())} without a finite probability left out.</p>"
    plots_html = '<div class="plots">' + "".join(_img(n, n) for n in names) + "</div>"
    return note + classification_html(row) + _levels(cfg) + plots_html


LEVEL_COLUMNS = ("n", "auc", "sensitivity", "specificity", "precision", "f1", "thr", "tp/fp/fn/tn")
PATIENT_STAGES = ("cam", "infer", "threshold")  # patient_preds read first of these (browse reads the same)


def level_rows(metrics: pd.DataFrame, fusion: dict[str, str] | None = None) -> pd.DataFrame:
    """Returns the `metrics` rows as the report shows them, per split: every image of the model's views, each view
    alone, then the patients (their views fused; `fusion`: split -> the rule), indexed by (split, level)."""
    from engine.stages._scoring import PATIENT_VIEW

    if metrics.empty:
        return pd.DataFrame(columns=["split", "level", *LEVEL_COLUMNS]).set_index(["split", "level"])
    fusion = fusion or {}

    def level(row: pd.Series) -> str:
        if row["view"] == PATIENT_VIEW:
            rule = fusion.get(str(row["split"]))
            return f"patients ({rule} of their views)" if rule else "patients (views fused)"
        return f"images ({row['view']})"

    order = metrics["view"].map(lambda v: 2 if v == PATIENT_VIEW else 1 if v in ("ANT", "POST") else 0)
    counts = [f"{tp}/{fp}/{fn}/{tn}" for tp, fp, fn, tn in metrics[["tp", "fp", "fn", "tn"]].itertuples(index=False)]
    shown = metrics.assign(level=metrics.apply(level, axis=1), _order=order, **{"tp/fp/fn/tn": counts})
    shown = shown.sort_values(["split", "_order", "level"], kind="stable").drop_duplicates(
        ["split", "level"], keep="last"
    )
    return shown.set_index(["split", "level"])[list(LEVEL_COLUMNS)]


def _levels(cfg: Config) -> str:
    """Returns the per-view and patient metrics of `make infer` beside the image-level ones (or what to run)."""
    metrics = read_table(cfg.run.dir, "metrics")
    if metrics.empty:
        return (
            '<p class="missing">Per view and per patient (both views read together): run `make infer`; its '
            "<code>metrics</code> table holds them.</p>"
        )
    patients = read_table(cfg.run.dir, "patient_preds")
    fusion = {}
    for split, rows in patients.groupby("split"):
        rows = rows.assign(_stage=rows["stage"].map({s: n for n, s in enumerate(PATIENT_STAGES)}).fillna(99))
        fusion[str(split)] = str(rows.sort_values("_stage")["fusion"].iloc[0])
    table = level_rows(metrics, fusion)
    return (
        '<h3 id="levels">Images, views and patients</h3><p>The <code>metrics</code> table of <code>make infer</code>, '
        "per split: every image of the model's views, each view alone, and the patients, each patient's views fused "
        "into one probability (<code>patient_preds</code>) and called at the patient threshold chosen on val.</p>"
        + _table(table).replace("<table", '<table id="level-metrics"', 1)
    )


def _training(cfg: Config, out: _Out) -> str:
    epochs = read_table(cfg.run.dir, "epochs")
    if epochs.empty:
        raise ReportInputError("no epochs table: run `make train` first")
    name = out.write("epochs.png", plots.epochs_png(epochs, cfg.report.dpi))
    shown = epochs.sort_values("epoch")[["epoch", "train_loss", "val_loss", "val_auc", "lr", "img_per_s", "is_best"]]
    return f'<div class="plots">{_img(name, "epochs")}</div>' + _table(shown.set_index("epoch"))


def _localisation(cfg: Config, out: _Out) -> str:
    loc = read_table(cfg.run.dir, "loc_metrics")
    if loc.empty:
        raise ReportInputError("no loc_metrics table: run `make evaluate` first")
    split = cfg.evaluate.split
    parts = [
        f"<p>Scored on split <b>{html.escape(split)}</b> against the Abnormal GT boxes (original px). "
        "Cells: value over numerator/denominator; plain counts alone. Rows of the tuning split are in "
        "<code>loc_metrics</code> (and <code>evaluate.json</code>).</p>"
    ]
    chart = loc[(loc["split"] == split) & (loc["folder"] == "*")]
    view = "all" if (chart["view"] == "all").any() else chart["view"].iloc[0] if len(chart) else None
    values = pd.DataFrame()
    if view is not None:
        values = chart[chart["view"] == view].pivot(index="metric", columns="method", values="value")
    parts.append(f"<p><b>{html.escape(prior_verdict(values))}</b></p>")
    if view is not None:
        png = plots.localisation_png(values, LOC_PLOTTED, cfg.report.dpi, RUN_METHOD, PRIOR_METHOD)
        name = out.write("localisation.png", png)
        parts.append(f'<p><img src="{html.escape(name)}" alt="localisation" style="max-width:100%"></p>')  # full width
        parts.append(_physiology(chart[chart["view"] == view]))
    parts.append("<h3>Methods</h3>" + methods_html(list(dict.fromkeys(loc.loc[loc["split"] == split, "method"]))))
    for name, groups in grouped_metrics(loc, split).items():
        parts.append(f"<h3>{html.escape(name)}</h3>")
        parts += [f"<h4>{html.escape(group)}</h4>" + group_table_html(rows) for group, rows in groups.items()]
    parts.append("<h3>Box parameters per method</h3>" + _table(parameters(loc, cfg.run.dir)))
    return "".join(parts) + _tuning_note(cfg)


def _physiology(rows: pd.DataFrame) -> str:
    """Returns the table of every method's precision beside its false positives on physiology, with its reading."""
    return (
        "<h3>Precision beside false positives on physiology</h3><p><code>boxes_on_normal_gt</code>: the share of a "
        "method's boxes (for masks: their bounding boxes) that touch a Normal GT box, the physiological uptake "
        "BS-80K marks (bladder, kidneys, injection site), and no Abnormal one; lower is better. "
        "<code>mask_pxap</code>: on each method's own continuous score map (generated data only). "
        f"{html.escape(MASK_GATE)}</p>" + method_metrics_html(rows, PHYSIOLOGY)
    )


def prior_verdict(values: pd.DataFrame) -> str:
    """Returns one sentence: whether the run's boxes (RUN_METHOD) beat the no-model PRIOR_METHOD on VERDICT_METRICS.

    Args:
        values: the scored split's values (rows: metric, columns: method), as the localisation figure shows them.
            A higher value beats; a tie does not. A missing row or NaN value (denominator 0) leaves it untold.
    """
    subject = f"run's boxes ({RUN_METHOD})"
    pairs, missing = {}, []
    for metric in VERDICT_METRICS:
        pair = [_cell(values, metric, method) for method in (RUN_METHOD, PRIOR_METHOD)]
        missing += [f"{metric} of {m}" for m, v in zip((RUN_METHOD, PRIOR_METHOD), pair, strict=True) if np.isnan(v)]
        pairs[metric] = pair
    if missing:
        return (
            f"Whether the {subject} beat the no-model {PRIOR_METHOD} cannot be told: no value for {', '.join(missing)}."
        )
    numbers = ", ".join(f"{metric} {ours:.3f} vs {prior:.3f}" for metric, (ours, prior) in pairs.items())
    beaten = [metric for metric, (ours, prior) in pairs.items() if ours > prior]
    verdict = "beat" if beaten else "do not beat"
    only = f" on {' and '.join(beaten)} only" if beaten and len(beaten) < len(pairs) else ""
    return f"The {subject} {verdict} the no-model {PRIOR_METHOD}{only}: {numbers}."


def _cell(values: pd.DataFrame, metric: str, method: str) -> float:
    """Returns one value of the metric x method table; NaN where the row or column is missing."""
    if metric not in values.index or method not in values.columns:
        return np.nan
    return float(values.at[metric, method])


def _tuning_note(cfg: Config) -> str:
    document = read_run_json(cfg.run.dir, "evaluate.json")
    if document is None:
        return ""
    tuning = document.get("tuning", {})
    if "chosen" not in tuning:
        return f"<p>Tuning: {html.escape(str(tuning.get('skipped', 'not run')))}</p>"
    return (
        f"<p>Tuned on <b>{html.escape(tuning['split'])}</b> only ({tuning['images']} images; "
        f"{html.escape(tuning['objective'])}): {html.escape(json.dumps(tuning['chosen']))}. "
        "Reproduce the boxes: <code>make boxes ARGS=&quot;"
        f"{html.escape(tuning['make_boxes_args'])}&quot;</code></p>"
    )


def gallery_split(cfg: Config) -> str:
    """Returns the split the gallery shows: `evaluate.split`, or `all` for a run scored without splits (new scans
    scored with `model.from_run`, whose rows are all of split `all`)."""
    if read_table(cfg.run.dir, "splits").empty and not read_table(cfg.run.dir, "heatmaps", _split(UNSPLIT)).empty:
        return UNSPLIT
    return cfg.evaluate.split


def _split(split: str) -> pads.Expression:
    return pads.field("split") == split


def _gallery_rows(cfg: Config, thr: float, split: str) -> pd.DataFrame:
    heat = read_table(cfg.run.dir, "heatmaps", _split(split))
    if split != UNSPLIT:  # `make cam` scored the model's view only where the run has no splits
        heat = heat[heat["folder"].isin(view_folders(cfg.data.view))]  # the population `make evaluate` scores
    if heat.empty:
        raise ReportInputError(f"no heatmaps for split={split}: run `make cam` first")
    meta = read_table(cfg.run.dir, "meta", _split(split)).drop(columns=["split", "folder"])
    index = read_table(cfg.run.dir, "index")[["image_id", "label", "path"]]
    frame = heat.merge(meta, on="image_id").merge(index, on="image_id")
    flags = scored_flags(cfg, split)
    qc = [flags.get(str(image_id), []) for image_id in frame["image_id"]]
    return frame.assign(is_positive=frame["y_prob"] >= thr, qc_flags=qc)


def scored_flags(cfg: Config, split: str | None = None) -> dict[str, list[str]]:
    """Returns image_id -> the QC flags of its prediction (preds.qc_flags of `make cam`, else `make infer`; [] when
    none or unknown), for the images scored (in `split`, when given)."""
    preds = read_table(cfg.run.dir, "preds", None if split is None else _split(split))
    preds = preds[preds["stage"].isin(["cam", "infer"])].sort_values("stage")  # cam before infer
    preds = preds.drop_duplicates("image_id")
    return {
        str(i): [str(f) for f in flags] if flags is not None else []
        for i, flags in zip(preds["image_id"], preds["qc_flags"], strict=True)
    }


def spread_pick(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """Returns up to `count` rows evenly spread over `frame` ordered by y_prob (highest first, then image_id).

    Deterministic: the most and the least confident row of the group are always among them (count >= 2).
    """
    ordered = frame.sort_values(["y_prob", "image_id"], ascending=[False, True], kind="stable")
    if len(ordered) <= count:
        return ordered
    return ordered.iloc[np.unique(np.round(np.linspace(0, len(ordered) - 1, count)).astype(int))]


def browse_link(image_id: str) -> str:
    """Returns the image's page in `make browse` relative to the report served there at ``/report/``."""
    return "../image/" + quote(image_id, safe="/")


def _overlay(
    cfg: Config, row: object, boxes: pd.DataFrame, gt: dict, caption: str, masks: pd.DataFrame, flagged: bool = False
) -> tuple[bytes, bytes]:
    """Returns the PNGs of one scan in original px: the raw grey levels the model saw, and the overlay of its CAM,
    pseudo boxes, GT boxes and kept mask contours (framed in QC_MARK_COLOUR when the image is QC-flagged)."""
    from engine.core.localization.box_methods import ORIG_COLUMNS, heatmap_of, meta_of  # torch: not at import
    from engine.core.model.cam import heatmap_to_original, upsample_heatmap
    from engine.io.evaluate_masks import decoded_by_image
    from engine.io.heatmap_access import read_scan
    from engine.io.overlays import render_overlay

    image = read_scan(cfg.data.root, str(row.path), cfg.data.count_scale)  # as the model stream read it
    meta = meta_of(row)
    heat = heatmap_to_original(upsample_heatmap(heatmap_of(row), meta.canvas_h, meta.canvas_w), meta)
    abnormal, normal = gt.get(row.image_id, (np.zeros((0, 4)), np.zeros((0, 4))))
    own = boxes[boxes["image_id"] == row.image_id].sort_values("rank")[list(ORIG_COLUMNS)].to_numpy()
    kept = tuple(decoded_by_image(masks[masks["image_id"] == row.image_id]).get(row.image_id, []))
    overlay = render_overlay(image, heat, own, caption, (abnormal, normal), kept)
    if flagged:
        cv2.rectangle(overlay, (0, 0), (overlay.shape[1] - 1, overlay.shape[0] - 1), QC_MARK_COLOUR, 3)
    return cv2.imencode(".png", image)[1].tobytes(), cv2.imencode(".png", overlay)[1].tobytes()


def _figure(cfg: Config, out: _Out, row: object, inputs: tuple, key: str, place: tuple[int, int]) -> str:
    """Returns one gallery figure (the overlay linked to its browse page); raises OSError/DecodeError.

    `place`: (position by probability within its group, counted from 1; the group's size).
    """
    flags = list(row.qc_flags)
    raw, png = _overlay(cfg, row, *inputs[:2], f"{key.upper()} p={row.y_prob:.3f}", inputs[2], bool(flags))
    raw_name = out.write(f"gallery/{key}_{place[0]}_raw.png", raw)
    name = out.write(f"gallery/{key}_{place[0]}.png", png)
    link = html.escape(browse_link(row.image_id))
    mark = f'<span class="qcmark">QC: {html.escape(", ".join(flags))}</span> ' if flags else ""
    return (
        f'<figure><a href="{link}">{_img(raw_name, "raw " + row.image_id)}{_img(name, row.image_id)}</a>'
        f"<figcaption>{mark}{key.upper()}: {html.escape(row.image_id)}, p={row.y_prob:.3f} ({place[0]} of "
        f"{place[1]} by p); left: the raw scan as the model saw it, right: CAM and boxes"
        f"{' (framed in orange: QC-flagged)' if flags else ''}</figcaption></figure>"
    )


def _gallery(cfg: Config, out: _Out) -> str:
    from engine.core.localization.box_methods import gt_by_image  # torch: not at import

    thr = selected_thr(cfg)
    split = gallery_split(cfg)
    frame = _gallery_rows(cfg, thr, split)
    masks = read_table(cfg.run.dir, "masks", _split(split))
    inputs = (
        read_table(cfg.run.dir, "boxes", _split(split)),
        gt_by_image(read_table(cfg.run.dir, "gt_boxes")),
        masks[masks["kept"].fillna(False).astype(bool)],
    )  # none without `make masks`: no contours
    unlabeled = frame["label"].isna()
    groups = (OUTCOMES if (~unlabeled).any() else ()) + (UNLABELED if unlabeled.any() else ())
    parts, failed = [], 0
    for key, title, label, is_positive in groups:
        labeled = unlabeled if label is None else frame["label"] == label
        group = frame[labeled & (frame["is_positive"] == is_positive)]
        order = {image_id: n + 1 for n, image_id in enumerate(spread_pick(group, len(group))["image_id"])}
        figures = []
        for row in spread_pick(group, cfg.report.gallery).itertuples(index=False):
            try:
                figures.append(_figure(cfg, out, row, inputs, key, (order[row.image_id], len(group))))
            except (OSError, DecodeError) as exc:
                failed += 1
                log.warning("gallery: %s (image_id=%s): %s", row.path, row.image_id, exc)
        body = "".join(figures) or "<p>none</p>"
        parts.append(
            f'<h3 id="gallery-{key}">{title} ({key.upper()}): {len(figures)} shown of {len(group)}</h3>'
            f'<div class="gallery">{body}</div>'
        )
    unread = f'<p class="missing">{failed} images could not be read.</p>' if failed else ""
    flagged = int(frame["qc_flags"].map(bool).sum())
    qc = (
        f"<p>{flagged} of the {len(frame)} scored images of split {html.escape(split)} carry a QC flag: their "
        'figures are marked <span class="qcmark">QC: ...</span>, framed in orange (see Quality control).</p>'
    )
    return _gallery_key(cfg, thr) + qc + unread + "".join(parts)


def _gallery_key(cfg: Config, thr: float) -> str:
    return (
        f"<p>Outcomes at the selected threshold {thr:.3f} (called abnormal when p &gt;= thr); per group up to "
        f"{cfg.report.gallery} images evenly spread from the most to the least confident, at 1x in original px. "
        "Each image opens its page in <code>make browse</code> when this report is served there "
        f"(http://127.0.0.1:{cfg.browse.port}/report/); opened as a file, the links lead nowhere.</p>"
        '<p class="key"><span style="background:red"></span>pseudo boxes (rank)'
        '<span style="background:lime"></span>GT Abnormal (solid)<span style="background:cyan"></span>GT Normal '
        '(dashed)<span style="background:magenta"></span>kept pseudo masks; CAM in JET</p>'
    )


def _quality(cfg: Config) -> tuple[str, dict[str, Any]]:
    """Returns the Quality control block (HTML) and its counts: the QC flags of the indexed images (the qc table)
    and of the scored ones (preds.qc_flags, domain_shift and view_mismatch included), the count units, and the
    domain_shift reference the scored images were judged by. Never missing: it says which stage to run."""
    qc = read_table(cfg.run.dir, "qc").drop_duplicates("image_id")
    if qc.empty:
        return '<p class="missing">no qc table: run `make index` (it measures every indexed image)</p>', {}
    indexed = {flag: int(qc[flag].fillna(False).astype(bool).sum()) for flag in QC_FLAGS}
    flags = scored_flags(cfg)
    scored = dict(Counter(flag for raised in flags.values() for flag in raised))
    scored = {**{flag: scored.get(flag, 0) for flag in (*QC_FLAGS, "domain_shift")}, **scored}
    units = qc["count_unit"].fillna("not recorded").value_counts()
    parts = [
        f"<p>Every indexed image is measured by <code>make index</code>: {int(units.get('counts', 0))} on their "
        f"true counts (16-bit files, DICOM frames), {int(units.get('grey', 0))} on grey levels only (8-bit "
        "files hold no counts; their low_count is judged on grey, which is never fewer than the counts)"
        + (
            f", {int(units.get('not recorded', 0))} indexed before counts were recorded"
            if "not recorded" in units
            else ""
        )
        + ". Scored images: the predictions of <code>make cam</code> (else <code>make infer</code>)."
        "</p>",
        qc_counts_html(indexed, scored, len(qc), len(flags)),
    ]
    record = read_qc_reference(cfg.run.dir)
    if record is None:
        parts.append(
            "<p><code>domain_shift</code>: not checked. It compares new scans scored with another run's "
            "model (<code>make cam model.from_run=&lt;run&gt;</code>) with the images that model was trained "
            "on; this run's predictions come from its own model.</p>"
        )
    else:
        here = qc[qc["image_id"].isin(list(flags))]
        medians = {name: float(here[name].median()) for name in record["stats"] if name in here}
        share = record["train_flagged"] / max(int(record["images"]), 1)
        parts.append(
            f"<p><code>domain_shift</code>: {scored.get('domain_shift', 0)} of {len(flags)} scored images are unlike "
            f"the {record['images']} images the model was trained on ({html.escape(str(record.get('model_run', '')))}"
            f", split {html.escape(str(record.get('split', 'train')))}, view {html.escape(str(record.get('view')))}, "
            f"after qc.exclude={html.escape(str(record.get('qc_exclude')))}). An image is flagged when its largest "
            "deviation from the training median, in units of the training spread on that side (median to the "
            f"p{100 * record['spread_quantile']:g} or p{100 * (1 - record['spread_quantile']):g}), exceeds "
            f"{record['threshold']:.3g}: {record['train_flagged']} of the training images themselves do "
            f"({100 * share:.1f} %). Reference: <code>qc_reference.json</code>.</p>"
            + shift_reference_html(record, medians)
        )
    counts = {"indexed": indexed, "scored": scored, "domain_shift_checked": record is not None}
    return "".join(parts), counts


def patient_picks(cfg: Config, split: str) -> pd.DataFrame:
    """Returns one row per patient of `split` with a fused probability (patient_preds of the first of
    PATIENT_STAGES that has the patient; else its scored whole-body images fused by max): patient_id, y_prob,
    y_true, views, fusion."""
    from engine.core.metrics.patients import fuse_patients

    fused = read_table(cfg.run.dir, "patient_preds", _split(split))
    if not fused.empty:
        rank = fused["stage"].map({s: n for n, s in enumerate(PATIENT_STAGES)}).fillna(len(PATIENT_STAGES))
        return fused.assign(_rank=rank).sort_values(["patient_id", "_rank"]).drop_duplicates("patient_id")
    preds = read_table(cfg.run.dir, "preds", _split(split))
    preds = preds[preds["stage"].isin(["cam", "infer"])].sort_values("stage")  # cam before infer
    preds = preds[preds["folder"].isin(view_folders("BOTH"))].drop_duplicates("image_id")
    return fuse_patients(preds, "max").assign(fusion="max (no patient_preds)")


def _patients(cfg: Config, out: _Out) -> str:
    """Returns a few patients' two whole-body views side by side, their pseudo and GT boxes drawn as `make browse`
    draws them: a pair of boxes confirmed across the views in one colour, labelled by view and rank."""
    from engine.io.browse_pages import draw_boxes, link_boxes  # torch: not at import
    from engine.io.heatmap_access import read_scan

    split = gallery_split(cfg)
    index = read_table(cfg.run.dir, "index")
    whole = index[index["is_whole_body"].fillna(False).astype(bool) & index["view"].isin(["ANT", "POST"])]
    whole = whole.sort_values(["patient_id", "view", "image_id"]).drop_duplicates(["patient_id", "view"])
    both = whole.groupby("patient_id")["view"].transform("size") == 2
    fused = patient_picks(cfg, split)
    fused = fused[fused["patient_id"].isin(whole.loc[both, "patient_id"])]
    if fused.empty:
        raise ReportInputError(
            f"no scored patient of split={split} with both whole-body views indexed: run `make cam` (or `make infer`)"
        )
    picks = spread_pick(fused.assign(image_id=fused["patient_id"]), cfg.report.gallery)
    boxes = read_table(cfg.run.dir, "boxes", _split(split))
    gt = read_table(cfg.run.dir, "gt_boxes")
    figures, failed = [], 0
    for n, patient in enumerate(picks.itertuples(index=False), start=1):
        views = whole[whole["patient_id"] == patient.patient_id]
        linked = link_boxes(
            [
                (r.image_id, r.view, boxes[boxes["image_id"] == r.image_id].sort_values("rank"))
                for r in views.itertuples()
            ]
        )
        images, pairs = [], {}
        try:
            for r in views.itertuples():
                scan = cv2.cvtColor(read_scan(cfg.data.root, str(r.path), cfg.data.count_scale), cv2.COLOR_GRAY2BGR)
                drawn = draw_boxes(scan, linked[r.image_id], gt[gt["image_id"] == r.image_id])
                name = out.write(f"patients/{n}_{r.view}.png", cv2.imencode(".png", drawn)[1].tobytes())
                link = html.escape(browse_link(r.image_id))
                images.append(f'<a class="view" href="{link}">{_img(name, f"{r.view} {r.image_id}")}</a>')
                for box in linked[r.image_id].itertuples():
                    if box.pair is not None:
                        pairs.setdefault(int(box.pair), (box.css, []))[1].append(box.label)
        except (OSError, DecodeError) as exc:
            failed += 1
            log.warning("patients: patient %s: %s", patient.patient_id, exc)
            continue
        linked_text = (
            "; ".join(
                f'<span class="pair" style="color:{css}">&#9632;</span> {html.escape(" ↔ ".join(labels))}'
                for _, (css, labels) in sorted(pairs.items())
            )
            or "no box confirmed in the other view"
        )
        label = {1: "abnormal", 0: "normal"}.get(int(patient.y_true), "unlabelled")
        figures.append(
            f'<figure class="patient" id="patient-{html.escape(str(patient.patient_id))}">{"".join(images)}'
            f"<figcaption>patient {html.escape(str(patient.patient_id))} ({label}): p = {patient.y_prob:.3f}, "
            f"{html.escape(str(patient.fusion))} of {html.escape(str(patient.views))}; left ANT, right POST. "
            f"Confirmed across the views: {linked_text}</figcaption></figure>"
        )
    unread = f'<p class="missing">{failed} patients could not be read.</p>' if failed else ""
    return (
        f"<p>{len(figures)} of the {len(fused)} patients of split {html.escape(split)} with both whole-body views, "
        "evenly spread from the most to the least suspicious (their views' probabilities fused), in original px. "
        "Pseudo boxes are labelled by view and rank (A0, P1, ...); a box confirmed by a box of the other view at the "
        "matching place (<code>boxes.cross_view</code> &gt; 0, <code>make boxes</code>) is drawn 2 px in the colour "
        "it shares with that box, an unconfirmed one 1 px in red. Each view opens its page in "
        "<code>make browse</code> when this report is served there.</p>"
        + unread
        + f'<div class="gallery">{"".join(figures)}</div>'
    )


SECTIONS = (
    ("Classification", _classification),
    ("Training", _training),
    ("Localisation", _localisation),
    ("Gallery", _gallery),
    ("Patients: both views", _patients),
)


def page(cfg: Config, sections: list[tuple[str, str]], quality: str = "") -> str:
    """Returns the report's HTML text: inline CSS, relative image links, no scripts or remote resources; the
    Quality control block (`quality`) comes first."""
    blocks = [("Quality control", quality)] if quality else []
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in [*blocks, *sections])
    title = html.escape(f"BS-80K run report: {cfg.run.dir}")
    canvas = f"canvas {cfg.canvas.height} x {cfg.canvas.width}"
    about = html.escape(f"model {cfg.model.name}, view {cfg.data.view}, {canvas}")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1><p>{about}</p>{body}</body></html>"
    )


def run_report(cfg: Config) -> StageSummary:
    """Writes `<run.dir>/report/index.html` and its PNGs; one summary row per section."""
    with StageRun(cfg, "report") as run:  # no tables: the page and its PNGs are files under report/
        summary = run.summary
        out = _Out(cfg.run.dir)
        sections = []
        for title, build in SECTIONS:
            summary.rows_in += 1
            try:
                sections.append((title, build(cfg, out)))
                summary.rows_ok += 1
            except ReportInputError as exc:
                sections.append((title, f'<p class="missing">{html.escape(str(exc))}</p>'))
                summary.add_errors([f"missing_input: {exc}"])
        quality, qc_counts = _quality(cfg)
        out.write("index.html", page(cfg, sections, quality).encode())
        summary.tables = {"report files": len(out.files)}
        summary.extra["report"] = f"{out.root}/index.html"
        if qc_counts:
            summary.extra["qc_flags_scored"] = {k: v for k, v in qc_counts["scored"].items() if v}
    return summary


STAGE = Stage(
    name="report",
    run=run_report,
    help="one offline HTML page: curves, confusion matrix, grouped metrics, TP/FP/FN/TN gallery, both views of a few "
    "patients -> report/index.html",
    sections=("report", "evaluate"),
)
