"""Train PD candidates: LightGBM, XGBoost and CatBoost, and a WOE logistic scorecard as the challenger.

Every candidate is trained from one frozen :class:`TrainConfig` turned into explicit native
parameters (seeded, an explicit thread count, deterministic settings, silent), so two runs with the
same config and data give identical models. A :class:`Candidate` predicts probabilities of default,
explains them in log-odds (one contribution per feature, per row) and saves itself in its library's
native format next to a small JSON manifest.

Inputs are pandas DataFrames of numeric (float) feature columns where NaN means missing: the GBMs
route missing values natively, the scorecard gives them their own bin. Targets are 0/1 (1 = default).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ALGORITHMS = ("lightgbm", "xgboost", "catboost", "scorecard")
MANIFEST = "candidate.json"
MANIFEST_VERSION = 1
MODEL_FILES = {
    "lightgbm": "model.txt",
    "xgboost": "model.ubj",
    "catboost": "model.cbm",
    "scorecard": "scorecard.joblib",
}
LIBRARIES = {
    "lightgbm": ("lightgbm",),
    "xgboost": ("xgboost-cpu", "xgboost"),
    "catboost": ("catboost",),
    "scorecard": ("optbinning", "scikit-learn"),
}
# the optbinning settings of the scorecard (its own, not derived from the GBM fields of TrainConfig)
SCORECARD_BINNING = {"max_n_prebins": 20, "min_prebin_size": 0.05}
SCORECARD_MAX_ITER = 1000


class TrainError(ValueError):
    """A configuration or training input that cannot be used; the message says what was got."""


class FeatureError(ValueError):
    """Scoring input that does not carry the model's feature columns (the message names them)."""


@dataclass(frozen=True)
class TrainConfig:
    """One set of hyper-parameters shared by all algorithms (mapped per library by ``*_params``).

    ``early_stopping_rounds=None`` trains exactly ``num_boost_round`` rounds (the validation set is
    still evaluated). ``threads`` is passed explicitly to every library: never rely on OpenMP's
    "all cores" default on a shared worker.
    """

    seed: int = 7
    threads: int = 1
    num_boost_round: int = 400
    learning_rate: float = 0.05
    early_stopping_rounds: int | None = 40
    num_leaves: int = 31
    max_depth: int = 6
    min_child_samples: int = 50
    subsample: float = 0.8
    colsample: float = 0.8
    l2: float = 1.0

    def __post_init__(self) -> None:
        def integer(name: str, low: int, high: int | None = None) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TrainError(f"TrainConfig.{name} must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise TrainError(f"TrainConfig.{name} must be {bounds}, got {value}")

        def fraction(name: str, low: float, high: float, low_open: bool = True) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
                raise TrainError(f"TrainConfig.{name} must be a number, got {value!r}")
            too_low = value <= low if low_open else value < low
            if not np.isfinite(value) or too_low or value > high:
                interval = f"{'(' if low_open else '['}{low}, {high}]"
                raise TrainError(f"TrainConfig.{name} must be in {interval}, got {value}")

        integer("seed", 0, 2**31 - 1)
        integer("threads", 1)
        integer("num_boost_round", 1)
        if self.early_stopping_rounds is not None:
            integer("early_stopping_rounds", 1)
        integer("num_leaves", 2, 131_072)
        integer("max_depth", 1, 16)  # CatBoost's symmetric trees allow depth <= 16
        integer("min_child_samples", 1)
        fraction("learning_rate", 0.0, 1.0)
        fraction("subsample", 0.0, 1.0)
        fraction("colsample", 0.0, 1.0)
        fraction("l2", 0.0, 1e6, low_open=False)


def lightgbm_params(cfg: TrainConfig) -> dict[str, Any]:
    """Native ``lightgbm.train`` params, rounds and early stopping included (``num_iterations``,
    ``early_stopping_round``; the latter only when early stopping is on)."""
    params: dict[str, Any] = {
        "objective": "binary",
        "metric": "binary_logloss",
        "boosting": "gbdt",
        "num_iterations": cfg.num_boost_round,
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "max_depth": cfg.max_depth,
        "min_data_in_leaf": cfg.min_child_samples,
        "bagging_fraction": cfg.subsample,
        "bagging_freq": 1 if cfg.subsample < 1.0 else 0,
        "feature_fraction": cfg.colsample,
        "lambda_l2": cfg.l2,
        "seed": cfg.seed,
        "num_threads": cfg.threads,
        "deterministic": True,
        "force_col_wise": True,  # a fixed histogram layout: required for deterministic results
        "verbosity": -1,
    }
    if cfg.early_stopping_rounds is not None:
        params["early_stopping_round"] = cfg.early_stopping_rounds
        params["first_metric_only"] = True
    return params


def xgboost_params(cfg: TrainConfig) -> dict[str, Any]:
    """Native ``xgboost.train`` booster params (rounds and early stopping are ``train`` arguments).

    XGBoost has no minimum row count per leaf; ``min_child_samples`` is not mapped (its
    ``min_child_weight`` is a hessian sum and keeps its default of 1).
    """
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "booster": "gbtree",
        "tree_method": "hist",
        "eta": cfg.learning_rate,
        "max_depth": cfg.max_depth,
        "max_leaves": cfg.num_leaves,
        "min_child_weight": 1.0,
        "subsample": cfg.subsample,
        "colsample_bytree": cfg.colsample,
        "lambda": cfg.l2,
        "seed": cfg.seed,
        "nthread": cfg.threads,
        "verbosity": 0,
    }


