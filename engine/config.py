"""Typed run configuration: frozen dataclasses loaded from YAML with dotted `key=value` overrides.

`load_config("conf/default.yaml", ["boxes.nms_iou=0.2"])` reads the YAML, applies the overrides and
builds the dataclass tree. Unknown keys, wrong types, values outside a field's `Literal` choices or its
`Range` raise `ConfigError` naming file, line, key and what is allowed.

The dataclass field defaults below are the only defaults: a YAML file under conf/ sets just what differs
from them (tests/test_config.py refuses a conf file that restates a default).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from engine.config_sections import (
    DEFAULT_VIEW_PATTERN,
    BrowseConfig,
    LogConfig,
    MasksConfig,
    QcConfig,
    SegTrainConfig,
)
from engine.config_yaml import ConfigError, Range, apply_override, build_dataclass, load_yaml_with_lines
from engine.core.scans.counts import parse_count_scale

__all__ = ["Config", "ConfigError", "dump_config", "load_config"]

Fraction = Annotated[float, Range(0.0, 1.0)]  # a probability, share or IoU
Positive = Annotated[int, Range(1)]  # a count or size that must be at least 1
Count = Annotated[int, Range(0)]  # a count where 0 means none (or: automatic, where the field says so)
NonNegative = Annotated[float, Range(0.0)]
PositiveFloat = Annotated[float, Range(0.0, low_open=True)]
SplitName = Literal["train", "val", "test"]
SpotFeature = Literal[
    "cam", "peak", "contrast", "asym", "physiology", "size", "prob"
]  # engine.core.localization.spots.FEATURES


@dataclass(frozen=True)
class DataConfig:
    root: str = "data/synth"  # dataset root: a BS-80K-shaped folder, local path or storage URI
    view: Literal["ANT", "POST", "BOTH"] = "POST"  # whole-body view trained and scored (the seed trained POST)
    layout: Literal["bs80k", "images", "dicom"] = "bs80k"  # bs80k folders; any image tree; NM DICOM (unlabeled)
    count_scale: str = "max"  # 16-bit counts -> grey: max (per-image peak), p<q> (percentile), fixed:<counts/grey>
    view_pattern: str = DEFAULT_VIEW_PATTERN  # images/dicom: regex with groups ANT / POST matched on the path
    patient_pattern: str = ""  # images: regex with a group `patient` on the path; empty: the file stem

    def __post_init__(self) -> None:
        """Refuses an unknown count rule or a pattern that is no regex (ValueError, re-raised with file:line)."""
        parse_count_scale(self.count_scale)
        for name in ("view_pattern", "patient_pattern"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"data.{name} is not a regular expression: {exc}") from exc


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"  # where checkpoints, tables and reports of this run go (path or URI)
    overwrite: bool = False  # replace a stage's existing tables instead of refusing


@dataclass(frozen=True)
class RayConfig:
    address: str = ""  # Ray cluster to attach to; empty: RAY_ADDRESS or an embedded local Ray
    num_cpus: Count = 0  # CPUs for an embedded Ray (0: all of this machine's)
    decode_batch_size: Positive = 16  # images per decode + letterbox task
    decode_num_cpus: NonNegative = 1.0  # CPUs reserved per decode task (fractions allowed, e.g. 0.5)
    ship_code: bool = True  # attached to a cluster: upload engine/ and schemas/ (runtime_env py_modules)
    max_input_blocks: Positive = 1000  # index rows enter the stream in at most this many blocks (~5 ms each)


@dataclass(frozen=True)
class SynthConfig:
    out: str = "data/synth"  # where `make synth` writes the generated dataset
    patients: Positive = 300  # number of synthetic patients
    seed: int = 0  # generator seed (same seed: byte-identical dataset)
    lesion_gain: PositiveFloat = 1.0  # factor on lesion peak uptake (1 = realistic; >1 = easier, e.g. for a CPU demo)
    lesion_size: PositiveFloat = 1.0  # factor on lesion radius (1 = 3-10 px)
    replace: bool = False  # regenerate an `out` this generator wrote with other parameters (never other folders)


@dataclass(frozen=True)
class SplitConfig:
    train: Fraction = 0.8  # share of patients in train (seed: 0.8/0.1/0.1)
    val: Fraction = 0.1  # share of patients in val; test takes the rest
    duplicate_groups: tuple[tuple[str, ...], ...] = (  # BS-80K patient ids with byte-identical images: one split
        ("828", "2244"),
        ("312", "570"),
        ("831", "3216"),
        ("832", "3245"),
    )


@dataclass(frozen=True)
class CanvasConfig:
    height: Positive = 1024  # letterbox canvas height, px (portrait: a 256 x 1024 scan at scale 1, 8 x 32 CAM cells)
    width: Positive = 512  # letterbox canvas width, px (the seed's landscape canvas was 512 tall x 1024 wide)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "hf_hub:timm/resnetrs50.tf_in1k"  # timm model name or hf_hub id (the seed's model)
    pretrained: bool = True  # load the hub weights; false for offline runs and tests
    weights: str = ""  # optional local .pt/.pth/.safetensors state dict to start from
    from_run: str = ""  # a trained run whose model/best.pt and threshold score this run (cam, infer); "": this run
    output_stride: Literal[8, 16, 32] = 32  # 32: the architecture as published; 16 or 8 dilate the last stages
    channels_last: bool = True  # channels_last memory format on GPU
    compile: bool = True  # torch.compile the model actors on GPU (ignored on CPU; eager when compiling fails)
    override_contract: bool = False  # true: score at a canvas, view or count rule unlike the model's (else: exit 2)
    # cam and infer read the model's contract from its model/best.json (engine/contract.py): a key this config
    # leaves at its default takes the model's value; a key set to another value than the model's is one `error:`
    # line (exit 2) unless this is true (model.name and model.output_stride are always the checkpoint's)
    other_views: Literal["skip", "score"] = "skip"  # rows not of the model's data.view: skip (view_mismatch) or score
    # rows whose index `view` is another or unknown one: skip (counted as skipped view_mismatch in the cam/infer
    # summary) or score (each flagged view_mismatch in preds.qc_flags); cam.scope=split: the trained view's split only


@dataclass(frozen=True)
class TrainConfig:
    epochs: Positive = 20  # seed recipe
    batch_size: Positive = 16  # per worker; seed recipe
    lr: PositiveFloat = 1e-4  # AdamW learning rate; seed recipe
    weight_decay: NonNegative = 1e-4  # AdamW weight decay; seed recipe
    warmup_epochs: NonNegative = 1.0  # linear warm-up before the cosine decay
    num_workers: Positive = 1  # Ray Train workers
    cpus_per_worker: NonNegative = 1.0  # CPUs reserved per CPU Train worker (a GPU worker reserves 1 GPU, 0 CPUs)
    torch_threads: Count = 0  # intra-op threads of a CPU worker; 0 = Ray's default (the worker's CPUs, at least 1)
    use_gpu: Literal["auto", "true", "false"] = "auto"  # auto: when the Ray cluster has GPUs
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    affine_p: Fraction = 0.7  # probability of the random affine (seed: ±5°, 2% translate, 0.98-1.02 scale)
    rotate_deg: NonNegative = 5.0  # max rotation, degrees
    translate: Fraction = 0.02  # max translation, fraction of the canvas
    scale_range: Fraction = 0.02  # max |scale - 1|
    jitter_p: Fraction = 0.5  # probability of brightness/contrast jitter
    jitter: Fraction = 0.1  # max relative brightness/contrast change (seed: ±10%)
    max_failures: int = 0  # Ray Train worker-group restarts before the run fails


@dataclass(frozen=True)
class ThresholdConfig:
    mode: Literal["youden", "f1", "sens_atleast"] = "youden"  # youden: max sens + spec - 1 (the seed's modes)
    sens_min: Fraction = 0.85  # minimum sensitivity for sens_atleast


@dataclass(frozen=True)
class InferConfig:
    split: SplitName = "test"  # split scored by `make infer`
    batch_size: Positive = 64  # images per model call
    actors: Positive = 1  # model actors in the pool
    num_gpus: NonNegative = 1.0  # GPUs per model actor when CUDA exists (0 on CPU)
    num_cpus: NonNegative = 1.0  # CPUs per model actor
    calls_per_actor: Positive = 1  # batches one actor works on at once (threads; on GPU each has its own CUDA stream)
    decode: Literal["tasks", "actor"] = "actor"  # where images are decoded + letterboxed: in the model actor (only
    # index rows cross the object store) or in Ray Data decode tasks that ship canvases to it (BENCHMARKS.md, feed)
    decode_threads: Count = 0  # threads a model actor decodes on (infer.decode=actor); 0: its num_cpus, at least 1
    call_batches: Positive = 4  # model batches per actor call, each decoded then scored in turn (fewer, larger
    # calls: Ray's fixed cost per call is paid once per call_batches x batch_size rows)


@dataclass(frozen=True)
class CamConfig:
    scope: Literal["split", "all"] = "split"  # split: the configured split of the trained view; all: the whole index
    split: SplitName = "test"  # split used when scope=split
    method: Literal["auto", "fused", "gradcam"] = "auto"  # auto: fused when the head is GAP+linear, else gradcam
    target_layer: str = ""  # module name for autograd Grad-CAM; empty: the last feature block
    min_prob: Literal["all", "threshold"] = "all"  # all: every image; threshold: y_prob >= the selected thr
    overlays: Count = 16  # PNG overlays rendered for this many sampled images
    limit: Count = 0  # score only the first N selected rows of the model's view (0: all); for quick looks
    refine: bool = True  # move each CAM peak to where the input evidence lies (one backward pass; fused CAM only)
    refine_reach: PositiveFloat = 2.0  # refinement window half-size, in CAM cells
    refine_power: PositiveFloat = 4.0  # evidence weighting exponent of the refinement centroid
    refine_peaks: Positive = 32  # refined centres stored per image (best peaks first; `make boxes` reuses them)
    spots: Count = 48  # hot spots found per image on the scan (core.localization.spots) and stored; 0: none


@dataclass(frozen=True)
class BoxesConfig:
    size: Positive = 48  # box side, canvas px (seed recipe)
    max: Positive = 5  # boxes per image at most (seed recipe)
    nms_iou: Fraction = 0.15  # greedy NMS IoU (seed recipe)
    min_score: Fraction = 0.0  # drop peaks whose normalised CAM value is <= this
    # spots: the scan's hot spots ranked by the CAM, contrast, asymmetry and the physiology map, tuned on tune_split
    # (make boxes); cam_peaks: fixed-size boxes on the CAM's local maxima (size, max, nms_iou, min_score above)
    method: Literal["spots", "cam_peaks"] = "spots"
    # what the ranker reads (core.localization.spots.FEATURES); prob: the image's classifier probability
    features: tuple[SpotFeature, ...] = ("cam", "peak", "contrast", "asym", "physiology", "size", "prob")
    tune_split: SplitName = "val"  # split whose boxes fit the ranker (its heatmaps: make cam cam.split=val)
    tune_size_factors: tuple[PositiveFloat, ...] = (2.5, 3.5, 4.5)  # box side / spot sigma tried
    tune_max: tuple[Positive, ...] = (1, 2, 3, 5)  # boxes per image tried
    tune_cutoffs: tuple[Fraction, ...] = (0.0, 0.2, 0.4, 0.6)  # classifier cutoffs tried, plus the selected thr


@dataclass(frozen=True)
class BenchConfig:
    data_root: str = "data/bench"  # generated dataset for `make bench` (created when missing)
    patients: Positive = 800  # synthetic patients generated (~25 images each: whole-body + region crops)
    images: Positive = 2000  # N: images of the small runs; the memory check also runs 10 x N
    scale: Positive = 10  # the large run scores scale x N images (memory flat in N)
    model_batches: Positive = 10  # batches timed for the model-only figure
    out: str = "BENCHMARKS.md"  # results file appended to (kept in the repo)
    only: Literal["all", "feed"] = "all"  # feed: only the feed figures (make bench-feed); all: model, loop, engine too
    feed_images: Positive = 9600  # N of the feed measurement (whole-body images of bench.data_root, repeated)
    feed_scale: Positive = 4  # the feed's memory check streams feed_scale x N images
    feed_repeats: Positive = 3  # large feed runs per mode (each between two plain runs); the median is reported
    feed_canvas: tuple[Positive, ...] = (1024, 512)  # (height, width) of the feed: the engine's default canvas


@dataclass(frozen=True)
class EvaluateConfig:
    split: SplitName = "test"  # split scored against the Abnormal GT boxes, once (no tuning on it)
    tolerance_px: NonNegative = 15.0  # pointing-game tolerance, original px (Zhang et al., ECCV 2016)
    ks: tuple[Positive, ...] = (1, 3, 5)  # hit@k: one of the top-k boxes shares a pixel with an Abnormal box
    iou: tuple[Fraction, ...] = (0.3, 0.5)  # box precision/recall at IoU >= each (issue 5)
    iogt: tuple[Fraction, ...] = (0.5,)  # box precision/recall at intersection-over-GT >= each
    tune: bool = True  # pick box size, NMS IoU, min score and cutoff on tune_split, then score split once
    tune_split: SplitName = "val"  # split the tuning sees; its heatmaps come from `make cam cam.split=val`
    tune_iou: Fraction = 0.3  # tuning objective: F1 of box precision/recall at this IoU, at the cutoff
    tune_sizes: tuple[Positive, ...] = (24, 32, 48, 64, 96)  # box sides tried, canvas px
    tune_nms_iou: tuple[Fraction, ...] = (0.0, 0.15, 0.3)  # NMS IoUs tried
    tune_min_scores: tuple[Fraction, ...] = (0.0, 0.3, 0.6)  # minimum normalised peak values tried
    tune_cutoffs: tuple[Fraction, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)  # probability cutoffs tried, plus the selected thr
    seed_size: Positive = 48  # the seed's box side, canvas px (24 on the demo's half-size canvas)
    seed_max: Positive = 5  # the seed's boxes per image
    seed_nms_iou: Fraction = 0.15  # the seed's NMS IoU
    baseline_run: str = ""  # run dir trained on the seed's landscape canvas, scored with the seed's rule
    coco: bool = True  # write COCO JSON per split to <run.dir>/prompts/coco_<split>.json and coco_<split>_gt.json
    prior_sigma_px: NonNegative = 4.0  # body_prior baseline: Gaussian sigma on the scan, original px (a small hot spot)
    box_acc_step: Annotated[float, Range(0.0, 1.0, low_open=True)] = 0.01  # max_box_acc CAM threshold step


@dataclass(frozen=True)
class ReportConfig:
    gallery: Count = 4  # overlays per group (true positives, false positives, false negatives)
    dpi: Positive = 100  # resolution of the plot PNGs


@dataclass(frozen=True)
class LeaderboardConfig:
    runs: str = "runs"  # folder whose sub-folders are runs (`make leaderboard`)


@dataclass(frozen=True)
class ExportConfig:
    series_number: Positive = 9001  # SeriesNumber of each study's new Secondary Capture series (Segmentation: +1)
    series_description: str = "BS-80K weak localisation (research use)"  # SeriesDescription of the exported series
    segmentation: bool = True  # also a DICOM Segmentation of the kept masks where the source allows one


@dataclass(frozen=True)
class Config:
    seed: int = 42  # seeds splits, training and sampling
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    boxes: BoxesConfig = field(default_factory=BoxesConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    qc: QcConfig = field(default_factory=QcConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    browse: BrowseConfig = field(default_factory=BrowseConfig)
    log: LogConfig = field(default_factory=LogConfig)
    segtrain: SegTrainConfig = field(default_factory=SegTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as plain nested dicts (tuples as lists), ready for YAML/JSON."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Returns the Config from a YAML file (or the defaults) with dotted `key=value` overrides applied.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a value of the wrong type; the message gives
            `file:line` (or the override) and the known keys.
    """
    data: dict[str, Any] = {}
    lines: dict[str, str] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            data, lines = load_yaml_with_lines(Path(path).read_text(encoding="utf-8"), source)
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping")
    for override in overrides:
        apply_override(Config, data, override, lines)
    return build_dataclass(Config, data, "", source, lines)


def dump_config(cfg: Config) -> str:
    """Returns the resolved config as YAML text (written beside a run's tables)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
