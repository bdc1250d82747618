"""`make report`: one self-contained offline HTML page of a run (`<run.dir>/report/index.html`), PNGs beside it.

Sections: classification (ROC, precision-recall, sensitivity/specificity vs threshold, confusion matrix at the
selected threshold), training curves (`epochs`), localisation (`loc_metrics` from `make evaluate`) and a gallery
of overlays for true positives, false positives and false negatives. A section whose inputs are missing says
which stage to run; it never stops the others.
"""

from __future__ import annotations

import html
import json
import logging

import cv2
import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from engine import report_plots as plots
from engine.cam import upsample_heatmap
from engine.classify_stages import view_folders
from engine.config import Config
from engine.decode import DecodeError, decode_gray8
from engine.evaluate_masks import decoded_by_image
from engine.evaluate_methods import gt_by_image, heatmap_of, meta_of
from engine.letterbox import letterbox, original_to_canvas
from engine.metrics import binary_metrics
from engine.overlays import GT_ABNORMAL_COLOUR, GT_NORMAL_COLOUR, masks_on_canvas, render_overlay
from engine.stages import safe_relative_path
from engine.summary import StageSummary
from engine.tables import read_table, resolve_fs

log = logging.getLogger(__name__)

LOC_PLOTTED = ("pointing_game", "pointing_chance", "hit@1", "hit@5", "precision@iou0.3", "recall@iou0.3",
               "precision@iou0.5", "recall@iou0.5", "max_box_acc@iou0.3", "max_box_acc@iou0.5")  # fmt: skip
GROUPS = (("tp", "True positives", 1, True), ("fp", "False positives", 0, True), ("fn", "False negatives", 1, False))
STYLE = """body{font-family:sans-serif;margin:24px;max-width:1300px;color:#222}h1{font-size:22px}
h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
.plots img{max-width:48%;margin:4px}.gallery{display:flex;flex-wrap:wrap;gap:10px}.missing{color:#a33}
figure{margin:0;font-size:12px;max-width:280px}figure img{width:260px;border:1px solid #999}
.key span{display:inline-block;width:14px;height:10px;margin:0 4px 0 12px}"""


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
    table = read_table(cfg.run.dir, "thresholds")
    if table.empty:
        raise ReportInputError("no selected threshold: run `make threshold` first")
    return float(table["thr"].iloc[-1])


def _classification(cfg: Config, out: _Out) -> str:
    preds, source = scored_preds(cfg)
    thr = selected_thr(cfg)
    finite = np.isfinite(preds["y_prob"].to_numpy(dtype=np.float64))
    y_true, y_prob = preds["y_true"].to_numpy()[finite], preds["y_prob"].to_numpy(dtype=np.float64)[finite]
    if len(np.unique(y_true)) < 2:
        raise ReportInputError(f"predictions ({source}) hold one class only: no ROC")
    m = binary_metrics(y_true, y_prob, thr)
    dpi = cfg.report.dpi
    names = [out.write("roc.png", plots.roc_png(y_true, y_prob, thr, dpi)),
             out.write("pr.png", plots.pr_png(y_true, y_prob, thr, dpi)),
             out.write("sens_spec.png", plots.sens_spec_png(y_true, y_prob, thr, dpi)),
             out.write("confusion.png", plots.confusion_png(m.tn, m.fp, m.fn, m.tp, thr, dpi))]  # fmt: skip
    row = {k: getattr(m, k) for k in ("n", "auc", "sensitivity", "specificity", "precision", "f1", "accuracy", "thr")}
    note = f"<p>Predictions: {html.escape(source)}; {int((~finite).sum())} without a finite probability left out.</p>"
    plots_html = '<div class="plots">' + "".join(_img(n, n) for n in names) + "</div>"
    return note + _table(pd.DataFrame([row]), index=False) + plots_html


def _training(cfg: Config, out: _Out) -> str:
    epochs = read_table(cfg.run.dir, "epochs")
    if epochs.empty:
        raise ReportInputError("no epochs table: run `make train` first")
    name = out.write("epochs.png", plots.epochs_png(epochs, cfg.report.dpi))
    shown = epochs.sort_values("epoch")[["epoch", "train_loss", "val_loss", "val_auc", "lr", "img_per_s", "is_best"]]
    return f'<div class="plots">{_img(name, "epochs")}</div>' + _table(shown.set_index("epoch"))


