"""The out-of-time split of models.training: by date, strictly ordered, and an OOT window of more
than one date when the dataset has few dates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.training import MIN_OOT_DATES, TrainingError, oot_split


def panel(n_dates: int, rows_per_date: int = 100, step_days: int = 7, bad_every: int = 10) -> pd.DataFrame:
    """``rows_per_date`` observations on each of ``n_dates`` dates, every ``bad_every``-th one bad."""
    dates = pd.date_range("2025-10-02", periods=n_dates, freq=f"{step_days}D")
    obs = np.repeat(dates.to_numpy(), rows_per_date)
    return pd.DataFrame({"obs_date": obs, "label": (np.arange(len(obs)) % bad_every == 0).astype(int)})


def parts(df: pd.DataFrame, split) -> dict[str, list]:
    return {p: sorted(pd.unique(df.loc[getattr(split, p), "obs_date"])) for p in ("train", "validation", "oot")}


def test_many_dates_split_by_the_fractions():
    df = panel(100, rows_per_date=10, step_days=1, bad_every=5)
    split = oot_split(df)
    assert split.train.sum() == 600 and split.validation.sum() == 200 and split.oot.sum() == 200
    got = parts(df, split)
    assert max(got["train"]) < min(got["validation"]) and max(got["validation"]) < min(got["oot"])


def test_few_dates_give_the_oot_window_at_least_min_oot_dates():
    df = panel(9)  # 60/20/20 would leave one date (11 %) to OOT
    split = oot_split(df)
    got = parts(df, split)
    assert len(got["oot"]) == MIN_OOT_DATES == 3
    assert len(got["validation"]) == 2  # the validation window keeps its dates, just before OOT
    assert len(got["train"]) == 4
    assert max(got["train"]) < min(got["validation"]) and max(got["validation"]) < min(got["oot"])
    assert (split.train.astype(int) + split.validation + split.oot == 1).all()
    assert split.window["oot"] == {"start": "2025-11-13", "end": "2025-11-27", "rows": 300, "bads": 30}


@pytest.mark.parametrize("n_dates", [3, 4])
def test_too_few_dates_for_the_rule_keep_one_date_per_part_at_least(n_dates):
    df = panel(n_dates, bad_every=4)
    got = parts(df, oot_split(df))
    assert all(len(v) >= 1 for v in got.values())
    assert sum(len(v) for v in got.values()) == n_dates


def test_the_rule_can_be_turned_off():
    df = panel(9)
    assert len(parts(df, oot_split(df, min_oot_dates=1))["oot"]) == 1


def test_an_oot_window_without_enough_bads_fails_naming_it():
    df = panel(9, bad_every=1000)
    with pytest.raises(TrainingError, match="bad of"):
        oot_split(df)


def supplier_panel(n_dates: int = 9, suppliers: int = 200, seed: int = 3) -> pd.DataFrame:
    """``suppliers`` entities on each of ``n_dates`` weekly dates; a bad supplier is bad on every date."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2025-10-02", periods=n_dates, freq="7D")
    ids = np.array([f"S{i:04d}" for i in range(suppliers)])
    bad = rng.random(suppliers) < 0.15
    return pd.DataFrame({"obs_date": np.repeat(dates.to_numpy(), suppliers), "supplier_id": np.tile(ids, n_dates),
                         "label": np.tile(bad, n_dates).astype(int)})


def test_grouped_split_holds_out_whole_entities_before_the_same_oot_window():
    df = supplier_panel()
    by_date, grouped = oot_split(df), oot_split(df, group_column="supplier_id")
    assert (grouped.oot == by_date.oot).all()  # the OOT window does not depend on the grouping
    assert grouped.window["oot"]["start"] == by_date.window["oot"]["start"]
    train_ids = set(df.supplier_id[grouped.train])
    val_ids = set(df.supplier_id[grouped.validation])
    assert train_ids and val_ids and not train_ids & val_ids
    # both parts span every date before OOT
    pre = sorted(pd.unique(df.obs_date[~grouped.oot]))
    assert sorted(pd.unique(df.obs_date[grouped.train])) == pre == sorted(pd.unique(df.obs_date[grouped.validation]))
    # fractions (0.6, 0.2, 0.2): a quarter of the entities validate, give or take the hash
    assert 0.15 < len(val_ids) / df.supplier_id.nunique() < 0.35
    assert grouped.window["validation"]["held_out_by"] == "supplier_id"
    assert grouped.window["validation"]["entities"] == len(val_ids)
    assert (grouped.train.astype(int) + grouped.validation + grouped.oot == 1).all()


