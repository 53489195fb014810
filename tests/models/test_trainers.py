"""Candidates of every algorithm: quality, determinism, log-odds contributions, native save/load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from models.trainers import (
    ALGORITHMS,
    Candidate,
    FeatureError,
    TrainConfig,
    TrainError,
    catboost_params,
    lightgbm_params,
    train_candidate,
    xgboost_params,
)

GBMS = ("lightgbm", "xgboost", "catboost")
N_ROWS, N_FEATURES, NAN_SHARE = 5_000, 8, 0.05


def make_data(n: int = N_ROWS, k: int = N_FEATURES, seed: int = 11):
    """A logistic PD world: y ~ Bernoulli(sigmoid(X w - 1.5)), then 5 % of the features blanked."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    w = np.linspace(1.2, -0.8, k)
    y = (rng.random(n) < expit(X @ w - 1.5)).astype(int)
    X[rng.random((n, k)) < NAN_SHARE] = np.nan
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(k)])
    cut = int(n * 0.8)
    return frame.iloc[:cut], y[:cut], frame.iloc[cut:], y[cut:]


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture(scope="module")
def trained(data):
    """Two candidates per algorithm trained from the same seed (for the determinism check)."""
    X_tr, y_tr, X_va, y_va = data
    cfg = TrainConfig(num_boost_round=150)
    return {algo: (train_candidate(algo, X_tr, y_tr, X_va, y_va, cfg),
                   train_candidate(algo, X_tr, y_tr, X_va, y_va, cfg)) for algo in ALGORITHMS}


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_candidate_separates_defaulters(algo, trained, data):
    cand, _ = trained[algo]
    _, _, X_va, y_va = data
    pd_ = cand.predict_pd(X_va)
    assert pd_.shape == (len(X_va),)
    assert np.all((pd_ >= 0) & (pd_ <= 1))
    assert roc_auc_score(y_va, pd_) > 0.75
    assert cand.algo == algo and cand.feature_names == tuple(X_va.columns)
    json.dumps(cand.params)  # JSON-able
    if algo in GBMS:
        assert 1 <= cand.best_iteration <= 150
    else:
        assert cand.best_iteration is None


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_same_seed_same_predictions(algo, trained, data):
    first, second = trained[algo]
    X_va = data[2]
    assert first.best_iteration == second.best_iteration
    np.testing.assert_array_equal(first.predict_pd(X_va), second.predict_pd(X_va))
    np.testing.assert_array_equal(first.contributions(X_va), second.contributions(X_va))


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_contributions_sum_with_bias_to_log_odds(algo, trained, data):
    cand, _ = trained[algo]
    X_va = data[2]
    contrib = cand.contributions(X_va)
    full = cand.contributions_with_bias(X_va)
    assert contrib.shape == (len(X_va), N_FEATURES)
    np.testing.assert_array_equal(full[:, :-1], contrib)
    bias = full[:, -1]
    assert np.ptp(bias) == 0  # one expected value for every row
    raw = cand.log_odds(X_va)  # the library's own raw-score prediction, not the SHAP path
    tol = 1e-5 if algo == "xgboost" else 1e-9  # XGBoost explains in float32
    np.testing.assert_allclose(contrib.sum(axis=1) + bias, raw, atol=tol)
    np.testing.assert_allclose(cand.predict_pd(X_va), expit(raw), rtol=0, atol=1e-12)
    pd_, contrib_again = cand.explain(X_va)
    np.testing.assert_array_equal(contrib_again, contrib)
    np.testing.assert_allclose(pd_, cand.predict_pd(X_va), atol=1e-6)


def test_scorecard_contribution_is_coefficient_times_woe(trained, data):
    cand, _ = trained["scorecard"]
    X_va = data[2]
    woe = cand.model.woe(X_va)
    np.testing.assert_allclose(cand.contributions(X_va), woe * cand.model.logit.coef_.ravel())
    # a missing value is its own bin: rows missing x0 share one contribution, the empirical WOE
    missing = cand.contributions(X_va)[X_va["x0"].isna().to_numpy(), 0]
    assert missing.size > 0 and np.ptp(missing) == 0


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_save_load_round_trip(algo, trained, data, tmp_path):
    cand, _ = trained[algo]
    X_va = data[2]
    written = cand.save(tmp_path / algo)
    assert sorted(p.rsplit("/", 1)[-1] for p in written) == sorted(
        ["candidate.json", {"lightgbm": "model.txt", "xgboost": "model.ubj",
                            "catboost": "model.cbm", "scorecard": "scorecard.joblib"}[algo]])
    manifest = json.loads((tmp_path / algo / "candidate.json").read_text())
    assert manifest["algo"] == algo and manifest["feature_names"] == list(X_va.columns)
    loaded = Candidate.load(tmp_path / algo)
    assert (loaded.algo, loaded.best_iteration, loaded.feature_names, loaded.params) == (
        cand.algo, cand.best_iteration, cand.feature_names, cand.params)
    np.testing.assert_array_equal(loaded.predict_pd(X_va), cand.predict_pd(X_va))
    np.testing.assert_array_equal(loaded.contributions(X_va), cand.contributions(X_va))


