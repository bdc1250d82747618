"""HTML tables of `make report`: localisation metrics grouped and explained (``engine.core.metrics.notes``), parameters,
the QC flag counts and the domain_shift reference.

Plain functions from `loc_metrics` rows to HTML text; every value is escaped. Tables are narrow enough for an
800 px page: one table per metric group, a column only for the methods that scored that group, counts under the
value, method names breakable at underscores.
"""

from __future__ import annotations

import html
from pathlib import PurePosixPath

import pandas as pd

from engine.core.metrics.notes import CLASSIFICATION, GROUP_ORDER, METHODS, describe


def breakable(name: str) -> str:
    """Returns `name` escaped, with a line-break opportunity after each underscore (narrow table headers)."""
    return html.escape(name).replace("_", "_<wbr>")


def cell_html(value: float, numerator: float, denominator: float) -> str:
    """Returns one table cell's HTML: the value to 3 decimals over its counts; a plain count alone."""
    if pd.isna(numerator):
        return ""
    if pd.isna(denominator):
        return str(int(numerator))
    shown = "–" if pd.isna(value) else f"{value:.3f}"
    return f"{shown}<br><small>{int(numerator)}/{int(denominator)}</small>"


def grouped_metrics(loc: pd.DataFrame, split: str) -> dict[str, dict[str, pd.DataFrame]]:
    """Returns view/folder -> metric group -> the rows of `split` in that group (GROUP_ORDER, empty groups left out).

    Args:
        loc: `loc_metrics` rows (method, split, view, folder, metric, value, numerator, denominator).
        split: the scored split; rows of other splits (the tuning split) are not shown in these tables.
    """
    shown = loc[loc["split"] == split]
    shown = shown.assign(group=[describe(m).group for m in shown["metric"]])
    out: dict[str, dict[str, pd.DataFrame]] = {}
    for (view, folder), rows in shown.groupby(["view", "folder"], sort=True):
        out[f"{view}/{folder}"] = {g: rows[rows["group"] == g] for g in GROUP_ORDER if (rows["group"] == g).any()}
    return out


MAX_METHOD_COLUMNS = 8  # method columns per table: more (e.g. ablation rows) continue in a table below


def group_table_html(rows: pd.DataFrame) -> str:
    """Returns one group's table: a row per metric (name + plain description), a column per method that has it.

    More than MAX_METHOD_COLUMNS methods continue in further tables of the same rows, so the page stays 800 px wide.
    """
    methods = list(dict.fromkeys(rows["method"]))
    metrics = list(dict.fromkeys(rows["metric"]))
    cells = {(r.metric, r.method): cell_html(r.value, r.numerator, r.denominator) for r in rows.itertuples()}
    tables = []
    for start in range(0, len(methods), MAX_METHOD_COLUMNS):
        chunk = methods[start : start + MAX_METHOD_COLUMNS]
        head = "".join(f'<th title="{html.escape(METHODS.get(m, ""))}">{breakable(m)}</th>' for m in chunk)
        body = []
        for metric in metrics:
            name = f'<td class="name"><code>{breakable(metric)}</code><br><small>{html.escape(describe(metric).text)}'
            body.append(f"<tr>{name}</small></td>" + "".join(f"<td>{cells.get((metric, m), '')}</td>" for m in chunk))
        tables.append(f'<table class="loc"><tr><th>metric</th>{head}</tr>{"".join(body)}</table>')
    return "".join(tables)


def method_metrics_html(rows: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    """Returns a table with a row per method that has any of `metrics` and a column per metric of `metrics` present.

    Args:
        rows: `loc_metrics` rows of one split and one view/folder (method, metric, value, numerator, denominator).
        metrics: the columns, in order (e.g. precision beside the share of boxes on physiological uptake).
    """
    shown = rows[rows["metric"].isin(metrics)]
    columns = [m for m in metrics if (shown["metric"] == m).any()]
    cells = {(r.method, r.metric): cell_html(r.value, r.numerator, r.denominator) for r in shown.itertuples()}
    head = "".join(f'<th title="{html.escape(describe(m).text)}">{breakable(m)}</th>' for m in columns)
    body = "".join(
        f'<tr><td class="name" title="{html.escape(METHODS.get(method, ""))}">{breakable(method)}</td>'
        + "".join(f"<td>{cells.get((method, m), '–')}</td>" for m in columns)
        + "</tr>"
        for method in dict.fromkeys(shown["method"])
    )
    return f'<table class="loc"><tr><th>method</th>{head}</tr>{body}</table>'


def methods_html(methods: list[str]) -> str:
    """Returns the list of `methods` with what each one is (``engine.core.metrics.notes.METHODS``)."""
    items = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(METHODS.get(m, ''))}</li>" for m in methods)
    return f'<ul class="methods">{items}</ul>'


