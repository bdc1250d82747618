"""Streaming model stages: `make infer` (probabilities), `make cam` (+ CAM + boxes), `make boxes`."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from engine.boxes import BoxParams
from engine.classify_stages import (
    UNSPLIT,
    _run_id,
    adopt_threshold,
    model_run_dir,
    select_rows,
    selected_threshold,
    split_metrics,
    view_folders,
)
from engine.config import Config
from engine.data_stages import save_config
from engine.inference import CamSettings
from engine.overlays import OverlayCollector
from engine.qc import SHIFT_STATS, domain_shift
from engine.qc_stage import qc_flag_lists
from engine.stages import BODY_CANVAS_COLUMNS, META_COLUMNS, PEAK_COLUMNS, explode_boxes, pseudo_boxes
from engine.summary import StageSummary
from engine.tables import TableWriter, read_table, write_part

log = logging.getLogger(__name__)

CAM_TABLES = ("preds", "heatmaps", "boxes", "meta", "errors")


def box_params(cfg: Config) -> BoxParams:
    """Returns the pseudo-box parameters from `boxes.*`."""
    return BoxParams(size=cfg.boxes.size, max_boxes=cfg.boxes.max, nms_iou=cfg.boxes.nms_iou,
                     min_score=cfg.boxes.min_score)  # fmt: skip


def heatmap_column(heat: np.ndarray) -> pa.Array:
    """Returns (N, h, w) float16 maps as an Arrow list<float16> column (row-major, plain Arrow types)."""
    n = heat.shape[0]
    size = int(np.prod(heat.shape[1:])) if n else 0
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * size)
    return pa.ListArray.from_arrays(offsets, pa.array(heat.reshape(-1).astype(np.float16), type=pa.float16()))


def padded_list_column(values: np.ndarray, valid: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Returns (N, K) padded rows as an Arrow list column holding each row's `valid` entries (plain Arrow)."""
    lengths = valid.sum(axis=1)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values[valid], type=arrow_type))


