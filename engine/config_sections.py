"""Config sections of the image-QC, mask and browse stages (`qc.*`, `masks.*`, `browse.*`); see engine/config.py.

Kept apart from engine/config.py so that each file stays readable; the same rules hold: the field defaults are
the only defaults, `Literal` fields list their choices and `Range` fields their bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from engine.config_yaml import Range

Fraction = Annotated[float, Range(0.0, 1.0)]
NonNegative = Annotated[float, Range(0.0)]
Count = Annotated[int, Range(0)]
Positive = Annotated[int, Range(1)]
# View from a path: the last whole-word ANT/anterior or POST/posterior (any case); see engine/io/layouts.py.
DEFAULT_VIEW_PATTERN = r"(?i)(?<![a-z])(?:(?P<ANT>ant|anterior)|(?P<POST>post|posterior))(?![a-z])"
QcFlag = Literal["noise_frame", "low_count", "small_body", "body_cut", "domain_shift"]


@dataclass(frozen=True)
class QcConfig:
    """Image QC thresholds (engine/core/scans/qc.py) and which flags keep an image out of training and scoring."""

    blur_sigma_px: NonNegative = 6.0  # Gaussian sigma of the body blob's blur, px (as in the real-scan measurement)
    level_factor: NonNegative = 0.25  # body blob: blur > level_factor * mean grey + level_offset
    level_offset: NonNegative = 0.5  # grey levels; keeps an almost empty frame from making a blob of its specks
    min_body_area: Fraction = 0.02  # noise_frame unless the body blob covers this share of the frame
    min_body_snr: NonNegative = 3.0  # noise_frame unless the blob's shape_snr reaches this (noise ~1, bodies >= 6)
    low_count_per_px: NonNegative = 2.5  # low_count: counts per body pixel (2.4 mm) below this (true counts
    # where the input has them: 16-bit, DICOM; 8-bit files: their grey levels); independent of the frame's size
    small_body_height: Fraction = 0.45  # small_body: body height / frame height below this (adults ~0.67)
    cut_margin_px: Count = 0  # body_cut: body box within this many px of the top or bottom edge
    exclude: tuple[QcFlag, ...] = ("noise_frame",)  # flags kept out of train, threshold and evaluate (never deleted)

    def __post_init__(self) -> None:
        """Refuses `domain_shift` in `exclude` (ValueError, re-raised with file:line): no row selection can use it."""
        if "domain_shift" in self.exclude:
            raise ValueError(
                "qc.exclude cannot hold domain_shift: it is judged when `make cam` scores with model.from_run, "
                "against that model's training images, after the rows are chosen (train, threshold and evaluate "
                "never see it); the flagged images are scored and flagged in preds.qc_flags, counted in the cam "
                "summary and shown in the report and in `make browse` (QC column, filter `QC flag`)"
            )


@dataclass(frozen=True)
class MasksConfig:
    """`make masks` settings; QC thresholds are canvas px unless named otherwise."""

    segmenter: Literal["threshold", "watershed", "random_walker", "grabcut", "litemedsam", "sam", "sam2"] = (
        "threshold"  # box-prompted segmenter (litemedsam: pip install '.[sam]'; sam/sam2: masks.checkpoint)
    )
    second: str = ""  # a second segmenter whose mask must agree (IoU >= min_agreement); empty: no check
    checkpoint: str = ""  # local checkpoint for sam / sam2 (never downloaded)
    model_type: str = "vit_b"  # sam: registry key (vit_b, vit_l, vit_h); sam2: its config name
    level: Fraction = 0.5  # threshold: fraction of (peak - border median) above the border median
    smooth_sigma: NonNegative = 1.0  # Gaussian blur of the crop before segmenting, px (counts noise)
    context: NonNegative = 0.25  # crop margin around the box, fraction of the box side
    tight_margin: Count = 4  # model segmenters: classical mask bbox grown by this, px (SAM wants a tight box)
    min_area_px: Count = 4  # QC: smaller masks are rejected
    max_box_fraction: Fraction = 0.8  # QC: masks covering more of their box are rejected
    leak_sides: Annotated[int, Range(1, 4)] = 2  # QC: a mask touching this many box sides or more leaks
    min_contrast: Fraction = 0.1  # QC: Michelson contrast (peak - border) / (peak + border) at least this
    ring_px: Positive = 4  # QC: width of the ring around the mask whose mean CAM must stay below the inside's
    min_agreement: Fraction = 0.5  # QC: IoU with the second segmenter at least this
    min_prob: Literal["threshold", "all"] = "threshold"  # threshold: y_prob below the run's threshold is rejected
    batch_images: Positive = 16  # images per segmenting call (their box crops go in one batch)
    chunk_images: Positive = 2048  # images per stream (their boxes and heatmaps ship with the stream's tasks)
    actors: Positive = 1  # model segmenters: actor pool size
    num_gpus: NonNegative = 0.0  # model segmenters: GPUs per actor


@dataclass(frozen=True)
class BrowseConfig:
    """`make browse` server settings."""

    host: str = "127.0.0.1"  # interface the server binds: the local machine only unless set otherwise
    port: Annotated[int, Range(0, 65535)] = 8765  # TCP port of the server (0: any free port)
    page_size: Positive = 50  # table rows per page


@dataclass(frozen=True)
class LogConfig:
    """What a job prints (engine/runtime/console.py)."""

    level: Literal["info", "debug"] = "info"  # info: stage lines, progress, epochs, summary; debug: also Ray's logs
    progress_s: NonNegative = 30.0  # no terminal: seconds between progress lines (0: a line at every update)
    events_s: NonNegative = 1.0  # training rank 0 sends its batch count at most this often (0: at every batch)


@dataclass(frozen=True)
class SegTrainConfig:
    """`make segtrain` / `make segment`: a segmentation network trained on the kept pseudo masks (core/segnet/).

    Workers, CPUs, GPU use, bf16 and the augmentation come from `train.*`, like `make train`.
    """

    enabled: bool = False  # `make all` runs segtrain + segment (off: slow on CPU; `make demo-seg` runs them)
    arch: Literal["Unet", "FPN", "Linknet"] = "Unet"  # segmentation-models-pytorch architecture
    encoder: str = ""  # timm encoder name (smp `tu-<name>`); empty: the classifier's `model.name`
    decoder_channels: tuple[Positive, ...] = (64, 32, 16, 16, 8)  # Unet decoder widths, one per encoder stage
    init_from_classifier: bool = True  # start the encoder from the run's model/best.pt (weights_only=True)
    epochs: Positive = 10  # training epochs
    batch_size: Positive = 8  # images per step and worker
    lr: Annotated[float, Range(0.0, low_open=True)] = 1e-3  # AdamW learning rate (cosine decay, warm-up 1 epoch)
    weight_decay: NonNegative = 1e-4  # AdamW weight decay
    focal_weight: NonNegative = 1.0  # loss = dice_weight x Dice loss + focal_weight x focal loss (smp.losses)
    dice_weight: NonNegative = 1.0
    threshold: Fraction = 0.5  # pixel probability at or above which a pixel is lesion (val Dice, segment)
    min_area_px: Count = 2  # segment: components smaller than this many canvas px are dropped
    max_components: Positive = 8  # segment: masks rows per image at most (highest score first)
    split: Literal["train", "val", "test", "all"] = "test"  # segment: the split scored, or all of the index
    actors: Positive = 1  # segment: model actors in the pool
    num_gpus: NonNegative = 0.0  # segment: GPUs per actor (when CUDA exists)
