"""Plots of `make report` as PNG bytes: ROC, precision-recall, sensitivity/specificity, confusion, epochs, localisation.

Matplotlib's object API (``Figure``, Agg canvas): no pyplot state, no display, safe in any process. Every
function takes arrays and returns the encoded PNG; the report stage writes the files.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from engine.core.metrics.classification import THRESHOLD_GRID, binary_metrics

MARK = {"color": "crimson", "marker": "o", "markersize": 8, "linestyle": "none"}


def _figure(width: float = 5.0, height: float = 4.0) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _png(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def roc_png(y_true: np.ndarray, y_prob: np.ndarray, thr: float, dpi: int) -> bytes:
    """Returns the ROC curve with the operating point at `thr` marked (positive when y_prob >= thr)."""
    fpr, tpr, _ = roc_curve(y_true, y_prob)
    point = binary_metrics(y_true, y_prob, thr)
    fig, ax = _figure()
    ax.plot(fpr, tpr, color="navy", label=f"ROC (AUC {point.auc:.3f})" if point.auc is not None else "ROC")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.plot([1 - point.specificity], [point.sensitivity], **MARK, label=f"thr {thr:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right")
    return _png(fig, dpi)


def pr_png(y_true: np.ndarray, y_prob: np.ndarray, thr: float, dpi: int) -> bytes:
    """Returns the precision-recall curve with the operating point at `thr` marked."""
    precision, recall, _ = precision_recall_curve(y_true, y_prob)
    point = binary_metrics(y_true, y_prob, thr)
    fig, ax = _figure()
    ax.plot(recall, precision, color="navy", label="precision-recall")
    ax.axhline(float(np.mean(y_true)), color="grey", linestyle=":", label="prevalence")
    ax.plot([point.sensitivity], [point.precision], **MARK, label=f"thr {thr:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    return _png(fig, dpi)


def sens_spec_png(y_true: np.ndarray, y_prob: np.ndarray, thr: float, dpi: int) -> bytes:
    """Returns sensitivity and specificity over `core.metrics.classification.THRESHOLD_GRID` with `thr` marked."""
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=np.float64)
    predicted = y_prob[None, :] >= THRESHOLD_GRID[:, None]
    sens = (predicted & (y_true == 1)).sum(axis=1) / max(int((y_true == 1).sum()), 1)
    spec = (~predicted & (y_true == 0)).sum(axis=1) / max(int((y_true == 0).sum()), 1)
    fig, ax = _figure()
    ax.plot(THRESHOLD_GRID, sens, color="darkorange", label="sensitivity")
    ax.plot(THRESHOLD_GRID, spec, color="teal", label="specificity")
    ax.axvline(thr, color="crimson", linestyle="--", label=f"thr {thr:.3f}")
    ax.set(
        xlabel="threshold (positive when p >= thr)",
        ylabel="rate",
        title="Sensitivity / specificity",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="center left")
    return _png(fig, dpi)


def confusion_png(tn: int, fp: int, fn: int, tp: int, thr: float, dpi: int) -> bytes:
    """Returns the 2 x 2 confusion matrix (rows: truth, columns: prediction at `thr`)."""
    counts = np.array([[tn, fp], [fn, tp]])
    fig, ax = _figure(4.2, 3.8)
    ax.imshow(counts, cmap="Blues")
    for (row, col), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 2 else "black"
        ax.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=14)
    ax.set_xticks([0, 1], ["normal", "abnormal"])
    ax.set_yticks([0, 1], ["normal", "abnormal"])
    ax.set(xlabel=f"predicted (thr {thr:.3f})", ylabel="truth", title="Confusion matrix")
    return _png(fig, dpi)


def epochs_png(epochs: pd.DataFrame, dpi: int) -> bytes:
    """Returns train/val loss and val AUC per epoch (the `epochs` table), the best epoch marked."""
    epochs = epochs.sort_values("epoch")
    fig = Figure(figsize=(8.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, auc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs["epoch"], epochs["train_loss"], marker="o", label="train loss")
    loss_ax.plot(epochs["epoch"], epochs["val_loss"], marker="o", label="val loss")
    loss_ax.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    loss_ax.legend()
    auc_ax.plot(epochs["epoch"], epochs["val_auc"], marker="o", color="navy", label="val AUC")
    best = epochs[epochs["is_best"].fillna(False).astype(bool)]
    if len(best):
        auc_ax.plot(best["epoch"].iloc[-1:], best["val_auc"].iloc[-1:], **MARK, label="best")
    auc_ax.set(xlabel="epoch", ylabel="AUC", title="Validation AUC", ylim=(0, 1.02))
    auc_ax.legend(loc="lower right")
    return _png(fig, dpi)


def localisation_png(table: pd.DataFrame, metrics: tuple[str, ...], dpi: int) -> bytes:
    """Returns grouped bars of `metrics` per method column of `table` (rows: metric, columns: method)."""
    shown = table.loc[[m for m in metrics if m in table.index]].dropna(axis=1, how="all")  # e.g. method `masks`
    fig, ax = _figure(8.0, 3.8)
    width = 0.8 / max(len(shown.columns), 1)
    positions = np.arange(len(shown.index))
    for n, column in enumerate(shown.columns):
        ax.bar(positions + n * width, shown[column].astype(float).fillna(0.0), width, label=str(column))
    ax.set_xticks(positions + width * (len(shown.columns) - 1) / 2, list(shown.index), rotation=20)
    ax.set(ylim=(0, 1.2), ylabel="share", title="Localisation against the Abnormal GT boxes")
    ax.legend(fontsize=8, ncol=min(max(len(shown.columns), 1), 4), loc="upper center")
    return _png(fig, dpi)