def test_load_refuses_a_directory_without_manifest(tmp_path):
    with pytest.raises(TrainError, match="no candidate.json"):
        Candidate.load(tmp_path)


@pytest.mark.parametrize("algo", ("lightgbm", "scorecard"))
def test_scoring_takes_column_order_from_the_model(algo, trained, data):
    cand, _ = trained[algo]
    X_va = data[2]
    shuffled = X_va[list(reversed(X_va.columns))].assign(extra=1.0)
    np.testing.assert_array_equal(cand.predict_pd(shuffled), cand.predict_pd(X_va))
    with pytest.raises(FeatureError, match=r"lacks 2 of the model's 8 feature columns: \['x1', 'x5'\]"):
        cand.predict_pd(X_va.drop(columns=["x5", "x1"]))
    with pytest.raises(FeatureError, match="must be numeric"):
        cand.predict_pd(X_va.assign(x2="a"))


@pytest.mark.parametrize("algo", GBMS)
def test_without_early_stopping_all_rounds_are_used(algo, data):
    X_tr, y_tr, X_va, y_va = data
    cand = train_candidate(algo, X_tr, y_tr, X_va, y_va,
                           TrainConfig(num_boost_round=30, early_stopping_rounds=None))
    assert cand.best_iteration == 30


def test_native_params_are_explicit_and_seeded():
    cfg = TrainConfig(seed=3, threads=2)
    lgb, xgb, cb = lightgbm_params(cfg), xgboost_params(cfg), catboost_params(cfg)
    assert (lgb["num_threads"], lgb["seed"], lgb["deterministic"], lgb["verbosity"]) == (2, 3, True, -1)
    assert (lgb["objective"], lgb["num_iterations"], lgb["early_stopping_round"]) == ("binary", 400, 40)
    assert (xgb["nthread"], xgb["seed"], xgb["objective"], xgb["verbosity"]) == (2, 3, "binary:logistic", 0)
    assert (cb["thread_count"], cb["random_seed"], cb["loss_function"]) == (2, 3, "Logloss")
    assert "early_stopping_round" not in lightgbm_params(TrainConfig(early_stopping_rounds=None))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("threads", 0, r"threads must be >= 1, got 0"),
    ("threads", 1.5, r"threads must be an integer, got 1.5"),
    ("seed", -1, r"seed must be in \[0, 2147483647\], got -1"),
    ("num_boost_round", True, r"num_boost_round must be an integer, got True"),
    ("learning_rate", 0.0, r"learning_rate must be in \(0.0, 1.0\], got 0.0"),
    ("early_stopping_rounds", 0, r"early_stopping_rounds must be >= 1, got 0"),
    ("num_leaves", 1, r"num_leaves must be in \[2, 131072\], got 1"),
    ("max_depth", 17, r"max_depth must be in \[1, 16\], got 17"),
    ("subsample", 1.2, r"subsample must be in \(0.0, 1.0\], got 1.2"),
    ("colsample", float("nan"), r"colsample must be in \(0.0, 1.0\], got nan"),
    ("l2", -0.1, r"l2 must be in \[0.0, 1000000.0\], got -0.1"),
])
def test_config_is_validated(field, value, message):
    with pytest.raises(TrainError, match=message):
        TrainConfig(**{field: value})


def test_training_inputs_are_checked(data):
    X_tr, y_tr, X_va, y_va = data
    cfg = TrainConfig(num_boost_round=5)
    with pytest.raises(TrainError, match="unknown algorithm 'glm'"):
        train_candidate("glm", X_tr, y_tr, X_va, y_va, cfg)
    with pytest.raises(TrainError, match="y_train must be 0/1"):
        train_candidate("lightgbm", X_tr, y_tr * 2, X_va, y_va, cfg)
    with pytest.raises(TrainError, match="y_valid must contain both classes"):
        train_candidate("lightgbm", X_tr, y_tr, X_va, np.zeros_like(y_va), cfg)
    with pytest.raises(TrainError, match="y_train has 10 values for 4000 feature rows"):
        train_candidate("lightgbm", X_tr, y_tr[:10], X_va, y_va, cfg)
    with pytest.raises(TrainError, match="X_valid columns"):
        train_candidate("lightgbm", X_tr, y_tr, X_va.rename(columns={"x0": "z"}), y_va, cfg)
    with pytest.raises(TrainError, match=r"must be numeric .* \['x3 \(object\)'\]"):
        train_candidate("lightgbm", X_tr.assign(x3=X_tr["x3"].astype(object)), y_tr, X_va, y_va, cfg)
    with pytest.raises(TrainError, match="scorecard needs l2 > 0"):
        train_candidate("scorecard", X_tr, y_tr, X_va, y_va, TrainConfig(l2=0.0))
