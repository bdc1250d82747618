"""Patient-level decisions from a patient's whole-body views (ANT and POST read together, as a physician does).

A patient's probability fuses the probabilities of its scored images (each image once, whatever the stage that
scored it twice); its label is abnormal when any of its views is. The fusion rule is chosen on val (the rule of
the higher patient AUC; a tie keeps the first of FUSION_RULES), and the patient threshold is chosen on val's fused
probabilities with the same mode as the image threshold. A patient with one view is scored from that view, and its
`views` say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.core.metrics.classification import binary_metrics

FUSION_RULES = ("max", "mean")  # max: the more suspicious view decides; mean: both views weigh the same


def fuse_patients(preds: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Returns one row per patient of `preds` (image_id, patient_id, view, y_true, y_prob): its fused y_prob, its
    y_true (1 if any view is abnormal, 0 if every view is normal, -1 when no view is labelled), n_views and views
    (the scored views, sorted and joined by '+', e.g. 'ANT+POST' or 'POST').

    Raises:
        ValueError: `rule` is not one of FUSION_RULES.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"fusion rule {rule!r}: expected one of {FUSION_RULES}")
    columns = ["patient_id", "y_prob", "y_true", "n_views", "views"]
    if preds.empty:
        return pd.DataFrame(columns=columns)
    images = preds.drop_duplicates("image_id")  # an image scored twice counts once
    labels = pd.to_numeric(images["y_true"], errors="coerce")
    images = images.assign(y_true=labels.where(labels >= 0), view=images["view"].fillna("unknown").astype(str))
    grouped = images.groupby("patient_id", sort=True)
    out = pd.DataFrame(
        {
            "y_prob": grouped["y_prob"].agg(rule).astype(np.float32),
            "y_true": grouped["y_true"].max().fillna(-1).astype(np.int8),
            "n_views": grouped["image_id"].size().astype(np.int16),
            "views": grouped["view"].agg(lambda v: "+".join(sorted(set(v)))),
        }
    ).reset_index()
    return out[columns]


@dataclass(frozen=True)
class FusionChoice:
    rule: str
    auc_by_rule: dict[str, float | None]  # the val patient AUC of each rule (None: one class only)


def choose_fusion(preds: pd.DataFrame) -> FusionChoice:
    """Returns the fusion rule of the highest patient AUC over the labelled patients of `preds` (val)."""
    aucs: dict[str, float | None] = {}
    for rule in FUSION_RULES:
        fused = fuse_patients(preds, rule)
        fused = fused[fused["y_true"] >= 0]
        aucs[rule] = (
            binary_metrics(fused["y_true"].to_numpy(), fused["y_prob"].to_numpy(), 0.5).auc if len(fused) else None
        )
    known = {rule: auc for rule, auc in aucs.items() if auc is not None}
    best = max(known, key=lambda r: (known[r], -FUSION_RULES.index(r))) if known else FUSION_RULES[0]
    return FusionChoice(rule=best, auc_by_rule=aucs)
