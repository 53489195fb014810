"""Discrimination, calibration and stability metrics of a PD model, in numpy and pandas.

Conventions: ``y`` is the label (1 = bad, 0 = good) and ``p`` the predicted probability of bad.
AUC, KS and Gini only need a score that ranks (a higher score means riskier), so they accept any
finite score, e.g. scorecard points negated; Brier and the calibration measures need
probabilities in [0, 1]. Inputs are checked up front and every failure is a ``MetricError`` whose
message says what was expected and what was got.

Formulas (``DOMAIN.md``, "Formulas and bands"):

- AUC is the Mann-Whitney statistic from ranks, tied scores getting their average rank, so a tie
  between a bad and a good counts one half;
- KS = max |TPR - FPR| over the distinct score thresholds (tied scores are never split);
- Gini = 2 * AUC - 1;
- PSI = sum over bins of (a - e) * ln(a / e); below 0.10 stable, 0.10 to 0.25 investigate, above
  0.25 a significant shift.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

PSI_INVESTIGATE = 0.10
PSI_SIGNIFICANT = 0.25
PSI_EPSILON = 1e-4
"""Share given to an empty bin so that ln(a / e) stays finite (shares are not renormalised)."""

MISSING_BIN = "missing"
OTHER_BIN = "other"


class MetricError(ValueError):
    """A metric cannot be computed from the inputs it was given."""


# ---------------------------------------------------------------------------------------------
# input checks


def _vector(values, name: str) -> np.ndarray:
    """A 1-d float array; NaN stands for a missing value."""
    try:
        if isinstance(values, pd.Series | pd.Index):
            out = values.to_numpy(dtype=float, na_value=np.nan)
        else:
            out = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name} must be numeric, got {type(values).__name__}: {exc}") from exc
    if out.ndim != 1:
        raise MetricError(f"{name} must be one-dimensional, got shape {out.shape}")
    return out


def _labels_scores(y, p, *, probabilities: bool, both_classes: bool) -> tuple[np.ndarray, np.ndarray]:
    y_arr = _vector(y, "y")
    p_arr = _vector(p, "p")
    if len(y_arr) != len(p_arr):
        raise MetricError(
            f"y and p must have the same length, got {len(y_arr)} labels and {len(p_arr)} scores"
        )
    if len(y_arr) == 0:
        raise MetricError("y and p are empty: a metric needs at least one observation")
    bad_labels = ~np.isin(y_arr, (0.0, 1.0))
    if bad_labels.any():
        shown = np.unique(y_arr[bad_labels])[:5].tolist()
        raise MetricError(
            f"y must hold only 0 (good) and 1 (bad), got {bad_labels.sum()} other values, e.g. {shown}"
        )
    if np.isnan(p_arr).any():
        raise MetricError(
            f"p has {int(np.isnan(p_arr).sum())} NaN scores of {len(p_arr)}: score every row first"
        )
    if np.isinf(p_arr).any():
        raise MetricError(f"p has {int(np.isinf(p_arr).sum())} infinite scores of {len(p_arr)}")
    if probabilities:
        outside = (p_arr < 0.0) | (p_arr > 1.0)
        if outside.any():
            raise MetricError(
                f"p must be probabilities in [0, 1], got {int(outside.sum())} outside "
                f"(min {p_arr.min():.6g}, max {p_arr.max():.6g})"
            )
    if both_classes:
        bads = int(y_arr.sum())
        if bads == 0 or bads == len(y_arr):
            raise MetricError(
                f"y must contain both goods and bads, got {bads} bads in {len(y_arr)} rows (a single class)"
            )
    return y_arr, p_arr


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 2:
        raise MetricError(f"bins must be an integer >= 2, got {bins!r}")
    return int(bins)


# ---------------------------------------------------------------------------------------------
# discrimination


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, ties sharing the average of the ranks they span."""
    uniques, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    averages = ends - (counts - 1) / 2.0
    return averages[inverse]


def auc(y, p) -> float:
    """Area under the ROC curve: P(score of a bad > score of a good), ties counting one half.

    Raises:
        MetricError: on a length mismatch, NaN or infinite scores, labels other than 0/1, or a
            single class.
    """
    y_arr, p_arr = _labels_scores(y, p, probabilities=False, both_classes=True)
    ranks = _average_ranks(p_arr)
    n_bad = float(y_arr.sum())
    n_good = float(len(y_arr)) - n_bad
    u = ranks[y_arr == 1.0].sum() - n_bad * (n_bad + 1.0) / 2.0
    return float(u / (n_bad * n_good))


