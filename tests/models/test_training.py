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