def classification_html(row: dict[str, float]) -> str:
    """Returns the classification metrics at the selected threshold, one row each with its plain description."""
    lines = []
    for name, value in row.items():
        shown = f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))
        lines.append(
            f'<tr><td class="name"><code>{html.escape(name)}</code></td><td>{shown}</td>'
            f'<td class="text">{html.escape(CLASSIFICATION.get(name, ""))}</td></tr>'
        )
    return f'<table class="loc">{"".join(lines)}</table>'


def parameters(loc: pd.DataFrame, run_dir: str) -> pd.DataFrame:
    """Returns one row per (method, split): the box settings, cutoff, canvas and which run's heatmaps it scored."""
    rows = loc.drop_duplicates(["method", "split"]).set_index(["method", "split"])
    canvas = rows["canvas_h"].astype(int).astype(str) + " x " + rows["canvas_w"].astype(int).astype(str)
    source = [("this run" if not s or s == run_dir else PurePosixPath(str(s)).name) for s in rows["source_run"]]
    shown = rows[["box_size", "nms_iou", "min_score", "max_boxes", "cutoff", "tuned_on"]]
    return shown.assign(canvas=canvas, run=source)


QC_NOTES = {  # QC flag -> what it means, for the report's QC table (engine/core/scans/qc.py, engine/stages/_rows.py)
    "noise_frame": "no body: detector noise or a blank frame (no smooth body-shaped blob)",
    "low_count": "fewer counts per body pixel than qc.low_count_per_px (true counts where the file has them)",
    "small_body": "body shorter than qc.small_body_height of the frame (a child, or a partial scan)",
    "body_cut": "body touches the top or bottom edge of the frame",
    "domain_shift": "unlike the images the scoring model was trained on (make cam with model.from_run)",
    "view_mismatch": "not the view the model was trained on, scored anyway (model.other_views=score)",
}


def qc_counts_html(indexed: dict[str, int], scored: dict[str, int], images: int, scored_images: int) -> str:
    """Returns the QC table: per flag (QC_NOTES order, then any other) the indexed and the scored images flagged.

    Args:
        indexed: flag -> indexed images flagged (the qc table); images: indexed images with a qc row.
        scored: flag -> scored images flagged (preds.qc_flags); scored_images: images with a prediction.
    """
    flags = [f for f in QC_NOTES if f in indexed or f in scored] + sorted((set(indexed) | set(scored)) - set(QC_NOTES))
    lines = []
    for flag in flags:
        counts = "".join(f"<td>{table[flag]}</td>" if flag in table else "<td>–</td>" for table in (indexed, scored))
        name, note = html.escape(flag), html.escape(QC_NOTES.get(flag, ""))
        lines.append(f'<tr><td class="name"><code>{name}</code></td>{counts}<td class="text">{note}</td></tr>')
    head = (
        f"<tr><th>flag</th><th>indexed images<br><small>of {images}</small></th><th>scored images<br><small>of "
        f"{scored_images}</small></th><th>meaning</th></tr>"
    )
    return f'<table class="loc qc">{head}{"".join(lines)}</table>'


def shift_reference_html(record: dict, here: dict[str, float]) -> str:
    """Returns the domain_shift reference as a table: per statistic the training images' median and side quantiles
    (engine.core.scans.qc.ShiftReference.to_dict) beside the scored images' median (`here`: stat -> value)."""
    q = float(record.get("spread_quantile", 0.05))
    head = (
        f"<tr><th>statistic</th><th>training p{100 * q:g}</th><th>training median</th>"
        f"<th>training p{100 * (1 - q):g}</th><th>scored median</th></tr>"
    )
    lines = []
    for name in record["stats"]:
        values = (record["low"][name], record["median"][name], record["high"][name], here.get(name, float("nan")))
        cells = "".join(f"<td>{v:.3g}</td>" if pd.notna(v) else "<td>–</td>" for v in values)
        lines.append(f'<tr><td class="name"><code>{html.escape(name)}</code></td>{cells}</tr>')
    return f'<table class="loc">{head}{"".join(lines)}</table>'
