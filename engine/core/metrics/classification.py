"""Binary classification metrics at a threshold, and threshold selection on a fixed grid.

A case is predicted positive when ``y_prob >= thr``. Probabilities are compared in float64, so a float32
``y_prob`` gives the same decisions everywhere. Threshold modes follow the original pipeline's ``select_threshold.py``
except that ``sens_atleast`` raises instead of silently falling back to the most specific threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_score, roc_auc_score

THRESHOLD_GRID = np.round(np.arange(1, 1000) / 1000, 3)  # 0.001 .. 0.999, the original pipeline's grid
MODES = ("youden", "f1", "sens_atleast")


class MetricsError(ValueError):
    """Invalid labels or probabilities."""


class ThresholdError(ValueError):
    """No threshold satisfies the selection rule, or the rule is unknown."""


@dataclass(frozen=True)
class BinaryMetrics:
    """Confusion counts and derived metrics of one threshold (sens = recall of class 1, spec = of class 0)."""

    thr: float  # positive when y_prob >= thr
    n: int
    tp: int
    tn: int
    fp: int
    fn: int
    auc: float | None  # ROC AUC of y_prob; None when only one class is present
    accuracy: float
    sensitivity: float  # tp / (tp + fn), 0 when there is no positive
    specificity: float  # tn / (tn + fp), 0 when there is no negative
    precision: float  # tp / (tp + fp), 0 when nothing is predicted positive
    f1: float  # 2 tp / (2 tp + fp + fn), 0 when undefined
    youden_j: float  # sensitivity + specificity - 1

    def to_dict(self) -> dict:
        """Returns the fields as a plain dict (JSON-ready)."""
        return asdict(self)


def _check_inputs(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if len(y_true) == 0 or len(y_true) != len(y_prob):
        raise MetricsError(f"y_true and y_prob must be non-empty and equally long, got {len(y_true)}, {len(y_prob)}")
    if not np.all(np.isin(y_true, (0, 1))):
        raise MetricsError(f"y_true must hold only 0 and 1, got values {np.unique(y_true)[:5].tolist()}")
    if not np.all(np.isfinite(y_prob)):
        raise MetricsError(f"y_prob must be finite, got {int((~np.isfinite(y_prob)).sum())} non-finite values")
    return y_true.astype(np.int64), y_prob


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, thr: float) -> BinaryMetrics:
    """Returns the metrics of predicting ``y_prob >= thr`` against 0/1 labels (counts and F1 via sklearn).

    Args:
        y_true: (n,) labels, 0 normal, 1 abnormal.
        y_prob: (n,) predicted probability of class 1.
        thr: decision threshold.
    """
    y_true, y_prob = _check_inputs(y_true, y_prob)
    y_pred = (y_prob >= float(thr)).astype(np.int64)
    tn, fp, fn, tp = (int(count) for count in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    has_both = 0 < tp + fn < len(y_true)
    sensitivity = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    return BinaryMetrics(
        thr=float(thr),
        n=len(y_true),
        tp=tp,
        tn=tn,
        fp=fp,
        fn=fn,
        auc=float(roc_auc_score(y_true, y_prob)) if has_both else None,
        accuracy=(tp + tn) / len(y_true),
        sensitivity=sensitivity,
        specificity=specificity,
        precision=float(precision_score(y_true, y_pred, labels=[0, 1], zero_division=0)),
        f1=float(f1_score(y_true, y_pred, labels=[0, 1], zero_division=0)),
        youden_j=sensitivity + specificity - 1.0,
    )


def _grid_counts(y_true: np.ndarray, y_prob: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Returns (tp, fp, n_pos, n_neg) for every threshold of the grid, by sorting once (no loop)."""
    positives, negatives = np.sort(y_prob[y_true == 1]), np.sort(y_prob[y_true == 0])
    # searchsorted(side="left") counts probabilities < thr, the rest are predicted positive.
    tp = len(positives) - np.searchsorted(positives, grid, side="left")
    fp = len(negatives) - np.searchsorted(negatives, grid, side="left")
    return tp.astype(np.int64), fp.astype(np.int64), len(positives), len(negatives)


def _rank_keys(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> dict[str, np.ndarray]:
    """Returns exact integer/float keys per threshold; equal metrics give equal keys (no rounding ties)."""
    tn = n_neg - fp
    pos_den, neg_den = max(n_pos, 1), max(n_neg, 1)  # sens (spec) is 0 without positives (negatives)
    f1_den = 2 * tp + fp + (n_pos - tp)
    return {
        "sens": tp,  # over the fixed denominator n_pos
        "spec": tn,  # over the fixed denominator n_neg
        "youden": tp * neg_den + tn * pos_den,  # (J + 1) * n_pos * n_neg, exact in int64
        # Distinct F1 values differ by >= 1 / (4 n^2), far above float64 rounding for n < 1e7.
        "f1": np.divide(2.0 * tp, f1_den, out=np.zeros(len(tp)), where=f1_den > 0),
        "sens_float": tp / pos_den,
    }


def _thresholds_reaching(sensitivity: np.ndarray, sens_min: float, grid: np.ndarray) -> np.ndarray:
    """Returns grid indices with sensitivity >= sens_min; raises ThresholdError (no fallback) when none."""
    eligible = np.flatnonzero(sensitivity >= sens_min)
    if len(eligible) == 0:
        best = int(np.argmax(sensitivity))
        raise ThresholdError(
            f"no threshold reaches sensitivity >= {sens_min} (mode sens_atleast): best sensitivity on the grid "
            f"is {sensitivity[best]:.4f} at thr {grid[best]:.3f}"
        )
    return eligible


def select_threshold(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    mode: str,
    sens_min: float = 0.85,
    grid: np.ndarray = THRESHOLD_GRID,
) -> BinaryMetrics:
    """Returns the metrics at the grid threshold chosen by ``mode``, vectorised over the grid.

    Modes (the original pipeline's): ``youden`` maximises sens + spec - 1, then sens, then spec, then the lower
    threshold; ``f1`` maximises F1 with the same ties; ``sens_atleast`` keeps thresholds with
    sens >= sens_min and maximises spec, then sens, then the lower threshold.

    Raises:
        ThresholdError: unknown mode, or no threshold reaches sens_min (the message gives the best
            sensitivity reached).
    """
    if mode not in MODES:
        raise ThresholdError(f"unknown threshold mode {mode!r} (known: {', '.join(MODES)})")
    y_true, y_prob = _check_inputs(y_true, y_prob)
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    if len(grid) == 0 or not np.all(np.isfinite(grid)):
        raise ThresholdError(f"threshold grid must be non-empty and finite, got {len(grid)} values")
    keys = _rank_keys(*_grid_counts(y_true, y_prob, grid))
    lower_thr = -grid  # larger key = lower threshold
    if mode == "sens_atleast":
        candidates = _thresholds_reaching(keys["sens_float"], sens_min, grid)
        order = (keys["spec"], keys["sens"], lower_thr)
    else:
        candidates = np.arange(len(grid))
        order = (keys[mode], keys["sens"], keys["spec"], lower_thr)
    # np.lexsort sorts by the last key first: pass the keys least significant first, take the last row.
    best = candidates[np.lexsort(tuple(key[candidates] for key in reversed(order)))[-1]]
    return binary_metrics(y_true, y_prob, float(grid[best]))
