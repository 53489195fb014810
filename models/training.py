"""Train one model family: out-of-time split, the candidates, their evaluation, the choice.

Pure: takes a labelled dataset (one row per observation with ``obs_date``, the feature columns
and ``label``) and returns plain values; MLflow logging and registration happen at the edge
(:mod:`chainlend.model_ops`).

The split is by observation date, never random: the earliest dates holding ``fractions[0]`` of
the rows train, the next ``fractions[1]`` validate (early stopping and the choice of algorithm),
the latest ``fractions[2]`` are the out-of-time (OOT) window every reported metric and the
promotion gate use. A date never straddles two parts.

The chosen candidate is the gradient-boosting model (LightGBM, XGBoost or CatBoost) with the
best *validation* AUC (choosing on OOT would leak the test window into the choice); the WOE
scorecard is trained on the same split as the benchmark challenger and reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models import metrics as m
from models.trainers import Candidate, TrainConfig, train_candidate

GBMS = ("lightgbm", "xgboost", "catboost")
BENCHMARK = "scorecard"
MIN_BADS = {"train": 20, "validation": 5, "oot": 5}
# The OOT window spans at least this many observation dates when the dataset has enough of them
# (MIN_OOT_DATES + 2): on a snapshot dataset with few dates (supplier_pd: weekly snapshots whose
# label horizon must have matured), 20 % of the rows is a single date, one draw of the calendar.
MIN_OOT_DATES = 3


class TrainingError(RuntimeError):
    """The dataset cannot train a model family; the message says what is missing."""


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # boolean masks over the dataset rows
    validation: np.ndarray
    oot: np.ndarray
    window: dict  # part -> {start, end, rows, bads}


def oot_split(df: pd.DataFrame, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
              date_column: str = "obs_date", min_oot_dates: int = MIN_OOT_DATES) -> Split:
    """Split ``df`` by ``date_column`` into train / validation / OOT (see the module docstring).

    When the fractions leave fewer than ``min_oot_dates`` dates to the OOT window and the dataset
    has at least ``min_oot_dates + 2`` dates, the OOT window takes the latest ``min_oot_dates``
    dates and the validation window keeps its number of dates just before it (train takes the
    rest, at least one date).

    Snapshot datasets (one loan observed on several dates) split on the loan's cohort date
    (its drawdown) instead, so every part holds whole loans and the same mix of loan ages: on a
    split by snapshot date the latest matured snapshots could only hold old loans."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise TrainingError(f"split fractions must be positive and sum to 1, got {fractions}")
    for col in (date_column, "label"):
        if col not in df.columns:
            raise TrainingError(f"dataset has no {col!r} column; it has {list(df.columns)[:12]}...")
    dates = pd.to_datetime(df[date_column]).dt.normalize()
    counts = dates.value_counts().sort_index()
    if len(counts) < 3:
        raise TrainingError(f"an out-of-time split needs at least 3 observation dates, got {len(counts)}")
    share = counts.cumsum() / counts.sum()
    cut1 = share.index[min(int(np.searchsorted(share.to_numpy(), fractions[0])), len(share) - 3)]
    rest = share[share.index > cut1]
    cut2 = rest.index[min(int(np.searchsorted(rest.to_numpy(), fractions[0] + fractions[1])), len(rest) - 2)]
    i1, i2, n = share.index.get_loc(cut1), share.index.get_loc(cut2), len(share)
    if n - 1 - i2 < min_oot_dates and n >= min_oot_dates + 2:
        n_val = i2 - i1
        i2 = n - 1 - min_oot_dates
        i1 = max(0, min(i1, i2 - n_val))
        cut1, cut2 = share.index[i1], share.index[i2]
    train = (dates <= cut1).to_numpy()
    validation = ((dates > cut1) & (dates <= cut2)).to_numpy()
    oot = (dates > cut2).to_numpy()
    label = df["label"].to_numpy()
    window = {}
    for part, mask in (("train", train), ("validation", validation), ("oot", oot)):
        d = dates[mask]
        bads = int(label[mask].sum())
        window[part] = {"start": d.min().date().isoformat(), "end": d.max().date().isoformat(),
                        "rows": int(mask.sum()), "bads": bads}
        if bads < MIN_BADS[part] or bads == int(mask.sum()):
            raise TrainingError(
                f"the {part} window {window[part]['start']}..{window[part]['end']} has {bads} bad of "
                f"{int(mask.sum())} rows; at least {MIN_BADS[part]} bad and one good are needed "
                f"(more history, or a longer window)")
    return Split(train, validation, oot, window)


@dataclass
class FamilyResult:
    split: Split
    candidates: dict[str, Candidate]
    validation: dict[str, dict]  # algo -> evaluation on the validation window
    oot: dict[str, dict]  # algo -> evaluation on OOT
    chosen: str
    score_psi: float
    feature_psi: pd.Series
    stability: pd.DataFrame
    oot_pd: np.ndarray  # the chosen model's PD on the OOT rows
    calibration: dict = field(default_factory=dict)

    @property
    def model(self) -> Candidate:
        return self.candidates[self.chosen]

    def oot_metrics(self) -> dict:
        """The chosen model's OOT metrics as the gate reads them."""
        return {**self.oot[self.chosen], "score_psi": self.score_psi}


def fit_family(df: pd.DataFrame, features: list[str], cfg: TrainConfig,
               algorithms: tuple[str, ...] = (*GBMS, BENCHMARK), split_on: str = "obs_date") -> FamilyResult:
    """Split (on ``split_on``), train every algorithm, evaluate on validation and OOT, choose."""
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise TrainingError(f"dataset lacks feature column(s) {missing}")
    split = oot_split(df, date_column=split_on)
    X = df[features].astype("float64")
    y = df["label"].to_numpy().astype(np.int64)
    cands: dict[str, Candidate] = {}
    val: dict[str, dict] = {}
    oot: dict[str, dict] = {}
    for algo in algorithms:
        cand = train_candidate(algo, X[split.train], y[split.train], X[split.validation], y[split.validation], cfg)
        cands[algo] = cand
        val[algo] = m.evaluate(y[split.validation], cand.predict_pd(X[split.validation])).as_dict()
        oot[algo] = m.evaluate(y[split.oot], cand.predict_pd(X[split.oot])).as_dict()
    gbms = [a for a in algorithms if a in GBMS]
    if not gbms:
        raise TrainingError(f"no gradient-boosting algorithm among {algorithms}")
    chosen = max(gbms, key=lambda a: (val[a]["auc"], -GBMS.index(a)))
    model = cands[chosen]
    train_pd = model.predict_pd(X[split.train])
    oot_pd = model.predict_pd(X[split.oot])
    all_period = pd.to_datetime(df[split_on]).dt.strftime("%Y-%m").to_numpy()
    stability = m.stability(y, model.predict_pd(X), all_period)
    return FamilyResult(
        split=split, candidates=cands, validation=val, oot=oot, chosen=chosen,
        score_psi=float(m.psi(train_pd, oot_pd)),
        feature_psi=m.feature_psi(X[split.train], X[split.oot], features),
        stability=stability, oot_pd=oot_pd,
        calibration=m.calibration_summary(y[split.oot], oot_pd),
    )
