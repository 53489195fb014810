"""The figures of a validation pack, each written to a PNG file.

Every function takes the data and the path to write, draws with matplotlib's Agg backend (set here,
before pyplot is imported, so that no display is needed on a worker), writes the PNG, closes the
figure and returns the path. Input checks are those of ``models.metrics`` and raise
``MetricError``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from models import metrics  # noqa: E402

DPI = 110
_BAND_COLOURS = {"stable": "#4c9a2a", "investigate": "#e0a100", "significant": "#c0392b"}


def _save(fig, path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def roc_ks(y, p, path) -> Path:
    """ROC curve with its AUC (left) and the KS curves, TPR and FPR by score, at the KS point (right)."""
    curve = metrics.roc_points(y, p)
    area = metrics.auc(y, p)
    gap = (curve["tpr"] - curve["fpr"]).abs()
    at = int(gap.to_numpy().argmax())

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(curve["fpr"], curve["tpr"], color="#1f4e79", lw=1.8, label=f"model (AUC {area:.3f})")
    left.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="random")
    left.set(
        xlabel="false positive rate (goods flagged)",
        ylabel="true positive rate (bads caught)",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    left.legend(loc="lower right")

    bad_share = float(np.mean(np.asarray(y, dtype=float)))
    share = curve["tpr"] * bad_share + curve["fpr"] * (1.0 - bad_share)  # population flagged
    right.plot(share, curve["tpr"], color="#c0392b", lw=1.6, label="bads (TPR)")
    right.plot(share, curve["fpr"], color="#1f4e79", lw=1.6, label="goods (FPR)")
    right.vlines(
        share.iloc[at],
        curve["fpr"].iloc[at],
        curve["tpr"].iloc[at],
        color="black",
        lw=1.2,
        label=f"KS {gap.iloc[at]:.3f}",
    )
    right.set(
        xlabel="share of population flagged, riskiest first",
        ylabel="cumulative share",
        title="KS",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    right.legend(loc="lower right")
    return _save(fig, path)


def calibration(y, p, path, bins: int = 10) -> Path:
    """Observed bad rate against mean PD by quantile bin of the PD, with the diagonal."""
    table = metrics.calibration_table(y, p, bins=bins)
    summary = metrics.calibration_summary(y, p, bins=bins)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    top = float(max(table["mean_pd"].max(), table["bad_rate"].max())) * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--", label="perfect calibration")
    ax.plot(table["mean_pd"], table["bad_rate"], marker="o", color="#1f4e79", lw=1.4, label="quantile bins")
    ax.set(
        xlabel="mean predicted PD",
        ylabel="observed bad rate",
        xlim=(0, top),
        ylim=(0, top),
        title=f"Calibration (ratio {summary['ratio']:.2f}, ECE {summary['ece']:.3f})",
    )
    ax.legend(loc="upper left")
    return _save(fig, path)


def psi_bars(psi: pd.Series, path) -> Path:
    """One bar per feature (or score), coloured by band, with the 0.10 and 0.25 thresholds."""
    if len(psi) == 0:
        raise metrics.MetricError("psi_bars needs at least one PSI value, got an empty series")
    values = psi.astype(float).sort_values(kind="mergesort")
    colours = [_BAND_COLOURS[metrics.psi_band(v)] for v in values]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.32 * len(values) + 1.2)))
    ax.barh([str(i) for i in values.index], values.to_numpy(), color=colours)
    ax.axvline(
        metrics.PSI_INVESTIGATE,
        color=_BAND_COLOURS["investigate"],
        ls="--",
        lw=1,
        label=f"investigate ({metrics.PSI_INVESTIGATE:.2f})",
    )
    ax.axvline(
        metrics.PSI_SIGNIFICANT,
        color=_BAND_COLOURS["significant"],
        ls="--",
        lw=1,
        label=f"significant ({metrics.PSI_SIGNIFICANT:.2f})",
    )
    ax.set(
        xlabel="PSI",
        title="Population stability",
        xlim=(0, max(float(values.max()), metrics.PSI_SIGNIFICANT) * 1.15),
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def shap_summary(contributions: np.ndarray, feature_names, path, max_features: int = 20) -> Path:
    """Mean |contribution| (log-odds) per feature, the ``max_features`` largest, largest on top.

    ``contributions`` are the models' native per-row SHAP values (see
    ``metrics.mean_abs_contribution``; a trailing bias column is dropped).
    """
    if max_features < 1:
        raise metrics.MetricError(f"max_features must be >= 1, got {max_features}")
    importance = metrics.mean_abs_contribution(contributions, feature_names).head(max_features)
    shown = importance.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.32 * len(shown) + 1.2)))
    ax.barh(list(shown.index), shown.to_numpy(), color="#1f4e79")
    ax.set(
        xlabel="mean |contribution| (log-odds)",
        title=f"Feature contributions (top {len(shown)} of {len(feature_names)})",
    )
    return _save(fig, path)
