"""Plain-words descriptions of every metric and method name the report (and any other page) shows: one place.

Metric names of `loc_metrics` (``core.localization``, ``io.evaluate_masks``, ``stages.evaluate.baselines``)
may carry a suffix after ``@``: ``iou0.3`` (intersection over union >= 0.3), ``iogt0.5`` (intersection over the GT
box >= 0.5) or a rank ``k`` (``hit@5``); `describe` spells the suffix out.
"""

from __future__ import annotations

from typing import NamedTuple


class MetricNote(NamedTuple):
    """Where a metric is shown and what it means."""

    group: str  # the table it belongs to (GROUP_ORDER)
    text: str  # one plain sentence, the suffix (if any) spelled out


GROUP_ORDER = (
    "Pointing",
    "Box precision / recall",
    "Boxes at the probability cutoff",
    "False positives",
    "Box accuracy",
    "Masks",
    "Counts",
)

# The classification table's columns (``engine.core.metrics.classification.binary_metrics``) at the selected threshold.
CLASSIFICATION: dict[str, str] = {
    "n": "images with a finite probability",
    "auc": "area under the ROC curve: chance that an abnormal scan scores above a normal one",
    "sensitivity": "abnormal scans called abnormal at the threshold (recall)",
    "specificity": "normal scans called normal at the threshold",
    "precision": "scans called abnormal that are abnormal",
    "f1": "harmonic mean of precision and sensitivity",
    "accuracy": "scans called correctly at the threshold",
    "thr": "the selected probability threshold (abnormal when p >= thr)",
}

# Localisation metrics: base name (before "@") -> (group, text); "{at}" becomes the spelled-out suffix.
METRICS: dict[str, tuple[str, str]] = {
    "pointing_game": ("Pointing", "images with an Abnormal GT box whose CAM peak lies within the tolerance of one"),
    "pointing_chance": ("Pointing", "the pointing game of a uniformly random pixel (the chance level)"),
    "hit": ("Pointing", "images with an Abnormal GT box where one of the best {at} pseudo boxes touches one"),
    "precision": ("Box precision / recall", "pseudo boxes (of every scored image) matching an Abnormal box at {at}"),
    "precision_on_target_images": (
        "Box precision / recall",
        "as precision, counting only the boxes of images that hold an Abnormal box",
    ),
    "recall": ("Box precision / recall", "Abnormal GT boxes matched by a pseudo box at {at}"),
    "precision_at_cutoff": (
        "Boxes at the probability cutoff",
        "precision at {at}, boxes only on images with p >= the method's cutoff",
    ),
    "recall_at_cutoff": ("Boxes at the probability cutoff", "recall at {at}, boxes only on images with p >= cutoff"),
    "fp_boxes_per_image_at_cutoff": (
        "Boxes at the probability cutoff",
        "unmatched boxes per image, boxes only on images with p >= cutoff",
    ),
    "fp_boxes_per_normal_image_at_cutoff": (
        "Boxes at the probability cutoff",
        "boxes per normal image, boxes only on images with p >= cutoff",
    ),
    "fp_boxes_per_normal_image": ("False positives", "pseudo boxes per normal image (all of them are false)"),
    "boxes_on_normal_gt": (
        "False positives",
        "boxes (of masks: their bounding boxes) that miss every Abnormal box but touch a Normal (physiological) "
        "GT box, over all of the method's boxes",
    ),
    "max_box_acc": (
        "Box accuracy",
        "MaxBoxAcc (Choe et al. 2020): best share over CAM thresholds of target images "
        "whose CAM box reaches {at} with an Abnormal box",
    ),
    "mask_box_iou": ("Masks", "mean over Abnormal boxes of the best IoU of a mask's bounding box"),
    "mask_inside_fraction": ("Masks", "mean share of a mask lying inside one Abnormal box"),
    "mask_hit_rate": ("Masks", "Abnormal boxes whose best mask bounding box reaches the smallest IoU level"),
    "mask_dice": ("Masks", "Dice of the method's masks vs the generator's true lesion masks (generated data only)"),
    "mask_pxap": (
        "Masks",
        "PxAP (Choe et al. 2020): pixel average precision of the method's own continuous score map vs the true "
        "lesion masks (cam: the CAM; masks: the CAM inside the masks, 0 outside; segnet: the network's "
        "probability map; generated data only)",
    ),
    "mask_fp_per_normal": ("False positives", "masks per normal image (all of them are false)"),
    "mask_fp_image_rate": ("False positives", "normal images with any mask"),
    "mask_fp_per_normal_at_cutoff": (
        "Boxes at the probability cutoff",
        "masks per normal image, masks only on images with p >= the cutoff (the classifier-gated view)",
    ),
    "n_masks": ("Counts", "masks counted (classifier gate: none, for every mask method)"),
    "n_masks_below_cutoff": (
        "Counts",
        "masks on images with p < the cutoff: counted, since no mask method is gated by the classifier",
    ),
    "n_images": ("Counts", "scored images"),
    "n_target_images": ("Counts", "images holding an Abnormal GT box"),
    "n_normal_images": ("Counts", "images labelled normal with no Abnormal box"),
    "n_gt_abnormal": ("Counts", "Abnormal GT boxes"),
    "n_gt_normal": ("Counts", "Normal (physiological) GT boxes"),
    "n_boxes": ("Counts", "pseudo boxes"),
    "n_images_at_cutoff": ("Counts", "images with p >= the method's cutoff"),
    "n_abnormal_without_gt": ("Counts", "images labelled abnormal without an Abnormal box"),
    "n_label_conflict": ("Counts", "images labelled normal that hold an Abnormal box"),
    "n_no_peak": ("Counts", "target images whose CAM has no positive value"),
    "n_nan_prob": ("Counts", "images without a finite probability"),
    "n_bad_boxes": ("Counts", "pseudo boxes with non-finite coordinates (dropped)"),
}

