"""`make export`: a DICOM-sourced run's results back where a clinic looks, as DICOM in the source studies.

Per scored frame (`preds` rows of stage cam) a Secondary Capture image (engine/io/dicom_export.py, highdicom) of the
frame as the model saw it, with its pseudo boxes (red) and kept pseudo masks (magenta) drawn in, in a new series of
the source study (one per study and export run) carrying the source's patient and study identifiers; per source
file a DICOM Segmentation of the kept masks where the source allows one (else the reason); table `exports` (one row
per frame: probability, QC flags, boxes in original px, files written) and `export/<StudyInstanceUID>/summary.csv`
(the same rows of that study, plain text). Files go to `<run.dir>/export/`, replaced as a whole on a re-run.

Account: rows in = the cam preds rows = frames exported + errors (source gone or unreadable, no index row) + skipped
`not_dicom` (a run indexed from image files has nothing to return: every row is skipped, and the summary says so).
Runs on the driver, one frame at a time: a clinic's batch is studies, not BS-80K.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.config import Config
from engine.core.masks.segmenters import decode_rle
from engine.core.render.export_draw import boxes_text, draw_findings, safe_name
from engine.core.scans.counts import parse_count_scale
from engine.core.scans.dicom import split_frame_path
from engine.io.dicom_export import (
    EXPORT_DIR,
    ExportError,
    ExportFolder,
    ExportSettings,
    dataset_bytes,
    frame_count,
    read_source_header,
    secondary_capture,
    segmentation,
)
from engine.io.fs import load_scan, read_saved_config, resolve_fs
from engine.io.summary import StageSummary, write_errors
from engine.io.tables import read_table
from engine.stages._run import StageRun
from engine.stages._scoring import selected_threshold
from engine.stages._stage import BOXES, INDEX, Need, Stage

BOX_COLUMNS = ("x1_orig", "y1_orig", "x2_orig", "y2_orig")
NOT_DICOM = "not_dicom"


def run_export(cfg: Config) -> StageSummary:
    """Writes the Secondary Captures (and Segmentations) of a DICOM-sourced run's cam rows; tables exports, errors."""
    rows = _scored_rows(cfg)
    with StageRun(cfg, "export", ("exports", "errors"), replace=("exports", "errors")) as run:
        run.summary.rows_in = len(rows)
        folder = ExportFolder(cfg.run.dir)
        try:
            _export(cfg, rows, run, folder)
            run.commit()
            folder.publish()
        except BaseException:
            folder.discard()
            raise
    return run.summary


def _scored_rows(cfg: Config) -> pd.DataFrame:
    """Returns the cam preds rows joined with their index path (NaN without an index row), sorted by image_id."""
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[preds["stage"] == "cam"] if not preds.empty else preds
    if preds.empty:
        raise ValueError(f"{cfg.run.dir}: no cam predictions; run `make cam` first")
    index = read_table(cfg.run.dir, "index")[["image_id", "path"]]
    rows = preds.merge(index, on="image_id", how="left")
    return rows.sort_values("image_id", kind="stable").reset_index(drop=True)


def _export(cfg: Config, rows: pd.DataFrame, run: StageRun, folder: ExportFolder) -> None:
    summary = run.summary
    lost = rows["path"].isna()
    _errors(run, rows[lost], [f"no_index_row: {i} has cam preds but no index row" for i in rows.loc[lost, "image_id"]])
    rows = rows[~lost].assign(file=None, frame=None)
    split = rows["path"].map(split_frame_path)
    rows["file"], rows["frame"] = split.map(lambda s: s[0]), split.map(lambda s: s[1])
    dicom = rows[rows["frame"].notna()]
    summary.add_skipped(NOT_DICOM, len(rows) - len(dicom))
    if dicom.empty:
        summary.extra["export"] = (
            f"skipped: none of the {len(rows)} scored rows comes from a DICOM file "
            f"(data.layout={cfg.data.layout}); nothing to return as DICOM"
        )
        return
    ctx = _Context(cfg, dicom)
    headers: dict[str, Dataset] = {}
    for file, group in dicom.groupby("file", sort=True):
        try:
            headers[str(file)] = read_source_header(ctx.data_fs, ctx.data_root, str(file))
        except ExportError as exc:
            _errors(run, group, [str(exc)] * len(group))
    by_study: dict[str, list[str]] = {}
    for file, header in headers.items():
        by_study.setdefault(str(header.StudyInstanceUID), []).append(file)
    for study_uid, files in sorted(by_study.items()):
        _export_study(ctx, run, folder, study_uid, [(f, headers[f], dicom[dicom["file"] == f]) for f in files])
    summary.extra.update(
        {
            "studies": len(ctx.studies),
            "secondary_captures": summary.rows_ok,
            "segmentations": ctx.segmentations,
            "no_segmentation": dict(ctx.seg_reasons),
            "count_rule": ctx.count_scale,
            "export": f"{cfg.run.dir}/{EXPORT_DIR}",
        }
    )


