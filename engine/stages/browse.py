"""`make browse`: a local web page over every image of a run, queried from the run's tables with DuckDB.

The server materialises what a request reads once per run and threshold: the `scored` view (index ⋈ splits ⋈
preds ⋈ patient_preds ⋈ best box ⋈ GT ⋈ hit ⋈ QC over the run's Parquet tables, opened as pyarrow datasets so that
paths and storage URIs read as in ``engine.io.tables``) becomes one in-memory DuckDB table in the table page's
default order (the scored images first, the most suspicious patient first: its fused probability, then the image's
own), indexed by image and patient, beside the boxes (with their cross-view links), GT boxes and stored overlays of
every image and each filter's choices. Table and image pages query those, in milliseconds at the full index. The
table page opens on the scored images only (rows=all lists every index row); the image page shows the patient's
two whole-body views side by side, the boxes confirmed across them in one colour per pair. Each request first
compares the files of the run's tables and of the model run's `thresholds` table with the ones the materialised
tables were built from: a new threshold or a new commit rebuilds them (the first request after it waits for the
build). Image pages render their PNGs on request (``engine.io.browse_pages``). The server binds 127.0.0.1 unless
`browse.host` says otherwise and serves files only from under the run dir and the data root.
"""

from __future__ import annotations

import logging
import mimetypes
import threading
from typing import TYPE_CHECKING

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from flask import Flask, Response, abort, request
from werkzeug.serving import make_server

import schemas
from engine.config import Config
from engine.config_sections import BrowseConfig
from engine.core.scans.decode import DecodeError
from engine.io.fs import resolve_fs, safe_relative_path
from engine.io.tables import table_dir
from engine.stages._rows import QC_FLAGS
from engine.stages._scoring import model_run_dir, selected_threshold
from engine.stages._stage import Stage

if TYPE_CHECKING:
    from engine.io.browse_pages import ImageQuery

log = logging.getLogger(__name__)


READ_TABLES = ("index", "splits", "preds", "boxes", "gt_boxes", "meta", "heatmaps", "patient_preds")
WATCHED_TABLES = (*READ_TABLES, "qc")  # a change to their files rebuilds the materialised tables


def qc_sql(columns: list[str]) -> str:
    """Returns the SELECT of each image's qc-table flags: the raised flags' names as a list (QC_FLAGS order)."""
    cases = ", ".join(f"CASE WHEN \"{flag}\" THEN '{flag}' END" for flag in QC_FLAGS if flag in columns)
    if not cases:
        return "SELECT image_id, []::VARCHAR[] AS flags FROM t_qc"
    return f"SELECT image_id, list_filter([{cases}], lambda f: f IS NOT NULL) AS flags FROM t_qc"


def duckdb_schema(schema: pa.Schema) -> pa.Schema:
    """Returns `schema` less the float16 columns DuckDB cannot scan (heatmap values: `load_heatmap` reads them)."""

    def is_half(kind: pa.DataType) -> bool:
        return pa.types.is_float16(kind) or (pa.types.is_list(kind) and is_half(kind.value_type))

    return pa.schema([f for f in schema if not is_half(f.type)])