def test_grouped_split_is_stable_across_runs_and_dataset_sizes():
    df = supplier_panel()
    a = set(df.supplier_id[oot_split(df, group_column="supplier_id").validation])
    small = df[df.supplier_id < "S0150"].reset_index(drop=True)
    b = set(small.supplier_id[oot_split(small, group_column="supplier_id").validation])
    assert b == {s for s in a if s < "S0150"}


def test_grouped_split_names_a_missing_group_column():
    with pytest.raises(TrainingError, match="supplier_id"):
        oot_split(panel(9), group_column="supplier_id")


def test_fit_family_reports_the_oot_rows_of_unseen_entities():
    from models.trainers import TrainConfig
    from models.training import fit_family

    rng = np.random.default_rng(5)
    df = supplier_panel(n_dates=9, suppliers=400)
    df["x"] = df.label * 1.5 + rng.normal(size=len(df))
    res = fit_family(df, ["x"], TrainConfig(num_boost_round=20, early_stopping_rounds=None),
                     algorithms=("lightgbm", "scorecard"), group_on="supplier_id")
    seen_bad = set(df.supplier_id[res.split.train & (df.label == 1).to_numpy()])
    unseen = res.split.oot & ~df.supplier_id.isin(seen_bad).to_numpy()
    assert res.oot_unseen_rows == {"rows": int(unseen.sum()), "bads": int(df.label[unseen].sum())}
    assert 0 < res.oot_unseen_rows["bads"] < res.oot_unseen_rows["rows"]
    assert set(res.oot_unseen) == {"lightgbm", "scorecard"}
    assert res.oot_unseen["lightgbm"]["n"] == unseen.sum()
    by_date = fit_family(df, ["x"], TrainConfig(num_boost_round=20, early_stopping_rounds=None),
                         algorithms=("lightgbm",))
    assert by_date.oot_unseen == {} and by_date.oot_unseen_rows == {}


@pytest.mark.parametrize(("scorecard_auc", "chosen"), [
    (0.700, "catboost"),  # catboost leads by 0.010 >= 0.005
    (0.705, "catboost"),  # exactly the required gain
    (0.706, "scorecard"),  # a gain of 0.004 is not material: the simpler benchmark
    (0.720, "scorecard"),  # the benchmark is better
    (None, "catboost"),  # no benchmark trained
])
def test_choose_prefers_the_scorecard_unless_a_gbm_beats_it_materially(scorecard_auc, chosen):
    from models.training import MATERIAL_AUC_GAIN, choose

    assert MATERIAL_AUC_GAIN == 0.005
    val = {"lightgbm": {"auc": 0.708}, "xgboost": {"auc": 0.690}, "catboost": {"auc": 0.710}}
    if scorecard_auc is not None:
        val["scorecard"] = {"auc": scorecard_auc}
    got, why = choose(val)
    assert got == chosen
    assert "catboost has the best validation AUC" in why and "0.7100" in why
    if scorecard_auc is not None:
        assert f"{0.710 - scorecard_auc:+.4f} against the scorecard's {scorecard_auc:.4f}" in why
    assert why.startswith("scorecard chosen") == (chosen == "scorecard")


def test_choose_breaks_ties_in_library_order_and_needs_a_gbm():
    from models.training import choose

    assert choose({"xgboost": {"auc": 0.7}, "lightgbm": {"auc": 0.7}})[0] == "lightgbm"
    with pytest.raises(TrainingError, match="no gradient-boosting algorithm among \\['scorecard'\\]"):
        choose({"scorecard": {"auc": 0.7}})


def test_fit_family_chooses_a_gbm_only_for_a_material_gain():
    """An additive truth (the scorecard's own form) against an interaction no additive model fits."""
    from models.trainers import TrainConfig
    from models.training import fit_family

    rng = np.random.default_rng(11)
    n = 12_000
    df = pd.DataFrame({"obs_date": np.repeat(pd.date_range("2025-10-01", periods=60).to_numpy(), n // 60),
                       "x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    cfg = TrainConfig(num_boost_round=60, early_stopping_rounds=None)
    additive = 1 / (1 + np.exp(-(-2.0 + 0.8 * df.x1 - 0.5 * df.x2)))
    df["label"] = (rng.random(n) < additive).astype(int)
    res = fit_family(df, ["x1", "x2"], cfg)
    assert res.chosen == "scorecard" and res.model is res.candidates["scorecard"]
    assert res.choice.startswith("scorecard chosen")
    crossed = 1 / (1 + np.exp(-(-2.0 + 2.5 * np.sign(df.x1 * df.x2))))
    df["label"] = (rng.random(n) < crossed).astype(int)
    res = fit_family(df, ["x1", "x2"], cfg)
    assert res.chosen != "scorecard"
    assert res.validation[res.chosen]["auc"] > res.validation["scorecard"]["auc"] + 0.1