def roc_points(y, p) -> pd.DataFrame:
    """The ROC curve at every distinct score: ``threshold``, ``tpr``, ``fpr``.

    Row ``i`` predicts "bad" for scores >= ``threshold``; the first row (threshold +inf) is the
    origin. Tied scores move together, so each step is one distinct score.
    """
    y_arr, p_arr = _labels_scores(y, p, probabilities=False, both_classes=True)
    order = np.argsort(-p_arr, kind="mergesort")
    scores, labels = p_arr[order], y_arr[order]
    # the last position of each distinct score in descending order
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    bads = np.cumsum(labels)[last]
    goods = (last + 1) - bads
    return pd.DataFrame(
        {
            "threshold": np.r_[np.inf, scores[last]],
            "tpr": np.r_[0.0, bads / labels.sum()],
            "fpr": np.r_[0.0, goods / (len(labels) - labels.sum())],
        }
    )


def ks(y, p) -> float:
    """Kolmogorov-Smirnov statistic: max |TPR - FPR| over the distinct score thresholds.

    Raises:
        MetricError: as ``auc``.
    """
    curve = roc_points(y, p)
    return float(np.abs(curve["tpr"] - curve["fpr"]).max())


def gini(y, p) -> float:
    """Gini (accuracy ratio) = 2 * AUC - 1."""
    return 2.0 * auc(y, p) - 1.0


def brier(y, p) -> float:
    """Mean squared error of the probabilities against the 0/1 labels.

    Raises:
        MetricError: on a length mismatch, NaN scores, labels other than 0/1, or p outside [0, 1].
    """
    y_arr, p_arr = _labels_scores(y, p, probabilities=True, both_classes=False)
    return float(np.mean((p_arr - y_arr) ** 2))


# ---------------------------------------------------------------------------------------------
# calibration


def _quantile_cuts(values: np.ndarray, bins: int) -> np.ndarray:
    """Unique interior cut points at the quantiles k / bins of ``values`` (NaN ignored).

    The bins are (-inf, c1], (c1, c2], ..., (ck, +inf); repeated quantiles (heavy ties) merge
    bins, so there may be fewer than ``bins``.
    """
    finite = values[~np.isnan(values)]
    qs = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    return np.unique(qs)


