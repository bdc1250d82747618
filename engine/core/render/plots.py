"""Plots of `make report` as PNG bytes: ROC, precision-recall, sensitivity/specificity, confusion, epochs, localisation.

Matplotlib's object API (``Figure``, Agg canvas): no pyplot state, no display, safe in any process. Every
function takes arrays and returns the encoded PNG; the report stage writes the files.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from engine.core.metrics.classification import THRESHOLD_GRID, binary_metrics

MARK = {"color": "crimson", "marker": "o", "markersize": 8, "linestyle": "none"}
# The localisation figure's rows: groups of `loc_metrics` methods (names of ``core.metrics.notes.METHODS``) in order,
# each with its bar colour; methods of no group follow as "other".
METHOD_GROUPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("ours", ("peaks", "peaks_confirmed", "peaks_tuned", "peaks_unrefined", "max_box_acc", "cam"), "#8fb3e0"),
    ("spots", ("spots_cam", "spots_cam_contrast", "spots_cam_asym", "spots_cam_site", "spots_full"), "#6fa0d8"),
    ("seed", ("seed_rule", "seed"), "#f2b36b"),
    ("no model", ("body_prior", "centre_prior", "spots_peak", "spots_scan"), "#b8b8b8"),
    ("masks", ("masks_tight", "masks", "segnet_tight", "segnet"), "#9fd4a8"),
)
OTHER_COLOUR = "#c9a8e0"
DEFAULT_COLOUR = "#0b3d91"  # the run's own boxes
CHANCE = {"pointing_game": "pointing_chance"}  # metric -> its chance level: a dotted line in the metric's panel
LOWER_IS_BETTER = ("boxes_on_normal_gt",)  # panels whose title says so (false positives on physiological uptake)
AXIS_LIMITS = (0.05, 0.1, 0.2, 0.5, 1.0)  # a localisation panel's x range: the smallest holding its values
HALO = [patheffects.withStroke(linewidth=2.5, foreground="white")]  # text readable over lines and bars


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


def _method_slots(methods: list[str]) -> list[tuple[str, str | None, str]]:
    """Returns the localisation panels' rows top down: (tick label, method or None for a group's header, colour).

    Methods in METHOD_GROUPS order, each group under its header; methods of no group follow under "other".
    """
    grouped = [(name, [m for m in members if m in methods], colour) for name, members, colour in METHOD_GROUPS]
    known = {m for _, members, _ in grouped for m in members}
    grouped.append(("other", [m for m in methods if m not in known], OTHER_COLOUR))
    slots: list[tuple[str, str | None, str]] = []
    for name, members, colour in grouped:
        if members:
            slots += [(f"{name}:", None, "dimgrey")] + [(m, m, colour) for m in members]
    return slots


def _reference_line(ax: object, value: float, y: float, label: str, style: str, limit: float) -> None:
    """Draws a vertical reference line at `value` over the whole panel (x up to `limit`), labelled at row `y`."""
    ax.axvline(value, color="black", linestyle=style, linewidth=1.2, zorder=3)
    right = value > 0.55 * limit  # the label inside the panel: left of a line on the right half
    x = value - 0.02 * limit if right else value + 0.02 * limit
    ax.text(x, y, label, ha="right" if right else "left", va="center", fontsize=7, style="italic", path_effects=HALO)


def _axis_limit(values: pd.Series) -> float:
    """Returns the panel's x range: the smallest of AXIS_LIMITS holding every value (a value above 1: the largest)."""
    top = float(np.nanmax(values.to_numpy(dtype=np.float64), initial=0.0))
    return next((limit for limit in AXIS_LIMITS if top <= limit), max(top, 1.0))


