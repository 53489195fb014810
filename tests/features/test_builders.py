"""Feature builders: columns match the definitions, labels match the simulator's truth,
inputs are checked, and the supplier instalment/label logic on hand-built rows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

import features
from features.definitions import FEATURES, feature_names
from features.frames import FeatureError

LAST = dt.date(2026, 3, 2)


def test_every_feature_is_defined_once_with_an_owner():
    for family, defs in FEATURES.items():
        names = [f.name for f in defs]
        assert len(names) == len(set(names))
        assert all(f.family == family and f.owner and f.unit and f.description for f in defs)
    with pytest.raises(KeyError, match="unknown feature family"):
        feature_names("nope")


def test_builders_produce_exactly_the_defined_columns(frames):
    dealer = features.dealer_pd_dataset(frames, LAST)
    assert list(dealer.columns) == ["application_id", "dealer_id", "obs_date", *feature_names("dealer_pd"), "label"]
    apps = frames["dealer.loan_applications"].head(50)
    assert list(features.application_features(frames, apps).columns) == feature_names("dealer_pd")
    supplier = features.supplier_pd_dataset(frames, LAST, horizon_days=60)
    assert list(supplier.columns) == ["supplier_id", "obs_date", *feature_names("supplier_pd"), "label"]
    assert len(supplier) > 0
    post = features.post_loan_dataset(frames, LAST)
    assert list(post.columns) == ["application_id", "dealer_id", "obs_date", *feature_names("post_loan_behaviour"),
                                  "label"]
    for df in (dealer, supplier, post):
        assert df["obs_date"].is_monotonic_increasing
        assert (df["obs_date"] < pd.Timestamp(LAST) + pd.Timedelta(days=1)).all()


def test_dealer_labels_match_the_simulated_defaults(frames, sim):
    ds = features.dealer_pd_dataset(frames, LAST)
    truth = sim.oracle_loans().set_index("application_id")["will_default"]
    assert len(ds) > 3000 and ds["label"].sum() > 50
    np.testing.assert_array_equal(ds["label"].to_numpy(), truth.reindex(ds["application_id"]).to_numpy().astype(int))
    apps = frames["dealer.loan_applications"]
    term = apps.set_index("application_id")["term_days"].reindex(ds["application_id"]).to_numpy()
    closed = ds["obs_date"] + pd.to_timedelta(term + 30, unit="D")
    assert (closed <= pd.Timestamp(LAST)).all()


def test_post_loan_observations_are_outstanding_loans_with_their_loan_label(frames, sim):
    ds = features.post_loan_dataset(frames, LAST)
    truth = sim.oracle_loans().set_index("application_id")["will_default"]
    np.testing.assert_array_equal(ds["label"].to_numpy(), truth.reindex(ds["application_id"]).to_numpy().astype(int))
    assert (ds["obs_date"].dt.day_of_week == 0).all()
    assert (ds["days_since_drawdown"] >= 1).all() and (ds["days_to_due"] > -30).all()
    bad, good = ds[ds["label"] == 1], ds[ds["label"] == 0]
    assert bad["days_sold_unpaid"].mean() > good["days_sold_unpaid"].mean()


def test_a_dataset_start_keeps_later_applications(frames):
    start = dt.date(2025, 11, 1)
    ds = features.dealer_pd_dataset(frames, LAST, start=start)
    assert ds["obs_date"].min() >= pd.Timestamp(start)


@pytest.mark.parametrize(("drop", "message"), [
    ("dealer.sales", "miss table 'dealer.sales'"),
    ("dealer.dealers", "miss table 'dealer.dealers'"),
    (("dealer.floor_audits", "skipped"), r"misses column\(s\) \['skipped'\]"),
    (("dealer.loan_repayments", "paid_at"), r"misses column\(s\) \['paid_at'\]"),
])
def test_a_missing_table_or_column_is_named(frames, drop, message):
    broken = dict(frames)
    if isinstance(drop, tuple):
        broken[drop[0]] = broken[drop[0]].drop(columns=drop[1])
    else:
        del broken[drop]
    with pytest.raises(FeatureError, match=message):
        features.dealer_pd_dataset(broken, LAST)


def test_supplier_inputs_are_checked(frames):
    broken = {k: v for k, v in frames.items() if k != "erp.sub_bom"}
    with pytest.raises(FeatureError, match="erp.sub_bom"):
        features.supplier_features(broken, ["S00001"], [LAST])
    with pytest.raises(FeatureError, match="not in erp.suppliers"):
        features.supplier_features(frames, ["S99999"], [LAST])
    with pytest.raises(FeatureError, match=r"datetime\.date"):
        features.dealer_pd_dataset(frames, dt.datetime(2026, 3, 2, 12))


# --------------------------------------------------------------------------------------------
# hand-built supplier rows: T1 sells part P1 (sub-BOM: T2's component) and P2 (no sub-BOM)

def ts(day: str, hour: int = 10) -> pd.Timestamp:
    return pd.Timestamp(day) + pd.Timedelta(hours=hour)


def supplier_frames(repayments: list[tuple[str, str, str, str]]) -> dict[str, pd.DataFrame]:
    """repayments: (payable_id, supplier_id, due_on, paid_at day)."""
    master = ts("2025-01-01", 6)
    receipts = [("R1", "T1", "P1", "2025-01-06"), ("R2", "T1", "P2", "2025-01-06"), ("R3", "T1", "P1", "2025-01-07")]
    payables = [("PY1", "R1", "confirmed", "2025-02-05"), ("PY2", "R2", "confirmed", "2025-02-05"),
                ("PY3", "R3", "disputed", "2025-02-06")]
    return {
        "erp.suppliers": pd.DataFrame({"supplier_id": ["T1", "T2"], "tier": [1, 2],
                                       "onboarded_on": pd.to_datetime(["2024-01-01", "2024-06-01"]),
                                       "updated_at": master}),
        "erp.bom": pd.DataFrame({"model_id": ["M1", "M1"], "part_id": ["P1", "P2"], "supplier_id": ["T1", "T1"],
                                 "quantity": [2, 1], "unit_price_fen": [1000, 2000], "updated_at": master}),
        "erp.sub_bom": pd.DataFrame({"parent_part_id": ["P1"], "supplier_id": ["T2"], "quantity": [3],
                                     "unit_price_fen": [100], "updated_at": master}),
        "erp.production": pd.DataFrame({"model_id": ["M1", "M1"], "produced_at": [ts("2025-01-06"), ts("2025-01-07")],
                                        "updated_at": [ts("2025-01-06", 11), ts("2025-01-07", 11)]}),
        "erp.goods_receipts": pd.DataFrame({
            "receipt_id": [r[0] for r in receipts], "supplier_id": [r[1] for r in receipts],
            "part_id": [r[2] for r in receipts], "amount_fen": [2000, 2000, 1000],
            "received_at": [ts(r[3]) for r in receipts], "updated_at": [ts(r[3], 12) for r in receipts]}),
        "erp.payables": pd.DataFrame({
            "payable_id": [p[0] for p in payables], "receipt_id": [p[1] for p in payables],
            "supplier_id": "T1", "amount_fen": [2000, 2000, 1000], "due_on": pd.to_datetime([p[3] for p in payables]),
            "confirmation_status": [p[2] for p in payables],
            "confirmed_at": [ts("2025-01-06", 13), ts("2025-01-06", 13), pd.NaT],
            "updated_at": [ts("2025-01-06", 14), ts("2025-01-06", 14), ts("2025-01-07", 14)]}),
        "erp.credit_memos": pd.DataFrame({"supplier_id": ["T1"], "amount_fen": [500], "issued_at": [ts("2025-01-08")],
                                          "updated_at": [ts("2025-01-08", 11)]}),
        "erp.supplier_repayments": pd.DataFrame({
            "payable_id": [r[0] for r in repayments], "supplier_id": [r[1] for r in repayments],
            "due_on": pd.to_datetime([r[2] for r in repayments]), "paid_at": [ts(r[3]) for r in repayments],
            "updated_at": [ts(r[3], 15) for r in repayments]}, columns=["payable_id", "supplier_id", "due_on",
                                                                        "paid_at", "updated_at"]),
    }


def test_supplier_features_on_hand_built_rows():
    frames = supplier_frames([("PY1", "T1", "2025-02-05", "2025-02-04"), ("PY2", "T1", "2025-02-05", "2025-02-10")])
    f = features.supplier_features(frames, ["T1", "T2"], [dt.date(2025, 1, 9), dt.date(2025, 2, 12)])
    t1, t2 = f.loc["T1"], f.loc["T2"]
    # BOM: T1 = 2×1000 + 2000 = 4000 of 4000; T2 = 3×100 × 2 parents used = 600
    assert t1["bom_share"].iloc[0] == 1.0 and t2["bom_share"].iloc[0] == pytest.approx(0.15)
    # two vehicles built need 8000 of T1 parts; 5000 received
    assert t1["delivery_ratio_30d"].iloc[0] == pytest.approx(5000 / 8000)
    assert np.isnan(t2["delivery_ratio_30d"]).all()
    jan9 = t1.loc[pd.Timestamp("2025-01-09")]
    assert jan9["payables_90d_fen"] == 5000 and jan9["disputed_share_90d"] == pytest.approx(0.2)
    assert jan9["dilution_ratio_90d"] == pytest.approx(0.1) and jan9["withdrawn_90d"] == 0
    assert np.isnan(jan9["late_instalment_share_180d"]) and np.isnan(jan9["days_since_last_payment"])
    feb12 = t1.loc[pd.Timestamp("2025-02-12")]
    assert feb12["late_instalment_share_180d"] == 0.5 and feb12["mean_days_late_180d"] == 2.5
    assert feb12["max_days_late_180d"] == 5 and feb12["days_since_last_payment"] == 2
    assert feb12["overdue_instalments_now"] == 0  # the disputed payable creates no instalment
    # T2's instalment of PY1 (its component is in P1) is unpaid
    assert t2.loc[pd.Timestamp("2025-02-12"), "overdue_instalments_now"] == 1
    assert t2.loc[pd.Timestamp("2025-01-09"), "overdue_instalments_now"] == 0


def test_supplier_default_features_on_hand_built_rows():
    """Already stopped paying? T1 pays PY1 a day early and PY2 five days late; T2 never pays its
    instalment of PY1 (all due 2025-02-05)."""
    frames = supplier_frames([("PY1", "T1", "2025-02-05", "2025-02-04"), ("PY2", "T1", "2025-02-05", "2025-02-10")])
    days = [dt.date(2025, 1, 9), dt.date(2025, 2, 6), dt.date(2025, 2, 11), dt.date(2025, 4, 10), dt.date(2025, 6, 1)]
    f = features.supplier_features(frames, ["T1", "T2"], days)
    t1, t2 = f.loc["T1"], f.loc["T2"]
    cols = ["oldest_overdue_dpd", "unpaid_streak_dpd", "unpaid_due_30d", "missed_due_30d", "missed_due_60d",
            "missed_due_90d", "due_since_last_payment"]
    # nothing due yet: counts and days 0, ratios undefined
    assert (t1.iloc[0][cols] == 0).all() and (t2.iloc[0][cols] == 0).all()
    assert np.isnan(t1.iloc[0]["repaid_due_ratio_30d"]) and np.isnan(t2.iloc[0]["repaid_due_ratio_90d"])
    # Feb 6: PY2 is one day past due and due after T1's last payment (Feb 4)
    feb6 = t1.loc[pd.Timestamp("2025-02-06")]
    assert feb6[cols].tolist() == [1, 1, 1, 1, 1, 1, 1] and feb6["repaid_due_ratio_30d"] == 0.5
    # Feb 11: PY2 paid late (known from Feb 11): nothing unpaid, one instalment missed its due date
    feb11 = t1.loc[pd.Timestamp("2025-02-11")]
    assert feb11[cols].tolist() == [0, 0, 0, 1, 1, 1, 0] and feb11["repaid_due_ratio_30d"] == 1.0
    # Apr 10 (64 days after due): only the 90-day windows still see PY2's late payment
    apr10 = t1.loc[pd.Timestamp("2025-04-10")]
    assert apr10[cols].tolist() == [0, 0, 0, 0, 0, 1, 0] and np.isnan(apr10["repaid_due_ratio_30d"])
    # T2 never paid: its instalment stays overdue, its days past due grow
    assert t2["oldest_overdue_dpd"].tolist() == [0, 1, 6, 64, 116]
    assert t2["unpaid_streak_dpd"].tolist() == [0, 1, 6, 64, 116]
    assert t2["due_since_last_payment"].tolist() == [0, 1, 1, 1, 1]
    assert t2["repaid_due_ratio_90d"].iloc[1:4].tolist() == [0.0, 0.0, 0.0]


def test_a_lost_repayment_row_counts_as_overdue_but_not_as_a_payment_streak():
    """T1 paid PY2 on time but its PY1 row is missing (quarantined): PY1 stays overdue for good,
    while the later payment shows that T1 has not stopped paying."""
    frames = supplier_frames([("PY2", "T1", "2025-02-05", "2025-02-05")])
    f = features.supplier_features(frames, ["T1"], [dt.date(2025, 3, 1)]).loc["T1"].iloc[0]
    assert f["overdue_instalments_now"] == 1 and f["oldest_overdue_dpd"] == 24
    assert f["unpaid_streak_dpd"] == 0 and f["due_since_last_payment"] == 0


@pytest.mark.parametrize(("t2_paid", "expected_label"), [
    (None, 1),  # never paid: bad on 2025-02-05 + 60 days
    ("2025-04-05", 0),  # paid on day 59: not bad
    ("2025-04-07", 1),  # paid on day 61: bad anyway
])
def test_supplier_label_is_60_days_unpaid_within_the_horizon(t2_paid, expected_label):
    reps = [("PY1", "T1", "2025-02-05", "2025-02-04"), ("PY2", "T1", "2025-02-05", "2025-02-05")]
    if t2_paid:
        reps.append(("PY1", "T2", "2025-02-05", t2_paid))
    # T2 has a single instalment here: materiality's minimum count is lowered to 1 for it
    ds = features.supplier_pd_dataset(supplier_frames(reps), dt.date(2025, 6, 1), snapshot_every_days=30,
                                      horizon_days=90, bad_min_count=1)
    # snapshots from 2025-01-06 (the first receipt) every 30 days; only the 90-day horizons of
    # 01-06 and 02-05 have elapsed by June 1, the later ones are kept only if bad in them (T2 is
    # bad on 04-06 itself, which is the end of the 01-06 horizon: outside it)
    snaps = pd.to_datetime(["2025-01-06", "2025-02-05", "2025-03-07", "2025-04-06"])
    t2 = ds[ds["supplier_id"] == "T2"].set_index("obs_date")["label"]
    assert t2.index.tolist() == (snaps.tolist() if expected_label else snaps[:2].tolist())
    assert t2.tolist() == ([0, 1, 1, 1] if expected_label else [0, 0])
    assert ds.loc[ds["supplier_id"] == "T1", "obs_date"].tolist() == snaps[:2].tolist()
    assert ds.loc[ds["supplier_id"] == "T1", "label"].tolist() == [0, 0]
    # once bad, later snapshots are left out; open rows (horizon not elapsed, not bad) too
    later = features.supplier_pd_dataset(supplier_frames(reps), dt.date(2025, 6, 10), snapshot_every_days=30,
                                         horizon_days=90, bad_min_count=1)
    default = features.supplier_pd_dataset(supplier_frames(reps), dt.date(2025, 6, 1), snapshot_every_days=30,
                                           horizon_days=90)
    assert default["label"].sum() == 0  # one unpaid instalment is below the materiality count (2)
    t2_later = later[later["supplier_id"] == "T2"]
    if expected_label:
        assert t2_later["obs_date"].max() <= pd.Timestamp("2025-04-06")
    assert (later["obs_date"] + pd.Timedelta(days=90) <= pd.Timestamp("2025-06-10")).where(
        later["label"] == 0, True).all()


def dealer_frames() -> dict[str, pd.DataFrame]:
    """Dealer D1 buys three cars on Jan 2; V1 sells Jan 10 and its loan is repaid Jan 11, V2
    sells Jan 12 and its loan is repaid Jan 30 (sold out of trust), V3 is unsold and its loan is
    repaid at due; the loans ask 60 %, 80 % and no appraisal (LTV undefined) for 30, 90 and 60 days."""
    master = ts("2024-12-01", 6)
    vins = ["V1", "V2", "V3"]
    return {
        "dealer.dealers": pd.DataFrame({"dealer_id": ["D1", "D2"], "city_tier": [1, 2],
                                        "onboarded_on": pd.to_datetime(["2024-06-01", "2024-06-01"]),
                                        "updated_at": master}),
        "dealer.inventory": pd.DataFrame({
            "vin": vins, "dealer_id": "D1", "model_year": 2020, "mileage_km": 50_000,
            "purchase_price_fen": 1_000_000, "appraised_value_fen": [1_000_000, 1_000_000, 0],
            "acquired_at": ts("2025-01-02"), "updated_at": ts("2025-01-02", 11)}),
        "dealer.sales": pd.DataFrame({"vin": ["V1", "V2"], "dealer_id": "D1", "sale_price_fen": 1_000_000,
                                      "sold_at": [ts("2025-01-10"), ts("2025-01-12")],
                                      "updated_at": [ts("2025-01-10", 11), ts("2025-01-12", 11)]}),
        "dealer.floor_audits": pd.DataFrame(columns=["dealer_id", "audited_at", "vehicles_expected",
                                                     "vehicles_found", "skipped", "updated_at"]),
        "dealer.loan_applications": pd.DataFrame({
            "application_id": ["A1", "A2", "A3"], "dealer_id": "D1", "vin": vins,
            "purchase_price_fen": 1_000_000, "appraised_value_fen": [1_000_000, 1_000_000, 0],
            "requested_fen": [600_000, 800_000, 500_000], "term_days": [30, 90, 60],
            "applied_at": ts("2025-01-02", 12), "updated_at": ts("2025-01-02", 13)}),
        "dealer.loan_repayments": pd.DataFrame({
            "application_id": ["A1", "A2", "A3"], "dealer_id": "D1",
            "due_on": pd.to_datetime(["2025-02-01", "2025-04-02", "2025-03-03"]),
            "paid_at": [ts("2025-01-11"), ts("2025-01-30"), ts("2025-03-03")],
            "updated_at": [ts("2025-01-11", 11), ts("2025-01-30", 11), ts("2025-03-03", 11)]}),
    }


def test_dealer_sold_out_of_trust_and_loan_terms_on_hand_built_rows():
    from features.dealer import DealerPanel
    from features.frames import day_of

    days = [dt.date(2025, 1, 2), dt.date(2025, 1, 3), dt.date(2025, 1, 12), dt.date(2025, 1, 31),
            dt.date(2025, 3, 4), dt.date(2025, 7, 30)]
    day = np.array([day_of(d) for d in days])
    panel = DealerPanel(dealer_frames(), int(day.min()), int(day.max()))
    f = panel.features(np.zeros(len(days), dtype=np.int64), day)
    # the applications count from the day after they are applied for
    assert f["applications_90d"].tolist() == [0, 3, 3, 3, 3, 0]
    assert np.isnan(f["ltv_mean_90d"].iloc[0]) and f["ltv_mean_90d"].iloc[1] == pytest.approx(0.7)
    assert f["long_term_share_90d"].iloc[1] == pytest.approx(1 / 3)
    # Jan 12: A1 repaid one day after V1's sale; Jan 31: A2 repaid 18 days after V2's sale (> 5:
    # sold out of trust); Mar 4: A3 repaid with V3 unsold is not counted; after 180 days, none
    sot = f["sale_to_repay_days_180d"].tolist()
    assert np.isnan(sot[0]) and np.isnan(sot[1]) and sot[2:5] == [1.0, 9.5, 9.5] and np.isnan(sot[5])
    share = f["repaid_late_after_sale_share_180d"].tolist()
    assert share[2:5] == [0.0, 0.5, 0.5]
    # D2 has no application and no repayment
    d2 = panel.features(np.ones(1, dtype=np.int64), day[-2:-1])
    assert d2["applications_90d"].iloc[0] == 0 and np.isnan(d2["sale_to_repay_days_180d"].iloc[0])