def catboost_params(cfg: TrainConfig) -> dict[str, Any]:
    """Native ``catboost.CatBoost`` params (symmetric trees of depth ``max_depth``).

    ``num_leaves`` and ``min_child_samples`` only apply to CatBoost's non-symmetric grow policies
    and are not mapped; ``colsample`` maps to ``rsm``, ``subsample`` to Bernoulli bootstrap.
    """
    return {
        "loss_function": "Logloss",
        "eval_metric": "Logloss",
        "iterations": cfg.num_boost_round,
        "learning_rate": cfg.learning_rate,
        "depth": cfg.max_depth,
        "l2_leaf_reg": cfg.l2,
        "bootstrap_type": "Bernoulli",
        "subsample": cfg.subsample,
        "rsm": cfg.colsample,
        "random_seed": cfg.seed,
        "thread_count": cfg.threads,
        "nan_mode": "Min",
        "allow_writing_files": False,
        "logging_level": "Silent",
    }


def scorecard_params(cfg: TrainConfig) -> dict[str, Any]:
    """The optbinning ``BinningProcess`` and sklearn ``LogisticRegression`` settings (``C = 1/l2``)."""
    if cfg.l2 <= 0:
        raise TrainError(f"the scorecard needs l2 > 0 (its logistic regression uses C = 1/l2), got {cfg.l2}")
    return {
        "binning": dict(SCORECARD_BINNING),
        "woe_missing": "empirical",  # a missing value scores the WOE of its own bin
        "logistic": {"C": 1.0 / cfg.l2, "solver": "lbfgs", "max_iter": SCORECARD_MAX_ITER,
                     "random_state": cfg.seed},
    }


@dataclass
class _Scorecard:
    """The fitted WOE binning and the logistic regression on the WOE values."""

    binning: Any  # optbinning.BinningProcess
    logit: Any  # sklearn.linear_model.LogisticRegression
    # features missing on every training row carry no information: they are scored as the
    # constant 0 (one bin, WOE 0) instead of failing optbinning's fit
    empty_columns: tuple[str, ...] = ()

    def woe(self, X: pd.DataFrame) -> np.ndarray:
        if self.empty_columns:
            X = X.assign(**{c: 0.0 for c in self.empty_columns})
        out = self.binning.transform(X, metric="woe", metric_missing="empirical", metric_special="empirical")
        return np.asarray(out, dtype=np.float64)


