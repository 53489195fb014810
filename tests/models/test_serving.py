"""PdModel: batch PD with reason codes, logged to a real MLflow store and loaded by alias."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from models.serving import PdModel, log_pd_model, output_columns, pinned_requirements, score_frame
from models.trainers import ALGORITHMS, FeatureError, TrainConfig, train_candidate


def make_data(n: int = 3_000, k: int = 6, seed: int = 5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, k))
    y = (rng.random(n) < expit(X @ np.linspace(1.0, -1.0, k) - 1.5)).astype(int)
    X[rng.random((n, k)) < 0.05] = np.nan
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(k)])
    return frame.iloc[:2_400], y[:2_400], frame.iloc[2_400:], y[2_400:]


class FixedCandidate:
    """Duck-typed candidate with given contributions: pins the reason-code rules exactly."""

    def __init__(self, feature_names, contrib, bias=-2.0):
        self.feature_names = tuple(feature_names)
        self.contrib = np.asarray(contrib, dtype=float)
        self.bias = bias

    def explain(self, X):
        return expit(self.contrib.sum(axis=1) + self.bias), self.contrib


def test_reasons_are_the_largest_positive_contributions():
    names = ["a", "b", "c", "d", "e"]
    contrib = [
        [0.1, 0.5, -0.2, 0.3, 0.2],    # four positives, ranked
        [-1.0, 0.4, -0.1, 0.0, -0.3],  # one positive; zero is not a reason
        [-1.0, -1.0, -1.0, -1.0, -1.0],  # none
        [0.2, 0.2, 0.1, 0.9, 0.2],     # ties keep the model's feature order
    ]
    out = score_frame(FixedCandidate(names, contrib), pd.DataFrame(index=[10, 11, 12, 13]))
    assert list(out.columns) == output_columns()
    assert list(out.index) == [10, 11, 12, 13]
    assert out.loc[10, ["reason_1", "reason_2", "reason_3", "reason_4"]].tolist() == ["b", "d", "e", "a"]
    assert out.loc[10, ["contrib_1", "contrib_2", "contrib_3", "contrib_4"]].tolist() == [0.5, 0.3, 0.2, 0.1]
    assert out.loc[11, ["reason_1", "reason_2", "reason_3", "reason_4"]].tolist() == ["b", None, None, None]
    assert out.loc[11, "contrib_1"] == 0.4 and out.loc[11, ["contrib_2", "contrib_3", "contrib_4"]].isna().all()
    assert out.loc[12, ["reason_1", "reason_2", "reason_3", "reason_4"]].tolist() == [None] * 4
    assert out.loc[13, ["reason_1", "reason_2", "reason_3", "reason_4"]].tolist() == ["d", "a", "b", "e"]
    np.testing.assert_allclose(out["pd"], expit(np.sum(contrib, axis=1) - 2.0))


def test_fewer_features_than_reasons():
    out = score_frame(FixedCandidate(["a", "b"], [[0.3, 0.7]]), pd.DataFrame(index=[0]))
    assert out.loc[0, ["reason_1", "reason_2", "reason_3", "reason_4"]].tolist() == ["b", "a", None, None]
    assert out[["contrib_3", "contrib_4"]].isna().all().all()


def test_score_frame_matches_candidate():
    X_tr, y_tr, X_va, y_va = make_data()
    cand = train_candidate("lightgbm", X_tr, y_tr, X_va, y_va, TrainConfig(num_boost_round=50))
    out = score_frame(cand, X_va)
    np.testing.assert_allclose(out["pd"], cand.predict_pd(X_va), atol=1e-9)
    contrib = cand.contributions(X_va)
    # each row's first reason is its largest positive contribution
    top = contrib.argmax(axis=1)
    has = contrib.max(axis=1) > 0
    expected = np.where(has, np.asarray(cand.feature_names, dtype=object)[top], None)
    assert out["reason_1"].tolist() == expected.tolist()
    assert (out["contrib_1"].dropna() > 0).all()


def test_predict_before_load_context_is_refused():
    with pytest.raises(RuntimeError, match="before load_context"):
        PdModel().predict(None, pd.DataFrame({"a": [1.0]}))


def test_log_pd_model_needs_an_active_run():
    X_tr, y_tr, X_va, y_va = make_data()
    cand = train_candidate("lightgbm", X_tr, y_tr, X_va, y_va, TrainConfig(num_boost_round=5))
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="needs an active MLflow run"):
        log_pd_model(cand)


def test_pinned_requirements_are_exact_versions():
    reqs = pinned_requirements()
    names = {r.split("==")[0] for r in reqs}
    assert {"lightgbm", "catboost", "optbinning", "pandas", "numpy", "scikit-learn"} <= names
    assert names & {"xgboost", "xgboost-cpu"}
    assert all("==" in r and r.split("==")[1] for r in reqs)


@pytest.fixture
def mlflow_store(tmp_path):
    """A fresh sqlite tracking + registry store with its artifacts under tmp_path."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("pd-test", artifact_location=str((tmp_path / "artifacts").resolve()))
    yield client, experiment_id
    mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("algo", ALGORITHMS)
def test_champion_alias_round_trip(algo, mlflow_store, tmp_path):
    client, experiment_id = mlflow_store
    X_tr, y_tr, X_va, y_va = make_data()
    cand = train_candidate(algo, X_tr, y_tr, X_va, y_va, TrainConfig(num_boost_round=60))
    with mlflow.start_run(experiment_id=experiment_id):
        info = log_pd_model(cand, name="model", input_example=X_va.head(5))
    version = mlflow.register_model(info.model_uri, f"dealer_pd_{algo}")
    client.set_registered_model_alias(f"dealer_pd_{algo}", "champion", version.version)
    assert client.get_model_version_by_alias(f"dealer_pd_{algo}", "champion").version == version.version
    assert str(tmp_path) in client.get_run(info.run_id).info.artifact_uri

    model = mlflow.pyfunc.load_model(f"models:/dealer_pd_{algo}@champion")
    scrambled = X_va[list(reversed(X_va.columns))].assign(application_id=np.arange(len(X_va)).astype(float))
    out = model.predict(scrambled)
    assert list(out.columns) == output_columns()
    assert len(out) == len(X_va)
    assert out["pd"].between(0, 1).all()
    np.testing.assert_allclose(out["pd"].to_numpy(), cand.predict_pd(X_va), atol=1e-6)
    assert out["reason_1"].notna().any()
    assert set(out["reason_1"].dropna()) <= set(cand.feature_names)

    # the signature names the missing column before the model runs; PdModel does the same itself
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['f2'\]"):
        model.predict(X_va.drop(columns=["f2"]))
    unwrapped = model.unwrap_python_model()
    with pytest.raises(FeatureError, match=r"feature columns: \['f2'\]"):
        unwrapped.predict(None, X_va.drop(columns=["f2"]))