class _Context:
    """What every study's export reads: the data root, the count rule, boxes, kept masks, threshold, settings."""

    def __init__(self, cfg: Config, rows: pd.DataFrame) -> None:
        self.cfg = cfg
        self.data_fs, self.data_root = resolve_fs(cfg.data.root)
        self.count_scale = cam_count_scale(cfg)
        self.scale = parse_count_scale(self.count_scale)
        ids = set(rows["image_id"])
        boxes = read_table(cfg.run.dir, "boxes")
        boxes = boxes[boxes["image_id"].isin(ids)].sort_values(["image_id", "rank"], kind="stable")
        self.boxes = {str(i): g[list(BOX_COLUMNS)].to_numpy(np.float64) for i, g in boxes.groupby("image_id")}
        masks = read_table(cfg.run.dir, "masks")
        self.has_masks = not masks.empty
        if self.has_masks:
            masks = masks[masks["kept"].fillna(False).astype(bool) & masks["image_id"].isin(ids)]
        self.masks: dict[str, list[tuple[str, int, int]]] = {}
        for row in masks.itertuples():
            self.masks.setdefault(str(row.image_id), []).append((str(row.rle_counts), int(row.rle_h), int(row.rle_w)))
        try:
            self.thr = selected_threshold(cfg.run.dir)
        except ValueError:
            self.thr = float("nan")
        self.settings = ExportSettings(
            series_number=cfg.export.series_number, series_description=cfg.export.series_description
        )
        self.studies: set[str] = set()
        self.segmentations = 0
        self.seg_reasons: Counter = Counter()

    def kept_masks(self, image_id: str, shape: tuple[int, int]) -> list[np.ndarray]:
        """Returns the image's kept masks in original px (those of another size than the frame are left out)."""
        decoded = [decode_rle(*m) for m in self.masks.get(image_id, [])]
        return [m for m in decoded if m.shape == shape]


def cam_count_scale(cfg: Config) -> str:
    """Returns the count rule `make cam` scored this run with (its saved `config/cam.yaml`; a model's contract may
    have set it), else `data.count_scale`: the Secondary Captures show each frame as the model saw it."""
    saved = read_saved_config(cfg.run.dir, "cam").get("data")
    scale = saved.get("count_scale") if isinstance(saved, dict) else None
    return str(scale) if scale is not None else cfg.data.count_scale


def _export_study(
    ctx: _Context, run: StageRun, folder: ExportFolder, study_uid: str, sources: list[tuple[str, Dataset, pd.DataFrame]]
) -> None:
    """Writes one study's Secondary Captures (one new series), its Segmentations and summary.csv; rows to exports."""
    study_dir = safe_name(study_uid, "study")
    sc_series, seg_series = generate_uid(), generate_uid()
    written: list[dict[str, Any]] = []
    for seg_number, (file, header, group) in enumerate(sources, start=1):
        stem = safe_name(file.rsplit("/", 1)[-1].rsplit(".", 1)[0])
        frames: dict[int, np.ndarray] = {}
        records = []
        for row in group.sort_values("frame").itertuples():
            instance = len(written) + len(records) + 1
            record = _secondary_capture(ctx, run, folder, header, row, (sc_series, instance, study_dir, stem), frames)
            if record is not None:
                records.append(record)
        seg_file, reason = _segmentation(ctx, folder, header, frames, seg_series, seg_number, f"{study_dir}/{stem}")
        ctx.segmentations += bool(seg_file)
        if records and not seg_file:
            ctx.seg_reasons[reason.split(":", 1)[0]] += 1
        for record in records:
            record.update({"seg_written": bool(seg_file), "seg_file": seg_file, "seg_reason": reason})
        written += records
    if not written:
        return
    ctx.studies.add(study_uid)
    table = pd.DataFrame(written)
    run.writer.write("exports", table)
    run.summary.rows_ok += len(table)
    folder.write(f"{study_dir}/summary.csv", _csv(table))


