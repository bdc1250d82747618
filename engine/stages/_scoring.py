"""What scoring with a trained model needs: the model's run, its contract, the selected threshold, the metrics row
at that threshold, the box and CAM settings of `make cam` / `make infer` and how their rows reach the model actors."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from engine.config import Config
from engine.contract import apply_contract
from engine.core.localization.boxes import BoxParams
from engine.core.localization.spots import SpotRanker, SpotSettings
from engine.core.metrics.classification import binary_metrics
from engine.core.metrics.localization import LocSettings
from engine.io.fs import read_run_json, resolve_fs
from engine.io.tables import read_table, write_part
from engine.stages._run import run_id

if TYPE_CHECKING:
    from engine.core.localization.spot_methods import TuneGrid
    from engine.runtime.pipeline import ScoringFeed
    from engine.runtime.udfs.cam import CamSettings

VIEW_MISMATCH = "view_mismatch"  # a row of another or unknown view than the model's data.view (skip reason, QC flag)


def model_run_dir(cfg: Config) -> str:
    """Returns the run whose model/best.pt and threshold score this run: `model.from_run`, else `run.dir`."""
    return cfg.model.from_run or cfg.run.dir


def model_info(run_dir: str) -> dict[str, Any] | None:
    """Returns the run's `model/best.json` (what `make train` recorded beside the weights), or None without one."""
    return read_run_json(run_dir, "model/best.json")


def scoring_config(cfg: Config) -> tuple[Config, dict[str, str]]:
    """Returns (the config that scores with the model of `model_run_dir(cfg)`, what its contract changed or
    overrode: key -> note), by engine/contract.py's `apply_contract` on the model's `model/best.json`.

    Raises:
        ContractError: the config contradicts the model (one line naming both values) without
            model.override_contract; engine/preflight.py raises the same before Ray starts.
    """
    run_dir = model_run_dir(cfg)
    info = model_info(run_dir)
    if info is None:
        return cfg, {}
    return apply_contract(cfg, info, f"{run_dir.rstrip('/')}/model/best.json")


def scoring_extras(contract: dict[str, str], threshold: str, off_view: set[str]) -> dict[str, Any]:
    """Returns the summary lines of a scoring stage: what the model's contract set, the threshold, flagged views."""
    extras: dict[str, Any] = {}
    if contract:
        extras["model_contract"] = contract
    if threshold:
        extras["threshold"] = threshold
    if off_view:
        extras[VIEW_MISMATCH] = f"{len(off_view)} images of another or unknown view scored (model.other_views=score)"
    return extras


def selected_threshold(run_dir: str) -> float:
    """Returns the threshold `make threshold` chose for `run_dir` (the last `thresholds` row): the one reader.

    Stages that score with the run's model pass `model_run_dir(cfg)`.

    Raises:
        ValueError: the run has no selected threshold.
    """
    table = read_table(run_dir, "thresholds")
    if table.empty:
        raise ValueError(f"{run_dir}: no selected threshold; run `make threshold` first")
    return float(table["thr"].iloc[-1])


def threshold_record(run_dir: str) -> dict[str, Any] | None:
    """Returns the run's `threshold.json` (the chosen or adopted operating point), or None without one."""
    return read_run_json(run_dir, "threshold.json")


def adopt_threshold(cfg: Config) -> str:
    """Makes this run's threshold the one of the model that scores it; returns what it did (a summary line).

    With `model.from_run`, that run's selected threshold (`thresholds`, `threshold.json` with `from_run`) is copied
    here, replacing a threshold this run held from another model (its own, or another run's), so that masks,
    evaluate, report and browse read the operating point its preds were scored at. Scored with its own model, the
    run keeps its own threshold; one that names another run's model is reported (run `make threshold`).
    """
    held = threshold_record(cfg.run.dir)
    held_from = (held or {}).get("from_run", "")
    if not cfg.model.from_run:
        if held_from:
            return f"threshold.json names the model of {held_from}, not this run's: run `make threshold` here"
        return ""
    chosen = read_table(cfg.model.from_run, "thresholds")
    if chosen.empty:
        raise ValueError(f"model.from_run={cfg.model.from_run}: no selected threshold; run `make threshold` there")
    row = chosen.tail(1).reset_index(drop=True)
    record = {**{k: _plain(v) for k, v in row.iloc[0].to_dict().items()}, "from_run": cfg.model.from_run}
    mine = read_table(cfg.run.dir, "thresholds")["thr"].tolist()
    if held_from == cfg.model.from_run and mine and np.allclose([*mine, held.get("thr", np.nan)], record["thr"]):
        return f"thr {record['thr']:.4g} of {cfg.model.from_run}"
    fs, root = resolve_fs(cfg.run.dir)
    if fs.get_file_info(f"{root}/tables/thresholds").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{root}/tables/thresholds")  # one row: the threshold of the model that scores this run
    write_part(cfg.run.dir, "thresholds", row, "from_run")
    with fs.open_output_stream(f"{root}/threshold.json") as out:
        out.write(json.dumps(record, indent=2, default=str).encode())
    if held is None:
        return f"thr {record['thr']:.4g} adopted from {cfg.model.from_run}"
    before = f"thr {float(held['thr']):.4g} of {held_from or 'this run'}" if "thr" in held else "the old threshold"
    return f"thr {record['thr']:.4g} adopted from {cfg.model.from_run}, replacing {before}"