_PIXEL = "ceil({c} - 0.5)"  # a float box edge -> the pixel rule of engine.core.metrics.localization.pixel_boxes
SCORED_SQL = f"""
CREATE OR REPLACE TEMP VIEW scored AS
WITH pred AS (
  SELECT image_id, y_prob, qc_flags, split FROM t_preds WHERE stage IN ('cam', 'infer')
  QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY (stage = 'cam') DESC) = 1),
patient AS (  -- a patient's fused probability per split: of the scoring stage the images' are read from (cam, else
              -- infer: written after threshold), else of threshold (val, the best epoch)
  SELECT patient_id, split, y_prob AS fused, views FROM t_patient_preds
  QUALIFY row_number() OVER (PARTITION BY patient_id, split
          ORDER BY CASE stage WHEN 'cam' THEN 0 WHEN 'infer' THEN 1 WHEN 'threshold' THEN 2 ELSE 3 END, stage) = 1),
flag AS (  -- the qc table's flags, then the ones scoring added (domain_shift, view_mismatch)
  SELECT i.image_id, list_concat(coalesce(q.flags, []::VARCHAR[]), list_filter(coalesce(p.qc_flags, []::VARCHAR[]),
         lambda f: NOT list_contains(coalesce(q.flags, []::VARCHAR[]), f))) AS qc_list
  FROM t_index i LEFT JOIN qc_flags q ON q.image_id = i.image_id LEFT JOIN pred p ON p.image_id = i.image_id),
best AS (
  SELECT image_id, {_PIXEL.format(c="x1_orig")} AS bx1, {_PIXEL.format(c="y1_orig")} AS by1,
         {_PIXEL.format(c="x2_orig")} AS bx2, {_PIXEL.format(c="y2_orig")} AS by2
  FROM t_boxes WHERE "rank" = 0 QUALIFY row_number() OVER (PARTITION BY image_id) = 1),
gt AS (
  SELECT image_id, count(*) FILTER (WHERE cls = 'Abnormal') AS n_abnormal,
         count(*) FILTER (WHERE cls = 'Normal') AS n_normal FROM t_gt_boxes GROUP BY 1),
hit AS (
  SELECT b.image_id, bool_or(least(b.bx2, g.x2) > greatest(b.bx1, g.x1)
                             AND least(b.by2, g.y2) > greatest(b.by1, g.y1)) AS is_hit
  FROM best b JOIN t_gt_boxes g ON g.image_id = b.image_id AND g.cls = 'Abnormal' GROUP BY 1)
SELECT i.image_id, i.folder, i.view, i.patient_id, i.part, i.side, i.path, s.split, i.label, p.y_prob,
  coalesce(pp.fused, p.y_prob) AS patient_prob, pp.views AS patient_views,
  CASE WHEN p.y_prob IS NULL OR i.label IS NULL OR thr.value IS NULL THEN NULL
       WHEN p.y_prob >= thr.value THEN CASE WHEN i.label = 1 THEN 'TP' ELSE 'FP' END
       ELSE CASE WHEN i.label = 1 THEN 'FN' ELSE 'TN' END END AS outcome,
  CASE WHEN coalesce(gt.n_abnormal, 0) = 0 THEN NULL WHEN b.image_id IS NULL THEN 'no box'
       WHEN h.is_hit THEN 'hit' ELSE 'miss' END AS best_box,
  coalesce(gt.n_abnormal, 0) AS n_abnormal, coalesce(gt.n_normal, 0) AS n_normal,
  nullif(array_to_string(f.qc_list, ', '), '') AS qc
FROM t_index i CROSS JOIN run_thr thr
LEFT JOIN t_splits s ON s.image_id = i.image_id LEFT JOIN pred p ON p.image_id = i.image_id
LEFT JOIN best b ON b.image_id = i.image_id LEFT JOIN gt ON gt.image_id = i.image_id
LEFT JOIN hit h ON h.image_id = i.image_id LEFT JOIN flag f ON f.image_id = i.image_id
LEFT JOIN patient pp ON pp.patient_id = i.patient_id AND pp.split = coalesce(s.split, p.split)
  AND i.is_whole_body IS NOT FALSE  -- the patient's whole-body views are what patient_preds fuses
"""


def table_stamp(fs: pafs.FileSystem, root: str, names: tuple[str, ...]) -> tuple:
    """Returns what identifies the current files of tables `names` under run root `root`: (path, size, mtime) of
    each file, sorted. A commit (new, replaced or removed partitions) changes it; reading the tables does not."""
    files = []
    for name in names:
        selector = pafs.FileSelector(table_dir(root, name), allow_not_found=True, recursive=True)
        files += [(f.path, f.size, f.mtime_ns) for f in fs.get_file_info(selector) if f.type == pafs.FileType.File]
    return tuple(sorted(files))


