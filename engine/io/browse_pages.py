"""The HTML pages and PNGs of `make browse`: the image table, one patient's views, boxes drawn on the scan.

A patient's two whole-body views are read together: each pseudo box is labelled by its view's letter and its rank
(A0, P1, ...), and a box confirmed in the other view (boxes.cross_view > 0, by the box of rank cross_rank there;
engine/core/scans/views.py) shares one colour with the box that confirms it (`link_boxes`), in both views' PNGs and
in the image page's table of pairs.
"""

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
    ("patient_prob", "patient probability"),
    ("label", "label"),
    ("outcome", "outcome"),
    ("best_box", "best box"),
    ("n_abnormal", "abnormal GT"),
    ("qc", "QC"),
)
SORTABLE = tuple(key for key, _ in COLUMNS)
FILTERS = ("split", "view", "folder", "outcome", "best_box", "label")  # exact-match filters of the table page
# The page a user opens: the scored images only, the most suspicious patient first (its probability fused over its
# views, patient_preds; else the image's own), then its images by their own probability.
DEFAULT_SORT = "patient_prob"
ROWS = ("scored", "all")  # the `rows` choice: images with a probability only (the default), or every index row


@dataclass(frozen=True)
class ImageQuery:
    """One table-page request: sort, filters, page (parsed from the URL by `parse_query`)."""

    sort: str = DEFAULT_SORT
    descending: bool = True
    page: int = 0
    scored: bool = True  # only the images with a probability (rows=scored); False: every index row (rows=all)
    filters: dict[str, str] = field(default_factory=dict)  # column -> exact value (FILTERS)
    text: str = ""  # substring of image_id (case-insensitive)
    has_qc: bool = False  # only images with a QC flag
    qc_flag: str = ""  # only images with this QC flag (noise_frame, ..., domain_shift)


def parse_query(args: Mapping[str, str]) -> ImageQuery:
    """Returns the ImageQuery of URL arguments; unknown sorts and bad pages fall back to the defaults (no sort:
    DEFAULT_SORT, descending unless order=asc; no rows: scored only)."""
    sort = args.get("sort", "")
    if sort in SORTABLE:
        descending = args.get("order") == "desc"
    else:
        sort, descending = DEFAULT_SORT, args.get("order") != "asc"
    try:
        page = max(0, int(args.get("page", "0")))
    except ValueError:
        page = 0
    filters = {k: str(args[k]) for k in FILTERS if args.get(k)}
    return ImageQuery(
        sort=sort,
        descending=descending,
        page=page,
        scored=args.get("rows", ROWS[0]) != "all",
        filters=filters,
        text=str(args.get("q", "")).strip(),
        has_qc=args.get("qc") == "1",
        qc_flag=str(args.get("qc_flag", "")).strip(),
    )


