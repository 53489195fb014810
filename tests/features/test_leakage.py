"""Acceptance: features at an as-of date do not change when anything after it changes.

For every transactional table, the rows dated at or after the as-of date (written or happening
then) are half deleted and half perturbed: amounts scaled, dealer/supplier ids swapped, statuses
and flags changed, timestamps moved elsewhere in the future. Features at the as-of date must be
identical.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from features.dealer import application_features
from features.frames import day_of
from features.post_loan import post_loan_features
from features.supplier import supplier_features
from sources.contract import TABLES, WATERMARK
from sources.simulator import TRANSACTIONAL_TABLES

AS_OF = dt.date(2025, 12, 10)
_AMOUNTS = ("_fen", "quantity", "vehicles_", "mileage_km", "model_year", "term_days")


def perturb_future(frames: dict[str, pd.DataFrame], as_of: dt.date, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    cut = pd.Timestamp(as_of)
    dealers = frames["dealer.dealers"]["dealer_id"].to_numpy()
    suppliers = frames["erp.suppliers"]["supplier_id"].to_numpy()
    out = dict(frames)
    for t in TRANSACTIONAL_TABLES:
        key = f"{t.source}.{t.name}"
        df = frames[key]
        future = (df[WATERMARK] >= cut) | (df[t.event_time] >= cut).fillna(False).astype(bool)
        idx = np.flatnonzero(future.to_numpy())
        assert len(idx), f"{key} has no row after {as_of}: the test needs some"
        drop = rng.random(len(idx)) < 0.5
        changed = df.copy()
        rows = changed.index[idx[~drop]]
        n = len(rows)
        for col in t.columns:
            name = col.name
            if col.type == "ts":
                shifted = cut + pd.to_timedelta(rng.integers(0, 90 * 86_400, n), unit="s")
                keep_null = changed.loc[rows, name].isna().to_numpy()
                changed.loc[rows, name] = pd.Series(shifted, index=rows).where(~keep_null)
            elif col.type == "date":
                changed.loc[rows, name] = (changed.loc[rows, name]
                                           + pd.to_timedelta(rng.integers(-20, 40, n), unit="D"))
            elif name == "dealer_id":
                changed.loc[rows, name] = rng.choice(dealers, n)
            elif name in ("supplier_id", "customer_supplier_id"):
                changed.loc[rows, name] = rng.choice(suppliers, n)
            elif col.type == "int" and name.endswith(_AMOUNTS):
                changed.loc[rows, name] = (changed.loc[rows, name] * rng.uniform(0.2, 3.0, n)).round().astype("int64")
            elif col.type == "bool":
                changed.loc[rows, name] = ~changed.loc[rows, name].astype(bool)
            elif name == "confirmation_status":
                changed.loc[rows, name] = rng.choice(["pending", "confirmed", "disputed", "withdrawn"], n)
        out[key] = changed.drop(index=changed.index[idx[drop]]).reset_index(drop=True)
    assert set(out) == {f"{s}.{t.name}" for s, ts in TABLES.items() for t in ts}
    return out


@pytest.fixture(scope="module")
def perturbed(frames):
    return perturb_future(frames, AS_OF)


def test_the_perturbation_really_changes_the_future(frames, perturbed):
    for key in ("dealer.sales", "dealer.loan_repayments", "erp.supplier_repayments", "erp.payables"):
        assert len(perturbed[key]) < len(frames[key])
        assert perturbed[key].dtypes.to_dict() == frames[key].dtypes.to_dict()
    later = pd.DataFrame({"application_id": frames["dealer.loan_applications"]["application_id"][:300],
                          "as_of": pd.Timestamp(AS_OF + dt.timedelta(days=21))})
    assert not post_loan_features(frames, later).equals(post_loan_features(perturbed, later))


def test_application_features_ignore_the_future(frames, perturbed):
    apps = frames["dealer.loan_applications"]
    apps = apps[apps["applied_at"] < pd.Timestamp(AS_OF)]
    expected = application_features(frames, apps)
    got = application_features(perturbed, apps)
    assert len(expected) > 1000
    pd.testing.assert_frame_equal(got, expected)


def test_supplier_features_ignore_the_future(frames, perturbed):
    ids = frames["erp.suppliers"]["supplier_id"]
    dates = [AS_OF - dt.timedelta(days=k) for k in (0, 1, 7, 45)]
    expected = supplier_features(frames, ids, dates)
    got = supplier_features(perturbed, ids, dates)
    assert expected["overdue_instalments_now"].sum() > 0 and expected["late_instalment_share_180d"].notna().any()
    # the "already stopped paying" features are exercised too
    for name in ("oldest_overdue_dpd", "unpaid_streak_dpd", "unpaid_due_30d", "missed_due_90d",
                 "due_since_last_payment"):
        assert expected[name].sum() > 0, name
    assert (expected["repaid_due_ratio_30d"] < 1).any()
    pd.testing.assert_frame_equal(got, expected)


def test_post_loan_features_ignore_the_future(frames, perturbed):
    apps = frames["dealer.loan_applications"]
    drawn = apps[apps["updated_at"] < pd.Timestamp(AS_OF)]
    loans = pd.DataFrame({"application_id": drawn["application_id"].to_numpy(), "as_of": pd.Timestamp(AS_OF)})
    expected = post_loan_features(frames, loans)
    got = post_loan_features(perturbed, loans)
    assert expected["vehicle_sold"].sum() > 0 and expected["dealer_overdue_loans_now"].sum() > 0
    pd.testing.assert_frame_equal(got, expected)


def test_as_of_is_a_date():
    assert day_of(AS_OF) == (AS_OF - dt.date(1970, 1, 1)).days
