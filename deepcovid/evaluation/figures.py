"""Matplotlib figures of the evaluation (PNG, Agg canvas; no pyplot, no global state).

Deterministic: the same inputs give the same bytes (no timestamps; the ``Software`` PNG
field is left out), so the figures can be pipeline outputs compared against dvc.lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepcovid.evaluation.labels import CLASS_NAMES, GROUP_LABELS, group_order

DPI = 110
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GROUP_COLORS = {"covid": "#d62728", "normal": "#1f77b4", "other-disease": "#ff7f0e", "non-covid": "#1f77b4"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


# --------------------------------------------------------------------------- single model


def score_histograms(scores, groups, threshold: float, path, bins: int = 20, title: str = "") -> Path:
    """One panel per group (COVID-19, normal, other disease): counts of predicted COVID-19 probability.

    The paper's Figs. 6-9; the dashed line is the operating threshold, and each panel says how
    many images of the group are at or above it (predicted COVID-19).
    """
    s, g = np.asarray(scores, dtype=float), np.asarray(groups)
    order = [grp for grp in group_order(g) if (g == grp).any()]
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)  # the bins of plots/scores.csv
    fig = _figure(7.0, 2.2 * len(order) + 0.8)
    axes = fig.subplots(len(order), 1, sharex=True, squeeze=False)[:, 0]
    for ax, grp in zip(axes, order):
        vals = s[g == grp]
        ax.hist(vals, bins=edges, color=GROUP_COLORS.get(grp, "#7f7f7f"), edgecolor="white")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
        above = int(np.sum(vals >= threshold))
        label = GROUP_LABELS.get(grp, grp)
        ax.set_title(
            f"{label} (n = {vals.size}): {above} at or above the threshold, {vals.size - above} below", fontsize=10
        )
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(0.0, 1.0)
    axes[-1].set_xlabel(f"predicted COVID-19 probability (dashed: threshold {threshold:.3g})")
    fig.suptitle(title or "Test-set score distribution by group", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def confusion_matrix(counts: dict, threshold: float, path, title: str = "") -> Path:
    """2x2 confusion matrix (rows: actual, columns: predicted) with counts and row percentages."""
    cells = np.array([[counts["tp"], counts["fn"]], [counts["fp"], counts["tn"]]], dtype=np.int64)
    names = [CLASS_NAMES[1], CLASS_NAMES[0]]
    fig = _figure(5.0, 4.4)
    ax = fig.add_subplot()
    ax.imshow(cells / np.maximum(cells.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        row = max(int(cells[i].sum()), 1)
        for j in range(2):
            share = cells[i, j] / row
            ax.text(
                j,
                i,
                f"{cells[i, j]}\n({100 * share:.1f}%)",
                ha="center",
                va="center",
                color="white" if share > 0.5 else "black",
                fontsize=12,
            )
    ax.set_xticks([0, 1], [f"predicted {n}" for n in names])
    ax.set_yticks([0, 1], [f"actual {n}" for n in names], rotation=90, va="center")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("actual class")
    n_pos, n_neg = cells[0].sum(), cells[1].sum()
    sens = cells[0, 0] / n_pos if n_pos else float("nan")
    spec = cells[1, 1] / n_neg if n_neg else float("nan")
    ax.set_title(
        title or f"Test confusion matrix at threshold {threshold:.3g}\nsensitivity {sens:.3f}, specificity {spec:.3f}",
        fontsize=10,
    )
    fig.tight_layout()
    return save(fig, path)


def _finish_unit_square(fig: Figure, ax, path, xlabel: str, ylabel: str, title: str, legend: str) -> Path:
    """Axes of a curve in the unit square (ROC, PR): limits, labels, legend, grid; save."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def roc_curves(curves: Sequence[dict], path, title: str = "ROC curve (test)") -> Path:
    """Overlay of ROC curves; each dict: ``label, fpr, tpr`` and optional ``point`` = (fpr, tpr)."""
    fig = _figure(5.5, 5.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="chance")
    for i, c in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        ax.plot(c["fpr"], c["tpr"], color=color, linewidth=1.6, label=c["label"], drawstyle="default")
        if c.get("point") is not None:
            ax.plot([c["point"][0]], [c["point"][1]], marker="o", color=color, markersize=6)
    return _finish_unit_square(
        fig, ax, path, "false positive rate (1 - specificity)", "true positive rate (sensitivity)", title, "lower right"
    )