def _bin_index(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return np.searchsorted(cuts, values, side="left")


def calibration_table(y, p, bins: int = 10) -> pd.DataFrame:
    """Observed against predicted by quantile bins of ``p``.

    Columns: ``lower`` and ``upper`` (the bin is (lower, upper]), ``n``, ``bads``, ``mean_pd``,
    ``bad_rate``; one row per non-empty bin, riskiest last. Heavily tied scores give fewer bins.

    Raises:
        MetricError: on invalid inputs (see ``brier``) or ``bins`` < 2.
    """
    bins = _check_bins(bins)
    y_arr, p_arr = _labels_scores(y, p, probabilities=True, both_classes=False)
    cuts = _quantile_cuts(p_arr, bins)
    index = _bin_index(p_arr, cuts)
    edges = np.r_[-np.inf, cuts, np.inf]
    frame = pd.DataFrame({"bin": index, "y": y_arr, "p": p_arr})
    grouped = frame.groupby("bin", sort=True).agg(n=("y", "size"), bads=("y", "sum"), mean_pd=("p", "mean"))
    grouped["bad_rate"] = grouped["bads"] / grouped["n"]
    grouped["bads"] = grouped["bads"].astype(int)
    grouped.insert(0, "lower", edges[grouped.index.to_numpy()])
    grouped.insert(1, "upper", edges[grouped.index.to_numpy() + 1])
    return grouped.reset_index(drop=True).rename_axis("bin")


def _chi2_sf(x: float, df: int) -> float:
    """Upper tail P(X >= x) of a chi-square with integer ``df`` (Abramowitz & Stegun 26.4.4-5)."""
    if df < 1:
        raise MetricError(f"chi-square degrees of freedom must be >= 1, got {df}")
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 1.0
    if math.isinf(x):
        return 0.0
    half = x / 2.0
    if df % 2 == 0:
        # exp(-x/2) * sum_{i < df/2} (x/2)^i / i!
        terms = [-half + i * math.log(half) - math.lgamma(i + 1) for i in range(df // 2)]
        total = sum(math.exp(t) for t in terms)
    else:
        # erfc(sqrt(x/2)) + 2 phi(sqrt x) * sum_{r=1}^{(df-1)/2} sqrt(x)^(2r-1) / (2r-1)!!
        chi = math.sqrt(x)
        total = math.erfc(chi / math.sqrt(2.0))
        log_phi2 = -half + math.log(2.0) - 0.5 * math.log(2.0 * math.pi)
        for r in range(1, (df - 1) // 2 + 1):
            log_double_factorial = math.lgamma(2 * r + 1) - r * math.log(2.0) - math.lgamma(r + 1)
            total += math.exp(log_phi2 + (2 * r - 1) * math.log(chi) - log_double_factorial)
    return min(1.0, max(0.0, total))


def calibration_summary(y, p, bins: int = 10) -> dict[str, float]:
    """Calibration in the large and across quantile bins of ``p``.

    Returns a dict with ``ratio`` (mean PD / observed bad rate: 1 is calibrated in the large,
    above 1 conservative), ``ece`` (expected calibration error: the n-weighted mean of
    |mean_pd - bad_rate| over the bins of ``calibration_table``), ``hosmer_lemeshow`` (the
    statistic), ``hosmer_lemeshow_df`` (bins - 2) and ``hosmer_lemeshow_p`` (NaN when there are
    fewer than 3 non-empty bins, as with a handful of distinct scores), plus ``mean_pd``,
    ``bad_rate`` and ``bins`` (non-empty bins used).

    Raises:
        MetricError: on invalid inputs (see ``brier``) or when ``y`` has no bads (the ratio is
            undefined).
    """
    y_arr, p_arr = _labels_scores(y, p, probabilities=True, both_classes=False)
    bad_rate = float(y_arr.mean())
    if bad_rate == 0.0:
        raise MetricError(f"calibration ratio is undefined: y has no bads in {len(y_arr)} rows")
    mean_pd = float(p_arr.mean())
    table = calibration_table(y_arr, p_arr, bins=bins)
    weights = table["n"] / table["n"].sum()
    ece = float((weights * (table["mean_pd"] - table["bad_rate"]).abs()).sum())

    expected_bad = table["mean_pd"] * table["n"]
    expected_good = table["n"] - expected_bad
    observed_bad = table["bads"].astype(float)
    observed_good = table["n"] - observed_bad
    statistic = 0.0
    for observed, expected in ((observed_bad, expected_bad), (observed_good, expected_good)):
        for o, e in zip(observed, expected):
            if e > 0.0:
                statistic += (o - e) ** 2 / e
            elif o > 0.0:  # an event the model says is impossible
                statistic = math.inf
    groups = len(table)
    dof = groups - 2
    p_value = _chi2_sf(statistic, dof) if dof >= 1 else math.nan
    return {
        "ratio": mean_pd / bad_rate,
        "ece": ece,
        "hosmer_lemeshow": float(statistic),
        "hosmer_lemeshow_df": dof,
        "hosmer_lemeshow_p": float(p_value),
        "mean_pd": mean_pd,
        "bad_rate": bad_rate,
        "bins": groups,
    }


# ---------------------------------------------------------------------------------------------
# population stability


def _shares_table(
    labels: list, expected_counts: np.ndarray, actual_counts: np.ndarray, n_expected: int, n_actual: int
) -> pd.DataFrame:
    e = expected_counts / n_expected
    a = actual_counts / n_actual
    e_used = np.where(expected_counts == 0, PSI_EPSILON, e)
    a_used = np.where(actual_counts == 0, PSI_EPSILON, a)
    return pd.DataFrame(
        {
            "bin": labels,
            "expected_n": expected_counts.astype(int),
            "actual_n": actual_counts.astype(int),
            "expected_share": e,
            "actual_share": a,
            "psi": (a_used - e_used) * np.log(a_used / e_used),
        }
    )


def psi_table(expected, actual, bins: int = 10) -> pd.DataFrame:
    """The PSI of a numeric variable bin by bin.

    Bins are the unique quantiles k / ``bins`` of ``expected`` (the reference sample, e.g. the
    training or development scores) with -inf and +inf as the outer edges, each bin (lower,
    upper]; missing values (NaN) form their own bin, listed when either sample has any. Shares
    are of all rows including the missing ones. An empty bin gets the share ``PSI_EPSILON``
    (1e-4) instead of 0 so that ln(a / e) stays finite; the shares are not renormalised.

    Columns: ``bin`` (a label such as "(0.1, 0.2]" or "missing"), ``expected_n``, ``actual_n``,
    ``expected_share``, ``actual_share`` and ``psi`` (that bin's term (a - e) * ln(a / e)).

    Raises:
        MetricError: if either sample is empty, ``expected`` has no non-missing values, a value
            is infinite, or ``bins`` < 2.
    """
    bins = _check_bins(bins)
    e_arr = _vector(expected, "expected")
    a_arr = _vector(actual, "actual")
    for name, arr in (("expected", e_arr), ("actual", a_arr)):
        if len(arr) == 0:
            raise MetricError(f"{name} is empty: PSI needs rows in both samples")
        if np.isinf(arr).any():
            raise MetricError(f"{name} has {int(np.isinf(arr).sum())} infinite values")
    if np.isnan(e_arr).all():
        raise MetricError(
            f"expected has no non-missing values ({len(e_arr)} rows, all NaN): no bins to compare"
        )
    cuts = _quantile_cuts(e_arr, bins)
    edges = np.r_[-np.inf, cuts, np.inf]
    n_bins = len(edges) - 1
    labels = [f"({edges[i]:.6g}, {edges[i + 1]:.6g}]" for i in range(n_bins)]

    def counts(arr: np.ndarray) -> np.ndarray:
        present = arr[~np.isnan(arr)]
        return np.bincount(_bin_index(present, cuts), minlength=n_bins).astype(float)

    e_counts, a_counts = counts(e_arr), counts(a_arr)
    e_missing, a_missing = float(np.isnan(e_arr).sum()), float(np.isnan(a_arr).sum())
    if e_missing or a_missing:
        labels.append(MISSING_BIN)
        e_counts = np.r_[e_counts, e_missing]
        a_counts = np.r_[a_counts, a_missing]
    return _shares_table(labels, e_counts, a_counts, len(e_arr), len(a_arr))


def psi(expected, actual, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected``: sum of (a - e) * ln(a / e).

    See ``psi_table`` for the bins, the missing-value bin and the empty-bin floor ``PSI_EPSILON``.
    """
    return float(psi_table(expected, actual, bins=bins)["psi"].sum())


def categorical_psi_table(expected, actual) -> pd.DataFrame:
    """The PSI of a categorical variable: one bin per category seen in ``expected``.

    Categories only in ``actual`` pool into the bin "other", missing values into "missing"; the
    empty-bin floor is ``PSI_EPSILON`` as in ``psi_table``.
    """
    e_ser = pd.Series(expected, dtype=object).reset_index(drop=True)
    a_ser = pd.Series(actual, dtype=object).reset_index(drop=True)
    for name, ser in (("expected", e_ser), ("actual", a_ser)):
        if len(ser) == 0:
            raise MetricError(f"{name} is empty: PSI needs rows in both samples")
    known = sorted(e_ser.dropna().unique().tolist(), key=str)
    known_set = set(known)

    def key(ser: pd.Series) -> pd.Series:
        keyed = ser.map(lambda v: v if v in known_set else OTHER_BIN)
        return keyed.where(ser.notna(), MISSING_BIN)

    e_keys, a_keys = key(e_ser), key(a_ser)
    labels = list(known)
    if (a_keys == OTHER_BIN).any():
        labels.append(OTHER_BIN)
    if (e_keys == MISSING_BIN).any() or (a_keys == MISSING_BIN).any():
        labels.append(MISSING_BIN)
    e_counts = e_keys.value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)
    a_counts = a_keys.value_counts().reindex(labels, fill_value=0).to_numpy(dtype=float)
    return _shares_table([str(v) for v in labels], e_counts, a_counts, len(e_ser), len(a_ser))


def psi_band(value: float) -> str:
    """``"stable"`` below 0.10, ``"investigate"`` from 0.10 to 0.25, ``"significant"`` above 0.25."""
    if value is None or not isinstance(value, int | float | np.number) or math.isnan(value) or value < 0:
        raise MetricError(f"PSI must be a number >= 0, got {value!r}")
    if value < PSI_INVESTIGATE:
        return "stable"
    if value <= PSI_SIGNIFICANT:
        return "investigate"
    return "significant"


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def feature_psi(expected_df: pd.DataFrame, actual_df: pd.DataFrame, columns, bins: int = 10) -> pd.Series:
    """PSI of each column of ``actual_df`` against ``expected_df``, named ``psi``, indexed by column.

    Numeric columns use ``psi_table`` (quantile bins of the expected column), other columns
    (strings, categories, booleans) ``categorical_psi_table``. A numeric column that is missing on
    every expected row has no quantiles: it is compared as missing vs present (two categories),
    so a feature that starts to exist shows up as a shift instead of failing the report.

    Raises:
        MetricError: if a column is missing from either frame, or as ``psi_table``.
    """
    columns = list(columns)
    for name, frame in (("expected_df", expected_df), ("actual_df", actual_df)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise MetricError(f"{name} lacks the columns {missing}; it has {list(frame.columns)}")
    values = {}
    for column in columns:
        e_col, a_col = expected_df[column], actual_df[column]
        try:
            if _is_numeric(e_col) and e_col.isna().all():
                values[column] = float(categorical_psi_table(
                    e_col.notna().map({True: "present", False: "missing"}),
                    a_col.notna().map({True: "present", False: "missing"}))["psi"].sum())
            elif _is_numeric(e_col) and _is_numeric(a_col):
                values[column] = float(psi_table(e_col, a_col, bins=bins)["psi"].sum())
            else:
                values[column] = float(categorical_psi_table(e_col, a_col)["psi"].sum())
        except MetricError as exc:
            raise MetricError(f"column {column!r}: {exc}") from exc
    return pd.Series(values, name="psi", dtype=float).rename_axis("feature")


def stability(y, p, period) -> pd.DataFrame:
    """Performance by period (e.g. the application month "2024-03"), one row per period, sorted.

    Columns: ``period`` (a column, not the index, so the table survives a CSV round trip), ``n``, ``bads``, ``bad_rate``, ``mean_pd``, ``auc`` and ``ks`` (NaN for a period with
    a single class).

    Raises:
        MetricError: on invalid ``y``/``p`` (see ``brier``), or a missing period or a period
            vector of another length.
    """
    y_arr, p_arr = _labels_scores(y, p, probabilities=True, both_classes=False)
    periods = pd.Series(period).reset_index(drop=True)
    if len(periods) != len(y_arr):
        raise MetricError(f"period must have one value per row, got {len(periods)} for {len(y_arr)} rows")
    if periods.isna().any():
        raise MetricError(f"period has {int(periods.isna().sum())} missing values: every row needs a period")
    frame = pd.DataFrame({"period": periods, "y": y_arr, "p": p_arr})
    rows = []
    for key, group in frame.groupby("period", sort=True):
        bads = int(group["y"].sum())
        two_classes = 0 < bads < len(group)
        rows.append(
            {
                "period": key,
                "n": len(group),
                "bads": bads,
                "bad_rate": bads / len(group),
                "mean_pd": float(group["p"].mean()),
                "auc": auc(group["y"].to_numpy(), group["p"].to_numpy()) if two_classes else math.nan,
                "ks": ks(group["y"].to_numpy(), group["p"].to_numpy()) if two_classes else math.nan,
            }
        )
    return pd.DataFrame(rows)


def mean_abs_contribution(contributions: np.ndarray, feature_names) -> pd.Series:
    """Mean |contribution| per feature, largest first, from per-row SHAP contributions.

    ``contributions`` is (rows, features) or (rows, features + 1) with the bias (expected value)
    as the last column, as LightGBM ``pred_contrib``, XGBoost ``pred_contribs`` and CatBoost
    ``ShapValues`` return it; the bias column is dropped.

    Raises:
        MetricError: if the shape does not match ``feature_names``.
    """
    names = [str(n) for n in feature_names]
    values = np.asarray(contributions, dtype=float)
    if values.ndim != 2:
        raise MetricError(f"contributions must be a (rows, features) matrix, got shape {values.shape}")
    if values.shape[1] == len(names) + 1:
        values = values[:, :-1]
    if values.shape[1] != len(names):
        raise MetricError(
            f"contributions have {values.shape[1]} columns for {len(names)} feature names "
            f"(expected {len(names)}, or {len(names) + 1} with the bias last)"
        )
    if values.shape[0] == 0:
        raise MetricError("contributions have no rows")
    if np.isnan(values).any():
        raise MetricError(f"contributions have {int(np.isnan(values).sum())} NaN values")
    importance = pd.Series(np.abs(values).mean(axis=0), index=names, name="mean_abs_contribution")
    return importance.sort_values(ascending=False, kind="mergesort").rename_axis("feature")


# ---------------------------------------------------------------------------------------------
# one evaluation


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one model on one sample (e.g. out-of-time)."""

    n: int
    bad_rate: float
    auc: float
    ks: float
    gini: float
    brier: float
    calibration_ratio: float
    ece: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def evaluate(y, p, bins: int = 10) -> Evaluation:
    """AUC, KS, Gini, Brier and calibration of probabilities ``p`` against labels ``y``.

    Raises:
        MetricError: on invalid inputs (see ``auc`` and ``brier``).
    """
    y_arr, p_arr = _labels_scores(y, p, probabilities=True, both_classes=True)
    area = auc(y_arr, p_arr)
    summary = calibration_summary(y_arr, p_arr, bins=bins)
    return Evaluation(
        n=int(len(y_arr)),
        bad_rate=float(y_arr.mean()),
        auc=area,
        ks=ks(y_arr, p_arr),
        gini=2.0 * area - 1.0,
        brier=brier(y_arr, p_arr),
        calibration_ratio=summary["ratio"],
        ece=summary["ece"],
    )