def _plain(value: Any) -> Any:
    """Returns a numpy scalar as its Python value (JSON), other values unchanged."""
    return value.item() if hasattr(value, "item") else value


def split_metrics(cfg: Config, preds: pd.DataFrame, split: str, thr: float) -> dict:
    """Returns the `metrics` row of one split's predictions at `thr` (scikit-learn metrics)."""
    m = binary_metrics(preds["y_true"].to_numpy(), preds["y_prob"].to_numpy(), thr)
    return {"run_id": run_id(cfg), "split": split, "view": cfg.data.view, **m.to_dict()}


def box_params(cfg: Config) -> BoxParams:
    """Returns the pseudo-box parameters from `boxes.*`."""
    return BoxParams(
        size=cfg.boxes.size, max_boxes=cfg.boxes.max, nms_iou=cfg.boxes.nms_iou, min_score=cfg.boxes.min_score
    )


def cam_settings(cfg: Config, with_cam: bool, use_gpu: bool) -> CamSettings:
    """Returns what the model actor of `make cam` (`with_cam`) or `make infer` computes, on a GPU with `use_gpu`
    (the stage asks Ray: engine/runtime/pipeline.py use_gpu)."""
    from engine.runtime.udfs.cam import CamSettings

    return CamSettings(
        run_dir=model_run_dir(cfg),
        model_name=cfg.model.name,
        method=cfg.cam.method,
        target_layer=cfg.cam.target_layer,
        with_cam=with_cam,
        use_gpu=use_gpu,
        amp=cfg.train.amp,
        channels_last=cfg.model.channels_last,
        compile=cfg.model.compile,
        boxes=box_params(cfg),
        cpu_threads=max(1, int(cfg.infer.num_cpus)),
        refine=cfg.cam.refine,
        refine_reach=cfg.cam.refine_reach,
        refine_power=cfg.cam.refine_power,
        refine_peaks=cfg.cam.refine_peaks,
        spots=SpotSettings(limit=cfg.cam.spots),
        ranker=spot_ranker(cfg) if with_cam else None,
        warmup=(cfg.infer.batch_size, cfg.canvas.height, cfg.canvas.width),
        model_batch=cfg.infer.batch_size,
    )


def scoring_feed(cfg: Config, use_gpu: bool) -> ScoringFeed:
    """Returns how `make cam` / `make infer` feed the model actors: the pool of `infer.*` (`infer.num_gpus` GPUs per
    actor only with `use_gpu`), where the images are decoded (`infer.decode`) and the stream's `ray.*` sizes.

    A call holds `infer.call_batches` model batches of `infer.batch_size`; each actor has two blocks (Ray tasks)
    queued per concurrent call, at least 4; a decoding actor uses `infer.decode_threads` threads (0: its CPUs).
    """
    from engine.runtime.decode import DecodeSettings
    from engine.runtime.pipeline import PoolSpec, ScoringFeed, StreamSettings

    infer = cfg.infer
    pool = PoolSpec(
        actors=infer.actors,
        rows_per_call=infer.batch_size * infer.call_batches,
        num_cpus=infer.num_cpus,
        num_gpus=infer.num_gpus if use_gpu else 0,
        calls_per_actor=infer.calls_per_actor,
        tasks_in_flight=max(4, 2 * infer.calls_per_actor),
    )
    threads = infer.decode_threads or max(1, math.ceil(infer.num_cpus))
    decode = DecodeSettings.of(cfg.data, cfg.canvas, threads)
    return ScoringFeed(pool, decode, StreamSettings.of(cfg.ray), in_actor=infer.decode != "tasks")


