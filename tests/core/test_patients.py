"""engine/core/metrics/patients.py: one decision per patient from its views."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.core.metrics.patients import FUSION_RULES, choose_fusion, fuse_patients


def _preds(rows: list[tuple[str, str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "patient_id", "view", "y_true", "y_prob"])


def test_a_patient_is_abnormal_when_any_view_is_and_each_image_counts_once() -> None:
    preds = _preds(
        [
            ("p1/a", "p1", "ANT", 0, 0.2),
            ("p1/p", "p1", "POST", 1, 0.6),
            ("p1/p", "p1", "POST", 1, 0.6),  # the same image scored twice
            ("p2/p", "p2", "POST", 0, 0.3),  # one view only
            ("p3/a", "p3", "ANT", -1, 0.9),  # unlabelled
        ]
    )
    fused = fuse_patients(preds, "mean").set_index("patient_id")
    assert fused.index.tolist() == ["p1", "p2", "p3"]  # never a patient twice
    assert fused.loc["p1", "y_prob"] == pytest.approx(0.4)  # (0.2 + 0.6) / 2: the repeated row does not weigh
    assert fused["y_true"].tolist() == [1, 0, -1]
    assert fused["n_views"].tolist() == [2, 1, 1]
    assert fused["views"].tolist() == ["ANT+POST", "POST", "ANT"]  # p2 is scored from POST alone, and says so
    assert fuse_patients(preds, "max").set_index("patient_id").loc["p1", "y_prob"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="fusion rule"):
        fuse_patients(preds, "median")
    assert fuse_patients(preds.iloc[:0], "max").empty


def test_the_rule_of_the_higher_val_auc_is_chosen() -> None:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(40):  # abnormal patients: one hot view, one at the normal level -> max separates, mean blurs
        sick = k % 2
        hot = 0.9 if sick else 0.5
        rows += [(f"{k}/a", str(k), "ANT", sick, hot), (f"{k}/p", str(k), "POST", 0, 0.2 + rng.uniform(0, 0.6))]
    choice = choose_fusion(_preds(rows))
    assert set(choice.auc_by_rule) == set(FUSION_RULES)
    assert choice.rule == "max" and choice.auc_by_rule["max"] > choice.auc_by_rule["mean"]
    rows = []
    for k in range(40):  # both views carry half of the evidence each: the mean separates better
        sick = k % 2
        a, p = rng.uniform(0, 1), rng.uniform(0, 1)
        rows += [
            (f"{k}/a", str(k), "ANT", sick, 0.5 * a + 0.4 * sick),
            (f"{k}/p", str(k), "POST", sick, 0.5 * p + 0.4 * sick),
        ]
    choice = choose_fusion(_preds(rows))
    assert choice.rule == max(choice.auc_by_rule, key=choice.auc_by_rule.get)
    one_class = _preds([("a", "p", "POST", 0, 0.3)])
    assert choose_fusion(one_class).rule == "max"  # no AUC: the first rule