def _cell(value: float, numerator: int, denominator: float) -> str:
    if pd.isna(denominator):
        return str(int(numerator))
    return ("–" if pd.isna(value) else f"{value:.3f}") + f" ({int(numerator)}/{int(denominator)})"


def localisation_table(loc: pd.DataFrame, split: str) -> dict[str, pd.DataFrame]:
    """Returns per view group (view/folder) a table: rows = metric, columns = method (val tuning rows marked)."""
    loc = loc.assign(column=np.where(loc["split"] == split, loc["method"], loc["method"] + " (" + loc["split"] + ")"))
    cells = loc.assign(cell=[_cell(v, n, d) for v, n, d in zip(loc["value"], loc["numerator"], loc["denominator"],
                                                               strict=True)])  # fmt: skip
    tables = {}
    for (view, folder), group in cells.groupby(["view", "folder"], sort=True):
        order = list(dict.fromkeys(group["metric"]))
        tables[f"{view}/{folder}"] = group.pivot(index="metric", columns="column", values="cell").loc[order].fillna("")
    return tables


def _parameters(loc: pd.DataFrame, split: str) -> pd.DataFrame:
    columns = ["method", "split", "box_size", "nms_iou", "min_score", "max_boxes", "cutoff", "canvas_h", "canvas_w",
               "tolerance_px", "tuned_on", "source_run"]  # fmt: skip
    return loc.drop_duplicates(["method", "split"])[columns].set_index(["method", "split"])


def _localisation(cfg: Config, out: _Out) -> str:
    loc = read_table(cfg.run.dir, "loc_metrics")
    if loc.empty:
        raise ReportInputError("no loc_metrics table: run `make evaluate` first")
    split = cfg.evaluate.split
    parts = [f"<p>Scored on split <b>{html.escape(split)}</b> against the Abnormal GT boxes (original px). "
             "Cells: value (numerator/denominator).</p>"]  # fmt: skip
    chart = loc[(loc["split"] == split) & (loc["folder"] == "*")]
    view = "all" if (chart["view"] == "all").any() else chart["view"].iloc[0] if len(chart) else None
    if view is not None:
        values = chart[chart["view"] == view].pivot(index="metric", columns="method", values="value")
        name = out.write("localisation.png", plots.localisation_png(values, LOC_PLOTTED, cfg.report.dpi))
        parts.append(f'<div class="plots">{_img(name, "localisation")}</div>')
    for name, table in localisation_table(loc, split).items():
        parts.append(f"<h3>{html.escape(name)}</h3>" + _table(table))
    parts.append("<h3>Box parameters per method</h3>" + _table(_parameters(loc, split)))
    return "".join(parts) + _tuning_note(cfg)


def _tuning_note(cfg: Config) -> str:
    fs, root = resolve_fs(cfg.run.dir)
    try:
        with fs.open_input_stream(f"{root}/evaluate.json") as stream:
            tuning = json.loads(stream.read()).get("tuning", {})
    except (FileNotFoundError, ValueError):
        return ""
    if "chosen" not in tuning:
        return f"<p>Tuning: {html.escape(str(tuning.get('skipped', 'not run')))}</p>"
    return (f"<p>Tuned on <b>{html.escape(tuning['split'])}</b> only ({tuning['images']} images; "
            f"{html.escape(tuning['objective'])}): {html.escape(json.dumps(tuning['chosen']))}. "
            "Reproduce the boxes: <code>make boxes ARGS=&quot;"
            f"{html.escape(tuning['make_boxes_args'])}&quot;</code></p>")  # fmt: skip


def _gallery_rows(cfg: Config, thr: float) -> pd.DataFrame:
    only = pads.field("split") == cfg.evaluate.split
    heat = read_table(cfg.run.dir, "heatmaps", only)
    heat = heat[heat["folder"].isin(view_folders(cfg.data.view))]  # the population `make evaluate` scores
    if heat.empty:
        raise ReportInputError(f"no heatmaps for split={cfg.evaluate.split}: run `make cam` first")
    meta = read_table(cfg.run.dir, "meta", only).drop(columns=["split", "folder"])
    index = read_table(cfg.run.dir, "index")[["image_id", "label", "path"]]
    frame = heat.merge(meta, on="image_id").merge(index, on="image_id")
    return frame.assign(is_positive=frame["y_prob"] >= thr)