def image_sql(query: ImageQuery, page_size: int, source: str) -> tuple[str, str, list]:
    """Returns (the count's SQL, the page's SQL, the count's parameters; the page's add LIMIT and OFFSET) of one
    table-page request over the scored rows of `source` (the materialised table, or the `scored` view)."""
    from engine.io.browse_pages import SORTABLE  # the page modules load torch (overlays): not at import

    where, params = ["TRUE"], []
    for column, value in query.filters.items():
        where.append(f"CAST({column} AS VARCHAR) = ?")
        params.append(value)
    if query.text:
        where.append("image_id ILIKE ?")
        params.append(f"%{query.text}%")
    if query.has_qc:
        where.append("qc IS NOT NULL")
    if query.qc_flag:
        where.append("list_contains(string_split(coalesce(qc, ''), ', '), ?)")
        params.append(query.qc_flag)
    if query.scored:
        where.append("y_prob IS NOT NULL")
    if query.sort not in SORTABLE:
        raise ValueError(f"sort={query.sort!r}: expected one of {SORTABLE}")
    clause = " AND ".join(where)
    direction = "DESC" if query.descending else "ASC"
    then = f"y_prob {direction} NULLS LAST, " if query.sort == "patient_prob" else ""  # a patient's images: by own p
    order = f"{query.sort} {direction} NULLS LAST, {then}image_id"
    count = f"SELECT count(*) AS n FROM {source} WHERE {clause}"
    page = f"SELECT * FROM {source} WHERE {clause} ORDER BY {order} LIMIT ? OFFSET ?"
    return count, page, params


# What a request reads, materialised once per run and threshold (RunCatalog._build): name -> its SELECT. The
# scored rows are stored in the table page's default order (scored first, most suspicious patient first).
DEFAULT_ORDER = "(y_prob IS NULL), patient_prob DESC NULLS LAST, y_prob DESC NULLS LAST, image_id"
MATERIALISED = {
    "scored_rows": f"SELECT * FROM scored ORDER BY {DEFAULT_ORDER}",
    "box_rows": """SELECT image_id, "rank", score, x1_orig, y1_orig, x2_orig, y2_orig, cross_view, cross_rank
                   FROM t_boxes ORDER BY image_id, "rank" """,
    "gt_rows": "SELECT image_id, cls, x1, y1, x2, y2 FROM t_gt_boxes ORDER BY image_id, cls, x1, y1",
    "overlay_rows": "SELECT image_id, overlay_orig, overlay_canvas FROM t_heatmaps ORDER BY image_id",
}
INDEXES = (  # the image page's look-ups: one image, its patient's views, its boxes
    "CREATE INDEX scored_rows_image ON scored_rows (image_id)",
    "CREATE INDEX scored_rows_patient ON scored_rows (patient_id)",
)