def _secondary_capture(
    ctx: _Context,
    run: StageRun,
    folder: ExportFolder,
    header: Dataset,
    row: Any,
    place: tuple[str, int, str, str],
    frames: dict[int, np.ndarray],
) -> dict[str, Any] | None:
    """Writes one frame's Secondary Capture; returns its exports row, or None after writing its errors row.

    `frames` receives the frame's union of kept masks (source frame -> (H, W) bool) for the Segmentation.
    """
    series, instance, study_dir, stem = place
    image_id, frame = str(row.image_id), int(row.frame)
    image, _, error = load_scan(ctx.data_fs, ctx.data_root, str(row.path), ctx.scale)
    if image is None:
        _errors(run, pd.DataFrame([row._asdict()]), [error])
        return None
    boxes = ctx.boxes.get(image_id, np.zeros((0, 4)))
    masks = ctx.kept_masks(image_id, image.shape)
    y_prob = float(row.y_prob)
    flags = None if row.qc_flags is None else [str(f) for f in row.qc_flags]
    positive = None if not np.isfinite(ctx.thr) else bool(y_prob >= ctx.thr)
    comment = _comment(y_prob, ctx.thr, len(boxes), len(masks), frame, str(row.view), flags)
    try:
        sc = secondary_capture(
            header, draw_findings(image, boxes, masks), frame, str(row.view), series, instance, ctx.settings, comment
        )
    except (ValueError, TypeError) as exc:
        _errors(run, pd.DataFrame([row._asdict()]), [f"sc_refused: {type(exc).__name__}: {exc}"])
        return None
    sc_file = folder.write(f"{study_dir}/sc_{instance:03d}_{stem}_f{frame + 1}.dcm", dataset_bytes(sc))
    if masks:
        frames[frame] = np.logical_or.reduce(masks)
    return {
        "image_id": image_id,
        "patient_id": str(header.get("PatientID", "") or ""),
        "study_uid": str(header.StudyInstanceUID),
        "study_date": _iso_date(header.get("StudyDate")),
        "source_file": str(row.file),
        "frame_number": frame + 1,
        "view": row.view,
        "y_prob": y_prob,
        "threshold": ctx.thr,
        "positive": positive,
        "qc_flags": flags,
        "n_boxes": len(boxes),
        "boxes": [float(v) for v in boxes.ravel()],
        "masks_drawn": len(masks),
        "sc_file": sc_file,
        "sc_series_uid": series,
        "sc_sop_uid": str(sc.SOPInstanceUID),
    }


def _segmentation(
    ctx: _Context,
    folder: ExportFolder,
    header: Dataset,
    frames: dict[int, np.ndarray],
    series: str,
    number: int,
    name: str,
) -> tuple[str | None, str]:
    """Writes the source file's Segmentation of its exported frames' kept masks; returns (file or None, reason)."""
    if not ctx.cfg.export.segmentation:
        return None, "disabled: export.segmentation=false"
    if not ctx.has_masks:
        return None, "no_masks: the run has no masks table (run `make masks`)"
    if not frames:
        return None, "no_kept_masks: no kept pseudo mask on the exported frames of this file"
    first = next(iter(frames.values()))
    count = max(frame_count(header), max(frames) + 1)
    stack = np.zeros((count, *first.shape), dtype=bool)
    for frame, mask in frames.items():
        stack[frame] = mask
    try:
        seg = segmentation(header, stack, series, number, ctx.settings)
    except ExportError as exc:
        return None, str(exc)
    return folder.write(f"{name}_seg.dcm", dataset_bytes(seg)), ""


def _comment(y_prob: float, thr: float, boxes: int, masks: int, frame: int, view: str, flags: list[str] | None) -> str:
    """Returns the Secondary Capture's ImageComments: what is drawn and how the frame scored."""
    if np.isfinite(thr):
        score = f"probability {y_prob:.3f} ({'at or above' if y_prob >= thr else 'below'} the threshold {thr:.3f})"
    else:
        score = f"probability {y_prob:.3f} (no threshold selected)"
    qc = ", ".join(flags) if flags else ("none" if flags is not None else "not checked")
    return (
        f"BS-80K weak localisation, research use, not for diagnosis. Source frame {frame + 1} ({view}): {score}; "
        f"{boxes} pseudo box(es) in red, {masks} kept mask(s) in magenta; QC flags: {qc}"
    )


def _iso_date(value: object) -> str | None:
    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:]}" if len(text) == 8 and text.isdigit() else None


def _csv(table: pd.DataFrame) -> bytes:
    """Returns a study's exports rows as CSV: flags joined by `;`, boxes as `x1 y1 x2 y2; ...` (original px)."""
    plain = table.copy()
    plain["qc_flags"] = [";".join(f) if f is not None else "" for f in plain["qc_flags"]]
    plain["boxes"] = [boxes_text(np.asarray(b, dtype=np.float64)) for b in plain["boxes"]]  # 4 values per box
    out = io.StringIO()
    plain.to_csv(out, index=False, float_format="%.4f")
    return out.getvalue().encode()


def _errors(run: StageRun, rows: pd.DataFrame, reasons: list[str]) -> None:
    """Writes one export errors row per row (its source file, or its index path when it has none)."""
    if not len(rows):
        return
    files = rows["file"] if "file" in rows and rows["file"].notna().all() else rows.get("path", rows["image_id"])
    write_errors(
        run.writer,
        list(files.astype(object).where(files.notna(), None)),
        rows["image_id"],
        reasons,
        rows["split"],
        run.summary,
    )


STAGE = Stage(
    name="export",
    run=run_export,
    help="DICOM runs: per scored frame a Secondary Capture (boxes, kept masks), Segmentations where possible -> "
    "exports, export/",
    sections=("export",),
    needs=(INDEX, Need("tables/preds", "make cam"), BOXES),
    writes=("exports", "errors"),
)
