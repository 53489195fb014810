"""LightGBM training on 1,000,000 rows × 50 features, one thread: our path vs bare ``lightgbm.train``.

The data are synthetic and seeded: 50 standard-normal features, a logistic default flag on a
sparse linear score with one interaction, and 10 % NaN in every fifth feature. Both sides get the
same frames and the same params, :func:`models.trainers.lightgbm_params` of
``TrainConfig(threads=1, num_boost_round=100, early_stopping_rounds=None)``: 100 rounds, no early
stopping.

Validation set: both sides get the same 200,000-row validation frame, built as a LightGBM
``Dataset`` with ``reference=`` the training set (shared bins), and evaluate ``binary_logloss`` on
it every round. Our path cannot skip it (``train_candidate`` early-stops on it by default), so the
native side pays for it too and the comparison is like for like; with early stopping off it is
only evaluated, and costs both sides the same few percent.

- baseline: ``lgb.Dataset`` × 2 + ``lgb.train`` from the DataFrames;
- ours: :func:`train_candidate` ("lightgbm", input checks included) + an MLflow run in a fresh
  SQLite store in a temp dir: config logged as params, best iteration and training time as
  metrics, :func:`log_pd_model` (native save, pyfunc with pinned requirements and an explicit
  signature). The store, its experiment and the first-call imports are set up and warmed once on
  a small model before timing: a real pipeline logs into an existing store.

Runs alternate and repeat; the ratio is ours ÷ baseline of the medians (goal ≤ 1.15). Both sides
must grow the same model (identical predictions on a sample). The size is fixed: ``scale`` is
ignored.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

ROWS = 1_000_000
VALID_ROWS = 200_000
FEATURES = 50
NAN_SHARE = 0.10  # in every fifth feature
ROUNDS = 100
GOAL_RATIO = 1.15
REPEATS = 3
SEED = 29
CHECK_ROWS = 20_000


def build_data(rows: int = ROWS, valid_rows: int = VALID_ROWS, seed: int = SEED):
    """``(X_train, y_train, X_valid, y_valid)``: float64 frames with NaN, 0/1 targets."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = rows + valid_rows
    X = rng.standard_normal((n, FEATURES))
    w = np.zeros(FEATURES)
    w[:12] = np.linspace(0.9, -0.6, 12)
    score = X @ w + 0.4 * X[:, 0] * X[:, 1] - 2.2
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-score))).astype(np.int8)
    for j in range(0, FEATURES, 5):
        X[rng.random(n) < NAN_SHARE, j] = np.nan
    frame = pd.DataFrame(X, columns=[f"x{j:02d}" for j in range(FEATURES)])
    return frame.iloc[:rows], y[:rows], frame.iloc[rows:], y[rows:]


def _native(X_tr, y_tr, X_va, y_va, params):
    import lightgbm as lgb

    train_set = lgb.Dataset(X_tr, label=y_tr)
    valid_set = lgb.Dataset(X_va, label=y_va, reference=train_set)
    return lgb.train(params, train_set, valid_sets=[valid_set], valid_names=["valid"])


def _ours(X_tr, y_tr, X_va, y_va, cfg, experiment_id: str, spent: dict[str, list[float]]):
    import mlflow

    from models.serving import log_pd_model
    from models.trainers import config_dict, train_candidate

    t0 = time.perf_counter()
    candidate = train_candidate("lightgbm", X_tr, y_tr, X_va, y_va, cfg)
    t1 = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_params({**config_dict(cfg), "algo": candidate.algo, "rows": len(X_tr)})
        mlflow.log_metrics({"best_iteration": candidate.best_iteration, "train_s": t1 - t0})
        log_pd_model(candidate, name="model")
    t2 = time.perf_counter()
    spent["train_s"].append(t1 - t0)
    spent["log_s"].append(t2 - t1)
    return candidate


def run(scale: str, workdir: Path) -> dict:
    import mlflow
    import numpy as np

    from models.trainers import TrainConfig, lightgbm_params

    cfg = TrainConfig(threads=1, num_boost_round=ROUNDS, early_stopping_rounds=None)
    params = lightgbm_params(cfg)
    t0 = time.perf_counter()
    X_tr, y_tr, X_va, y_va = build_data()
    build_s = time.perf_counter() - t0

    previous_uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        try:
            experiment_id = mlflow.MlflowClient().create_experiment(
                "train-bench", artifact_location=str(Path(tmp, "artifacts").resolve()))
            warm = build_data(rows=5_000, valid_rows=1_000, seed=SEED + 1)
            _ours(*warm, TrainConfig(threads=1, num_boost_round=5, early_stopping_rounds=None),
                  experiment_id, {"train_s": [], "log_s": []})
            _native(*warm, lightgbm_params(TrainConfig(threads=1, num_boost_round=5, early_stopping_rounds=None)))

            times: dict[str, list[float]] = {"ours": [], "baseline": []}
            spent: dict[str, list[float]] = {"train_s": [], "log_s": []}
            candidate = booster = None
            for i in range(REPEATS):
                for side in (("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")):
                    t0 = time.perf_counter()
                    if side == "ours":
                        candidate = _ours(X_tr, y_tr, X_va, y_va, cfg, experiment_id, spent)
                    else:
                        booster = _native(X_tr, y_tr, X_va, y_va, params)
                    times[side].append(time.perf_counter() - t0)
            runs = len(mlflow.search_runs([experiment_id]))
        finally:
            mlflow.set_tracking_uri(previous_uri)

    sample = X_va.iloc[:CHECK_ROWS]
    ours_pd, native_pd = candidate.predict_pd(sample), booster.predict(sample, num_threads=1)
    if candidate.best_iteration != ROUNDS or booster.current_iteration() != ROUNDS:
        raise AssertionError(f"expected {ROUNDS} rounds, ours {candidate.best_iteration}, "
                             f"native {booster.current_iteration()}")
    if not np.allclose(ours_pd, native_pd, rtol=0, atol=1e-12):
        raise AssertionError(f"ours and native differ: max |ΔPD| {np.abs(ours_pd - native_pd).max():.3g}")
    if runs != REPEATS + 1:
        raise AssertionError(f"{runs} MLflow runs logged, expected {REPEATS + 1}")

    med = {side: statistics.median(v) for side, v in times.items()}
    breakdown = {k: round(statistics.median(v), 2) for k, v in spent.items()}
    ratio = med["ours"] / med["baseline"]
    return {
        "rows": len(X_tr),
        "valid_rows": len(X_va),
        "features": FEATURES,
        "rounds": ROUNDS,
        "threads": 1,
        "build_data_s": round(build_s, 1),
        "ours_s": [round(t, 2) for t in times["ours"]],
        "baseline_s": [round(t, 2) for t in times["baseline"]],
        "ours_median_s": round(med["ours"], 2),
        "baseline_median_s": round(med["baseline"], 2),
        "ours_breakdown_median_s": breakdown,
        "baseline": "lgb.Dataset (train + valid with reference) + lgb.train, same params, 100 rounds",
        "ratio_vs_native_lightgbm": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio <= GOAL_RATIO,
        "summary": (f"LightGBM on {len(X_tr):,} rows × {FEATURES} features, {ROUNDS} rounds, 1 thread: "
                    f"train_candidate + MLflow run and log_pd_model {med['ours']:.2f} s vs native "
                    f"lgb.train {med['baseline']:.2f} s = {ratio:.3f}× (goal ≤ {GOAL_RATIO}); "
                    f"ours = training {breakdown['train_s']} s + MLflow logging {breakdown['log_s']} s; "
                    f"identical predictions on {CHECK_ROWS:,} validation rows"),
    }
