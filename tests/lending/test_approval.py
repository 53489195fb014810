"""decide(): hard rules, bands, amounts, the dealer limit across a batch, reason codes, determinism."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.definitions import DEALER_PD, FEATURES
from lending.approval import OUTPUT_COLUMNS, DecisionInputError, decide, feature_hash
from lending.policy import APPROVAL_POLICY_V1 as POLICY
from lending.policy import load_approval_policy
from lending.reasons import REASONS, RULE_CODES, Reason, model_code, reason_text

CNY = 100
APPRAISED = 100_000 * CNY
TIER1_LIMIT = 60_000_000 * CNY


def app(application_id: str = "A1", **overrides) -> dict:
    row = {"application_id": application_id, "dealer_id": "D1", "vin": f"VIN-{application_id}",
           "appraised_value_fen": APPRAISED, "requested_fen": 60_000 * CNY, "term_days": 60,
           "applied_at": pd.Timestamp("2024-03-01 09:00"), "vehicle_age_years": 4, "mileage_km": 80_000,
           "vin_financed": False, "feature_hash": f"h-{application_id}"}
    row.update(overrides)
    return row


def score(application_id: str = "A1", pd_value: float = 0.01, reasons=(None, None, None, None)) -> dict:
    return {"application_id": application_id, "pd": pd_value,
            **{f"reason_{i + 1}": r for i, r in enumerate(reasons)}}


def dealer(dealer_id: str = "D1", **overrides) -> dict:
    row = {"dealer_id": dealer_id, "blocked": False, "frozen": False, "city_tier": 1, "outstanding_fen": 0,
           "limit_cut": 1.0}
    row.update(overrides)
    return row


def run(apps: list[dict], scores: list[dict] | None = None, dealers: list[dict] | None = None,
        policy=POLICY) -> pd.DataFrame:
    scores = scores if scores is not None else [score(a["application_id"]) for a in apps]
    dealers = dealers if dealers is not None else [dealer(d) for d in sorted({a["dealer_id"] for a in apps})]
    return decide(pd.DataFrame(apps), pd.DataFrame(scores).set_index("application_id"), pd.DataFrame(dealers),
                  policy, model_version="7")


def one(app_overrides=None, pd_value=0.01, reasons=(None,) * 4, **dealer_overrides) -> pd.Series:
    out = run([app(**(app_overrides or {}))], [score("A1", pd_value, reasons)], [dealer(**dealer_overrides)])
    return out.iloc[0]


def codes(row) -> list[str]:
    return json.loads(row["reason_codes"])


# hard rules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("app_overrides, dealer_overrides, code", [
    ({}, {"blocked": True}, "R01"),
    ({"vehicle_age_years": 11}, {}, "R02"),
    ({"mileage_km": 200_001}, {}, "R03"),
    ({"vin_financed": True}, {}, "R04"),
    ({}, {"frozen": True}, "R05"),
    ({}, {"outstanding_fen": TIER1_LIMIT}, "R06"),
    ({}, {"outstanding_fen": TIER1_LIMIT - 9_999 * CNY}, "R06"),  # what is left is below the minimum loan
    ({}, {"outstanding_fen": TIER1_LIMIT // 2, "limit_cut": 0.5}, "R06"),  # early warning cut the limit
    ({}, {"limit_cut": 0.0}, "R06"),  # red: no limit left (and frozen, R05, in practice)
])
def test_each_hard_rule_declines_with_its_code(app_overrides, dealer_overrides, code):
    row = one(app_overrides, pd_value=0.01, **dealer_overrides)
    assert (row["decision"], row["amount_fen"], row["el_fen"]) == ("declined", 0, 0)
    assert codes(row) == [code]
    assert row["reason_text_en"] == reason_text(code, "en", max_vehicle_age_years="10", max_mileage_km="200,000")
    assert row["band"] == "A"  # the band is still reported


@pytest.mark.parametrize("app_overrides", [{"vehicle_age_years": 10}, {"mileage_km": 200_000}])
def test_the_limits_themselves_are_allowed(app_overrides):
    assert one(app_overrides)["decision"] == "approved"


def test_rule_texts_name_the_policy_limits():
    row = one({"vehicle_age_years": 15, "mileage_km": 300_000})
    assert codes(row) == ["R02", "R03"]
    assert row["reason_text_en"] == ("The vehicle is older than the 10-year limit; "
                                     "The vehicle's mileage exceeds the 200,000 km limit")
    assert row["reason_text_zh"] == "车龄超过10年上限; 行驶里程超过200,000公里上限"


def test_every_rule_that_fires_is_listed_up_to_four():
    row = one({"vehicle_age_years": 15, "mileage_km": 300_000, "vin_financed": True}, blocked=True, frozen=True)
    assert codes(row) == ["R01", "R02", "R03", "R04"]


def test_frozen_dealer_is_declined_whatever_its_pd_and_limit():
    apps = [app(f"A{i}", dealer_id="D1") for i in range(3)] + [app("B1", dealer_id="D2")]
    out = run(apps, dealers=[dealer("D1", frozen=True), dealer("D2")]).set_index("application_id")
    assert (out.loc[["A0", "A1", "A2"], "decision"] == "declined").all()
    assert out.loc[["A0", "A1", "A2"], "reason_codes"].map(json.loads).map(lambda c: c[0]).eq("R05").all()
    assert out.loc["B1", "decision"] == "approved"


# bands ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pd_value, band, decision, amount, rule_codes", [
    (0.01, "A", "approved", 60_000 * CNY, []),
    (0.02999949, "A", "approved", 60_000 * CNY, []),  # shown as 0.029999: still A
    (0.04, "B", "approved", 60_000 * CNY, []),         # 60 % asked, B lends up to 70 %
    (0.08, "C", "reduced", 55_000 * CNY, ["R07"]),     # reduce band: down to 55 %
    (0.12, "D", "review", 50_000 * CNY, ["R10", "R07"]),
    (0.25, "E", "declined", 0, ["R11"]),
    (1.0, "E", "declined", 0, ["R11"]),
])
def test_each_band(pd_value, band, decision, amount, rule_codes):
    row = one(pd_value=pd_value, reasons=("sales_trend", None, None, None))
    assert (row["band"], row["decision"], row["amount_fen"]) == (band, decision, amount)
    expected = rule_codes + ["M_sales_trend"] if decision != "approved" else []
    assert codes(row) == expected


def test_band_uses_the_pd_as_shown():
    row = one(pd_value=0.0299996)  # rounds to 0.03: band B, as a reader of the output would expect
    assert (row["pd"], row["band"]) == (0.03, "B")


def test_reduce_band_approves_a_request_already_within_its_rate():
    row = one({"requested_fen": 50_000 * CNY}, pd_value=0.08)
    assert (row["decision"], row["amount_fen"], codes(row)) == ("approved", 50_000 * CNY, [])


# amounts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pd_value, requested, appraised, outstanding, decision, amount, rule_codes", [
    # approve band A (80 %): the request fits
    (0.01, 70_000, 100_000, 0, "approved", 70_000, []),
    # ... the advance rate binds, even in an approve band
    (0.01, 95_000, 100_000, 0, "reduced", 80_000, ["R07"]),
    # ... the remaining limit binds: 60,000,000 - 59,960,000 = 40,000 left
    (0.01, 70_000, 100_000, 59_960_000, "reduced", 40_000, ["R08"]),
    # ... both bind at the same amount: both named
    (0.01, 95_000, 100_000, 59_920_000, "reduced", 80_000, ["R07", "R08"]),
    # floor to whole fen: 0.70 x 33,333.33 CNY = 23,333.331 CNY -> 2,333,333 fen
    (0.04, 30_000, 33_333.33, 0, "reduced", 23_333.33, ["R07"]),
    # 0.55 x 12,345.67 = 6,790.1185 CNY: below the 10,000 CNY minimum
    (0.08, 12_000, 12_345.67, 0, "declined", 0, ["R07", "R09"]),
    # the request itself is below the minimum
    (0.01, 9_999.99, 100_000, 0, "declined", 0, ["R09"]),
    (0.01, 10_000, 100_000, 0, "approved", 10_000, []),
])
def test_amount_is_min_of_request_advance_and_remaining_limit(pd_value, requested, appraised, outstanding,
                                                              decision, amount, rule_codes):
    row = one({"requested_fen": round(requested * CNY), "appraised_value_fen": round(appraised * CNY)},
              pd_value=pd_value, outstanding_fen=outstanding * CNY)
    assert (row["decision"], row["amount_fen"], codes(row)) == (decision, round(amount * CNY), rule_codes)


def test_limit_cut_and_city_tier_set_the_limit():
    # tier 4: 15,000,000 CNY x 0.3 = 4,500,000; 4,470,000 outstanding leaves 30,000
    row = one({"requested_fen": 60_000 * CNY}, city_tier=4, limit_cut=0.3, outstanding_fen=4_470_000 * CNY)
    assert (row["decision"], row["amount_fen"], codes(row)) == ("reduced", 30_000 * CNY, ["R08"])


@pytest.mark.parametrize("pd_value, amount, el", [
    (0.01, 60_000 * CNY, 27_000),         # 0.01 x 0.45 x 6,000,000 fen
    (0.01, 1_111_000, 5_000),             # 4,999.5 exactly -> 5,000 (floats give 4,999.499...)
    (0.0123456, 1_234_567, 6_859),        # 0.012346 x 0.45 x 1,234,567 = 6,858.8 -> 6,859
    (0.04, 1_000_025, 18_000),            # 18,000.45 -> 18,000
    (0.044444, 1_000_000, 20_000),        # 19,999.8 -> 20,000
    (0.02, 1_000_050, 9_000),             # 9,000.45 -> 9,000 (half up only at .5)
    (0.01, 1_000_001, 4_500),             # 4,500.0045
    (0.02, 1_111_115, 10_000),            # 10,000.035
    (0.000001, 1_111_112, 1),             # 0.5000004 -> 1
])
def test_expected_loss_is_pd_lgd_ead_rounded_half_up(pd_value, amount, el):
    row = one({"requested_fen": amount}, pd_value=pd_value)
    assert row["amount_fen"] == amount
    assert row["el_fen"] == el


def test_expected_loss_exact_half_rounds_up():
    policy = load_approval_policy({**POLICY.as_mapping(), "lgd": 0.5, "min_amount_fen": 0})
    row = run([app(requested_fen=1_000_001)], [score("A1", 0.000001)], policy=policy).iloc[0]
    assert row["el_fen"] == 1  # 0.000001 x 0.5 x 1,000,001 = 0.5000005; and 0.5 exactly:
    row = run([app(requested_fen=1_000_000)], [score("A1", 0.000001)], policy=policy).iloc[0]
    assert row["el_fen"] == 1


# the dealer limit across a batch ----------------------------------------------------------------

def test_limit_is_consumed_in_order_of_application_time_then_id():
    t = pd.Timestamp("2024-03-01 09:00")
    apps = [
        app("A9", applied_at=t),                                # first: 60,000
        app("A1", applied_at=t + pd.Timedelta(hours=1)),        # same time as A2, lower id: second
        app("A2", applied_at=t + pd.Timedelta(hours=1)),        # third: only 30,000 left
        app("A0", applied_at=t + pd.Timedelta(hours=2)),        # fourth: nothing left
        app("B1", dealer_id="D2", applied_at=t),                # another dealer, its own limit
    ]
    dealers = [dealer("D1", outstanding_fen=TIER1_LIMIT - 150_000 * CNY), dealer("D2")]
    out = run(apps, dealers=dealers).set_index("application_id")
    assert out.loc["A9", ["decision", "amount_fen"]].tolist() == ["approved", 60_000 * CNY]
    assert out.loc["A1", ["decision", "amount_fen"]].tolist() == ["approved", 60_000 * CNY]
    assert out.loc["A2", ["decision", "amount_fen"]].tolist() == ["reduced", 30_000 * CNY]
    assert codes(out.loc["A2"]) == ["R08"]
    assert out.loc["A0", ["decision", "amount_fen"]].tolist() == ["declined", 0]
    assert codes(out.loc["A0"]) == ["R06"]
    assert out.loc["B1", "decision"] == "approved"
    assert list(out.index) == ["A0", "A1", "A2", "A9", "B1"]  # output sorted by application id


def test_declined_applications_consume_nothing_and_reviews_reserve():
    apps = [app("A1", vehicle_age_years=20),          # declined by a rule
            app("A2", applied_at=pd.Timestamp("2024-03-01 10:00")),  # band D review: 50,000 reserved
            app("A3", applied_at=pd.Timestamp("2024-03-01 11:00")),  # band E declined
            app("A4", applied_at=pd.Timestamp("2024-03-01 12:00"))]
    scores = [score("A1", 0.01), score("A2", 0.12), score("A3", 0.5), score("A4", 0.01)]
    out = run(apps, scores, [dealer(outstanding_fen=TIER1_LIMIT - 100_000 * CNY)]).set_index("application_id")
    assert out["decision"].tolist() == ["declined", "review", "declined", "reduced"]
    assert out.loc["A2", "amount_fen"] == 50_000 * CNY
    assert out.loc["A4", "amount_fen"] == 100_000 * CNY - 50_000 * CNY  # what the review left
    assert codes(out.loc["A4"]) == ["R08"]


def test_same_vin_twice_in_a_batch_is_financed_once():
    t = pd.Timestamp("2024-03-01 09:00")
    apps = [app("A1", vin="LSVX1", applied_at=t), app("A2", vin="LSVX1", dealer_id="D2", applied_at=t),
            app("A3", vin="LSVX2", applied_at=t, vehicle_age_years=30), app("A4", vin="LSVX2", applied_at=t)]
    out = run(apps).set_index("application_id")
    assert out["decision"].tolist() == ["approved", "declined", "declined", "approved"]
    assert codes(out.loc["A2"]) == ["R04"]


# reason codes -----------------------------------------------------------------------------------

def test_every_dealer_pd_feature_has_a_model_code_with_texts():
    for feature in FEATURES[DEALER_PD]:
        reason = REASONS[model_code(feature.name)]
        assert isinstance(reason, Reason) and reason.code == f"M_{feature.name}"
        assert reason.zh and reason.en and reason.zh != reason.en
        assert not reason.params
    texts = [REASONS[model_code(f.name)].en for f in FEATURES[DEALER_PD]]
    assert len(set(texts)) == len(texts)  # specific, not one generic text


def test_rule_codes_and_their_texts():
    assert RULE_CODES == tuple(f"R{i:02d}" for i in range(1, 12))
    params = {"max_vehicle_age_years": "10", "max_mileage_km": "200,000", "min_amount_cny": "10,000",
              "band": "C", "advance_pct": "55%"}
    for code in RULE_CODES:
        assert reason_text(code, "en", **params) and reason_text(code, "zh", **params)
    assert reason_text("R07", "en", **params) == ("Amount reduced to 55% of the appraised value, the advance "
                                                  "rate of risk band C")
    assert reason_text("M_sales_trend", "zh") == "销量较自身历史水平下降"
    with pytest.raises(KeyError, match="max_vehicle_age_years"):
        reason_text("R02", "en")
    with pytest.raises(KeyError, match="R99"):
        reason_text("R99", "en")
    with pytest.raises(ValueError, match="lang"):
        reason_text("R01", "fr")


def test_model_codes_follow_rule_codes_deduplicated_and_capped():
    reasons = ("ltv", "sales_trend", "ltv", "overdue_30_now")
    row = one({"vin_financed": True}, pd_value=0.5, reasons=reasons, frozen=True)
    assert codes(row) == ["R04", "R05", "M_ltv", "M_sales_trend"]
    assert row["reason_text_en"].split("; ")[2:] == [REASONS["M_ltv"].en, REASONS["M_sales_trend"].en]
    row = one(pd_value=0.5, reasons=reasons)
    assert codes(row) == ["R11", "M_ltv", "M_sales_trend", "M_overdue_30_now"]


def test_every_non_approval_has_a_specific_code_and_approvals_none():
    rng = np.random.default_rng(3)
    n = 300
    names = [f.name for f in FEATURES[DEALER_PD]]
    apps = [app(f"A{i:03d}", dealer_id=f"D{i % 7}", requested_fen=int(rng.integers(5_000, 90_000)) * CNY,
                vehicle_age_years=int(rng.integers(0, 14)), mileage_km=int(rng.integers(0, 260_000)),
                vin_financed=bool(rng.random() < 0.05), applied_at=pd.Timestamp("2024-03-01") +
                pd.Timedelta(minutes=int(rng.integers(0, 600)))) for i in range(n)]
    scores = [score(f"A{i:03d}", float(rng.beta(1, 15)), tuple(rng.choice(names + [None], 4)))
              for i in range(n)]
    dealers = [dealer(f"D{j}", blocked=j == 1, frozen=j == 2, city_tier=j % 4 + 1,
                      outstanding_fen=[0, 0, 0, 45_000_000, 49_000_000, 0, 0][j]) for j in range(7)]
    out = run(apps, scores, dealers)
    assert set(out["decision"]) == {"approved", "reduced", "review", "declined"}
    for _, row in out.iterrows():
        c = codes(row)
        if row["decision"] == "approved":
            assert c == [] and row["reason_text_en"] == "" and row["reason_text_zh"] == ""
        else:
            assert 1 <= len(c) <= 4 and c[0] in RULE_CODES and len(set(c)) == len(c)
            assert len(row["reason_text_en"].split("; ")) == len(c) == len(row["reason_text_zh"].split("; "))


# determinism and output shape ---------------------------------------------------------------------

def _batch(seed: int = 11, n: int = 200):
    rng = np.random.default_rng(seed)
    names = [f.name for f in FEATURES[DEALER_PD]]
    apps = pd.DataFrame([app(f"A{i:04d}", dealer_id=f"D{i % 5}", requested_fen=int(rng.integers(1e6, 1e7)),
                             appraised_value_fen=int(rng.integers(1e6, 1.5e7)),
                             applied_at=pd.Timestamp("2024-03-01") + pd.Timedelta(minutes=int(rng.integers(0, 60))))
                         for i in range(n)])
    scores = pd.DataFrame([score(f"A{i:04d}", float(rng.beta(1, 12)), tuple(rng.choice(names + [None], 4)))
                           for i in range(n)]).set_index("application_id")
    dealers = pd.DataFrame([dealer(f"D{j}", city_tier=j % 4 + 1, outstanding_fen=j * 9_000_000,
                                   limit_cut=[1.0, 0.7, 0.5, 1.0, 0.9][j]) for j in range(5)])
    return apps, scores, dealers


def test_rerun_and_shuffled_inputs_give_byte_identical_output():
    apps, scores, dealers = _batch()
    first = decide(apps, scores, dealers, POLICY, model_version="7").to_csv(index=False)
    again = decide(apps.copy(), scores.copy(), dealers.copy(), POLICY, model_version="7").to_csv(index=False)
    shuffled = decide(apps.sample(frac=1, random_state=1).set_index(pd.Index(range(500, 700))),
                      scores.sample(frac=1, random_state=2), dealers.sample(frac=1, random_state=3), POLICY,
                      model_version="7").to_csv(index=False)
    assert first == again == shuffled
    out = pd.read_csv(pd.io.common.StringIO(first))
    assert tuple(out.columns) == OUTPUT_COLUMNS
    assert (out["policy_version"] == POLICY.version).all() and (out["model_version"] == 7).all()


def test_output_columns_types_and_pass_through():
    apps, scores, dealers = _batch(n=20)
    scores["pd"] = scores["pd"] + 1e-9
    out = decide(apps, scores, dealers, POLICY, model_version="7")
    assert tuple(out.columns) == OUTPUT_COLUMNS
    assert out["amount_fen"].dtype == np.int64 and out["el_fen"].dtype == np.int64
    assert (out["pd"] == out["pd"].round(6)).all()
    assert out["feature_hash"].tolist() == [f"h-A{i:04d}" for i in range(20)]
    assert out["application_id"].is_monotonic_increasing and list(out.index) == list(range(20))


def test_scores_may_be_keyed_by_column():
    apps, scores, dealers = _batch(n=20)
    a = decide(apps, scores, dealers, POLICY, model_version="7")
    b = decide(apps, scores.reset_index(), dealers, POLICY, model_version="7")
    pd.testing.assert_frame_equal(a, b)


# input contract ---------------------------------------------------------------------------------

@pytest.mark.parametrize("break_inputs, match", [
    (lambda a, s, d: (a.drop(columns="vin"), s, d), r"apps: missing columns \['vin'\]"),
    (lambda a, s, d: (a, s.drop(columns="reason_4"), d), r"scores: missing columns \['reason_4'\]"),
    (lambda a, s, d: (a, s, d.drop(columns="limit_cut")), r"dealers: missing columns \['limit_cut'\]"),
    (lambda a, s, d: (a, s.assign(pd=[np.nan] + [0.1] * 19), d), r"scores.pd: .*\['A0000'\] have \[nan\]"),
    (lambda a, s, d: (a, s.assign(pd=[1.2] + [0.1] * 19), d), r"scores.pd: expected a probability in \[0, 1\]"),
    (lambda a, s, d: (a, s.assign(pd=[-0.01] + [0.1] * 19), d), r"scores.pd: .*\[-0.01\]"),
    (lambda a, s, d: (a, s.iloc[1:], d), r"scores: no score for applications \['A0000'\]"),
    (lambda a, s, d: (a, s.assign(reason_1="not_a_feature"), d), r"scores.reason_1: expected a dealer_pd feature"),
    (lambda a, s, d: (a, s, d[d.dealer_id != "D3"]), r"apps.dealer_id: dealers \['D3'\]"),
    (lambda a, s, d: (pd.concat([a, a.iloc[:1]]), s, d), r"apps.application_id: expected unique keys"),
    (lambda a, s, d: (a, s, pd.concat([d, d.iloc[:1]])), r"dealers.dealer_id: expected unique keys"),
    (lambda a, s, d: (a, s, d.assign(city_tier=5)), r"dealers.city_tier: expected one of \[1, 2, 3, 4\]"),
    (lambda a, s, d: (a, s, d.assign(limit_cut=-0.1)), r"dealers.limit_cut: expected a multiplier in \[0, 1\]"),
    (lambda a, s, d: (a, s, d.assign(limit_cut=1.5)), r"dealers.limit_cut: expected a multiplier in \[0, 1\]"),
    (lambda a, s, d: (a, s, d.assign(blocked=None)), r"dealers.blocked: expected booleans"),
    (lambda a, s, d: (a.assign(requested_fen=1.5), s, d), r"apps.requested_fen: expected whole numbers >= 1"),
    (lambda a, s, d: (a.assign(requested_fen=-100), s, d), r"apps.requested_fen: expected whole numbers >= 1"),
    (lambda a, s, d: (a.assign(appraised_value_fen=np.nan), s, d), r"apps.appraised_value_fen: expected whole"),
    (lambda a, s, d: (a.assign(vin_financed="no"), s, d), r"apps.vin_financed: expected booleans"),
    (lambda a, s, d: (a.assign(applied_at="soon"), s, d), r"apps.applied_at: expected timestamps"),
])
def test_broken_inputs_raise_naming_the_problem(break_inputs, match):
    apps, scores, dealers = break_inputs(*_batch(n=20))
    with pytest.raises(DecisionInputError, match=match):
        decide(apps, scores, dealers, POLICY, model_version="7")


def test_decision_input_error_is_a_value_error():
    assert issubclass(DecisionInputError, ValueError)


# property: the amount never exceeds any of its bounds ---------------------------------------------

_app_rows = st.lists(st.tuples(
    st.integers(0, 2),                      # dealer
    st.integers(0, 5),                      # applied_at (hours)
    st.integers(100_000, 20_000_000),       # appraised fen
    st.integers(100_000, 20_000_000),       # requested fen
    st.floats(0, 1, allow_nan=False),       # pd
    st.integers(0, 12),                     # age
    st.booleans(),                          # vin financed
    st.integers(0, 5),                      # vin (collisions on purpose)
), min_size=1, max_size=25)
_dealer_rows = st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 4),
                                  st.integers(0, 60_000_000), st.sampled_from([1.0, 0.8, 0.5, 0.05])),
                        min_size=3, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_app_rows, dealer_rows=_dealer_rows)
def test_property_amount_within_every_bound_and_zero_iff_declined(rows, dealer_rows):
    t0 = pd.Timestamp("2024-03-01")
    apps = [app(f"A{i:02d}", dealer_id=f"D{d}", applied_at=t0 + pd.Timedelta(hours=h), appraised_value_fen=av,
                requested_fen=rq, vehicle_age_years=age, vin_financed=fin, vin=f"V{vin}")
            for i, (d, h, av, rq, _, age, fin, vin) in enumerate(rows)]
    scores = [score(f"A{i:02d}", r[4]) for i, r in enumerate(rows)]
    dealers = [dealer(f"D{j}", blocked=b, frozen=f, city_tier=tier, outstanding_fen=out, limit_cut=cut)
               for j, (b, f, tier, out, cut) in enumerate(dealer_rows)]
    result = run(apps, scores, dealers).set_index("application_id")

    left = {f"D{j}": int(POLICY.dealer_limit_fen_by_city_tier[tier] * cut + 1e-6) - out
            for j, (_, _, tier, out, cut) in enumerate(dealer_rows)}
    financed_vins: set[str] = set()
    for a in sorted(apps, key=lambda a: (a["applied_at"], a["application_id"])):
        row = result.loc[a["application_id"]]
        band = POLICY.bands[POLICY.band_index(row["pd"])]
        amount = row["amount_fen"]
        assert amount <= a["requested_fen"]
        assert amount <= a["appraised_value_fen"] * band.advance_bp // 10_000
        assert amount <= max(left[a["dealer_id"]], 0)
        assert (amount == 0) == (row["decision"] == "declined")
        if row["decision"] != "declined":
            assert amount >= POLICY.min_amount_fen
            assert a["vin"] not in financed_vins
            financed_vins.add(a["vin"])
        left[a["dealer_id"]] -= amount
        assert abs(row["el_fen"] - row["pd"] * POLICY.lgd * amount) <= 0.5 + 1e-6
        assert (codes(row) == []) == (row["decision"] == "approved")


# feature hash -----------------------------------------------------------------------------------

def test_feature_hash_is_canonical():
    frame = pd.DataFrame({"b": [1.0, np.nan, 0.1 + 0.2], "a": [3, 4, 5], "c": ["x", None, "z"]},
                         index=[10, 20, 30])
    hashes = feature_hash(frame)
    assert list(hashes.index) == [10, 20, 30] and hashes.str.len().eq(64).all()
    expected = hashlib.sha256(b'{"a":3.0,"b":1.0,"c":"x"}').hexdigest()
    assert hashes.loc[10] == expected
    assert hashes.loc[20] == hashlib.sha256(b'{"a":4.0,"b":null,"c":null}').hexdigest()
    assert hashes.loc[30] == hashlib.sha256(b'{"a":5.0,"b":0.3,"c":"z"}').hexdigest()  # 0.30000000000000004
    # column order, integer vs float, and the index do not matter; values do
    same = frame[["c", "a", "b"]].astype({"a": float}).reset_index(drop=True)
    assert feature_hash(same).tolist() == hashes.tolist()
    assert feature_hash(frame.assign(b=[1.0 + 1e-12, np.nan, 0.3])).tolist() == hashes.tolist()
    assert feature_hash(frame.assign(b=[1.0 + 1e-9, np.nan, 0.3])).iloc[0] != expected
    assert feature_hash(frame.assign(b=[-0.0, np.nan, 0.3])).iloc[0] == feature_hash(
        frame.assign(b=[0.0, np.nan, 0.3])).iloc[0]


def test_feature_hash_scales_and_handles_nullable_types():
    nullable = pd.DataFrame({"a": pd.array([1, None], dtype="Int64"), "b": [True, False]})
    assert feature_hash(nullable).tolist() == [hashlib.sha256(b'{"a":1.0,"b":1.0}').hexdigest(),
                                               hashlib.sha256(b'{"a":null,"b":0.0}').hexdigest()]
    assert feature_hash(pd.DataFrame(index=[1, 2])).tolist() == [hashlib.sha256(b"{}").hexdigest()] * 2
    big = pd.DataFrame(np.random.default_rng(0).normal(size=(20_000, len(FEATURES[DEALER_PD]))).round(3),
                       columns=[f.name for f in FEATURES[DEALER_PD]])
    hashes = feature_hash(big)
    assert hashes.is_unique and len(hashes) == 20_000
    with pytest.raises(ValueError, match="unique column names"):
        feature_hash(pd.DataFrame([[1, 2]], columns=["a", "a"]))
