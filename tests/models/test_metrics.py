"""Metrics against scikit-learn and hand computations, and their failure paths."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

from models import metrics
from models.metrics import MetricError


def sk_ks(y, p) -> float:
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    return float(np.max(np.abs(tpr - fpr)))


KNOWN = {
    "separable": ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),
    "one swap": ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
    "all tied": ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]),
    "ties across classes": ([0, 1, 1, 0, 1, 0, 0], [0.2, 0.2, 0.7, 0.7, 0.7, 0.1, 0.2]),
    "inverted": ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]),
    "bools and series": (pd.Series([True, False, True, False, False]), pd.Series([0.9, 0.3, 0.3, 0.2, 0.6])),
}


@pytest.mark.parametrize(("y", "p"), KNOWN.values(), ids=KNOWN.keys())
def test_known_vectors_agree_with_sklearn(y, p):
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics.ks(y, p) == pytest.approx(sk_ks(y, p), abs=1e-12)
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert metrics.gini(y, p) == pytest.approx(2 * roc_auc_score(y, p) - 1, abs=1e-12)


@pytest.mark.parametrize(
    ("y", "p", "auc", "ks"),
    [
        # one bad-good pair out of order of the four pairs: AUC 3/4; best cut at 0.8: TPR 1/2, FPR 0
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75, 0.5),
        # everything tied: each pair counts one half, and no threshold separates anything
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5, 0.0),
        # bad 0.5 ties one good (1/2) and beats the other (1): (1/2 + 1) / 2
        ([0, 0, 1], [0.5, 0.1, 0.5], 0.75, 0.5),
    ],
)
def test_hand_computed_auc_and_ks(y, p, auc, ks):
    assert metrics.auc(y, p) == pytest.approx(auc)
    assert metrics.ks(y, p) == pytest.approx(ks)


@st.composite
def labelled_scores(draw):
    n = draw(st.integers(min_value=2, max_value=200))
    y = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n).filter(lambda v: 0 < sum(v) < len(v)))
    # a few distinct levels make ties the rule, not the exception
    levels = draw(st.integers(min_value=1, max_value=12))
    p = draw(st.lists(st.integers(0, levels), min_size=n, max_size=n))
    return np.array(y), np.array(p, dtype=float) / levels


@settings(max_examples=200, deadline=None)
@given(labelled_scores())
def test_random_tied_vectors_agree_with_sklearn(data):
    y, p = data
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-10)
    assert metrics.ks(y, p) == pytest.approx(sk_ks(y, p), abs=1e-10)
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_random_continuous_vectors_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 5_000)
    p = 1 / (1 + np.exp(-(rng.normal(size=5_000) + 1.2 * y - 1)))
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics.ks(y, p) == pytest.approx(sk_ks(y, p), abs=1e-12)
    assert metrics.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_auc_and_ks_accept_scores_outside_unit_interval():
    y = [0, 1, 0, 1]
    points = [-520.0, 610.0, 400.0, 700.0]
    assert metrics.auc(y, points) == pytest.approx(roc_auc_score(y, points))
    assert metrics.ks(y, points) == pytest.approx(sk_ks(y, points))


ERRORS = [
    ("length mismatch", metrics.auc, ([0, 1, 1], [0.1, 0.2]), "same length"),
    ("single class auc", metrics.auc, ([1, 1, 1], [0.1, 0.2, 0.3]), "single class"),
    ("single class ks", metrics.ks, ([0, 0], [0.1, 0.2]), "single class"),
    ("single class gini", metrics.gini, ([0, 0], [0.1, 0.2]), "single class"),
    ("nan score", metrics.auc, ([0, 1], [0.1, np.nan]), "NaN"),
    ("nan score brier", metrics.brier, ([0, 1], [np.nan, 0.3]), "NaN"),
    ("inf score", metrics.ks, ([0, 1], [0.1, np.inf]), "infinite"),
    ("p above one", metrics.brier, ([0, 1], [0.2, 1.5]), r"\[0, 1\]"),
    ("p below zero", metrics.calibration_table, ([0, 1], [-0.1, 0.5]), r"\[0, 1\]"),
    ("p outside evaluate", metrics.evaluate, ([0, 1], [0.2, 3.0]), r"\[0, 1\]"),
    ("label not binary", metrics.auc, ([0, 2], [0.1, 0.2]), "only 0"),
    ("nan label", metrics.brier, ([0, np.nan], [0.1, 0.2]), "only 0"),
    ("empty", metrics.brier, ([], []), "empty"),
    ("two-dimensional", metrics.brier, ([[0, 1]], [[0.1, 0.2]]), "one-dimensional"),
    ("text", metrics.auc, (["a", "b"], [0.1, 0.2]), "numeric"),
    ("no bads calibration", metrics.calibration_summary, ([0, 0, 0], [0.1, 0.2, 0.3]), "no bads"),
    ("bins too few", metrics.calibration_table, ([0, 1], [0.1, 0.2], 1), "bins"),
    ("psi empty actual", metrics.psi, ([0.1, 0.2], []), "empty"),
    ("psi all nan", metrics.psi, ([np.nan, np.nan], [0.1]), "no non-missing"),
    ("psi inf", metrics.psi, ([0.1, 0.2], [np.inf]), "infinite"),
    ("psi band nan", metrics.psi_band, (math.nan,), "PSI"),
    ("psi band negative", metrics.psi_band, (-0.1,), "PSI"),
]


@pytest.mark.parametrize(("func", "args", "match"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_cases_raise_metric_error(func, args, match):
    with pytest.raises(MetricError, match=match):
        func(*args)


def test_metric_error_is_a_value_error():
    assert issubclass(MetricError, ValueError)


# --- PSI ---------------------------------------------------------------------------------------


def test_psi_matches_hand_computation_with_missing_bin():
    expected = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    actual = [1, 2, 6, 7, 8, 9, 10, np.nan]
    # bins=2: the median of expected is 5.5, so the bins are (-inf, 5.5] and (5.5, inf), plus
    # "missing" because actual has a NaN.
    #   expected shares: 5/10 = 0.5, 5/10 = 0.5, 0/10 -> floor 1e-4
    #   actual shares:   2/8 = 0.25, 5/8 = 0.625, 1/8 = 0.125
    #   (0.25 - 0.5)    * ln(0.25 / 0.5)     = -0.25   * -0.693147 = 0.173287
    #   (0.625 - 0.5)   * ln(0.625 / 0.5)    =  0.125  *  0.223144 = 0.027893
    #   (0.125 - 0.0001) * ln(0.125 / 0.0001) = 0.1249 *  7.130899 = 0.890649
    #   PSI = 1.091829
    by_hand = (
        (0.25 - 0.5) * math.log(0.25 / 0.5)
        + (0.625 - 0.5) * math.log(0.625 / 0.5)
        + (0.125 - 1e-4) * math.log(0.125 / 1e-4)
    )
    assert by_hand == pytest.approx(1.091829, abs=1e-6)
    assert metrics.psi(expected, actual, bins=2) == pytest.approx(by_hand, abs=1e-12)

    table = metrics.psi_table(expected, actual, bins=2)
    assert table["bin"].tolist() == ["(-inf, 5.5]", "(5.5, inf]", "missing"]
    assert table["expected_n"].tolist() == [5, 5, 0]
    assert table["actual_n"].tolist() == [2, 5, 1]
    assert table["psi"].tolist() == pytest.approx([0.173287, 0.027893, 0.890649], abs=1e-6)


def test_psi_matches_hand_computation_four_bins_with_an_empty_bin():
    expected = [1, 2, 3, 4, 5, 6, 7, 8]
    actual = [1, 1, 1, 4, 8, 8]
    # bins=4: quantiles of expected at 1/4, 1/2, 3/4 are 2.75, 4.5, 6.25
    #   bins (-inf, 2.75], (2.75, 4.5], (4.5, 6.25], (6.25, inf): expected 2, 2, 2, 2 of 8
    #   actual: 1,1,1 | 4 | (none) | 8,8 -> 3/6, 1/6, 0 -> 1e-4, 2/6
    e, a = [0.25, 0.25, 0.25, 0.25], [0.5, 1 / 6, 1e-4, 1 / 3]
    # terms: 0.25*ln 2 = 0.173287; (-1/12)*ln(2/3) = 0.033789; (-0.2499)*ln(0.0004) = 1.955229;
    #        (1/12)*ln(4/3) = 0.023974; total 2.186278
    by_hand = sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e))
    assert by_hand == pytest.approx(2.186278, abs=1e-6)
    assert metrics.psi(expected, actual, bins=4) == pytest.approx(by_hand, abs=1e-12)


def test_psi_of_a_sample_against_itself_is_zero_and_bands():
    values = np.random.default_rng(1).normal(size=1_000)
    assert metrics.psi(values, values) == 0.0
    assert metrics.psi_band(metrics.psi(values, values)) == "stable"
    shifted = values + 1.0
    assert metrics.psi_band(metrics.psi(values, shifted)) == "significant"


def test_psi_is_symmetric_in_its_terms_and_non_negative():
    rng = np.random.default_rng(2)
    e, a = rng.normal(size=500), rng.normal(0.2, 1.1, size=700)
    table = metrics.psi_table(e, a)
    assert (table["psi"] >= 0).all()
    assert table["expected_n"].sum() == 500 and table["actual_n"].sum() == 700


def test_psi_ties_merge_bins():
    expected = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    table = metrics.psi_table(expected, [0, 1, 2], bins=10)
    # quantiles 0.1..0.7 are all 0, then 0, 0.2, 1.1 -> unique cuts 0, 0.2, 1.1
    assert table["expected_n"].tolist() == [8, 0, 1, 1]


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (0.0, "stable"),
        (0.0999, "stable"),
        (0.10, "investigate"),
        (0.2, "investigate"),
        (0.25, "investigate"),
        (0.2501, "significant"),
        (3.0, "significant"),
    ],
)
def test_psi_band_boundaries(value, band):
    assert metrics.psi_band(value) == band


def test_psi_constants():
    assert metrics.PSI_INVESTIGATE == 0.10
    assert metrics.PSI_SIGNIFICANT == 0.25
    assert metrics.PSI_EPSILON == 1e-4


def test_feature_psi_numeric_and_categorical():
    expected = pd.DataFrame({"x": [1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10], "city": list("aaaaabbbbb")})
    actual = pd.DataFrame({"x": [1.0, 2, 6, 7, 8, 9, 10, None], "city": list("aaaabbb") + ["c"]})
    result = metrics.feature_psi(expected, actual, ["x", "city"], bins=2)
    assert list(result.index) == ["x", "city"]
    assert result.name == "psi"
    assert result["x"] == pytest.approx(metrics.psi(expected["x"], actual["x"], bins=2))
    # city: a 0.5 -> 4/8, b 0.5 -> 3/8, other (c) 1e-4 -> 1/8
    by_hand = 0.0 + (0.375 - 0.5) * math.log(0.375 / 0.5) + (0.125 - 1e-4) * math.log(0.125 / 1e-4)
    assert result["city"] == pytest.approx(by_hand)


def test_feature_psi_missing_column_names_it():
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(MetricError, match=r"actual_df lacks the columns \['y'\]"):
        metrics.feature_psi(frame.assign(y=1.0), frame, ["x", "y"])


# --- calibration -------------------------------------------------------------------------------


def test_calibration_table_and_summary_by_hand():
    y = [0, 0, 1, 0, 1, 1]
    p = [0.1, 0.1, 0.1, 0.6, 0.6, 0.6]
    table = metrics.calibration_table(y, p, bins=2)
    # the median of p is 0.35: bins (-inf, 0.35] and (0.35, inf)
    assert table["n"].tolist() == [3, 3]
    assert table["bads"].tolist() == [1, 2]
    assert table["mean_pd"].tolist() == pytest.approx([0.1, 0.6])
    assert table["bad_rate"].tolist() == pytest.approx([1 / 3, 2 / 3])

    summary = metrics.calibration_summary(y, p, bins=2)
    assert summary["ratio"] == pytest.approx(0.35 / 0.5)
    # ECE = 1/2 * |0.1 - 1/3| + 1/2 * |0.6 - 2/3| = 0.15
    assert summary["ece"] == pytest.approx(0.15)
    # two bins leave no degrees of freedom for Hosmer-Lemeshow
    assert math.isnan(summary["hosmer_lemeshow_p"])


def test_hosmer_lemeshow_matches_its_definition_and_scipy():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.02, 0.4, 2_000)
    y = (rng.uniform(size=2_000) < p * 1.1).astype(int)
    table = metrics.calibration_table(y, p, bins=10)
    expected_bad = table["mean_pd"] * table["n"]
    statistic = float((((table["bads"] - expected_bad) ** 2) / (expected_bad * (1 - table["mean_pd"]))).sum())
    summary = metrics.calibration_summary(y, p, bins=10)
    assert summary["hosmer_lemeshow"] == pytest.approx(statistic)
    assert summary["hosmer_lemeshow_df"] == 8
    assert summary["hosmer_lemeshow_p"] == pytest.approx(chi2.sf(statistic, 8), rel=1e-9)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 8, 15])
@pytest.mark.parametrize("x", [0.0, 0.01, 0.5, 3.0, 8.0, 20.0, 150.0])
def test_chi2_tail_matches_scipy(x, df):
    assert metrics._chi2_sf(x, df) == pytest.approx(chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_perfectly_calibrated_in_the_large():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.3, 50_000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    summary = metrics.calibration_summary(y, p)
    assert summary["ratio"] == pytest.approx(1.0, abs=0.03)
    assert summary["ece"] < 0.01
    assert summary["hosmer_lemeshow_p"] > 0.001


# --- stability and evaluation ------------------------------------------------------------------


def test_stability_by_period():
    y = [0, 1, 0, 1, 0, 0, 1, 1]
    p = [0.1, 0.9, 0.2, 0.3, 0.2, 0.4, 0.8, 0.7]
    period = ["2024-02", "2024-02", "2024-02", "2024-02", "2024-01", "2024-01", "2024-03", "2024-03"]
    table = metrics.stability(y, p, period)
    assert list(table.columns) == ["period", "n", "bads", "bad_rate", "mean_pd", "auc", "ks"]
    table = table.set_index("period")
    assert list(table.index) == ["2024-01", "2024-02", "2024-03"]
    assert table["n"].tolist() == [2, 4, 2]
    assert table["bad_rate"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert table.loc["2024-02", "mean_pd"] == pytest.approx(0.375)
    assert table.loc["2024-02", "auc"] == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.3]))
    assert math.isnan(table.loc["2024-01", "auc"]) and math.isnan(table.loc["2024-03", "auc"])


def test_stability_rejects_missing_or_short_period():
    with pytest.raises(MetricError, match="missing"):
        metrics.stability([0, 1], [0.1, 0.2], ["2024-01", None])
    with pytest.raises(MetricError, match="one value per row"):
        metrics.stability([0, 1], [0.1, 0.2], ["2024-01"])


def test_evaluate_collects_the_metrics():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 1_000)
    p = np.clip(0.3 * y + 0.7 * rng.uniform(size=1_000), 0, 1)
    ev = metrics.evaluate(y, p)
    summary = metrics.calibration_summary(y, p)
    assert ev.as_dict() == {
        "n": 1_000,
        "bad_rate": pytest.approx(y.mean()),
        "auc": pytest.approx(roc_auc_score(y, p)),
        "ks": pytest.approx(sk_ks(y, p)),
        "gini": pytest.approx(2 * roc_auc_score(y, p) - 1),
        "brier": pytest.approx(brier_score_loss(y, p)),
        "calibration_ratio": pytest.approx(summary["ratio"]),
        "ece": pytest.approx(summary["ece"]),
    }
    with pytest.raises(AttributeError):
        ev.auc = 0.9  # frozen


def test_mean_abs_contribution_drops_the_bias_column():
    contributions = np.array([[1.0, -2.0, 5.0], [-3.0, 0.0, 5.0]])  # last column: bias
    importance = metrics.mean_abs_contribution(contributions, ["a", "b"])
    assert importance.to_dict() == {"a": 2.0, "b": 1.0}
    with pytest.raises(MetricError, match="3 columns for 1 feature"):
        metrics.mean_abs_contribution(contributions, ["a"])