@dataclass
class Candidate:
    """A trained PD model and what it needs to score: the native model, its params and features.

    ``best_iteration`` is the number of boosting rounds used for prediction (early stopping's best
    round, else all rounds); ``None`` for the scorecard. ``params`` are the settings passed to the
    library (JSON-able), ``train()`` arguments included.
    """

    algo: str
    params: dict[str, Any]
    best_iteration: int | None
    feature_names: tuple[str, ...]
    model: Any = field(repr=False)
    threads: int = 1

    # ---- scoring -------------------------------------------------------------------------------

    def frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """``X`` restricted to the model's features, in the model's order (extra columns ignored).

        Raises:
            FeatureError: if ``X`` is not a DataFrame, lacks feature columns (named) or has a
                non-numeric feature column.
        """
        if not isinstance(X, pd.DataFrame):
            raise FeatureError(f"expected a pandas DataFrame of features, got {type(X).__name__}")
        names = list(self.feature_names)
        if list(X.columns) != names:
            missing = [c for c in names if c not in X.columns]
            if missing:
                raise FeatureError(f"input lacks {len(missing)} of the model's {len(names)} feature "
                                   f"columns: {missing}")
            X = X[names]
        _check_numeric(X, "input")
        return X

    def log_odds(self, X: pd.DataFrame) -> np.ndarray:
        """The raw score (log-odds of default) per row, shape (n,)."""
        X = self.frame(X)
        m, algo = self.model, self.algo
        if algo == "lightgbm":
            out = m.predict(X, num_iteration=self.best_iteration, raw_score=True, num_threads=self.threads)
        elif algo == "xgboost":
            out = m.predict(self._dmatrix(X), output_margin=True, iteration_range=(0, self.best_iteration))
        elif algo == "catboost":
            out = m.predict(self._pool(X), prediction_type="RawFormulaVal", thread_count=self.threads)
        else:
            out = m.logit.decision_function(m.woe(X))
        return np.asarray(out, dtype=np.float64)

    def predict_pd(self, X: pd.DataFrame) -> np.ndarray:
        """The probability of default per row, shape (n,), in [0, 1]."""
        return _sigmoid(self.log_odds(X))

    def contributions_with_bias(self, X: pd.DataFrame) -> np.ndarray:
        """Per-feature log-odds contributions plus the bias as the last column, shape (n, k + 1);
        each row sums to :meth:`log_odds` (SHAP values for the GBMs, coefficient × WOE plus the
        intercept for the scorecard)."""
        X = self.frame(X)
        m, algo = self.model, self.algo
        if algo == "lightgbm":
            out = m.predict(X, num_iteration=self.best_iteration, pred_contrib=True, num_threads=self.threads)
        elif algo == "xgboost":
            out = m.predict(self._dmatrix(X), pred_contribs=True, iteration_range=(0, self.best_iteration))
        elif algo == "catboost":
            out = m.get_feature_importance(data=self._pool(X), type="ShapValues", thread_count=self.threads)
        else:
            coef = m.logit.coef_.ravel()
            out = np.empty((len(X), len(coef) + 1))
            np.multiply(m.woe(X), coef, out=out[:, :-1])
            out[:, -1] = m.logit.intercept_[0]
        return np.asarray(out, dtype=np.float64)

    def contributions(self, X: pd.DataFrame) -> np.ndarray:
        """Per-feature log-odds contributions, shape (n, n_features), the bias column dropped."""
        return self.contributions_with_bias(X)[:, :-1]

    def explain(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(pd, contributions)`` from a single contribution pass (the PD is the sigmoid of the
        row sum with the bias): cheaper than :meth:`predict_pd` plus :meth:`contributions`."""
        full = self.contributions_with_bias(X)
        return _sigmoid(full.sum(axis=1)), full[:, :-1]

    def _dmatrix(self, X: pd.DataFrame):
        import xgboost as xgb

        return xgb.DMatrix(X, missing=np.nan, nthread=self.threads)

    def _pool(self, X: pd.DataFrame):
        from catboost import Pool

        return Pool(X, thread_count=self.threads)

    # ---- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> list[str]:
        """Write the native model file and ``candidate.json`` into ``directory``; return their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / MODEL_FILES[self.algo]
        if self.algo == "lightgbm":
            self.model.save_model(str(model_path), num_iteration=self.best_iteration)
        elif self.algo == "xgboost":
            self.model.save_model(str(model_path))
        elif self.algo == "catboost":
            self.model.save_model(str(model_path), format="cbm")
        else:
            import joblib

            joblib.dump({"binning": self.model.binning, "logit": self.model.logit,
                         "empty_columns": list(self.model.empty_columns)}, model_path)
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "algo": self.algo,
            "model_file": model_path.name,
            "best_iteration": self.best_iteration,
            "feature_names": list(self.feature_names),
            "threads": self.threads,
            "params": self.params,
            "libraries": library_versions(self.algo),
        }
        manifest_path = directory / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return [str(model_path), str(manifest_path)]

    @classmethod
    def load(cls, directory: str | Path, *, threads: int | None = None) -> Candidate:
        """Read a candidate written by :meth:`save` (``threads`` overrides the saved thread count).

        Raises:
            TrainError: if the manifest is missing, of another version or names an unknown algorithm.
        """
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise TrainError(f"no {MANIFEST} in {directory}: not a saved Candidate")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("manifest_version") != MANIFEST_VERSION:
            raise TrainError(f"{manifest_path}: manifest_version {manifest.get('manifest_version')!r}, "
                             f"this code reads {MANIFEST_VERSION}")
        algo = manifest.get("algo")
        if algo not in ALGORITHMS:
            raise TrainError(f"{manifest_path}: unknown algorithm {algo!r}, expected one of {ALGORITHMS}")
        threads = manifest["threads"] if threads is None else threads
        path = str(directory / manifest["model_file"])
        if algo == "lightgbm":
            import lightgbm as lgb

            model: Any = lgb.Booster(model_file=path)
        elif algo == "xgboost":
            import xgboost as xgb

            model = xgb.Booster()
            model.load_model(path)
            model.set_param({"nthread": threads})
        elif algo == "catboost":
            from catboost import CatBoost

            model = CatBoost().load_model(path, format="cbm")
        else:
            import joblib

            parts = joblib.load(path)
            model = _Scorecard(binning=parts["binning"], logit=parts["logit"],
                               empty_columns=tuple(parts.get("empty_columns", ())))
        return cls(algo=algo, params=manifest["params"], best_iteration=manifest["best_iteration"],
                   feature_names=tuple(manifest["feature_names"]), model=model, threads=threads)