def _overlay(cfg: Config, row: object, boxes: pd.DataFrame, gt: dict, caption: str, masks: pd.DataFrame) -> bytes:
    data_fs, data_root = resolve_fs(cfg.data.root)
    with data_fs.open_input_file(safe_relative_path(data_root, str(row.path))) as handle:
        image = decode_gray8(handle.read())
    meta = meta_of(row)
    canvas, _ = letterbox(image, meta.canvas_h, meta.canvas_w)
    heat = upsample_heatmap(heatmap_of(row), meta.canvas_h, meta.canvas_w)
    abnormal, normal = gt.get(row.image_id, (np.zeros((0, 4)), np.zeros((0, 4))))
    extra = ((original_to_canvas(normal.reshape(-1, 4), meta), GT_NORMAL_COLOUR),
             (original_to_canvas(abnormal.reshape(-1, 4), meta), GT_ABNORMAL_COLOUR))  # fmt: skip
    own = boxes[boxes["image_id"] == row.image_id].sort_values("rank")[["x1", "y1", "x2", "y2"]].to_numpy()
    kept = masks_on_canvas(decoded_by_image(masks[masks["image_id"] == row.image_id]).get(row.image_id, []), meta)
    return cv2.imencode(".png", render_overlay(canvas, heat, own, caption, extra, kept))[1].tobytes()


def _gallery(cfg: Config, out: _Out) -> str:
    thr = selected_thr(cfg)
    frame = _gallery_rows(cfg, thr)
    boxes = read_table(cfg.run.dir, "boxes", pads.field("split") == cfg.evaluate.split)
    gt = gt_by_image(read_table(cfg.run.dir, "gt_boxes"))
    masks = read_table(cfg.run.dir, "masks", pads.field("split") == cfg.evaluate.split)
    masks = masks[masks["kept"].fillna(False).astype(bool)]  # none without `make masks`: no contours
    parts, failed = [], 0
    for key, title, label, is_positive in GROUPS:
        chosen = frame[(frame["label"] == label) & (frame["is_positive"] == is_positive)]
        chosen = chosen.sort_values("y_prob", ascending=not is_positive).head(cfg.report.gallery)
        figures = []
        for n, row in enumerate(chosen.itertuples(index=False)):
            try:
                png = _overlay(cfg, row, boxes, gt, f"{key.upper()} p={row.y_prob:.3f}", masks)
            except (OSError, DecodeError) as exc:
                failed += 1
                log.warning("gallery: %s (image_id=%s): %s", row.path, row.image_id, exc)
                continue
            name = out.write(f"gallery/{key}_{n}.png", png)
            figures.append(f"<figure>{_img(name, row.image_id)}<figcaption>{html.escape(row.image_id)}, "
                           f"p={row.y_prob:.3f}</figcaption></figure>")  # fmt: skip
        total = int(((frame["label"] == label) & (frame["is_positive"] == is_positive)).sum())
        body = "".join(figures) or "<p>none</p>"
        parts.append(f'<h3>{title} ({len(figures)} of {total})</h3><div class="gallery">{body}</div>')
    key = (f'<p class="key">Letterboxed scan + CAM (JET), groups at the selected threshold {thr:.3f}:'
           '<span style="background:red"></span>pseudo boxes (rank)<span style="background:lime"></span>GT Abnormal'
           '<span style="background:cyan"></span>GT Normal<span style="background:magenta"></span>kept pseudo masks'
           '</p>')  # fmt: skip
    return key + (f'<p class="missing">{failed} images could not be read.</p>' if failed else "") + "".join(parts)


SECTIONS = (("Classification", _classification), ("Training", _training), ("Localisation", _localisation),
            ("Gallery", _gallery))  # fmt: skip


def page(cfg: Config, sections: list[tuple[str, str]]) -> str:
    """Returns the report's HTML text: inline CSS, relative image links, no scripts or remote resources."""
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = html.escape(f"BS-80K run report: {cfg.run.dir}")
    canvas = f"canvas {cfg.canvas.height} x {cfg.canvas.width}"
    about = html.escape(f"model {cfg.model.name}, view {cfg.data.view}, {canvas}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}</h1><p>{about}</p>{body}</body></html>")  # fmt: skip


def run_report(cfg: Config) -> StageSummary:
    """Writes `<run.dir>/report/index.html` and its PNGs; one summary row per section."""
    summary = StageSummary("report")
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
    out.write("index.html", page(cfg, sections).encode())
    summary.tables = {"report files": len(out.files)}
    summary.extra["report"] = f"{out.root}/index.html"
    summary.save(cfg.run.dir)
    return summary.finish()
