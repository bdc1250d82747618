"""The HTML pages and PNGs of `make browse`: the image table, one patient's views, boxes drawn on the scan."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import cv2
import jinja2
import numpy as np
import pandas as pd

from engine.io.overlays import BOX_COLOUR, draw_gt_boxes, render_overlay

COLUMNS = (  # table column, header
    ("image_id", "image"),
    ("folder", "folder"),
    ("view", "view"),
    ("split", "split"),
    ("y_prob", "probability"),
    ("label", "label"),
    ("outcome", "outcome"),
    ("best_box", "best box"),
    ("n_abnormal", "abnormal GT"),
    ("qc", "QC"),
)
SORTABLE = tuple(key for key, _ in COLUMNS)
FILTERS = ("split", "view", "folder", "outcome", "best_box", "label")  # exact-match filters of the table page


@dataclass(frozen=True)
class ImageQuery:
    """One table-page request: sort, filters, page (parsed from the URL by `parse_query`)."""

    sort: str = "image_id"
    descending: bool = False
    page: int = 0
    filters: dict[str, str] = field(default_factory=dict)  # column -> exact value (FILTERS)
    text: str = ""  # substring of image_id (case-insensitive)
    has_qc: bool = False  # only images with a QC flag
    qc_flag: str = ""  # only images with this QC flag (noise_frame, ..., domain_shift)


def parse_query(args: Mapping[str, str]) -> ImageQuery:
    """Returns the ImageQuery of URL arguments; unknown sorts and bad pages fall back to the defaults."""
    sort = args.get("sort", "image_id")
    try:
        page = max(0, int(args.get("page", "0")))
    except ValueError:
        page = 0
    filters = {k: str(args[k]) for k in FILTERS if args.get(k)}
    return ImageQuery(
        sort=sort if sort in SORTABLE else "image_id",
        descending=args.get("order") == "desc",
        page=page,
        filters=filters,
        text=str(args.get("q", "")).strip(),
        has_qc=args.get("qc") == "1",
        qc_flag=str(args.get("qc_flag", "")).strip(),
    )


STYLE = """body{font-family:sans-serif;margin:16px;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f3f3f3}th a{color:#036;text-decoration:none}
form{margin:8px 0}form label{margin-right:10px}.views{display:flex;gap:24px;align-items:flex-start;overflow-x:auto}
.view{flex:none}
.view img{border:1px solid #999;margin-right:6px;image-rendering:pixelated}.key span{display:inline-block;width:16px;
height:10px;margin:0 4px 0 12px}.missing{color:#a33}td.qc-flagged{background:#ffe0b3;color:#8a4b00}"""

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("browse_templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["q"] = lambda value: quote(str(value), safe="/")

TABLE = _ENV.get_template("table.html")

IMAGE = _ENV.get_template("image.html")


def _url(args: dict[str, str | int]) -> str:
    return "/?" + urlencode({k: v for k, v in args.items() if v not in ("", None)})


def table_page(
    rows: pd.DataFrame,
    total: int,
    query: ImageQuery,
    choices: dict,
    page_size: int,
    note: str,
    has_qc: bool,
    qc_flags: list[str] | None = None,
) -> str:
    """Returns the HTML of the image table: filter form (`qc_flags`: the QC flag filter's choices), sortable headers
    (click again: reverse), page links; QC-flagged rows are marked."""
    base: dict[str, str | int] = {
        **query.filters,
        "q": query.text,
        "qc": "1" if query.has_qc else "",
        "qc_flag": query.qc_flag,
    }
    order = "desc" if query.descending else "asc"
    sort_urls = {
        key: _url(
            {
                **base,
                "sort": key,
                "order": "asc" if query.sort == key and query.descending or query.sort != key else "desc",
            }
        )
        for key, _ in COLUMNS
    }
    pages = max(1, -(-total // page_size))
    here = {**base, "sort": query.sort, "order": order}
    prev_url = _url({**here, "page": query.page - 1}) if query.page > 0 else ""
    next_url = _url({**here, "page": query.page + 1}) if query.page + 1 < pages else ""
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    return TABLE.render(
        title="Run images",
        style=STYLE,
        note=note,
        choices=choices,
        query=query,
        total=total,
        pages=pages,
        prev_url=prev_url,
        next_url=next_url,
        columns=COLUMNS,
        sort_urls=sort_urls,
        rows=records,
        has_qc=has_qc,
        qc_flags=qc_flags or [],
    )


def image_page(title: str, views: list[dict]) -> str:
    """Returns the HTML of one patient's views side by side; each view: row, boxes, gt, overlays, has_heatmap."""
    for view in views:
        view["row"] = {k: (None if pd.isna(v) else v) for k, v in view["row"].items()}
        view["boxes"] = view["boxes"].to_dict("records")
        view["gt"] = view["gt"].to_dict("records")
    return IMAGE.render(title=title, style=STYLE, views=views)


def draw_boxes(image_bgr: np.ndarray, boxes: pd.DataFrame, gt: pd.DataFrame) -> np.ndarray:
    """Returns a copy of a BGR image with pseudo boxes (1 px, rank:score) and GT boxes (draw_gt_boxes)."""
    out = image_bgr.copy()
    corners = ["x1", "y1", "x2", "y2"]
    draw_gt_boxes(out, gt[gt["cls"] == "Abnormal"][corners].to_numpy(), gt[gt["cls"] == "Normal"][corners].to_numpy())
    for row in boxes.itertuples(index=False):
        x1, y1, x2, y2 = (int(round(v)) for v in (row.x1_orig, row.y1_orig, row.x2_orig, row.y2_orig))
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), BOX_COLOUR, 1)
        label = f"{int(row.rank)}:{float(row.score):.2f}"
        cv2.putText(out, label, (x1 + 1, max(y1 - 3, 9)), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1)
    return out


def boxes_png(image: np.ndarray, heatmap: np.ndarray | None, boxes: pd.DataFrame, gt: pd.DataFrame) -> bytes:
    """Returns PNG bytes: the gray scan (or its CAM overlay when `heatmap` is given) with every box drawn on it."""
    if heatmap is None:
        base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    else:
        base = render_overlay(image, heatmap, np.zeros((0, 4)), "")
    return cv2.imencode(".png", draw_boxes(base, boxes, gt))[1].tobytes()
