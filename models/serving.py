"""Serve a :class:`~models.trainers.Candidate` as an MLflow pyfunc that returns PDs with reasons.

The built-in lightgbm/xgboost/catboost pyfunc flavors return class labels, so the registry holds a
custom :class:`PdModel` whose artifact is the candidate saved in its native format. Scoring is batch
only: one contribution pass over the whole frame gives both the PD (sigmoid of the row sum with the
bias) and the per-feature log-odds contributions, from which the four largest risk-increasing
features of each row become its reason codes.

The pickled :class:`PdModel` refers to ``models.serving`` by name: the scoring environment needs this
project's package installed (it is not on a package index, so it is not in the pip requirements),
next to the pinned libraries below.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from models.trainers import Candidate

N_REASONS = 4
ARTIFACT_KEY = "candidate"
# the distributions a logged model pins; the first installed name of each tuple is used
PINNED_DISTRIBUTIONS = (
    ("lightgbm",),
    ("xgboost-cpu", "xgboost"),
    ("catboost",),
    ("optbinning",),
    ("pandas",),
    ("numpy",),
    ("scikit-learn",),
    ("scipy",),
    ("mlflow", "mlflow-skinny"),
)


def output_columns(n_reasons: int = N_REASONS) -> list[str]:
    """``pd``, ``reason_1..n``, ``contrib_1..n``: the columns :meth:`PdModel.predict` returns."""
    return (["pd"] + [f"reason_{i}" for i in range(1, n_reasons + 1)]
            + [f"contrib_{i}" for i in range(1, n_reasons + 1)])


def score_frame(candidate: Candidate, X: pd.DataFrame, n_reasons: int = N_REASONS) -> pd.DataFrame:
    """PD and the ``n_reasons`` largest positive contributions per row, vectorised over ``X``.

    ``reason_j`` is the name of the feature with the j-th largest positive (risk-increasing)
    log-odds contribution and ``contrib_j`` that contribution; ``None``/NaN where a row has fewer
    than j positive contributions. Ties keep the model's feature order. The result has ``X``'s index.

    Raises:
        FeatureError: if ``X`` lacks model feature columns (named in the message).
    """
    pd_, contrib = candidate.explain(X)
    n, k = contrib.shape
    top = min(n_reasons, k)
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :top]
    values = np.take_along_axis(contrib, order, axis=1)
    positive = values > 0
    names = np.asarray(candidate.feature_names, dtype=object)[order]
    names[~positive] = None
    values = np.where(positive, values, np.nan)

    columns: dict[str, Any] = {"pd": pd_}
    no_reason = np.full(n, None, dtype=object)
    for j in range(n_reasons):
        columns[f"reason_{j + 1}"] = pd.Series(names[:, j] if j < top else no_reason, index=X.index,
                                               dtype=object)
    for j in range(n_reasons):
        columns[f"contrib_{j + 1}"] = values[:, j] if j < top else np.full(n, np.nan)
    return pd.DataFrame(columns, index=X.index)


class PdModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of a saved Candidate: ``predict`` returns ``pd``, ``reason_1..4``, ``contrib_1..4``."""

    def __init__(self) -> None:
        self.candidate: Candidate | None = None

    def load_context(self, context) -> None:
        self.candidate = Candidate.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score a whole frame (extra columns ignored, column order taken from the model).

        Raises:
            RuntimeError: if called before ``load_context``.
            FeatureError: if ``model_input`` lacks model feature columns (named in the message).
        """
        if self.candidate is None:
            raise RuntimeError("PdModel.predict before load_context: load it with mlflow.pyfunc.load_model")
        return score_frame(self.candidate, model_input)


def pinned_requirements() -> list[str]:
    """``name==version`` for the serving libraries, read from the installed distributions."""
    reqs = []
    for names in PINNED_DISTRIBUTIONS:
        for dist in names:
            try:
                reqs.append(f"{dist}=={importlib.metadata.version(dist)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            raise RuntimeError(f"none of {names} is installed: cannot pin the serving environment")
    return reqs


def model_signature(candidate: Candidate, n_reasons: int = N_REASONS):
    """Inputs: the feature columns as doubles (named, so MLflow reorders and drops extras);
    outputs: ``pd``, the reason names and their contributions."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec("double", name) for name in candidate.feature_names])
    outputs = Schema(
        [ColSpec("double", "pd")]
        + [ColSpec("string", f"reason_{j}", required=False) for j in range(1, n_reasons + 1)]
        + [ColSpec("double", f"contrib_{j}", required=False) for j in range(1, n_reasons + 1)]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_pd_model(candidate: Candidate, *, name: str = "model",
                 input_example: pd.DataFrame | None = None) -> mlflow.models.model.ModelInfo:
    """Log ``candidate`` as a :class:`PdModel` into the active MLflow run.

    The candidate is saved natively (see :meth:`Candidate.save`) as the ``candidate`` artifact; the
    signature is explicit and the pip requirements pinned, so no requirements inference runs.

    Raises:
        RuntimeError: if there is no active run (the caller owns the run and its tracking URI).
    """
    if mlflow.active_run() is None:
        raise RuntimeError("log_pd_model needs an active MLflow run (mlflow.start_run())")
    if input_example is not None:
        input_example = candidate.frame(input_example)
    with tempfile.TemporaryDirectory(prefix="pd-candidate-") as tmp:
        saved = Path(tmp) / ARTIFACT_KEY
        candidate.save(saved)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=PdModel(),
            artifacts={ARTIFACT_KEY: str(saved)},
            signature=model_signature(candidate),
            input_example=input_example,
            pip_requirements=pinned_requirements(),
            metadata={"algo": candidate.algo, "best_iteration": candidate.best_iteration,
                      "n_features": len(candidate.feature_names)},
        )