def library_versions(algo: str) -> dict[str, str]:
    """Installed versions of the libraries a candidate of ``algo`` needs."""
    out = {}
    for dist in LIBRARIES[algo]:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# ---- training ----------------------------------------------------------------------------------


def train_candidate(algo: str, X_train: pd.DataFrame, y_train: Sequence[int] | np.ndarray | pd.Series,
                    X_valid: pd.DataFrame, y_valid: Sequence[int] | np.ndarray | pd.Series,
                    cfg: TrainConfig) -> Candidate:
    """Train one candidate; the GBMs early-stop on the validation set (unless disabled in ``cfg``).

    Raises:
        TrainError: for an unknown algorithm, non-numeric or mismatched feature columns, targets
            that are not 0/1 with both classes, or lengths that disagree.
    """
    if algo not in ALGORITHMS:
        raise TrainError(f"unknown algorithm {algo!r}, expected one of {ALGORITHMS}")
    if not isinstance(cfg, TrainConfig):
        raise TrainError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    names = _check_features(X_train, X_valid)
    y_tr = _check_target(y_train, len(X_train), "y_train")
    y_va = _check_target(y_valid, len(X_valid), "y_valid")
    trainer = {"lightgbm": _train_lightgbm, "xgboost": _train_xgboost,
               "catboost": _train_catboost, "scorecard": _train_scorecard}[algo]
    params, best_iteration, model = trainer(X_train, y_tr, X_valid, y_va, cfg)
    return Candidate(algo=algo, params=params, best_iteration=best_iteration, feature_names=names,
                     model=model, threads=cfg.threads)


def _train_lightgbm(X_train, y_train, X_valid, y_valid, cfg):
    import lightgbm as lgb

    params = lightgbm_params(cfg)
    train_set = lgb.Dataset(X_train, label=y_train)
    valid_set = lgb.Dataset(X_valid, label=y_valid, reference=train_set)
    booster = lgb.train(params, train_set, valid_sets=[valid_set], valid_names=["valid"])
    best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
    return params, int(best), booster