class RunCatalog:
    """DuckDB over one run's tables: the image table (sorted, filtered, paged) and one image's rows.

    The scored rows, boxes, GT boxes and overlays are materialised in memory when the catalog opens and again
    when `refresh` finds a new threshold or new table files; `builds` counts the builds.
    """

    def __init__(self, run_dir: str, thr: float | None) -> None:
        self.run_dir = run_dir
        self.lock = threading.RLock()  # one DuckDB connection, shared by the server's request threads
        self.fs, self.root = resolve_fs(run_dir)
        self.con: duckdb.DuckDBPyConnection | None = None
        self.builds = 0
        self._build(thr, table_stamp(self.fs, self.root, WATCHED_TABLES))

    def _open(self, thr: float | None) -> duckdb.DuckDBPyConnection:
        """Returns a connection with the run's tables registered and the `scored` view defined at `thr`."""
        con = duckdb.connect()
        for name in READ_TABLES:
            path = table_dir(self.root, name)
            schema = duckdb_schema(schemas.TABLES[name].SCHEMA)
            exists = self.fs.get_file_info(path).type == pafs.FileType.Directory
            data = (
                pads.dataset(path, filesystem=self.fs, format="parquet", partitioning="hive", schema=schema)
                if exists
                else schema.empty_table()
            )
            con.register(f"t_{name}", data)
        qc_path = table_dir(self.root, "qc")
        self.has_qc = self.fs.get_file_info(qc_path).type == pafs.FileType.Directory
        if self.has_qc:
            qc = pads.dataset(qc_path, filesystem=self.fs, format="parquet", partitioning="hive")
            con.register("t_qc", qc)
            con.execute(f"CREATE TEMP VIEW qc_flags AS {qc_sql(qc.schema.names)}")
        else:
            con.execute("CREATE TEMP VIEW qc_flags AS SELECT NULL::VARCHAR AS image_id, []::VARCHAR[] AS flags")
        con.execute("CREATE TEMP TABLE run_thr AS SELECT ?::DOUBLE AS value", [thr])
        con.execute(SCORED_SQL)
        return con

    def _build(self, thr: float | None, stamp: tuple) -> None:
        """Materialises the tables a request reads (MATERIALISED) and each filter's choices at `thr`."""
        from engine.io.browse_pages import FILTERS

        con = self._open(thr)
        for name, select in MATERIALISED.items():
            con.execute(f"CREATE TEMP TABLE {name} AS {select}")
        for statement in INDEXES:
            con.execute(statement)
        self._choices = {
            column: con.execute(
                f"SELECT DISTINCT CAST({column} AS VARCHAR) AS v FROM scored_rows WHERE {column} IS NOT NULL ORDER BY 1"
            )
            .df()["v"]
            .tolist()
            for column in FILTERS
        }
        flags = "SELECT DISTINCT f AS v FROM (SELECT unnest(string_split(qc, ', ')) AS f FROM scored_rows) ORDER BY 1"
        self._qc_flags = con.execute(flags).df()["v"].tolist()
        with self.lock:
            old, self.con, self.thr, self.stamp = self.con, con, thr, stamp
            self.builds += 1
        if old is not None:
            old.close()

    def refresh(self, thr: float | None) -> bool:
        """Rebuilds the materialised tables when `thr` or the files of the run's tables changed; returns whether
        it did."""
        with self.lock:
            stamp = table_stamp(self.fs, self.root, WATCHED_TABLES)
            if thr == self.thr and stamp == self.stamp:
                return False
            self._build(thr, stamp)
            return True

    def _frame(self, sql: str, params: list) -> pd.DataFrame:
        with self.lock:
            return self.con.execute(sql, params).df()

    def images(self, query: ImageQuery, page_size: int) -> tuple[pd.DataFrame, int]:
        """Returns (one page of image rows, rows matching the filters)."""
        count, page, params = image_sql(query, page_size, "scored_rows")
        total = int(self._frame(count, params)["n"].iloc[0])
        return self._frame(page, [*params, page_size, query.page * page_size]), total

    def choices(self) -> dict[str, list[str]]:
        """Returns the distinct values of each exact-match filter column."""
        return {column: list(values) for column, values in self._choices.items()}

    def qc_flags(self) -> list[str]:
        """Returns the QC flags raised on any image (the `QC flag` filter's choices)."""
        return list(self._qc_flags)

    def patient_views(self, image_id: str) -> pd.DataFrame:
        """Returns the scored rows of `image_id` and of its patient's other view (same part and side), by view."""
        sql = """SELECT o.* FROM (SELECT * FROM scored_rows WHERE image_id = ?) s JOIN scored_rows o
                 ON o.patient_id = s.patient_id AND o.part IS NOT DISTINCT FROM s.part
                 AND o.side IS NOT DISTINCT FROM s.side AND (o.image_id = s.image_id OR o.view IS DISTINCT FROM s.view)
                 ORDER BY o.view, o.image_id"""
        return self._frame(sql, [image_id])

    def boxes(self, image_id: str) -> pd.DataFrame:
        """Returns the pseudo boxes of an image, best first (original px)."""
        sql = """SELECT "rank", score, x1_orig, y1_orig, x2_orig, y2_orig, cross_view, cross_rank FROM box_rows
                 WHERE image_id = ? ORDER BY "rank" """
        return self._frame(sql, [image_id])

    def linked_boxes(self, views: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Returns image_id -> the pseudo boxes of each of a patient's views (`patient_views` rows) with their
        labels (A0, P1, ...) and the pairs confirmed across the views (``browse_pages.link_boxes``)."""
        from engine.io.browse_pages import link_boxes

        return link_boxes([(row.image_id, row.view, self.boxes(row.image_id)) for row in views.itertuples()])

    def gt_boxes(self, image_id: str) -> pd.DataFrame:
        """Returns the GT boxes of an image (cls Abnormal / Normal, original px)."""
        return self._frame(
            "SELECT cls, x1, y1, x2, y2 FROM gt_rows WHERE image_id = ? ORDER BY cls, x1, y1", [image_id]
        )

    def view(self, row: dict, boxes: pd.DataFrame | None = None) -> dict:
        """Returns what an image page shows of one scored row: its boxes (`boxes`: already linked across views,
        ``linked_boxes``), GT boxes and stored CAM outputs."""
        image_id = row["image_id"]
        stored = self._frame("SELECT overlay_orig, overlay_canvas FROM overlay_rows WHERE image_id = ?", [image_id])
        overlays = [str(v) for v in stored.to_numpy().ravel() if isinstance(v, str) and v]
        return {
            "row": row,
            "boxes": self.boxes(image_id) if boxes is None else boxes,
            "gt": self.gt_boxes(image_id),
            "overlays": overlays,
            "has_heatmap": not stored.empty,
        }


def _thr_note(cfg: Config) -> tuple[float | None, str]:
    try:
        thr = selected_threshold(model_run_dir(cfg))
    except ValueError as exc:
        return None, f"TP/FP/FN/TN need a threshold: {exc}"
    return thr, f"TP/FP/FN/TN at the selected threshold {thr:.4f}; best box: the rank-0 pseudo box vs Abnormal GT."


class SelectedThreshold:
    """The model run's selected threshold and the table page's note on it, read again only when the files of its
    `thresholds` table changed (`make threshold` while the server runs)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.fs, self.root = resolve_fs(model_run_dir(cfg))
        self.stamp: tuple | None = None
        self.value: tuple[float | None, str] = (None, "")
        self.lock = threading.Lock()

    def current(self) -> tuple[float | None, str]:
        """Returns (threshold or None, note)."""
        with self.lock:
            stamp = table_stamp(self.fs, self.root, ("thresholds",))
            if stamp != self.stamp:
                self.value, self.stamp = _thr_note(self.cfg), stamp
            return self.value


def read_under(root: str, relative: str) -> bytes:
    """Returns the bytes of file `relative` under `root`; 403 for paths leaving root, 404 for missing ones."""
    fs, base = resolve_fs(root)
    try:
        full = safe_relative_path(base, relative)
    except DecodeError:
        abort(403)
    try:
        with fs.open_input_file(full) as handle:
            return handle.read()
    except OSError:  # missing, a folder, unreadable
        abort(404)


def render_png(catalog: RunCatalog, data_root: str, kind: str, image_id: str, count_scale: str = "max") -> bytes:
    """Returns an image's PNG in original px with every box: "boxes" on the gray scan, "cam" on its CAM overlay.

    Pseudo boxes are labelled by view and rank (A0, P1, ...); a pair confirmed across the patient's two views is
    drawn in the same colour in both views' PNGs (``browse_pages.link_boxes``), unconfirmed boxes thin and red."""
    from engine.io.browse_pages import boxes_png
    from engine.io.heatmap_access import HeatmapNotFoundError, load_heatmap, read_scan

    rows = catalog.patient_views(image_id)
    if kind not in ("boxes", "cam") or rows.empty:
        abort(404)
    try:
        if kind == "cam":
            scan, heat = load_heatmap(catalog.run_dir, image_id, "orig", data_root, count_scale)
        else:
            path = rows.loc[rows["image_id"] == image_id, "path"].iloc[0]
            scan, heat = read_scan(data_root, str(path), count_scale), None
    except (HeatmapNotFoundError, DecodeError, OSError):
        abort(404)
    return boxes_png(scan, heat, catalog.linked_boxes(rows)[image_id], catalog.gt_boxes(image_id))


def create_app(cfg: Config, browse: BrowseConfig) -> Flask:
    """Returns the Flask app of `make browse` over `cfg.run.dir`, scans read from the run's saved data root."""
    from engine.io.browse_pages import image_page, parse_query, table_page
    from engine.io.heatmap_access import HeatmapNotFoundError, saved_data_root, saved_data_setting

    run_dir = cfg.run.dir
    try:
        data_root = saved_data_root(run_dir)
    except HeatmapNotFoundError:
        data_root = cfg.data.root
    count_scale = saved_data_setting(run_dir, "count_scale") or cfg.data.count_scale  # read once, not per image
    threshold = SelectedThreshold(cfg)
    catalog = RunCatalog(run_dir, threshold.current()[0])
    app = Flask(__name__)
    app.url_map.merge_slashes = False  # `//etc/passwd` must not be redirected into a relative path
    app.extensions["browse_catalog"] = catalog

    @app.before_request
    def fresh() -> None:  # a new threshold or a new commit: rebuild the materialised tables first
        if request.endpoint in ("table", "image", "render"):
            catalog.refresh(threshold.current()[0])

    @app.get("/")
    def table() -> str:
        note = threshold.current()[1]
        query = parse_query(request.args)
        rows, total = catalog.images(query, browse.page_size)
        return table_page(
            rows, total, query, catalog.choices(), browse.page_size, note, catalog.has_qc, catalog.qc_flags()
        )

    @app.get("/image/<path:image_id>")
    def image(image_id: str) -> str:
        rows = catalog.patient_views(image_id)
        if rows.empty:
            abort(404)
        linked = catalog.linked_boxes(rows)
        views = [catalog.view(row, linked[row["image_id"]]) for row in rows.to_dict("records")]
        return image_page(image_id, views)

    @app.get("/render/<kind>/<path:image_id>")
    def render(kind: str, image_id: str) -> Response:
        return Response(render_png(catalog, data_root, kind, image_id, count_scale), mimetype="image/png")

    @app.get("/report/")
    @app.get("/report/<path:relative>")
    def report(relative: str = "index.html") -> Response:  # `make report`'s page: its gallery links ../image/<id>
        mimetype = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        return Response(read_under(run_dir, f"report/{relative}"), mimetype=mimetype)

    @app.get("/files/<base>/<path:relative>")
    def files(base: str, relative: str) -> Response:
        roots = {"run": run_dir, "data": data_root}
        if base not in roots:
            abort(404)
        mimetype = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        return Response(read_under(roots[base], relative), mimetype=mimetype)

    return app


def serve(cfg: Config, browse: BrowseConfig) -> None:
    """Serves `make browse` on browse.host:browse.port until interrupted."""
    server = make_server(browse.host, browse.port, create_app(cfg, browse), threaded=True)
    print(
        f"browse: http://{browse.host}:{server.port}/ over {cfg.run.dir}, its report at /report/ (Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


def run_browse(cfg: Config) -> None:
    """Serves `make browse` with the `browse` section until interrupted."""
    serve(cfg, cfg.browse)


STAGE = Stage(
    name="browse",
    run=run_browse,
    help="local web page over every image of a run: sortable table, per-image CAM + GT/pseudo boxes (browse.port=8765)",
    sections=("browse",),
    serves=True,
)