def peak_list_columns(ok: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Returns the refined peak columns as Arrow lists (nulls when the pass did not refine)."""
    if "peak_index" not in ok:
        n = len(ok["image_id"])
        return {"peak_index": pa.nulls(n, pa.list_(pa.int32())), "peak_x": pa.nulls(n, pa.list_(pa.float32())),
                "peak_y": pa.nulls(n, pa.list_(pa.float32()))}  # fmt: skip
    valid = ok["peak_index"] >= 0
    return {"peak_index": padded_list_column(ok["peak_index"], valid, pa.int32()),
            "peak_x": padded_list_column(ok["peak_x"], valid, pa.float32()),
            "peak_y": padded_list_column(ok["peak_y"], valid, pa.float32())}  # fmt: skip


def flags_by_image(rows: pd.DataFrame) -> dict[str, list[str] | None]:
    """Returns image_id -> the QC flags raised on it (None without a qc row), for the preds `qc_flags` column."""
    return dict(zip(rows["image_id"].astype(str), qc_flag_lists(rows), strict=True))


def training_range_check(cfg: Config, flags: dict[str, list[str] | None]) -> dict[str, str]:
    """With `model.from_run`: adds `domain_shift` to the QC flags of images whose statistics (engine.qc.SHIFT_STATS)
    lie outside the range of the model's training images; returns the summary lines (the count, both medians)."""
    reference, here = read_table(cfg.model.from_run, "qc"), read_table(cfg.run.dir, "qc")
    splits = read_table(cfg.model.from_run, "splits")
    if reference.empty or here.empty or splits.empty:
        return {"domain_shift": "not checked: a qc table is missing here or in model.from_run"}
    trained = reference.drop(columns=["split"], errors="ignore").merge(splits[["image_id", "split"]], on="image_id")
    trained = trained[(trained["split"] == "train") & trained["folder"].isin(view_folders(cfg.data.view))]
    here = here[here["image_id"].isin(list(flags))]
    shifted = domain_shift(
        {k: here[k].to_numpy() for k in SHIFT_STATS}, {k: trained[k].to_numpy() for k in SHIFT_STATS}
    )
    for image_id in here.loc[shifted, "image_id"]:
        flags[image_id] = [*(flags.get(image_id) or []), "domain_shift"]
    medians = ", ".join(f"{k} {here[k].median():.3g} / {trained[k].median():.3g}" for k in SHIFT_STATS)
    return {"domain_shift": f"{int(shifted.sum())} of {len(here)} images outside the training images' range",
            "median here / training": medians}  # fmt: skip


def _take(batch: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in batch.items()}


def _write_batch(writer: TableWriter, batch: dict, ctx: dict, summary: StageSummary) -> None:
    """Splits one model-stream batch into rows of preds/errors (and heatmaps/meta/boxes with CAM)."""
    bad = np.asarray(batch["error"]) != ""
    errors, m = _take(batch, bad), int(bad.sum())
    error_rows = {"file": errors["path"], "line": [None] * m, "image_id": errors["image_id"],
                  "stage": [writer.stage] * m, "reason": errors["error"], "split": errors["split"]}  # fmt: skip
    writer.write("errors", error_rows)
    summary.add_errors(error_rows["reason"])  # the reasons of the rows written, one each
    ok = _take(batch, ~bad)
    n = len(ok["image_id"])
    flags = ctx.get("qc_flags", {})
    qc_flags = [flags.get(str(image_id)) for image_id in ok["image_id"]]
    label = np.asarray(ok["label"], dtype=np.int64)
    y_true = pa.array(label, mask=label < 0, type=pa.int8())  # -1 in the stream: unlabeled, null in preds
    summary.rows_ok += writer.write("preds", {**ok, "y_true": y_true, "epoch": [None] * n, "qc_flags": qc_flags,
                                              "run_id": [ctx["run_id"]] * n, "model": [ctx["model"]] * n,
                                              "stage": [writer.stage] * n})  # fmt: skip
    if "heatmap" not in ok:
        return
    overlays: OverlayCollector | None = ctx.get("overlays")
    refs = overlays.take(ok) if overlays else {"overlay_canvas": [None] * n, "overlay_orig": [None] * n}
    shape = {"heatmap_h": [ok["heatmap"].shape[1]] * n, "heatmap_w": [ok["heatmap"].shape[2]] * n}
    writer.write("heatmaps", {**ok, **refs, **shape, **peak_list_columns(ok), "heatmap": heatmap_column(ok["heatmap"])})
    body = {k: np.full(n, np.nan, np.float32) for k in BODY_CANVAS_COLUMNS if k not in ok}  # a stream without qc
    writer.write("meta", {**ok, **body})
    writer.write("boxes", explode_boxes(ok, ok["boxes"], ok["box_count"], ctx["params"], ctx["min_prob"]))


def _stream_stage(
    cfg: Config, stage: str, rows: pd.DataFrame, split: str | None, settings: CamSettings, ctx: dict
) -> StageSummary:
    """Streams `rows` through the model into the stage's tables; commits only a balanced account.

    `split` is the split partition the stage owns, from its configuration (None: all of them), never
    from the rows: an empty selection commits empty partitions and leaves every other split as it was.
    """
    from engine.pipeline import image_stream, iter_results, model_stream

    summary = StageSummary(stage)
    writer = TableWriter(cfg.run.dir, stage, cfg.run.overwrite, split=split)
    names = CAM_TABLES if settings.with_cam else ("preds", "errors")
    writer.check(names)
    summary.rows_in = len(rows)
    try:
        if len(rows):
            for batch in iter_results(model_stream(image_stream(rows, cfg), cfg, settings), progress=stage,
                                      total=len(rows)):  # fmt: skip
                _write_batch(writer, batch, ctx, summary)
        for name in names:
            writer.rows.setdefault(name, 0)
        if ctx.get("overlays"):
            summary.extra["overlays_rendered"] = ctx["overlays"].render()
    except BaseException:
        writer.abort()  # nothing of a failed run is committed
        raise
    summary.commit(writer)
    save_config(cfg, stage)
    return summary


def _settings(cfg: Config, with_cam: bool) -> CamSettings:
    from engine.pipeline import init_ray, use_gpu

    init_ray(cfg.ray)
    return CamSettings(
        run_dir=model_run_dir(cfg), model_name=cfg.model.name, method=cfg.cam.method, target_layer=cfg.cam.target_layer,
        with_cam=with_cam, use_gpu=use_gpu(cfg.train.use_gpu), amp=cfg.train.amp,
        channels_last=cfg.model.channels_last, compile=cfg.model.compile, boxes=box_params(cfg),
        cpu_threads=max(1, int(cfg.infer.num_cpus)), refine=cfg.cam.refine, refine_reach=cfg.cam.refine_reach,
        refine_power=cfg.cam.refine_power, refine_peaks=cfg.cam.refine_peaks,
        warmup=(cfg.infer.batch_size, cfg.canvas.height, cfg.canvas.width),
    )  # fmt: skip


def run_infer(cfg: Config) -> StageSummary:
    """Predicts `infer.split` (a run without splits scored with `model.from_run`: its whole index) through the model
    actor pool; writes preds, errors and, where the rows have labels, metrics."""
    whole = unsplit(cfg)
    rows = select_rows(cfg, None if whole else (cfg.infer.split,), not whole, qc_exclude=False)
    adopt_threshold(cfg)
    thr = selected_threshold(cfg)
    ctx = {"run_id": _run_id(cfg), "model": cfg.model.name, "qc_flags": flags_by_image(rows)}
    split = UNSPLIT if whole else cfg.infer.split
    summary = _stream_stage(cfg, "infer", rows, None if whole else split, _settings(cfg, with_cam=False), ctx)
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[(preds["stage"] == "infer") & (preds["split"] == split)]
    labeled = preds[preds["y_true"].notna() & (preds["y_true"] >= 0)]
    if labeled.empty:
        summary.extra["metrics"] = f"skipped: none of the {len(preds)} scored images has a label"
    else:
        metrics = split_metrics(cfg, labeled, split, thr)
        write_part(cfg.run.dir, "metrics", pd.DataFrame([metrics]), split)
        summary.extra.update({k: metrics[k] for k in ("split", "thr", "auc", "sensitivity", "specificity", "f1", "n")})
    summary.save(cfg.run.dir)
    return summary.finish()


def unsplit(cfg: Config) -> bool:
    """True for new scans scored with another run's model: `model.from_run` set and no splits table here."""
    return bool(cfg.model.from_run) and read_table(cfg.run.dir, "splits").empty


def cam_rows(cfg: Config, whole: bool | None = None) -> pd.DataFrame:
    """Returns the rows `make cam` scores: the trained view's `cam.split`, or the whole index.

    A run without splits scored with `model.from_run` scores its whole index (cam.scope=all implied).
    """
    if cfg.cam.scope not in ("split", "all"):
        raise ValueError(f"cam.scope={cfg.cam.scope!r}: expected 'split' or 'all'")
    if cfg.cam.scope == "all" or (unsplit(cfg) if whole is None else whole):
        rows = select_rows(cfg, None, False, qc_exclude=False)
    else:
        rows = select_rows(cfg, (cfg.cam.split,), qc_exclude=False)
    return rows.head(cfg.cam.limit) if cfg.cam.limit else rows


def _min_prob(cfg: Config) -> float:
    if cfg.cam.min_prob not in ("all", "threshold"):
        raise ValueError(f"cam.min_prob={cfg.cam.min_prob!r}: expected 'all' or 'threshold'")
    return selected_threshold(cfg) if cfg.cam.min_prob == "threshold" else float("-inf")


def run_cam(cfg: Config) -> StageSummary:
    """One streaming pass: probability, CAM and pseudo boxes per image -> preds/heatmaps/boxes/meta/errors."""
    whole = unsplit(cfg)
    rows = cam_rows(cfg, whole)
    adopt_threshold(cfg)
    overlays = OverlayCollector(cfg, rows["image_id"].tolist())
    ctx: dict[str, Any] = {
        "run_id": _run_id(cfg), "model": cfg.model.name, "params": box_params(cfg), "min_prob": _min_prob(cfg),
        "overlays": overlays, "qc_flags": flags_by_image(rows),
    }  # fmt: skip
    checks = training_range_check(cfg, ctx["qc_flags"]) if cfg.model.from_run else {}
    scope = "all" if whole else cfg.cam.scope
    split = cfg.cam.split if scope == "split" else None  # scope=all owns every split's partition
    summary = _stream_stage(cfg, "cam", rows, split, _settings(cfg, with_cam=True), ctx)
    summary.extra["scope"] = scope
    summary.extra.update(checks)
    if cfg.model.from_run:
        summary.extra["model_from_run"] = cfg.model.from_run
    summary.save(cfg.run.dir)
    return summary.finish()


def _stored_batch(chunk: pd.DataFrame) -> tuple[dict[str, Any], np.ndarray]:
    """Returns the batch columns and the (N, h, w) float16 maps of stored heatmap + meta rows."""
    batch: dict[str, Any] = {
        c: chunk[c].to_numpy()
        for c in ("image_id", "y_prob", "raw_min", "raw_max", "split", "folder", *PEAK_COLUMNS, *BODY_CANVAS_COLUMNS)
        if c in chunk
    }
    batch.update({c: chunk[c].to_numpy() for c in META_COLUMNS})
    maps = np.stack(chunk["heatmap"].to_numpy()).reshape(len(chunk), int(chunk["heatmap_h"].iloc[0]), -1)
    return batch, maps.astype(np.float16)


def run_boxes(cfg: Config) -> StageSummary:
    """Recomputes the `boxes` table from stored heatmaps + meta with `boxes.*`: no model, no GPU.

    A heatmap without its meta row (no letterbox to map boxes back) is an `errors` row (stage=boxes).
    """
    summary = StageSummary("boxes")
    heat = read_table(cfg.run.dir, "heatmaps")
    if heat.empty:
        raise ValueError(f"{cfg.run.dir}: no heatmaps table; run `make cam` first")
    meta = read_table(cfg.run.dir, "meta").drop(columns=["split", "folder"])
    writer = TableWriter(cfg.run.dir, "boxes", replace=("boxes", "errors"))
    writer.check(["boxes", "errors"])
    summary.rows_in = len(heat)
    orphans = heat.loc[~heat["image_id"].isin(meta["image_id"]), ["image_id", "split"]]
    reasons = [f"missing_meta: heatmap of {i} has no meta row (run `make cam` again)" for i in orphans["image_id"]]
    n = len(orphans)
    writer.write("errors", {"file": orphans["image_id"], "line": [None] * n, "image_id": orphans["image_id"],
                            "stage": ["boxes"] * n, "reason": reasons, "split": orphans["split"]})  # fmt: skip
    summary.add_errors(reasons)
    frame = heat.merge(meta, on="image_id", how="inner")
    params, min_prob = box_params(cfg), _min_prob(cfg)
    for start in range(0, len(frame), 4096):
        batch, maps = _stored_batch(frame.iloc[start : start + 4096])
        boxes, counts = pseudo_boxes(maps, batch, params)
        writer.write("boxes", explode_boxes(batch, boxes, counts, params, min_prob))
        summary.rows_ok += len(counts)  # images whose boxes were computed (a repeated meta row counts twice)
    writer.rows.setdefault("boxes", 0)
    summary.commit(writer)
    summary.extra["boxes_per_image"] = round(summary.tables.get("boxes", 0) / max(summary.rows_ok, 1), 3)
    save_config(cfg, "boxes")
    summary.save(cfg.run.dir)
    return summary.finish()