def loc_settings(cfg: Config) -> LocSettings:
    """Returns the localisation settings from `evaluate.*` (what a box counts as a hit)."""
    ev = cfg.evaluate
    return LocSettings(ks=ev.ks, iou_thresholds=ev.iou, iogt_thresholds=ev.iogt, tolerance_px=ev.tolerance_px)


def tune_grid(cfg: Config) -> TuneGrid:
    """Returns the spot-ranker tuning grid of `boxes.tune_*` (objective: F1 at `evaluate.tune_iou`)."""
    from engine.core.localization.spot_methods import TuneGrid

    b = cfg.boxes
    return TuneGrid(
        size_factors=b.tune_size_factors, max_boxes=b.tune_max, cutoffs=b.tune_cutoffs, iou=cfg.evaluate.tune_iou
    )


RANKER_FILE = "spot_ranker.json"  # written by `make boxes` (boxes.method=spots) in the model's run


def spot_ranker(cfg: Config) -> SpotRanker | None:
    """Returns the spot ranker `make boxes` tuned for the model's run, or None (boxes.method=cam_peaks, not tuned
    yet, or cam.spots=0): boxes then sit on the CAM's peaks."""
    if cfg.boxes.method != "spots" or cfg.cam.spots == 0:
        return None
    record = read_run_json(model_run_dir(cfg), RANKER_FILE)
    return SpotRanker.from_dict(record["ranker"]) if record and record.get("ranker") else None


def min_prob(cfg: Config) -> float:
    if cfg.cam.min_prob not in ("all", "threshold"):
        raise ValueError(f"cam.min_prob={cfg.cam.min_prob!r}: expected 'all' or 'threshold'")
    return selected_threshold(model_run_dir(cfg)) if cfg.cam.min_prob == "threshold" else float("-inf")


PATIENT_VIEW = "patient"  # the `metrics` row of the patients' fused probabilities (beside the per-view rows)


def patient_point_of(cfg: Config) -> dict:
    """Returns the patient operating point (`threshold.json`'s "patient": fusion rule, thr) of the model that scores
    the run; a model thresholded before patients were: max fusion at the image threshold."""
    record = threshold_record(model_run_dir(cfg)) or {}
    point = record.get("patient")
    if point:
        return point
    return {"fusion": "max", "thr": selected_threshold(model_run_dir(cfg)), "note": "image threshold (no patient one)"}


def write_patient_preds(cfg: Config, preds: pd.DataFrame, point: dict, stage: str, split: str) -> pd.DataFrame:
    """Fuses `preds` (one split's image predictions of the model's views) per patient with `point`'s rule and
    threshold, writes them to `patient_preds` (stage, split) and returns them."""
    from engine.core.metrics.patients import fuse_patients

    fused = fuse_patients(preds, point["fusion"])
    thr = float(point["thr"])
    fused = fused.assign(
        y_pred=(fused["y_prob"] >= thr).astype(np.int8),
        thr=np.float32(thr),
        fusion=point["fusion"],
        run_id=run_id(cfg),
        stage=stage,
        split=split,
    )
    write_part(cfg.run.dir, "patient_preds", fused, "patients")
    return fused


def scored_patients(cfg: Config, stage: str, split: str | None) -> str:
    """Writes `patient_preds` of the whole-body images of the model's views that `stage` scored in `split` (every
    split with None), one partition per split; returns the summary line (how many patients from both views, how
    many from one), or why there are none."""
    from engine.contract import trained_views

    preds = read_table(cfg.run.dir, "preds", pads.field("stage") == stage)
    index = read_table(cfg.run.dir, "index", columns=["image_id", "is_whole_body"])
    whole = set(index.loc[index["is_whole_body"].fillna(False).astype(bool), "image_id"])  # any layout's flag
    preds = preds[preds["view"].isin(trained_views(cfg)) & preds["image_id"].isin(whole)]
    if split is not None:
        preds = preds[preds["split"] == split]
    if preds.empty:
        return "none: no whole-body image of the model's views was scored"
    try:
        point = patient_point_of(cfg)
    except ValueError as exc:  # no threshold yet
        return f"none: {exc}"
    counts: dict[str, int] = {}
    for part, rows in preds.groupby("split"):
        fused = write_patient_preds(cfg, rows, point, stage, str(part))
        for views, n in fused["views"].value_counts().items():
            counts[str(views)] = counts.get(str(views), 0) + int(n)
    views = ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
    return f"{sum(counts.values())} ({views}), {point['fusion']} fusion"
