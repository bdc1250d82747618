"""Binary metrics against sklearn, and grid threshold selection against a brute-force loop."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from engine.core.metrics.classification import (
    THRESHOLD_GRID,
    BinaryMetrics,
    MetricsError,
    ThresholdError,
    binary_metrics,
    select_threshold,
)


def test_threshold_grid_is_0_001_to_0_999():
    assert len(THRESHOLD_GRID) == 999 and THRESHOLD_GRID[0] == 0.001 and THRESHOLD_GRID[-1] == 0.999
    assert THRESHOLD_GRID[360] == 0.361


def test_binary_metrics_hand_worked():
    y_true = np.array([0, 0, 0, 1, 1, 1, 1])
    y_prob = np.array([0.1, 0.5, 0.7, 0.5, 0.6, 0.9, 0.2])
    m = binary_metrics(y_true, y_prob, 0.5)  # >= 0.5 is positive: the tie at 0.5 counts
    assert (m.n, m.tp, m.tn, m.fp, m.fn) == (7, 3, 1, 2, 1)
    assert m.sensitivity == 0.75 and m.specificity == pytest.approx(1 / 3) and m.precision == 0.6
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 2 + 1)) and m.accuracy == pytest.approx(4 / 7)
    assert m.youden_j == pytest.approx(0.75 + 1 / 3 - 1)
    assert m.auc == pytest.approx(roc_auc_score(y_true, y_prob))
    assert m.to_dict()["tp"] == 3 and set(m.to_dict()) == set(BinaryMetrics.__dataclass_fields__)


def test_binary_metrics_with_one_class_has_no_auc_and_zero_rates():
    m = binary_metrics(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.8, 0.9]), 0.5)
    assert m.auc is None and (m.tp, m.tn, m.fp, m.fn) == (0, 2, 2, 0)
    assert m.sensitivity == 0.0 and m.precision == 0.0 and m.f1 == 0.0 and m.specificity == 0.5


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 60), thr=st.sampled_from(list(THRESHOLD_GRID[::37])))
def test_binary_metrics_matches_sklearn(seed, n, thr):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_prob = np.round(rng.random(n), 2).astype(np.float32)  # coarse values: ties with thr happen
    m = binary_metrics(y_true, y_prob, thr)
    y_pred = (y_prob.astype(np.float64) >= thr).astype(int)
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert m.sensitivity == pytest.approx(recall_score(y_true, y_pred, zero_division=0))
    assert m.specificity == pytest.approx(recall_score(1 - y_true, 1 - y_pred, zero_division=0))
    assert m.precision == pytest.approx(precision_score(y_true, y_pred, zero_division=0))
    assert m.f1 == pytest.approx(f1_score(y_true, y_pred, zero_division=0))
    if 0 < y_true.sum() < n:
        assert m.auc == pytest.approx(roc_auc_score(y_true, y_prob))


def brute_force_threshold(y_true, y_prob, mode, sens_min=0.85):
    """Reference: a Python loop over the grid with exact fractions; ties go to the lower threshold."""
    y_prob = np.asarray(y_prob, dtype=np.float64)
    n_pos, n_neg = int(y_true.sum()), int(len(y_true) - y_true.sum())
    best_key, best_thr = None, None
    for thr in THRESHOLD_GRID:
        pred = y_prob >= thr
        tp, fp = int((pred & (y_true == 1)).sum()), int((pred & (y_true == 0)).sum())
        fn, tn = n_pos - tp, n_neg - fp
        sens = Fraction(tp, n_pos) if n_pos else Fraction(0)
        spec = Fraction(tn, n_neg) if n_neg else Fraction(0)
        f1 = Fraction(2 * tp, 2 * tp + fp + fn) if 2 * tp + fp + fn else Fraction(0)
        if mode == "sens_atleast":
            if float(sens) < sens_min:
                continue
            key = (spec, sens)
        else:
            key = ({"youden": sens + spec - 1, "f1": f1}[mode], sens, spec)
        if best_key is None or key > best_key:  # strict: an equal key keeps the lower threshold
            best_key, best_thr = key, float(thr)
    return best_thr


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 80),
    decimals=st.sampled_from([1, 2, 3, 6]),
    mode=st.sampled_from(["youden", "f1", "sens_atleast"]),
    sens_min=st.sampled_from([0.5, 0.85, 1.0]),
)
def test_select_threshold_equals_brute_force_loop(seed, n, decimals, mode, sens_min):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_prob = np.round(np.clip(rng.normal(0.3 + 0.4 * y_true, 0.25), 0, 1), decimals)
    expected_thr = brute_force_threshold(y_true, y_prob, mode, sens_min)
    if expected_thr is None:
        with pytest.raises(ThresholdError, match="best sensitivity"):
            select_threshold(y_true, y_prob, mode, sens_min=sens_min)
        return
    chosen = select_threshold(y_true, y_prob, mode, sens_min=sens_min)
    assert chosen.thr == expected_thr
    assert chosen == binary_metrics(y_true, y_prob, expected_thr)


def test_youden_tie_prefers_higher_sensitivity_then_lower_threshold():
    y_true = np.array([0, 1, 0, 1])
    y_prob = np.array([0.2, 0.4, 0.6, 0.8])
    # thr in (0.2, 0.4]: sens 1, spec 0.5 (J 0.5); thr in (0.6, 0.8]: sens 0.5, spec 1 (J 0.5)
    chosen = select_threshold(y_true, y_prob, "youden")
    assert (chosen.thr, chosen.sensitivity, chosen.specificity) == (0.201, 1.0, 0.5)


def test_sens_atleast_picks_best_specificity_among_sensitive_thresholds():
    y_true = np.array([0, 0, 0, 1, 1, 1, 1])
    y_prob = np.array([0.1, 0.3, 0.5, 0.35, 0.6, 0.7, 0.8])
    chosen = select_threshold(y_true, y_prob, "sens_atleast", sens_min=0.75)
    assert (chosen.thr, chosen.tp, chosen.fp) == (0.501, 3, 0)
    chosen = select_threshold(y_true, y_prob, "sens_atleast", sens_min=1.0)
    assert (chosen.thr, chosen.tp, chosen.fp) == (0.301, 4, 1)


def test_sens_atleast_unreachable_raises_with_the_best_sensitivity():
    y_true = np.array([0, 1, 1])
    y_prob = np.array([0.5, 0.9, 0.9995])  # 0.9995 is above every grid value, 0.9 is not
    with pytest.raises(ThresholdError, match=r"sensitivity >= 1.0 .*best sensitivity on the grid is 0.0000"):
        select_threshold(np.array([0, 1]), np.array([0.5, 0.0]), "sens_atleast", sens_min=1.0)
    assert select_threshold(y_true, y_prob, "sens_atleast", sens_min=1.0).thr == 0.501
    with pytest.raises(ThresholdError, match=r"best sensitivity on the grid is 0.0000 at thr 0.001"):
        select_threshold(np.array([0, 1]), np.array([0.5, 0.0005]), "sens_atleast", sens_min=0.5)


def test_unknown_mode_and_bad_inputs_raise():
    with pytest.raises(ThresholdError, match=r"unknown threshold mode 'auc' \(known: youden, f1, sens_atleast\)"):
        select_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "auc")
    assert issubclass(ThresholdError, ValueError) and issubclass(MetricsError, ValueError)
    with pytest.raises(MetricsError, match="only 0 and 1"):
        binary_metrics(np.array([0, 2]), np.array([0.2, 0.8]), 0.5)
    with pytest.raises(MetricsError, match="equally long"):
        binary_metrics(np.array([0, 1]), np.array([0.2]), 0.5)
    with pytest.raises(MetricsError, match="finite"):
        select_threshold(np.array([0, 1]), np.array([0.2, np.nan]), "f1")