METHODS: dict[str, str] = {
    "peaks": "the run's pseudo boxes as make cam / make boxes wrote them (boxes.method: spots or CAM peaks)",
    "spots_peak": "no model: the scan's brightest hot spots, spot-sized boxes (box rule tuned on the tuning split)",
    "spots_scan": "no model: hot spots ranked by peak, contrast, asymmetry, size and the physiology map (tuned)",
    "spots_cam": "hot spots ranked by the CAM value at the spot alone (box rule and cutoff tuned)",
    "spots_cam_contrast": "hot spots ranked by the CAM, peak and contrast (weights and box rule tuned)",
    "spots_cam_asym": "hot spots ranked by the CAM, peak, contrast and left-right asymmetry (tuned)",
    "spots_cam_site": "the same plus the physiology map and the spot size (tuned)",
    "spots_full": "the same plus the classifier's probability: the default ranker's features (tuned)",
    "peaks_confirmed": "the run's boxes that the patient's other view confirms (a box there: cross_view > 0)",
    "peaks_unrefined": "the same heatmaps and box settings, peaks at CAM cell centres (what refinement adds)",
    "peaks_tuned": "box size, NMS, min score and probability cutoff chosen on the tuning split only",
    "seed_rule": "the seed's top-pixel rule on this run's heatmaps",
    "seed": "the seed's rule on the baseline run (the seed's landscape canvas)",
    "centre_prior": "baseline, no model: a box at the centre of the body",
    "body_prior": "baseline, no model: boxes at the brightest smoothed scan pixels on the body",
    "max_box_acc": "Choe et al.'s threshold-swept box accuracy of this run's heatmaps",
    "cam": "the CAM itself as a pixel score map (PxAP against the true lesion masks; no boxes, no masks)",
    "masks_tight": "the pseudo masks' bounding boxes, scored like peaks (no classifier gate)",
    "masks": "pseudo-mask quality against the Abnormal boxes (and true masks on generated data; no classifier gate)",
    "segnet_tight": "the segmentation network's masks' bounding boxes, scored like peaks (no classifier gate)",
    "segnet": "the segmentation network's mask quality, as masks (PxAP on its probability map; no classifier gate)",
}

# How every mask method is gated by the classifier (engine.io.evaluate_masks.GATE): one rule, shown with the tables.
MASK_GATE = (
    "Classifier gate: none, the same for every mask method: a pseudo mask counts whatever its image's probability "
    "(its below_threshold flag from make masks is ignored) and every network mask counts; the gated view is in the "
    "*_at_cutoff rows, at the same cutoff for every method."
)


def spell_suffix(suffix: str) -> str:
    """Returns the `@` suffix of a metric name in words: "iou0.3" -> "IoU >= 0.3", "5" -> "5"."""
    if suffix.startswith("iogt"):
        return f"intersection over the GT box >= {suffix[4:]}"
    if suffix.startswith("iou"):
        return f"IoU >= {suffix[3:]}"
    return suffix


def describe(metric: str) -> MetricNote:
    """Returns the group and plain description of a `loc_metrics` name (``precision@iou0.3``, ``hit@5``, ...).

    Unknown names fall in "Counts" with an empty text, so a new metric shows up before it is described.
    """
    base, _, suffix = metric.partition("@")
    group, text = METRICS.get(base, ("Counts", ""))
    return MetricNote(group, text.replace("{at}", spell_suffix(suffix) if suffix else "the given level"))