def localisation_png(
    table: pd.DataFrame, metrics: tuple[str, ...], dpi: int, default: str = "peaks", reference: str = "body_prior"
) -> bytes:
    """Returns one panel per metric of `metrics` found in `table` (rows: metric, columns: method; values in [0, 1]).

    Each panel: a horizontal bar per method with its value printed at the bar's end (methods grouped as in
    METHOD_GROUPS, the same rows in every panel, "–" where a method has no value), the `default` method (the boxes
    the run writes) highlighted, the `reference` method's value (the no-model prior) a dashed line and a metric's
    chance level (CHANCE, when both are in `metrics`) a dotted line instead of a panel of its own; a metric where
    lower is better (LOWER_IS_BETTER: boxes on physiological uptake) says so in its title. No legend. Each
    panel's x axis runs to the smallest of AXIS_LIMITS holding its values, so small shares (box precision) show.
    """
    chances = {m: c for m in metrics if (c := CHANCE.get(m)) in metrics and m in table.index and c in table.index}
    panels = [m for m in metrics if m in table.index and m not in chances.values()]
    shown = table.loc[panels].astype(float).dropna(axis=1, how="all")  # e.g. method `masks`: mask metrics only
    slots = _method_slots([str(c) for c in shown.columns])
    bottom = len(slots) + 1 if chances else len(slots)  # a row under the bars for the chance label
    cols = min(3, max(len(panels), 1))
    rows = -(-max(len(panels), 1) // cols)
    fig = Figure(figsize=(8.0, 0.45 + rows * (0.55 + 0.15 * (bottom + 1))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    fig.suptitle(f"Localisation against the Abnormal GT boxes; highlighted: the run's boxes ({default})")
    if not panels:
        axes[0].text(0.5, 0.5, "no localisation metrics to plot", ha="center", va="center", transform=axes[0].transAxes)
    for ax, metric in zip(axes, panels, strict=False):
        values = shown.loc[metric]
        chance = float(table.loc[chances[metric]].astype(float).median()) if metric in chances else np.nan
        limit = _axis_limit(pd.concat([values, pd.Series([chance])]))
        for y, (_, method, colour) in enumerate(slots, start=1):
            if method is None:
                continue
            value = values.get(method, np.nan)
            if method == default:
                ax.axhspan(y - 0.5, y + 0.5, color="gold", alpha=0.3, linewidth=0, zorder=0)
            if pd.isna(value):
                ax.text(0.01 * limit, y, "–", va="center", fontsize=7, color="grey")
                continue
            ax.barh(y, value, 0.75, color=DEFAULT_COLOUR if method == default else colour, zorder=2)
            weight = "bold" if method == default else "normal"
            label = ax.text(value + 0.015 * limit, y, f"{value:.3f}", va="center", fontsize=7, fontweight=weight)
            label.set(zorder=4, path_effects=HALO)  # over the reference lines
        prior = values.get(reference, np.nan)
        if pd.notna(prior):
            _reference_line(ax, float(prior), 0, f"{reference.replace('_', ' ')} (no model)", "--", limit)
        if np.isfinite(chance):
            _reference_line(ax, chance, bottom, "chance", ":", limit)
        ax.set_title(f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric, fontsize=9)
        ax.set_xlim(0, 1.22 * limit)  # room for the value at the end of a full bar
        ax.set_xticks([0, limit / 2, limit], ["0", f"{limit / 2:g}", f"{limit:g}"], fontsize=7)
        ax.grid(axis="x", color="lightgrey", linewidth=0.5, zorder=1)
        ax.tick_params(axis="y", length=0)
    for ax in axes[len(panels) or 1 :]:
        ax.remove()
    axes[0].set_ylim(bottom + 0.6, -0.6)  # shared: top row 0 holds the prior's label, rows run down
    axes[0].set_yticks(range(1, len(slots) + 1), [label for label, _, _ in slots])
    for ax in axes[::cols]:
        for text, (_, method, _) in zip(ax.get_yticklabels(), slots, strict=True):
            text.set_fontsize(8)
            if method is None:
                text.set(style="italic", color="dimgrey")
            elif method == default:
                text.set(fontweight="bold")
    return _png(fig, dpi)