STYLE = """body{font-family:sans-serif;margin:16px;color:#222}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f3f3f3}th a{color:#036;text-decoration:none}
form{margin:8px 0}form label{margin-right:10px}.views{display:flex;gap:24px;align-items:flex-start;overflow-x:auto}
.view{flex:none}.view.asked h2{background:#eef4ff}td.sw span,span.sw{display:inline-block;width:12px;height:10px;
margin-right:4px;border:1px solid #666}small{color:#555}
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
        "rows": "" if query.scored else "all",
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


def _cell(value: object) -> object:
    return None if not isinstance(value, list | tuple | np.ndarray) and pd.isna(value) else value


def image_page(title: str, views: list[dict]) -> str:
    """Returns the HTML of one patient's views side by side, the asked one (`title`) marked, and the table of the
    box pairs confirmed across them; each view: row, boxes (``link_boxes``' columns), gt, overlays, has_heatmap."""
    for view in views:
        view["row"] = {k: _cell(v) for k, v in view["row"].items()}
        view["boxes"] = [{k: _cell(v) for k, v in box.items()} for box in view["boxes"].to_dict("records")]
        view["gt"] = view["gt"].to_dict("records")
    return IMAGE.render(title=title, style=STYLE, views=views, pairs=box_pairs(views))


# BGR colours of the pairs confirmed across views: none of the pseudo (red), GT (lime, cyan), mask (magenta) or QC
# (orange) colours. A pair's colour is its number's, cycled.
PAIR_COLOURS = ((0, 255, 255), (255, 144, 30), (180, 105, 255), (211, 0, 148), (255, 255, 255), (0, 128, 128))
LINK_COLUMNS = ("label", "pair", "colour", "css", "partner", "status")  # added to the boxes by link_boxes


def view_letter(view: object) -> str:
    """Returns the letter of a view in box labels: A (ANT), P (POST), U (unknown)."""
    return {"ANT": "A", "POST": "P"}.get(str(view), "U")


def css_colour(bgr: tuple[int, int, int] | None) -> str:
    """Returns the CSS #rrggbb of a BGR colour ("" for None)."""
    return "" if bgr is None else "#{:02x}{:02x}{:02x}".format(*reversed(bgr))


def _components(count: int, edges: list[tuple[int, int]]) -> np.ndarray:
    """Returns the connected component of each of `count` nodes joined by undirected `edges` (scipy)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols = (np.array([e[k] for e in edges], dtype=np.int64) for k in (0, 1))
    graph = coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(count, count))
    return connected_components(graph, directed=False)[1]


def link_boxes(views: list[tuple[str, object, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Returns image_id -> its boxes with LINK_COLUMNS: the boxes of a patient's views, linked across them.

    Args:
        views: (image_id, view, boxes) per view, in display order; boxes: rank, score, the corners, cross_view and
            cross_rank (the confirming box's rank in the patient's other view: the first of `views` of another view).

    label: view letter and rank (A0, P1). A box with cross_view > 0 and the other view's box of rank cross_rank is
    one edge; the boxes an edge joins, directly or through others, form one pair numbered from 1 in display order
    (`pair`, its BGR `colour` and `css`; None/"" for unconfirmed boxes). partner: the label of the box confirming
    it; status: confirmed, not in the other view (cross_view 0), other view not scored (NaN or null).
    """
    labels = {}
    for image_id, view, boxes in views:
        for rank in boxes["rank"]:
            labels[(image_id, int(rank))] = f"{view_letter(view)}{int(rank)}"
    nodes = {node: i for i, node in enumerate(labels)}  # display order: views, then rank
    partners: dict[tuple, str] = {}
    edges: list[tuple[int, int]] = []
    for image_id, view, boxes in views:
        other = next((i for i, v, _ in views if v != view), None)
        if other is None or "cross_view" not in boxes:
            continue
        for rank, score, cross in zip(boxes["rank"], boxes["cross_view"], boxes["cross_rank"], strict=True):
            target = (other, int(cross)) if pd.notna(cross) else None
            if pd.notna(score) and score > 0 and target in labels:
                partners[(image_id, int(rank))] = labels[target]
                edges.append((nodes[(image_id, int(rank))], nodes[target]))
    component = _components(len(nodes), edges)
    sizes = np.bincount(component, minlength=len(nodes))
    numbers: dict[int, int] = {}
    for i in range(len(nodes)):
        if sizes[component[i]] > 1:
            numbers.setdefault(int(component[i]), len(numbers) + 1)

    def root(node: tuple) -> int:
        return int(component[nodes[node]])

    out = {}
    for image_id, _, boxes in views:
        scores = boxes["cross_view"] if "cross_view" in boxes else pd.Series(np.nan, index=boxes.index)
        columns: dict[str, list] = {name: [] for name in LINK_COLUMNS}
        for rank, score in zip(boxes["rank"], scores, strict=True):
            node = (image_id, int(rank))
            pair = numbers.get(root(node))
            colour = None if pair is None else PAIR_COLOURS[(pair - 1) % len(PAIR_COLOURS)]
            if node in partners:
                status = "confirmed"
            else:
                status = "other view not scored" if pd.isna(score) else "not in the other view"
            values = (labels[node], pair, colour, css_colour(colour), partners.get(node), status)
            for name, value in zip(LINK_COLUMNS, values, strict=True):
                columns[name].append(value)
        out[image_id] = boxes.assign(
            **{name: pd.Series(v, index=boxes.index, dtype=object) for name, v in columns.items()}
        )
    return out


def box_pairs(views: list[dict]) -> list[dict]:
    """Returns the pairs of an image page (its views' boxes as records of ``link_boxes``' columns): per pair
    number, its boxes' labels by view, each box's score and cross_view, and its CSS colour."""
    pairs: dict[int, dict] = {}
    for view in views:
        for box in view["boxes"]:
            if box.get("pair") is None:
                continue
            pair = pairs.setdefault(int(box["pair"]), {"pair": int(box["pair"]), "css": box["css"], "boxes": []})
            pair["boxes"].append(box)
    return [pairs[n] for n in sorted(pairs)]


def draw_boxes(image_bgr: np.ndarray, boxes: pd.DataFrame, gt: pd.DataFrame) -> np.ndarray:
    """Returns a copy of a BGR image with pseudo boxes (label:score) and GT boxes (draw_gt_boxes).

    Boxes with ``link_boxes``' columns: a box of a pair confirmed across views 2 px in the pair's colour, its label
    in that colour; the others 1 px red, labelled in white. Without them: 1 px red, rank:score."""
    out = image_bgr.copy()
    corners = ["x1", "y1", "x2", "y2"]
    draw_gt_boxes(out, gt[gt["cls"] == "Abnormal"][corners].to_numpy(), gt[gt["cls"] == "Normal"][corners].to_numpy())
    linked = "colour" in boxes
    for row in boxes.itertuples(index=False):
        x1, y1, x2, y2 = (int(round(v)) for v in (row.x1_orig, row.y1_orig, row.x2_orig, row.y2_orig))
        colour = row.colour if linked and row.colour is not None else None
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour or BOX_COLOUR, 2 if colour else 1)
        label = f"{row.label if linked else int(row.rank)}:{float(row.score):.2f}"
        text = colour or (255, 255, 255)
        cv2.putText(out, label, (x1 + 1, max(y1 - 3, 9)), cv2.FONT_HERSHEY_PLAIN, 0.7, text, 1)
    return out


def boxes_png(image: np.ndarray, heatmap: np.ndarray | None, boxes: pd.DataFrame, gt: pd.DataFrame) -> bytes:
    """Returns PNG bytes: the gray scan (or its CAM overlay when `heatmap` is given) with every box drawn on it."""
    if heatmap is None:
        base = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    else:
        base = render_overlay(image, heatmap, np.zeros((0, 4)), "")
    return cv2.imencode(".png", draw_boxes(base, boxes, gt))[1].tobytes()