def _train_xgboost(X_train, y_train, X_valid, y_valid, cfg):
    import xgboost as xgb

    params = xgboost_params(cfg)
    dtrain = xgb.DMatrix(X_train, label=y_train, missing=np.nan, nthread=cfg.threads)
    dvalid = xgb.DMatrix(X_valid, label=y_valid, missing=np.nan, nthread=cfg.threads)
    booster = xgb.train(params, dtrain, num_boost_round=cfg.num_boost_round, evals=[(dvalid, "valid")],
                        early_stopping_rounds=cfg.early_stopping_rounds, verbose_eval=False)
    if cfg.early_stopping_rounds is not None:
        best = booster.best_iteration + 1
    else:
        best = booster.num_boosted_rounds()
    recorded = {**params, "num_boost_round": cfg.num_boost_round,
                "early_stopping_rounds": cfg.early_stopping_rounds}
    return recorded, int(best), booster


def _train_catboost(X_train, y_train, X_valid, y_valid, cfg):
    from catboost import CatBoost, Pool

    params = catboost_params(cfg)
    model = CatBoost(params)
    early = cfg.early_stopping_rounds is not None
    model.fit(Pool(X_train, label=y_train, thread_count=cfg.threads),
              eval_set=Pool(X_valid, label=y_valid, thread_count=cfg.threads),
              early_stopping_rounds=cfg.early_stopping_rounds, use_best_model=early)
    recorded = {**params, "early_stopping_rounds": cfg.early_stopping_rounds, "use_best_model": early}
    return recorded, int(model.tree_count_), model


def _train_scorecard(X_train, y_train, X_valid, y_valid, cfg):
    from optbinning import BinningProcess
    from sklearn.linear_model import LogisticRegression

    params = scorecard_params(cfg)
    empty = tuple(c for c in X_train.columns if X_train[c].isna().all())
    if empty:
        X_train = X_train.assign(**{c: 0.0 for c in empty})
    binning = BinningProcess(list(X_train.columns), **params["binning"], n_jobs=cfg.threads)
    binning.fit(X_train, y_train)
    card = _Scorecard(binning=binning, logit=LogisticRegression(**params["logistic"]), empty_columns=empty)
    card.logit.fit(card.woe(X_train), y_train)
    return params, None, card


# ---- checks ------------------------------------------------------------------------------------


def _check_numeric(X: pd.DataFrame, what: str) -> None:
    bad = [f"{c} ({X[c].dtype})" for c in X.columns
           if not pd.api.types.is_numeric_dtype(X[c].dtype) or pd.api.types.is_bool_dtype(X[c].dtype)]
    if bad:
        raise FeatureError(f"{what}: feature columns must be numeric (float, NaN = missing), got {bad}")


def _check_features(X_train: Any, X_valid: Any) -> tuple[str, ...]:
    for what, X in (("X_train", X_train), ("X_valid", X_valid)):
        if not isinstance(X, pd.DataFrame):
            raise TrainError(f"{what} must be a pandas DataFrame, got {type(X).__name__}")
        if X.empty:
            raise TrainError(f"{what} is empty ({X.shape[0]} rows x {X.shape[1]} columns)")
        if X.columns.has_duplicates:
            raise TrainError(f"{what} has duplicate columns: {sorted(set(X.columns[X.columns.duplicated()]))}")
        try:
            _check_numeric(X, what)
        except FeatureError as exc:
            raise TrainError(str(exc)) from None
    names = tuple(str(c) for c in X_train.columns)
    if tuple(str(c) for c in X_valid.columns) != names:
        raise TrainError(f"X_valid columns {list(X_valid.columns)} differ from X_train columns {list(names)}")
    return names


def _check_target(y: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).ravel()
    if arr.shape[0] != n:
        raise TrainError(f"{what} has {arr.shape[0]} values for {n} feature rows")
    values = set(np.unique(arr).tolist())
    if not values <= {0.0, 1.0}:
        raise TrainError(f"{what} must be 0/1 (1 = default), got values {sorted(values)[:10]}")
    if values != {0.0, 1.0}:
        raise TrainError(f"{what} must contain both classes, got only {sorted(values)}")
    return arr


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a plain dict (for logging as run params)."""
    return dataclasses.asdict(cfg)