def pr_curves(
    curves: Sequence[dict], path, prevalence: float | None = None, title: str = "Precision-recall curve (test)"
) -> Path:
    """Overlay of precision-recall curves; each dict: ``label, recall, precision``."""
    fig = _figure(5.5, 5.2)
    ax = fig.add_subplot()
    if prevalence is not None:
        ax.axhline(prevalence, color="#999999", linestyle=":", linewidth=1, label=f"prevalence {prevalence:.3f}")
    for i, c in enumerate(curves):
        ax.plot(
            c["recall"],
            c["precision"],
            color=COLORS[i % len(COLORS)],
            linewidth=1.6,
            label=c["label"],
            drawstyle="steps-post",
        )
    return _finish_unit_square(
        fig, ax, path, "recall (sensitivity)", "precision (positive predictive value)", title, "lower left"
    )


def reliability_diagram(table: pd.DataFrame, ece: float, path, title: str = "") -> Path:
    """Reliability diagram (fraction COVID-19 against mean predicted probability per bin) and bin counts.

    ``table``: the non-empty bins of :func:`deepcovid.evaluation.calibration.reliability_table`.
    """
    fig = _figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="perfect calibration")
    top.plot(table["mean_predicted"], table["fraction_positive"], marker="o", color=COLORS[0], label="model")
    top.set_ylabel("observed fraction COVID-19")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="upper left", fontsize=8)
    top.grid(alpha=0.3)
    top.set_title(title or f"Reliability diagram (test), ECE = {ece:.4f}", fontsize=10)
    widths = (table["bin_high"] - table["bin_low"]).to_numpy()
    bottom.bar(table["bin_low"], table["count"], width=widths, align="edge", color=COLORS[0], edgecolor="white")
    for x, w, n in zip(table["bin_low"], widths, table["count"]):
        bottom.text(x + w / 2, n, str(int(n)), ha="center", va="bottom", fontsize=7)
    bottom.set_ylabel("images")
    bottom.set_xlabel("predicted COVID-19 probability (top: bin means; bottom: bins)")
    bottom.set_xlim(0.0, 1.0)
    fig.tight_layout()
    return save(fig, path)


def evaluation_figures(result, out_dir) -> list[Path]:
    """All figures of one evaluation (:class:`deepcovid.evaluation.evaluate.EvalResult`) into ``out_dir``."""
    out = Path(out_dir)
    t = result.details["test"]
    thr = t["threshold"]
    chosen = result.details["settings"]["operating_point_chosen_on"]
    where = {"val": "chosen on validation", "given": "the model's operating point"}.get(
        chosen, "chosen on TEST (paper-style fallback)"
    )
    test = result.test
    point = (t["fp"] / t["n_neg"], t["sensitivity"])
    return [
        score_histograms(
            test["score"],
            test["group"],
            thr,
            out / "score_histograms.png",
            bins=len(result.scores),
            title=f"Predicted COVID-19 probability on the test set\nthreshold {thr:.3g} ({where})",
        ),
        confusion_matrix(
            t,
            thr,
            out / "confusion_matrix.png",
            title=f"Test confusion matrix, threshold {thr:.3g} ({where})\n"
            f"sensitivity {t['sensitivity']:.3f}, specificity {t['specificity']:.3f}",
        ),
        roc_curves(
            [
                {
                    "label": f"AUC {t['auc']:.3f} [{t['auc_low']:.3f}, {t['auc_high']:.3f}]",
                    "fpr": result.roc["fpr"],
                    "tpr": result.roc["tpr"],
                    "point": point,
                }
            ],
            out / "roc.png",
            title="ROC curve (test); dot: operating point",
        ),
        pr_curves(
            [{"label": f"AP {t['ap']:.3f}", "recall": result.pr["recall"], "precision": result.pr["precision"]}],
            out / "pr.png",
            prevalence=t["prevalence"],
        ),
        reliability_diagram(result.calibration, t["ece"], out / "reliability.png"),
    ]
