"""Train one model family: out-of-time split, the candidates, their evaluation, the choice.

Pure: takes a labelled dataset (one row per observation with ``obs_date``, the feature columns
and ``label``) and returns plain values; MLflow logging and registration happen at the edge
(:mod:`chainlend.model_ops`).

The split is by observation date, never random: the earliest dates holding ``fractions[0]`` of
the rows train, the next ``fractions[1]`` validate (early stopping and the choice of algorithm),
the latest ``fractions[2]`` are the out-of-time (OOT) window every reported metric and the
promotion gate use. A date never straddles two parts.

Families whose label is an *episode* of an entity observed on several dates (``supplier_pd``: a
supplier's default labels all its weekly snapshots of the 90-day / 12-month horizon before it)
hold out validation **by entity** instead (``group_column``): the OOT window is the same latest
dates, and the dates before it are split by a stable hash of the entity id, ``fractions[1] /
(fractions[0] + fractions[1])`` of the entities to validation and the rest to training. With a
split by date, a default that trains (its supplier's earlier snapshots) also labels the
validation snapshots of the same supplier a few weeks later: early stopping and the choice of
algorithm then reward recognising *that supplier* (CatBoost's top splits were ``bom_share`` and
``tenure_days``, near-constant per supplier) and the chosen model generalised worse out of time
than the WOE scorecard. Entity-disjoint validation measures what the model does on suppliers it
has not seen default, which is what a new default is. The OOT window still shares episodes with
training (a supplier in distress in October is often still so in November): that is the
ordinary overlap of an out-of-time sample with a long label horizon, and its size is reported
(``oot_unseen``: the OOT rows of entities with no bad training row) beside the OOT metrics.

The choice is made on *validation* AUC (choosing on OOT would leak the test window into the
choice) by :func:`choose`: the gradient-boosting model (LightGBM, XGBoost or CatBoost) with the
best validation AUC, unless it beats the WOE scorecard, trained on the same split as the
benchmark challenger, by less than ``MATERIAL_AUC_GAIN`` (0.005 AUC, one Gini point): then the
scorecard is chosen. A bank deploys the more complex model only for a material gain over the
simpler, fully explainable one (model risk guidance asks exactly that of a benchmark). The demo's
``dealer_pd`` is the case: the simulator draws a loan's default from a log-odds that is *additive*
in the dealer's latent risk and the loan's terms, which an additive WOE scorecard fits as well as
any tree ensemble; the GBMs led the scorecard by 0.001-0.004 validation AUC and fell on either
side of it out of time. The reason is stated in ``FamilyResult.choice`` (tagged on the version,
printed in its validation pack).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models import metrics as m
from models.trainers import Candidate, TrainConfig, train_candidate

GBMS = ("lightgbm", "xgboost", "catboost")
BENCHMARK = "scorecard"
# a GBM must beat the scorecard's validation AUC by at least this much to be chosen over it
MATERIAL_AUC_GAIN = 0.005
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


def held_out(ids: pd.Series, share: float) -> np.ndarray:
    """True for the ids whose stable hash (SHA-256 of the id's text) falls in the first ``share``
    of the hash space: the same ids on every run, machine and dataset size."""
    uniq = pd.unique(ids.astype(str))
    cut = int(share * 2**64)
    pick = {u for u in uniq if int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") < cut}
    return ids.astype(str).isin(pick).to_numpy()


def oot_split(df: pd.DataFrame, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
              date_column: str = "obs_date", min_oot_dates: int = MIN_OOT_DATES,
              group_column: str | None = None) -> Split:
    """Split ``df`` by ``date_column`` into train / validation / OOT (see the module docstring).

    When the fractions leave fewer than ``min_oot_dates`` dates to the OOT window and the dataset
    has at least ``min_oot_dates + 2`` dates, the OOT window takes the latest ``min_oot_dates``
    dates and the validation window keeps its number of dates just before it (train takes the
    rest, at least one date).

    Snapshot datasets (one loan observed on several dates) split on the loan's cohort date
    (its drawdown) instead, so every part holds whole loans and the same mix of loan ages: on a
    split by snapshot date the latest matured snapshots could only hold old loans.

    With ``group_column`` the OOT window is the same, and the dates before it go to validation
    for a stable ``fractions[1] / (fractions[0] + fractions[1])`` of the entities (:func:`held_out`)
    and to training for the others (see the module docstring)."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise TrainingError(f"split fractions must be positive and sum to 1, got {fractions}")
    for col in (date_column, "label", *([group_column] if group_column else [])):
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
    oot = (dates > cut2).to_numpy()
    if group_column is None:
        train = (dates <= cut1).to_numpy()
        validation = ((dates > cut1) & (dates <= cut2)).to_numpy()
    else:
        hold = held_out(df[group_column], fractions[1] / (fractions[0] + fractions[1]))
        train, validation = ~oot & ~hold, ~oot & hold
    label = df["label"].to_numpy()
    window = {}
    for part, mask in (("train", train), ("validation", validation), ("oot", oot)):
        if not mask.any():
            raise TrainingError(f"the {part} part of the split is empty ({len(counts)} dates"
                                f"{f', {df[group_column].nunique()} {group_column} values' if group_column else ''})")
        d = dates[mask]
        bads = int(label[mask].sum())
        window[part] = {"start": d.min().date().isoformat(), "end": d.max().date().isoformat(),
                        "rows": int(mask.sum()), "bads": bads}
        if group_column is not None:
            window[part]["entities"] = int(df.loc[mask, group_column].nunique())
            if part != "oot":
                window[part]["held_out_by"] = group_column
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
    # grouped splits: algo -> evaluation on the OOT rows of entities with no bad training row
    # (None where those rows hold one class only); {} for a split by date
    oot_unseen: dict[str, dict | None] = field(default_factory=dict)
    oot_unseen_rows: dict = field(default_factory=dict)  # {"rows": n, "bads": n} of that subset

    choice: str = ""  # why ``chosen`` was chosen (see :func:`choose`)

    @property
    def model(self) -> Candidate:
        return self.candidates[self.chosen]

    def oot_metrics(self) -> dict:
        """The chosen model's OOT metrics as the gate reads them."""
        return {**self.oot[self.chosen], "score_psi": self.score_psi}


def choose(validation: dict[str, dict], materiality: float = MATERIAL_AUC_GAIN) -> tuple[str, str]:
    """The chosen algorithm among those of ``validation`` (algo -> metrics with ``auc``) and why.

    The GBM with the best validation AUC (ties: LightGBM, XGBoost, CatBoost in that order), unless
    the scorecard was trained and that GBM beats it by less than ``materiality``: then the scorecard.
    """
    gbms = [a for a in GBMS if a in validation]
    if not gbms:
        raise TrainingError(f"no gradient-boosting algorithm among {sorted(validation)}")
    best = max(gbms, key=lambda a: (validation[a]["auc"], -GBMS.index(a)))
    top = f"{best} has the best validation AUC of the gradient-boosting models ({validation[best]['auc']:.4f})"
    if BENCHMARK not in validation:
        return best, f"{top}; no scorecard benchmark was trained"
    gain = validation[best]["auc"] - validation[BENCHMARK]["auc"]
    versus = (f"{gain:+.4f} against the {BENCHMARK}'s {validation[BENCHMARK]['auc']:.4f}; the required gain is "
              f"{materiality:.4f}")
    if gain >= materiality:
        return best, f"{top}, {versus}"
    return BENCHMARK, (f"{BENCHMARK} chosen: {top}, {versus}, so the simpler benchmark is deployed")


def fit_family(df: pd.DataFrame, features: list[str], cfg: TrainConfig,
               algorithms: tuple[str, ...] = (*GBMS, BENCHMARK), split_on: str = "obs_date",
               group_on: str | None = None, materiality: float = MATERIAL_AUC_GAIN) -> FamilyResult:
    """Split (on ``split_on``, validation held out by ``group_on`` when given), train every
    algorithm, evaluate on validation and OOT, choose."""
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise TrainingError(f"dataset lacks feature column(s) {missing}")
    split = oot_split(df, date_column=split_on, group_column=group_on)
    X = df[features].astype("float64")
    y = df["label"].to_numpy().astype(np.int64)
    cands: dict[str, Candidate] = {}
    val: dict[str, dict] = {}
    oot: dict[str, dict] = {}
    unseen_mask = None
    if group_on is not None:
        bad_seen = df.loc[split.train & (y == 1), group_on].astype(str).unique()
        unseen_mask = split.oot & ~df[group_on].astype(str).isin(bad_seen).to_numpy()
    unseen: dict[str, dict | None] = {}
    for algo in algorithms:
        cand = train_candidate(algo, X[split.train], y[split.train], X[split.validation], y[split.validation], cfg)
        cands[algo] = cand
        val[algo] = m.evaluate(y[split.validation], cand.predict_pd(X[split.validation])).as_dict()
        oot[algo] = m.evaluate(y[split.oot], cand.predict_pd(X[split.oot])).as_dict()
        if unseen_mask is not None:
            yu = y[unseen_mask]
            unseen[algo] = (m.evaluate(yu, cand.predict_pd(X[unseen_mask])).as_dict()
                            if 0 < yu.sum() < len(yu) else None)
    chosen, choice = choose(val, materiality)
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
        oot_unseen=unseen, choice=choice,
        oot_unseen_rows={} if unseen_mask is None else {"rows": int(unseen_mask.sum()),
                                                        "bads": int(y[unseen_mask].sum())},
    )
