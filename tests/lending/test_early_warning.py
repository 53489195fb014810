"""The early-warning rules on a hand-made world: quiet when clean, each rule fired by one crafted change.

The world (:func:`world`) runs 240 days up to the business day 2026-03-01 (``AS_OF`` is the
midnight after it). Three dealers each buy one car a day, finance it the same day (30-day term),
sell it 10 days later and repay the day after the sale; a floor audit every 20 days finds every
car. The OEM builds two vehicles a day; tier-1 suppliers S1 and S2 deliver exactly what the
production consumes, every receipt becomes a confirmed payable due 30 days later and is paid on
its due date by S1 (and by T1, the tier-2 supplier of a component of S1's part) or S2. S1 gets a
credit memo of 10 % of a payable every 10 days (dilution ~1 %).

The loan-level rules fire only on a material share of a borrower's recent book with a minimum
count, so each crafted case makes the crafted borrower cross both (the numbers are next to the
cases); the materiality tests move each window edge, count and share by one step.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import numpy as np
import pandas as pd
import pytest

from lending.early_warning import (
    CHANGE_COLUMNS,
    DEFAULT_ACTIONS,
    DPD_BUCKETS,
    EW_CONFIG_V1,
    LEVELS,
    LOAN_DPD_COLUMNS,
    REPAID,
    RULES,
    SIGNAL_COLUMNS,
    WATCHLIST_COLUMNS,
    EarlyWarningConfig,
    EarlyWarningError,
    LevelActions,
    Rule,
    changes,
    combine,
    dealer_signals,
    describe_rules,
    loan_dpd,
    roll_rates,
    score_signals,
    supplier_signals,
)

AS_OF = dt.date(2026, 3, 2)  # includes the business day 2026-03-01
MIDNIGHT = pd.Timestamp(AS_OF)
DAYS = 240
DEALERS = ("D1", "D2", "D3")
SUPPLIERS = ("S1", "S2", "T1")
TERM = 30
REQUESTED = 7_000_000
APPRAISED = 10_000_000


def at(days_before: int, hour: int = 10) -> pd.Timestamp:
    """A timestamp ``days_before`` days before AS_OF (1 = the business day), at ``hour``."""
    return MIDNIGHT - pd.Timedelta(days=days_before) + pd.Timedelta(hours=hour)


def on(days_before: int) -> pd.Timestamp:
    """A date (midnight) ``days_before`` days before AS_OF."""
    return MIDNIGHT - pd.Timedelta(days=days_before)


def _frame(rows: list[dict], columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def world() -> dict[str, pd.DataFrame]:
    inv, apps, sales, reps, audits = [], [], [], [], []
    for dealer in DEALERS:
        for k in range(1, DAYS + 1):
            vin = f"{dealer}-V{k:03d}"
            app = f"{dealer}-A{k:03d}"
            inv.append(dict(vin=vin, dealer_id=dealer, make_model="Sedan", model_year=2020, mileage_km=50_000,
                            purchase_price_fen=9_000_000, appraised_value_fen=APPRAISED, acquired_at=at(k, 9),
                            updated_at=at(k, 9) + pd.Timedelta(minutes=5)))
            apps.append(dict(application_id=app, dealer_id=dealer, vin=vin, purchase_price_fen=9_000_000,
                             appraised_value_fen=APPRAISED, requested_fen=REQUESTED, term_days=TERM,
                             applied_at=at(k, 10), updated_at=at(k, 10) + pd.Timedelta(minutes=5)))
            if k - 10 >= 1:
                sales.append(dict(sale_id=f"{dealer}-S{k:03d}", vin=vin, dealer_id=dealer,
                                  sale_price_fen=10_500_000, sold_at=at(k - 10, 11), updated_at=at(k - 10, 12)))
            if k - 11 >= 1:
                reps.append(dict(repayment_id=f"{dealer}-R{k:03d}", application_id=app, dealer_id=dealer,
                                 amount_fen=REQUESTED, due_on=on(k - TERM), paid_at=at(k - 11, 12),
                                 updated_at=at(k - 11, 13)))
        for k in range(5, DAYS + 1, 20):
            audits.append(dict(audit_id=f"{dealer}-AU{k:03d}", dealer_id=dealer, audited_at=at(k, 15),
                               vehicles_expected=10, vehicles_found=10, skipped=False, updated_at=at(k, 16)))
    dealers = _frame([dict(dealer_id=d, dealer_name=f"Name of {d}", owner_name=f"Owner of {d}",
                           owner_id_number=f"ID{i:06d}", phone=f"1380000000{i}", city="Wuhan", city_tier=2,
                           onboarded_on=pd.Timestamp("2024-01-01"), status="active",
                           updated_at=pd.Timestamp("2024-01-01 09:00")) for i, d in enumerate(DEALERS)],
                     ("dealer_id", "dealer_name", "owner_name", "owner_id_number", "phone", "city", "city_tier",
                      "onboarded_on", "status", "updated_at"))

    prod, receipts, payables, memos, srep = [], [], [], [], []
    parts = {"S1": ("P1", 4, 1_000), "S2": ("P2", 2, 5_000)}  # part, parts per day (2 vehicles), unit price
    for k in range(1, DAYS + 1):
        for j in range(2):
            prod.append(dict(vin=f"OEM{k:03d}{j}", order_id=f"O{k:03d}{j}", model_id="M1", plant="Wuhan",
                             produced_at=at(k, 8), updated_at=at(k, 8) + pd.Timedelta(minutes=5)))
        for sup, (part, qty, price) in parts.items():
            rid, pid = f"R-{sup}-{k:03d}", f"PY-{sup}-{k:03d}"
            receipts.append(dict(receipt_id=rid, supplier_id=sup, part_id=part, quantity=qty, amount_fen=qty * price,
                                 received_at=at(k, 9), updated_at=at(k, 9) + pd.Timedelta(minutes=5)))
            payables.append(dict(payable_id=pid, receipt_id=rid, supplier_id=sup, amount_fen=qty * price,
                                 due_on=on(k - 30), confirmation_status="confirmed", confirmed_at=at(k, 11),
                                 updated_at=at(k, 11) + pd.Timedelta(minutes=5)))
            if k - 30 >= 1:  # paid on its due date
                payers = [(sup, qty * price)] + ([("T1", qty * 200)] if sup == "S1" else [])
                for who, amount in payers:
                    srep.append(dict(repayment_id=f"SR-{who}-{pid}", supplier_id=who, payable_id=pid,
                                     amount_fen=amount, due_on=on(k - 30), paid_at=at(k - 30, 14),
                                     updated_at=at(k - 30, 15)))
            if sup == "S1" and k % 10 == 0:
                memos.append(dict(memo_id=f"CM-{pid}", payable_id=pid, supplier_id=sup, amount_fen=qty * price // 10,
                                  reason="return", issued_at=at(k, 16), updated_at=at(k, 17)))
    t0 = pd.Timestamp("2025-01-01 09:00")
    suppliers = _frame([dict(supplier_id=s, supplier_name=f"Firm {s}", registration_no=f"91{i:016d}",
                             contact_phone=f"1390000000{i}", tier=2 if s == "T1" else 1, city="Wuhan",
                             onboarded_on=pd.Timestamp("2025-01-01"), updated_at=t0) for i, s in enumerate(SUPPLIERS)],
                       ("supplier_id", "supplier_name", "registration_no", "contact_phone", "tier", "city",
                        "onboarded_on", "updated_at"))
    return {
        "dealer.dealers": dealers,
        "dealer.inventory": pd.DataFrame(inv),
        "dealer.sales": pd.DataFrame(sales),
        "dealer.floor_audits": pd.DataFrame(audits),
        "dealer.loan_applications": pd.DataFrame(apps),
        "dealer.loan_repayments": pd.DataFrame(reps),
        "erp.suppliers": suppliers,
        "erp.parts": pd.DataFrame([dict(part_id="P1", part_name="Brake", category="chassis", supplier_id="S1",
                                        unit_price_fen=1_000, updated_at=t0),
                                   dict(part_id="P2", part_name="Seat", category="interior", supplier_id="S2",
                                        unit_price_fen=5_000, updated_at=t0)]),
        "erp.bom": pd.DataFrame([dict(bom_line_id="L1", model_id="M1", part_id="P1", supplier_id="S1", quantity=2,
                                      unit_price_fen=1_000, updated_at=t0),
                                 dict(bom_line_id="L2", model_id="M1", part_id="P2", supplier_id="S2", quantity=1,
                                      unit_price_fen=5_000, updated_at=t0)]),
        "erp.sub_bom": pd.DataFrame([dict(sub_bom_line_id="X1", parent_part_id="P1", supplier_id="T1",
                                          component_name="Pad", quantity=1, unit_price_fen=200, updated_at=t0)]),
        "erp.production": pd.DataFrame(prod),
        "erp.goods_receipts": pd.DataFrame(receipts),
        "erp.payables": pd.DataFrame(payables),
        "erp.credit_memos": pd.DataFrame(memos),
        "erp.supplier_repayments": pd.DataFrame(srep),
    }


# crafting -------------------------------------------------------------------------------------

def add(frames: dict, key: str, **row) -> None:
    frames[key] = pd.concat([frames[key], pd.DataFrame([row])], ignore_index=True)


def financed_car(frames: dict, dealer: str, name: str, *, acquired: int, applied: int | None = None,
                 term: int = TERM, sold: int | None = None, repaid: int | None = None,
                 appraised: int = APPRAISED, requested: int = REQUESTED, vin: str | None = None) -> str:
    """Add a car bought ``acquired`` days before AS_OF, financed ``applied`` days before (default: the
    same day), sold and repaid on the given days (None: never). Returns the application id."""
    vin = vin or f"{dealer}-{name}"
    applied = acquired if applied is None else applied
    app = f"{dealer}-{name}-A"
    if not (frames["dealer.inventory"]["vin"] == vin).any():
        add(frames, "dealer.inventory", vin=vin, dealer_id=dealer, make_model="SUV", model_year=2021,
            mileage_km=30_000, purchase_price_fen=9_000_000, appraised_value_fen=appraised,
            acquired_at=at(acquired, 9), updated_at=at(acquired, 9) + pd.Timedelta(minutes=5))
    add(frames, "dealer.loan_applications", application_id=app, dealer_id=dealer, vin=vin,
        purchase_price_fen=9_000_000, appraised_value_fen=appraised, requested_fen=requested, term_days=term,
        applied_at=at(applied, 10), updated_at=at(applied, 10) + pd.Timedelta(minutes=5))
    if sold is not None:
        add(frames, "dealer.sales", sale_id=f"{app}-S", vin=vin, dealer_id=dealer, sale_price_fen=10_000_000,
            sold_at=at(sold, 11), updated_at=at(sold, 12))
    if repaid is not None:
        add(frames, "dealer.loan_repayments", repayment_id=f"{app}-R", application_id=app, dealer_id=dealer,
            amount_fen=requested, due_on=on(applied - term), paid_at=at(repaid, 12), updated_at=at(repaid, 13))
    return app


def audit(frames: dict, dealer: str, days_before: int, *, expected: int = 10, found: int = 10,
          skipped: bool = False, written: pd.Timestamp | None = None) -> None:
    add(frames, "dealer.floor_audits", audit_id=f"{dealer}-AUX{days_before}-{len(frames['dealer.floor_audits'])}",
        dealer_id=dealer, audited_at=at(days_before, 15), vehicles_expected=expected,
        vehicles_found=0 if skipped else found, skipped=skipped, updated_at=written or at(days_before, 16))


def where(frames: dict, key: str, mask_fn) -> pd.Series:
    df = frames[key]
    return mask_fn(df)


def days_before(ts: pd.Series) -> pd.Series:
    return (MIDNIGHT - ts.dt.normalize()).dt.days


# the dealer variants: (id, craft(frames) -> duplicate_vins or None, rule, borrowers, level, value)
#
# In the clean world D2 has 11 loans unpaid at AS_OF (its cars of the last 11 days), 7 000 000 fen
# each: 77 000 000 fen outstanding, none past due; 10 financed cars in stock; 25 financed cars sold
# 6-30 days ago, all repaid the day after the sale.

def _dpd(applied: int, sold: int, n: int = 2, requested: int = 2 * REQUESTED, dealer: str = "D2",
         term: int = TERM):
    """``n`` loans of ``requested`` applied ``applied`` days ago, cars sold ``sold`` days ago, unpaid.
    By default 2 x 14 000 000 fen: 28 of D2's 105 (77 + 28) million fen outstanding, 26.7 %."""
    def craft(f):
        for i in range(n):
            financed_car(f, dealer, f"X{i}", acquired=applied, sold=sold, requested=requested, term=term,
                         appraised=requested * APPRAISED // REQUESTED)
    return craft


DPD_SHARE = 2 * 14 / (77 + 2 * 14)


def _sold_out_of_trust(f):
    """D2 stopped paying off its sold cars: the loans of its cars sold 2-19 days ago stay unpaid
    (none due yet: a 30-day term from the purchase, 10 days before the sale). Of the 25 financed
    cars sold 6-30 days ago, 14 (sold 6-19 days ago) are unpaid: 56 %."""
    r = f["dealer.loan_repayments"]
    f["dealer.loan_repayments"] = r[~((r["dealer_id"] == "D2") & (days_before(r["paid_at"]) <= 18))]


def _audit_skips(f):
    audit(f, "D2", 10, skipped=True)
    audit(f, "D2", 50, skipped=True)


def _audit_missing(f):
    audit(f, "D2", 12, expected=10, found=5)


def _stock_ageing(n: int = 3):
    """``n`` cars bought 50 days ago, financed 20 days ago (due in 10 days), unsold: past their
    30-day term in stock; with D2's 10 financed cars in stock, 3 of 13."""
    def craft(f):
        for i in range(n):
            financed_car(f, "D2", f"X{i}", acquired=50, applied=20)
    return craft


def _velocity(f):
    s = f["dealer.sales"]
    f["dealer.sales"] = s[~((s["dealer_id"] == "D2") & (days_before(s["sold_at"]) <= 30))]


def _appraisal(f):
    financed_car(f, "D2", "X", acquired=5)
    inv = f["dealer.inventory"]
    row = inv["vin"] == "D2-X"  # re-appraised after the application: the latest known appraisal
    inv.loc[row, "appraised_value_fen"] = 5_000_000
    inv.loc[row, "updated_at"] = at(2)


def _quarantined(f):
    return pd.DataFrame({"vin": ["D2-V050"], "dealer_id": ["D2"], "detected_at": [at(3)]})


def _vin_twice(dealer: str):
    """D2-V005 (bought and financed by D2 5 days ago, unsold, unpaid) financed again 3 days ago."""
    def craft(f):
        financed_car(f, dealer, "DUP", acquired=3, vin="D2-V005")
    return craft


DEALER_CASES = [
    ("dpd_yellow", _dpd(40, 2), "days_past_due", {"D2"}, "yellow", DPD_SHARE),
    ("dpd_orange", _dpd(65, 2), "days_past_due", {"D2"}, "orange", DPD_SHARE),
    ("dpd_red", _dpd(100, 3), "days_past_due", {"D2"}, "red", DPD_SHARE),
    ("sold_out_of_trust", _sold_out_of_trust, "sold_out_of_trust", {"D2"}, "red", 14 / 25),
    ("audit_skips", _audit_skips, "audit_skips", {"D2"}, "orange", 2.0),
    ("audit_missing", _audit_missing, "audit_missing_vehicles", {"D2"}, "orange", 5 / 60),
    ("stock_ageing", _stock_ageing(), "stock_ageing_past_term", {"D2"}, "yellow", 3 / 13),
    ("velocity", _velocity, "sales_velocity_drop", {"D2"}, "yellow", 0.0),
    ("appraisal", _appraisal, "appraisal_below_outstanding", {"D2"}, "orange", 5 / 7),
    ("duplicate_quarantined", _quarantined, "duplicate_vin", {"D2"}, "red", 1.0),
    ("duplicate_application", _vin_twice("D2"), "duplicate_vin", {"D2"}, "red", 1.0),
    ("duplicate_across_dealers", _vin_twice("D3"), "duplicate_vin", {"D2", "D3"}, "red", 1.0),
]


SOT_LOW = dataclasses.replace(EW_CONFIG_V1, version="ew-test", sold_out_of_trust_share=0.05)


def _sold_unpaid(*days: int, dealer: str = "D2"):
    """Cars bought and financed 40 days ago on a 90-day term (not due), sold ``days`` days ago, unpaid."""
    def craft(f):
        for i, day in enumerate(days):
            financed_car(f, dealer, f"S{i}", acquired=40, sold=day, term=90)
    return craft


# the supplier variants. S2 has one payable a day (30 in the last 30 days); of its instalments
# (one per payable, due 30 days after the receipt) 91 were due 30-120 days ago and 61 were due
# 60-120 days ago, all paid on the due date. T1 has one instalment per payable of S1, likewise.

def _dilution(f):
    for k in (3, 13, 23):  # 3 x 10 000 fen of 300 000 fen payables in the last 30 days: 10 %
        add(f, "erp.credit_memos", memo_id=f"CM-S2-{k}", payable_id=f"PY-S2-{k:03d}", supplier_id="S2",
            amount_fen=10_000, reason="quality_dispute", issued_at=at(k, 16), updated_at=at(k, 17))


def _withdrawn(*ks: int, written: int = 4):
    """The OEM withdrew the confirmation of S2's payables of ``ks`` days ago, ``written`` days ago."""
    def craft(f):
        pay = f["erp.payables"]
        row = pay["payable_id"].isin([f"PY-S2-{k:03d}" for k in ks])
        pay.loc[row, ["confirmation_status", "updated_at"]] = ["withdrawn", at(written)]
    return craft


def _delivery(f):
    rec = f["erp.goods_receipts"]
    row = (rec["supplier_id"] == "S2") & (days_before(rec["received_at"]) <= 30)
    rec.loc[row, "quantity"] = 1
    rec.loc[row, "amount_fen"] = 5_000


def _unpaid(who: str, supplier: str, ks: range):
    """``who`` never paid its instalments of ``supplier``'s payables of ``ks`` days ago (due ``k - 30``
    days ago)."""
    def craft(f):
        r = f["erp.supplier_repayments"]
        payables = [f"PY-{supplier}-{k:03d}" for k in ks]
        f["erp.supplier_repayments"] = r[~((r["supplier_id"] == who) & r["payable_id"].isin(payables))]
    return craft


def _oem_drop(f):
    p = f["erp.production"]
    f["erp.production"] = p[days_before(p["produced_at"]) > 30]


SUPPLIER_CASES = [
    ("dilution", _dilution, "dilution_spike", {"S2"}, "orange", 0.10),
    ("withdrawn", _withdrawn(10, 20), "withdrawn_confirmations", {"S2"}, "orange", 2 / 30),
    ("delivery", _delivery, "delivery_drop", {"S2"}, "yellow", 0.5),
    ("overdue_orange", _unpaid("S2", "S2", range(61, 71)), "overdue", {"S2"}, "orange", 10 / 91),  # 31-40 DPD
    ("overdue_red", _unpaid("S2", "S2", range(91, 101)), "overdue", {"S2"}, "red", 10 / 61),  # 61-70 DPD
    ("overdue_tier2", _unpaid("T1", "S1", range(71, 81)), "overdue", {"T1"}, "orange", 10 / 91),
    ("oem_drop", _oem_drop, "oem_production_drop", set(SUPPLIERS), "yellow", 0.0),
]

PII = ("Name of", "Owner of", "ID0000", "138000", "Firm ", "139000")


@pytest.fixture(scope="module")
def clean() -> dict[str, pd.DataFrame]:
    return world()


def fresh(clean) -> dict[str, pd.DataFrame]:
    return {k: v.copy() for k, v in clean.items()}


def assert_signal_frame(sig: pd.DataFrame) -> None:
    assert tuple(sig.columns) == SIGNAL_COLUMNS
    assert not sig.duplicated(["borrower_type", "borrower_id", "rule"]).any()
    assert sig["level"].isin(LEVELS[1:]).all()
    assert sig["rule"].isin({r.name for r in RULES}).all()
    assert sig["value"].dtype == np.float64 and sig["threshold"].dtype == np.float64
    assert not any(p in d for d in sig["detail"] for p in PII)


# the clean world ------------------------------------------------------------------------------

def test_clean_world_is_quiet(clean):
    dealers = dealer_signals(clean, AS_OF)
    suppliers = supplier_signals(clean, AS_OF)
    scores = score_signals(pd.DataFrame({"borrower_type": ["dealer"] * 3 + ["supplier"] * 3,
                                         "borrower_id": [*DEALERS, *SUPPLIERS], "score": 0.05}))
    for sig in (dealers, suppliers, scores):
        assert_signal_frame(sig)
        assert sig.empty, sig
    dpd = loan_dpd(clean, AS_OF)
    assert set(dpd["bucket"]) == {"current"} and len(dpd) == 3 * 11  # cars of the last 11 days unpaid


def test_empty_tables_give_empty_frames(clean):
    frames = {k: (v if k in ("dealer.dealers", "erp.suppliers") else v.iloc[:0]) for k, v in clean.items()}
    assert dealer_signals(frames, AS_OF).empty and supplier_signals(frames, AS_OF).empty
    assert loan_dpd(frames, AS_OF).empty and roll_rates(frames, AS_OF, prior=dt.date(2026, 1, 1)).empty
    assert score_signals(pd.DataFrame(columns=["borrower_type", "borrower_id", "score"])).empty
    current = combine(SIGNALS, BORROWERS)
    assert set(changes(pd.DataFrame(columns=["borrower_type", "borrower_id", "level"]), current)["change"]) == {"new"}


# one rule at a time ---------------------------------------------------------------------------

@pytest.mark.parametrize("craft, rule, who, level, value", [c[1:] for c in DEALER_CASES],
                         ids=[c[0] for c in DEALER_CASES])
def test_each_dealer_rule_fires_alone(clean, craft, rule, who, level, value):
    frames = fresh(clean)
    duplicates = craft(frames)
    sig = dealer_signals(frames, AS_OF, duplicate_vins=duplicates)
    assert_signal_frame(sig)
    assert set(sig["rule"]) == {rule}, sig
    assert set(sig["borrower_id"]) == who and set(sig["borrower_type"]) == {"dealer"}
    assert set(sig["level"]) == {level}
    assert sig["value"].to_numpy() == pytest.approx(value)
    assert supplier_signals(frames, AS_OF).empty
    assert sig.dtypes.to_dict() == dealer_signals(clean, AS_OF).dtypes.to_dict()  # empty or not, same dtypes


@pytest.mark.parametrize("craft, rule, who, level, value", [c[1:] for c in SUPPLIER_CASES],
                         ids=[c[0] for c in SUPPLIER_CASES])
def test_each_supplier_rule_fires_alone(clean, craft, rule, who, level, value):
    frames = fresh(clean)
    craft(frames)
    sig = supplier_signals(frames, AS_OF)
    assert_signal_frame(sig)
    assert set(sig["rule"]) == {rule}, sig
    assert set(sig["borrower_id"]) == who and set(sig["borrower_type"]) == {"supplier"}
    assert set(sig["level"]) == {level}
    assert sig["value"].to_numpy() == pytest.approx(value)
    assert dealer_signals(frames, AS_OF).empty


@pytest.mark.parametrize("score, level, threshold", [(0.249, None, None), (0.25, "yellow", 0.25),
                                                     (0.3, "yellow", 0.25), (0.35, "orange", 0.35),
                                                     (1.0, "orange", 0.35)])
def test_behaviour_score_levels(score, level, threshold):
    scores = pd.DataFrame({"borrower_type": ["dealer", "dealer", "supplier", "dealer"],
                           "borrower_id": ["D1", "D2", "S1", "D2"], "score": [0.05, score, 0.1, 0.01]})
    sig = score_signals(scores)
    assert_signal_frame(sig)
    if level is None:
        assert sig.empty
    else:
        assert sig[["borrower_type", "borrower_id", "rule", "level"]].values.tolist() == [
            ["dealer", "D2", "behaviour_score", level]]
        assert sig["value"].iloc[0] == pytest.approx(score) and sig["threshold"].iloc[0] == threshold


@pytest.mark.parametrize("bad, match", [
    (pd.DataFrame({"borrower_type": ["dealer"], "borrower_id": ["D1"]}), "misses \\['score'\\]"),
    (pd.DataFrame({"borrower_type": ["bank"], "borrower_id": ["D1"], "score": [0.1]}), "borrower_type"),
    (pd.DataFrame({"borrower_type": ["dealer"], "borrower_id": ["D1"], "score": [1.2]}), "\\[0, 1\\]"),
    (pd.DataFrame({"borrower_type": ["dealer"], "borrower_id": ["D1"], "score": [np.nan]}), "\\[0, 1\\]"),
])
def test_score_inputs_are_checked(bad, match):
    with pytest.raises(EarlyWarningError, match=match):
        score_signals(bad)


def test_signal_details_and_thresholds(clean):
    frames = fresh(clean)
    _dpd(65, 2)(frames)  # D2: 2 loans 35 d past due: orange
    _dpd(100, 3, dealer="D1")(frames)  # D1: 2 loans 70 d past due: red
    sig = dealer_signals(frames, AS_OF).set_index("borrower_id")
    assert sig.loc["D2", "threshold"] == 0.22 and sig.loc["D1", "threshold"] == 0.20
    assert sig.loc["D1", "level"] == "red" and sig.loc["D1", "value"] == pytest.approx(DPD_SHARE)
    assert sig.loc["D2", "detail"] == (
        "2 loan(s) 30+ d past due = 26.7% of the 1,050,000 CNY outstanding (loans not yet due or due in the last "
        "120 d); worst loan D2-X0-A: due 2026-01-26, 35 d past due")
    frames = fresh(clean)
    _sold_out_of_trust(frames)
    _stock_ageing()(frames)
    sig = dealer_signals(frames, AS_OF).set_index("rule")
    assert sig.loc["sold_out_of_trust", "threshold"] == 0.5
    assert sig.loc["sold_out_of_trust", "detail"] == (
        "14 of 25 financed vehicles sold 6-30 d ago unpaid more than 5 d after the sale; worst VIN D2-V029: "
        "sold 2026-02-11, unpaid 19 d")
    assert sig.loc["stock_ageing_past_term", "threshold"] == 0.03
    assert sig.loc["stock_ageing_past_term", "detail"] == (
        "3 of 13 financed vehicles in stock past their loan term; oldest VIN D2-X0: 50 d in stock, loan term 30 d")
    frames = fresh(clean)
    _unpaid("S2", "S2", range(91, 101))(frames)
    _withdrawn(10, 20)(frames)
    sig = supplier_signals(frames, AS_OF).set_index("rule")
    assert sig.loc["overdue", "threshold"] == 0.10
    assert sig.loc["overdue", "detail"] == (
        "10 of 61 instalment(s) due in the last 120 d unpaid 60+ d after the due date; oldest due 2025-12-22, "
        "unpaid 70 d")
    assert sig.loc["withdrawn_confirmations", "threshold"] == 0.02
    assert sig.loc["withdrawn_confirmations", "detail"] == (
        "2 of 30 payable confirmations withdrawn in the last 30 d, latest payable PY-S2-010 on 2026-02-26")


def test_dilution_threshold_follows_the_suppliers_history(clean):
    """S1's baseline dilution is 1 %: the floor (5 %) applies; at 4 % history, 2 x 4 % = 8 % does."""
    frames = fresh(clean)
    add(frames, "erp.credit_memos", memo_id="CM-X", payable_id="PY-S1-005", supplier_id="S1", amount_fen=6_000,
        reason="return", issued_at=at(5, 16), updated_at=at(5, 17))  # (3 x 400 + 6 000) / 120 000 = 6 %
    (row,) = supplier_signals(frames, AS_OF).itertuples()
    assert (row.borrower_id, row.rule, row.threshold) == ("S1", "dilution_spike", 0.05)
    assert row.value == pytest.approx(0.06)
    memos = frames["erp.credit_memos"]
    old = days_before(memos["issued_at"]) > 30
    memos.loc[old, "amount_fen"] = 1_600  # 4 % of the payables of the previous 180 days
    assert supplier_signals(frames, AS_OF).empty  # 6 % < 8 %
    add(frames, "erp.credit_memos", memo_id="CM-Y", payable_id="PY-S1-006", supplier_id="S1", amount_fen=3_600,
        reason="return", issued_at=at(6, 16), updated_at=at(6, 17))  # 9 %
    (row,) = supplier_signals(frames, AS_OF).itertuples()
    assert row.threshold == pytest.approx(0.08) and row.value == pytest.approx(0.09)


# point in time --------------------------------------------------------------------------------

def test_a_row_written_on_or_after_as_of_is_ignored(clean):
    frames = fresh(clean)
    _sold_unpaid(8, 8)(frames)
    sales = frames["dealer.sales"]
    sales.loc[sales["vin"] == "D2-S0", "updated_at"] = MIDNIGHT + pd.Timedelta(hours=9)  # written late
    assert dealer_signals(frames, AS_OF, SOT_LOW).empty  # one vehicle sold out of trust: below the minimum
    later = dealer_signals(frames, AS_OF + dt.timedelta(days=1), SOT_LOW)
    assert later[["borrower_id", "rule", "value"]].values.tolist() == [["D2", "sold_out_of_trust", 2 / 27]]


def test_a_repayment_written_late_does_not_cure_a_loan(clean):
    frames = fresh(clean)
    _dpd(40, 2)(frames)  # two loans 10 d past due
    app = "D2-X0-A"
    add(frames, "dealer.loan_repayments", repayment_id="late", application_id=app, dealer_id="D2",
        amount_fen=2 * REQUESTED, due_on=on(10), paid_at=at(5), updated_at=MIDNIGHT + pd.Timedelta(hours=1))
    assert dealer_signals(frames, AS_OF)["rule"].tolist() == ["days_past_due"]
    assert app in set(loan_dpd(frames, AS_OF)["application_id"])
    frames["dealer.loan_repayments"].loc[frames["dealer.loan_repayments"]["repayment_id"] == "late",
                                         "updated_at"] = at(1)
    assert dealer_signals(frames, AS_OF).empty  # one loan past due left: below the minimum of two
    assert app not in set(loan_dpd(frames, AS_OF)["application_id"])


def test_rows_dated_on_or_after_as_of_are_ignored(clean):
    frames = fresh(clean)
    audit(frames, "D2", 10, skipped=True)
    audit(frames, "D2", 0, skipped=True)  # audited on the as-of day itself
    financed_car(frames, "D3", "FUT", acquired=0)  # applied on the as-of day
    add(frames, "erp.goods_receipts", receipt_id="R-late", supplier_id="S2", part_id="P2", quantity=1,
        amount_fen=5_000, received_at=MIDNIGHT + pd.Timedelta(hours=1), updated_at=at(1))  # bad clock: future
    assert dealer_signals(frames, AS_OF).empty
    assert supplier_signals(frames, AS_OF).empty
    assert "D3-FUT-A" not in set(loan_dpd(frames, AS_OF)["application_id"])
    later = dealer_signals(frames, AS_OF + dt.timedelta(days=1))
    assert later[["borrower_id", "rule"]].values.tolist() == [["D2", "audit_skips"]]


def test_quarantined_duplicates_count_from_their_detection(clean):
    dup = pd.DataFrame({"vin": ["D2-V050"], "dealer_id": ["D2"], "detected_at": [MIDNIGHT]})
    assert dealer_signals(clean, AS_OF, duplicate_vins=dup).empty
    assert len(dealer_signals(clean, AS_OF + dt.timedelta(days=1), duplicate_vins=dup)) == 1
    dates = dup.assign(detected_at=[dt.date(2026, 3, 1)])  # a date column works as well
    assert dealer_signals(clean, AS_OF, duplicate_vins=dates)["rule"].tolist() == ["duplicate_vin"]
    with pytest.raises(EarlyWarningError, match="detected_at"):
        dealer_signals(clean, AS_OF, duplicate_vins=dup.drop(columns="detected_at"))


@pytest.mark.parametrize("as_of", [dt.datetime(2026, 3, 2, 10), "2026-03-02", None])
def test_as_of_must_be_a_date(clean, as_of):
    with pytest.raises(EarlyWarningError, match="as_of must be a datetime.date"):
        dealer_signals(clean, as_of)
    with pytest.raises(EarlyWarningError, match="as_of must be a datetime.date"):
        supplier_signals(clean, as_of)


# materiality: windows, minimum counts and shares -------------------------------------------------

def _cfg(**changes) -> EarlyWarningConfig:
    return dataclasses.replace(EW_CONFIG_V1, version="ew-test", **changes)


def _only(sig: pd.DataFrame) -> tuple:
    """(borrower, rule, level, value) of the single signal of ``sig``."""
    assert len(sig) == 1, sig
    row = sig.iloc[0]
    return row["borrower_id"], row["rule"], row["level"], pytest.approx(row["value"])


def test_days_past_due_needs_the_minimum_count_in_the_bucket(clean):
    frames = fresh(clean)
    _dpd(40, 2, n=1, requested=11 * REQUESTED)(frames)  # one loan, half of the outstanding, 10 d past due
    assert dealer_signals(frames, AS_OF).empty
    assert _only(dealer_signals(frames, AS_OF, _cfg(dpd_min_loans=1))) == ("D2", "days_past_due", "yellow", 0.5)
    # a 70 d and a 10 d loan: two loans 1+ d past due, but one 60+: yellow, not red (red with a minimum of one)
    frames = fresh(clean)
    financed_car(frames, "D2", "OLD", acquired=100, sold=3, requested=4 * REQUESTED, appraised=4 * APPRAISED)
    financed_car(frames, "D2", "NEW", acquired=40, sold=2, requested=2 * REQUESTED, appraised=2 * APPRAISED)
    assert _only(dealer_signals(frames, AS_OF)) == ("D2", "days_past_due", "yellow", 6 / 17)
    assert _only(dealer_signals(frames, AS_OF, _cfg(dpd_min_loans=1))) == ("D2", "days_past_due", "red", 4 / 17)


def test_days_past_due_share_threshold_is_inclusive(clean):
    frames = fresh(clean)
    _dpd(40, 2, requested=REQUESTED)(frames)  # 2 x 7 000 000 fen of 91 000 000 fen: 15.4 %
    assert dealer_signals(frames, AS_OF).empty
    at_share = _cfg(dpd_yellow_share=14 / 91)
    (row,) = dealer_signals(frames, AS_OF, at_share).itertuples()
    assert (row.level, row.value, row.threshold) == ("yellow", 14 / 91, 14 / 91)
    assert dealer_signals(frames, AS_OF, _cfg(dpd_yellow_share=14 / 91 + 1e-9)).empty


@pytest.mark.parametrize("dpd, fires", [(120, True), (121, False)])
def test_days_past_due_lookback_edge(clean, dpd, fires):
    """A loan due 120 days ago counts; one due 121 days ago is written off: out of the rule, and out
    of the outstanding it is measured against (it stays in loan_dpd)."""
    frames = fresh(clean)
    _dpd(dpd + TERM, 3)(frames)
    sig = dealer_signals(frames, AS_OF)
    if fires:
        assert _only(sig) == ("D2", "days_past_due", "red", DPD_SHARE)
    else:
        assert sig.empty
    assert {"D2-X0-A", "D2-X1-A"} <= set(loan_dpd(frames, AS_OF)["application_id"])
    shorter = _cfg(dpd_lookback_days=dpd - 1)
    assert dealer_signals(frames, AS_OF, shorter).empty


@pytest.mark.parametrize("days, fires", [(30, True), (31, False), (6, True), (5, False)])
def test_sold_out_of_trust_window_edges(clean, days, fires):
    """Sales 6-30 days ago are judged: more than 5 days unpaid, within the 30-day window."""
    frames = fresh(clean)
    _sold_unpaid(days, days)(frames)
    sig = dealer_signals(frames, AS_OF, SOT_LOW)
    if fires:
        assert _only(sig) == ("D2", "sold_out_of_trust", "red", 2 / 27)
    else:
        assert sig.empty


def test_sold_out_of_trust_minimum_and_share(clean):
    frames = fresh(clean)
    _sold_unpaid(8)(frames)  # one vehicle: below the minimum of two
    assert dealer_signals(frames, AS_OF, SOT_LOW).empty
    assert _only(dealer_signals(frames, AS_OF, _cfg(sold_out_of_trust_share=0.03, sold_out_of_trust_min=1))) == (
        "D2", "sold_out_of_trust", "red", 1 / 26)
    frames = fresh(clean)
    _sold_unpaid(8, 8)(frames)  # two vehicles, 2 of 27: far below the V1 share
    assert dealer_signals(frames, AS_OF).empty
    frames = fresh(clean)
    _sold_out_of_trust(frames)  # 14 of 25 = 56 %
    assert dealer_signals(frames, AS_OF, _cfg(sold_out_of_trust_share=0.6)).empty
    assert _only(dealer_signals(frames, AS_OF, _cfg(sold_out_of_trust_share=0.56))) == (
        "D2", "sold_out_of_trust", "red", 14 / 25)


def test_stock_ageing_minimum_share_and_term_edge(clean):
    frames = fresh(clean)
    _stock_ageing(2)(frames)  # 2 of 12: below the minimum of three vehicles
    assert dealer_signals(frames, AS_OF).empty
    assert _only(dealer_signals(frames, AS_OF, _cfg(stock_ageing_min_vehicles=2))) == (
        "D2", "stock_ageing_past_term", "yellow", 2 / 12)
    frames = fresh(clean)
    _stock_ageing(3)(frames)  # 3 of 13 = 23 %
    assert dealer_signals(frames, AS_OF, _cfg(stock_ageing_share=0.25)).empty
    for acquired, fires in ((30, False), (31, True)):  # in stock exactly the 30-day term is not past it
        frames = fresh(clean)
        for i in range(3):
            financed_car(frames, "D2", f"T{i}", acquired=acquired, applied=20)
        assert len(dealer_signals(frames, AS_OF)) == int(fires)


def test_refinanced_vin_is_not_a_duplicate(clean):
    """D2-V100 was financed 100 days ago and repaid 89 days ago; financing it again is legitimate."""
    frames = fresh(clean)
    financed_car(frames, "D2", "DUP", acquired=3, vin="D2-V100")
    assert dealer_signals(frames, AS_OF).empty
    reps = frames["dealer.loan_repayments"]
    first = reps["application_id"] == "D2-A100"
    reps.loc[first, "updated_at"] = MIDNIGHT + pd.Timedelta(hours=2)  # the repayment is not known yet
    (row,) = dealer_signals(frames, AS_OF).itertuples()
    assert (row.borrower_id, row.rule, row.level) == ("D2", "duplicate_vin", "red")
    assert row.detail == "VIN D2-V100 financed again while an earlier loan is unpaid; 1 duplicate VIN(s)"
    frames["dealer.loan_repayments"] = reps[~first]  # never repaid: financed twice
    assert dealer_signals(frames, AS_OF)["rule"].tolist() == ["duplicate_vin"]
    # financed twice 8 days ago, but the earlier loan (D2-V015: sold 5 days ago) was repaid 4 days
    # ago: the VIN is pledged once again, the rule is quiet
    frames = fresh(clean)
    financed_car(frames, "D3", "DUP", acquired=8, vin="D2-V015")
    assert dealer_signals(frames, AS_OF).empty
    assert dealer_signals(frames, AS_OF - dt.timedelta(days=4))["rule"].tolist() == ["duplicate_vin"] * 2


@pytest.mark.parametrize("days_ago, window, fires", [(30, 30, True), (31, 30, False), (31, 31, True)])
def test_quarantined_duplicates_count_within_their_window(clean, days_ago, window, fires):
    dup = pd.DataFrame({"vin": ["D2-V050"], "dealer_id": ["D2"], "detected_at": [at(days_ago)]})
    sig = dealer_signals(clean, AS_OF, _cfg(duplicate_vin_window_days=window), duplicate_vins=dup)
    assert sig["rule"].tolist() == (["duplicate_vin"] if fires else [])


def test_withdrawn_confirmations_minimum_share_and_window(clean):
    frames = fresh(clean)
    _withdrawn(10)(frames)  # one withdrawal: below the minimum of two
    assert supplier_signals(frames, AS_OF).empty
    assert _only(supplier_signals(frames, AS_OF, _cfg(withdrawn_min=1))) == (
        "S2", "withdrawn_confirmations", "orange", 1 / 30)
    frames = fresh(clean)
    _withdrawn(10, 20)(frames)
    assert supplier_signals(frames, AS_OF, _cfg(withdrawn_share=0.1)).empty
    for written, fires in ((30, True), (31, False)):  # payables of 40 and 45 days ago, withdrawn later
        frames = fresh(clean)
        _withdrawn(40, 45, written=written)(frames)
        sig = supplier_signals(frames, AS_OF)
        assert (_only(sig) == ("S2", "withdrawn_confirmations", "orange", 2 / 32)) if fires else sig.empty


def test_overdue_minimum_share_and_lookback(clean):
    low = _cfg(overdue_share=0.01)
    frames = fresh(clean)
    _unpaid("S2", "S2", range(70, 71))(frames)  # one instalment 40 d past due
    assert supplier_signals(frames, AS_OF, low).empty
    assert _only(supplier_signals(frames, AS_OF, _cfg(overdue_share=0.01, overdue_min_instalments=1))) == (
        "S2", "overdue", "orange", 1 / 91)
    frames = fresh(clean)
    _unpaid("S2", "S2", range(61, 70))(frames)  # 9 of 91 = 9.9 %: below 10 %
    assert supplier_signals(frames, AS_OF).empty
    for ks, fires in ((range(149, 151), True), (range(151, 153), False)):  # due 119-120 or 121-122 days ago
        frames = fresh(clean)
        _unpaid("S2", "S2", ks)(frames)
        sig = supplier_signals(frames, AS_OF, low)
        assert (_only(sig) == ("S2", "overdue", "red", 2 / 61)) if fires else sig.empty


# days past due and roll rates -----------------------------------------------------------------

@pytest.fixture(scope="module")
def overdue_book(clean):
    frames = fresh(clean)
    for name, applied in (("B5", 35), ("B35", 65), ("B65", 95), ("B95", 125), ("B29", 59), ("B30", 60)):
        financed_car(frames, "D2", name, acquired=applied, sold=2)
    return frames


def test_loan_dpd_buckets(overdue_book):
    dpd = loan_dpd(overdue_book, AS_OF)
    assert tuple(dpd.columns) == LOAN_DPD_COLUMNS
    got = dpd[dpd["application_id"].str.startswith("D2-B")].set_index("application_id")
    assert got["dpd"].to_dict() == {"D2-B5-A": 5, "D2-B35-A": 35, "D2-B65-A": 65, "D2-B95-A": 95,
                                    "D2-B29-A": 29, "D2-B30-A": 30}
    assert got["bucket"].to_dict() == {"D2-B5-A": "1-29", "D2-B35-A": "30-59", "D2-B65-A": "60-89",
                                       "D2-B95-A": "90+", "D2-B29-A": "1-29", "D2-B30-A": "30-59"}
    assert (got["outstanding_fen"] == REQUESTED).all() and (got["dealer_id"] == "D2").all()
    assert got.loc["D2-B5-A", "due_on"] == pd.Timestamp("2026-02-25")
    current = dpd[~dpd["application_id"].str.startswith("D2-B")]
    assert (current["dpd"] == 0).all() and (current["bucket"] == "current").all()


def test_roll_rates(overdue_book):
    prior = AS_OF - dt.timedelta(days=30)
    rr = roll_rates(overdue_book, AS_OF, prior=prior)
    assert list(rr.columns) == [*DPD_BUCKETS, REPAID]
    assert rr.sum(axis=1).to_numpy() == pytest.approx(1.0)
    # 30 days on, an unpaid loan moves one bucket: 5 -> 35, 35 -> 65, 65 -> 95
    assert rr.loc["30-59"].to_dict() == {**dict.fromkeys(DPD_BUCKETS, 0.0), "60-89": 1.0, REPAID: 0.0}
    assert rr.loc["60-89", "90+"] == 1.0 and rr.loc["1-29", "30-59"] == 1.0
    assert list(rr.index) == ["current", "1-29", "30-59", "60-89"]  # no loan was 90+ at prior
    # current at prior: 3 dealers x 11 cars, all repaid since, and B5, B29, B30, not yet past due then
    assert rr.loc["current", REPAID] == pytest.approx(33 / 36)
    assert rr.loc["current", "1-29"] == pytest.approx(2 / 36) and rr.loc["current", "30-59"] == pytest.approx(1 / 36)
    with pytest.raises(EarlyWarningError, match="prior must be before as_of"):
        roll_rates(overdue_book, AS_OF, prior=AS_OF)


# combine and changes --------------------------------------------------------------------------

def _sig(who: str, rule: str, level: str, kind: str = "dealer") -> dict:
    return dict(borrower_type=kind, borrower_id=who, rule=rule, level=level, value=1.0, threshold=1.0, detail="x")


SIGNALS = pd.DataFrame([
    _sig("A", "sales_velocity_drop", "yellow"),
    _sig("B", "audit_skips", "orange"), _sig("B", "stock_ageing_past_term", "yellow"),
    _sig("C", "audit_skips", "orange"), _sig("C", "appraisal_below_outstanding", "orange"),
    _sig("D", "days_past_due", "red"), _sig("D", "behaviour_score", "yellow"),
    _sig("S9", "overdue", "orange", "supplier"), _sig("S9", "behaviour_score", "orange", "supplier"),
    _sig("Z", "duplicate_vin", "red"),  # a borrower not in the list is kept
])
BORROWERS = pd.DataFrame({"borrower_type": ["dealer"] * 5 + ["supplier"],
                          "borrower_id": ["A", "B", "C", "D", "E", "S9"]})


def test_combine_levels_and_actions():
    out = combine(SIGNALS, BORROWERS)
    assert tuple(out.columns) == WATCHLIST_COLUMNS
    got = out.set_index("borrower_id")
    assert got["level"].to_dict() == {"A": "yellow", "B": "orange", "C": "red", "D": "red", "E": "green",
                                      "S9": "red", "Z": "red"}
    assert got.loc["B", "rules"] == "audit_skips,stock_ageing_past_term" and got.loc["E", "rules"] == ""
    assert got.loc["C", "rules"] == "appraisal_below_outstanding,audit_skips"
    assert got.loc["S9", "borrower_type"] == "supplier"
    expect = {"green": (False, 1.0, False, "none"), "yellow": (False, 1.0, False, "watch"),
              "orange": (False, 0.5, True, "cut limit to x0.5; site visit; watch"),
              "red": (True, 0.0, True, "freeze new drawdowns; cut limit to x0; site visit; watch")}
    for row in out.itertuples():
        assert (row.frozen, row.limit_cut, row.site_visit, row.actions) == expect[row.level]
    assert out["level"].map(LEVELS.index).is_monotonic_decreasing  # worst first
    assert out["frozen"].dtype == bool and out["limit_cut"].dtype == np.float64


def test_combine_escalation_counts_distinct_rules():
    twice = pd.DataFrame([_sig("B", "audit_skips", "orange"), _sig("B", "audit_skips", "orange")])
    assert combine(twice, BORROWERS.iloc[:0])["level"].tolist() == ["orange"]
    three = dataclasses.replace(EW_CONFIG_V1, version="ew-test", orange_to_red_count=3)
    got = combine(SIGNALS, BORROWERS, three).set_index("borrower_id")["level"]
    assert got["C"] == "orange" and got["S9"] == "orange" and got["D"] == "red"


def test_combine_without_signals_and_bad_levels():
    empty = dealer_signals(world(), AS_OF).iloc[:0]
    out = combine(empty, BORROWERS)
    assert set(out["level"]) == {"green"} and len(out) == len(BORROWERS)
    with pytest.raises(EarlyWarningError, match="signals.level must be one of"):
        combine(pd.DataFrame([_sig("A", "x", "purple")]), BORROWERS)
    with pytest.raises(EarlyWarningError, match="borrowers must have columns"):
        combine(SIGNALS, BORROWERS.drop(columns="borrower_type"))


def test_changes_new_escalated_unchanged_improved():
    previous = combine(pd.DataFrame([_sig("B", "audit_skips", "orange"), _sig("C", "audit_skips", "orange"),
                                     _sig("D", "days_past_due", "red"), _sig("A", "sales_velocity_drop", "yellow")]),
                       BORROWERS)
    current = combine(pd.DataFrame([
        _sig("A", "days_past_due", "orange"),  # yellow -> orange: escalated
        _sig("C", "audit_skips", "orange"),  # orange -> orange: unchanged
        _sig("D", "days_past_due", "yellow"),  # red -> yellow: improved
        _sig("E", "days_past_due", "yellow"),  # green -> yellow: new
        _sig("S9", "overdue", "red", "supplier"),  # green -> red: new
        _sig("N", "duplicate_vin", "red"),  # absent -> red: new
    ]), BORROWERS)
    out = changes(previous, current)
    assert tuple(out.columns) == CHANGE_COLUMNS
    got = {r.borrower_id: (r.previous_level, r.level, r.change) for r in out.itertuples()}
    assert got == {"A": ("yellow", "orange", "escalated"), "E": ("green", "yellow", "new"),
                   "S9": ("green", "red", "new"), "N": ("green", "red", "new")}
    assert changes(current, current).empty
    assert set(changes(previous.iloc[:0], current)["change"]) == {"new"}
    with pytest.raises(EarlyWarningError, match="previous lists borrower"):
        changes(pd.concat([previous, previous]), current)


# configuration --------------------------------------------------------------------------------

def test_v1_values_and_rules():
    c = EW_CONFIG_V1
    assert c.version == "ew-v1"
    assert (c.dpd_yellow_days, c.dpd_orange_days, c.dpd_red_days, c.sold_out_of_trust_days) == (1, 30, 60, 5)
    assert (c.dpd_lookback_days, c.dpd_min_loans, c.dpd_yellow_share, c.dpd_orange_share, c.dpd_red_share) == (
        120, 2, 0.22, 0.22, 0.20)
    assert (c.sold_out_of_trust_window_days, c.sold_out_of_trust_min, c.sold_out_of_trust_share) == (30, 2, 0.5)
    assert (c.audit_window_days, c.audit_skips_min, c.audit_missing_share) == (90, 2, 0.05)
    assert (c.stock_age_over_term_days, c.stock_ageing_min_vehicles, c.stock_ageing_share) == (0, 3, 0.03)
    assert c.duplicate_vin_window_days == 30
    assert (c.velocity_drop_ratio, c.velocity_min_baseline, c.dilution_spike_factor, c.dilution_spike_floor) == (
        0.5, 3.0, 2.0, 0.05)
    assert (c.withdrawn_min, c.withdrawn_share, c.delivery_drop_ratio) == (2, 0.02, 0.7)
    assert (c.overdue_orange_days, c.overdue_red_days, c.overdue_lookback_days, c.overdue_min_instalments,
            c.overdue_share) == (30, 60, 120, 2, 0.10)
    assert (c.oem_drop_ratio, c.score_yellow, c.score_orange, c.orange_to_red_count) == (0.6, 0.25, 0.35, 2)
    assert c.actions == DEFAULT_ACTIONS and c.action("orange").limit_cut == 0.5
    names = [r.name for r in RULES]
    assert len(names) == len(set(names)) == 14
    assert all(isinstance(r, Rule) and r.level in LEVELS[1:] and r.description for r in RULES)
    cases = {c[2] for c in DEALER_CASES} | {c[2] for c in SUPPLIER_CASES} | {"behaviour_score"}
    assert cases == set(names)  # every rule has a crafted case
    rules = {r.name: r.description for r in RULES}
    assert rules["days_past_due"] == (
        "Of the dealer's outstanding (unpaid loans not yet due or due in the last 120 days), 22%+ is 1+ days past "
        "due (yellow), 22%+ is 30+ (orange) or 20%+ is 60+ (red), in 2+ loans.")
    assert "in the last 30 days, 2+ and 50%+ are still unpaid more than 5 days after the sale" in rules[
        "sold_out_of_trust"]
    assert rules["overdue"].startswith("Of the instalments due in the last 120 days that reached 30 days past due, "
                                       "2+ and 10%+ are unpaid")
    other = describe_rules(dataclasses.replace(c, version="ew-x", sold_out_of_trust_days=7))
    assert "7 days after the sale" in {r.name: r for r in other}["sold_out_of_trust"].description


def _actions(**changes_by_level) -> tuple[LevelActions, ...]:
    return tuple(dataclasses.replace(a, **changes_by_level.get(a.level, {})) for a in DEFAULT_ACTIONS)


@pytest.mark.parametrize("field, value, match", [
    ("version", "", "version: expected a non-empty string, got ''"),
    ("dpd_yellow_days", 0, "dpd_yellow_days: expected an integer >= 1, got 0"),
    ("dpd_red_days", 20, "dpd_red_days: expected a value > dpd_orange_days \\(30\\), got 20"),
    ("sold_out_of_trust_days", -1, "sold_out_of_trust_days: expected an integer >= 0, got -1"),
    ("audit_skips_min", 2.5, "audit_skips_min: expected an integer >= 1, got 2.5"),
    ("withdrawn_min", True, "withdrawn_min: expected an integer >= 1, got True"),
    ("audit_missing_share", 1.5, "audit_missing_share: expected a share in \\(0, 1\\], got 1.5"),
    ("velocity_drop_ratio", 0.0, "velocity_drop_ratio: expected a ratio in \\(0, 1\\], got 0.0"),
    ("velocity_min_baseline", float("nan"), "velocity_min_baseline: expected a number of sales > 0"),
    ("dilution_spike_factor", 0.5, "dilution_spike_factor: expected a factor >= 1, got 0.5"),
    ("dilution_spike_floor", 0, "dilution_spike_floor: expected a ratio in \\(0, 1\\], got 0"),
    ("score_orange", 0.1, "score_orange: expected a value > score_yellow \\(0.25\\), got 0.1"),
    ("overdue_red_days", 30, "overdue_red_days: expected a value > overdue_orange_days"),
    ("orange_to_red_count", 1, "orange_to_red_count: expected an integer >= 2, got 1"),
    ("actions", DEFAULT_ACTIONS[:3], "actions: expected a tuple of 4 LevelActions"),
    ("actions", DEFAULT_ACTIONS[::-1], "actions: expected levels in the order"),
    ("actions", _actions(red={"limit_cut": 0.8}), "actions: expected actions of 'red' at least as severe"),
    ("actions", _actions(yellow={"frozen": True}), "actions: expected actions of 'orange' at least as severe"),
    ("actions", _actions(yellow={"limit_cut": 1.5}), "actions: expected limit_cut in \\[0, 1\\] for level 'yellow'"),
    ("dpd_lookback_days", 59, "dpd_lookback_days: expected a value >= dpd_red_days \\(60\\), got 59"),
    ("dpd_min_loans", 0, "dpd_min_loans: expected an integer >= 1, got 0"),
    ("dpd_red_share", 0.0, "dpd_red_share: expected a share in \\(0, 1\\], got 0.0"),
    ("dpd_yellow_share", 1.2, "dpd_yellow_share: expected a share in \\(0, 1\\], got 1.2"),
    ("sold_out_of_trust_window_days", 5,
     "sold_out_of_trust_window_days: expected a value > sold_out_of_trust_days \\(5\\), got 5"),
    ("sold_out_of_trust_min", 0, "sold_out_of_trust_min: expected an integer >= 1, got 0"),
    ("sold_out_of_trust_share", -0.1, "sold_out_of_trust_share: expected a share in \\(0, 1\\], got -0.1"),
    ("stock_ageing_min_vehicles", 0, "stock_ageing_min_vehicles: expected an integer >= 1, got 0"),
    ("stock_ageing_share", 2, "stock_ageing_share: expected a share in \\(0, 1\\], got 2"),
    ("duplicate_vin_window_days", 0, "duplicate_vin_window_days: expected an integer >= 1, got 0"),
    ("withdrawn_share", float("inf"), "withdrawn_share: expected a share in \\(0, 1\\], got inf"),
    ("overdue_lookback_days", 59, "overdue_lookback_days: expected a value >= overdue_red_days \\(60\\), got 59"),
    ("overdue_min_instalments", 1.5, "overdue_min_instalments: expected an integer >= 1, got 1.5"),
    ("overdue_share", 0, "overdue_share: expected a share in \\(0, 1\\], got 0"),
])
def test_config_validation(field, value, match):
    with pytest.raises(EarlyWarningError, match=match):
        dataclasses.replace(EW_CONFIG_V1, **{field: value})


def test_config_is_frozen_and_checked_by_the_rules(clean):
    with pytest.raises(dataclasses.FrozenInstanceError):
        EW_CONFIG_V1.dpd_red_days = 90  # type: ignore[misc]
    with pytest.raises(EarlyWarningError, match="cfg must be an EarlyWarningConfig"):
        dealer_signals(clean, AS_OF, cfg={"version": "x"})  # type: ignore[arg-type]
    with pytest.raises(EarlyWarningError, match="a warning level must be one of"):
        EW_CONFIG_V1.action("purple")
    assert isinstance(EarlyWarningConfig(version="v2", sold_out_of_trust_days=0), EarlyWarningConfig)


def test_thresholds_come_from_the_config(clean):
    frames = fresh(clean)
    _sold_out_of_trust(frames)  # sold 8 days ago
    strict = dataclasses.replace(EW_CONFIG_V1, version="ew-strict", sold_out_of_trust_days=10)
    assert dealer_signals(frames, AS_OF, strict).empty
    assert dealer_signals(frames, AS_OF)["rule"].tolist() == ["sold_out_of_trust"]


# the rules on simulated data ------------------------------------------------------------------

def test_rules_on_simulated_data(tmp_path):
    """The rules run on a fault-free simulation (small scale, 130 business days, 80 dealers, every
    application funded, a few % of the loans defaulting): the watchlist discriminates. Most dealers
    are green, few are red, no rule fires for most dealers, and the level rises with the true PD."""
    from tests.features.simdata import START, read_frames, simulate

    started = time.perf_counter()
    sim = simulate(tmp_path / "sim", scale="small", days=130, seed=5)
    try:
        frames = read_frames(tmp_path / "sim")
        oracle = sim.oracle_pd()
    finally:
        sim.dispose()
    as_of = pd.to_datetime(frames["dealer.sales"]["sold_at"]).max().date() + dt.timedelta(days=1)
    dealers = dealer_signals(frames, as_of)
    suppliers = supplier_signals(frames, as_of)
    for sig in (dealers, suppliers):
        assert_signal_frame(sig)
    pii = set(frames["dealer.dealers"][["dealer_name", "owner_name", "phone"]].to_numpy().ravel())
    assert not any(p in d for d in dealers["detail"] for p in pii)
    borrowers = pd.concat([
        pd.DataFrame({"borrower_type": "dealer", "borrower_id": frames["dealer.dealers"]["dealer_id"]}),
        pd.DataFrame({"borrower_type": "supplier", "borrower_id": frames["erp.suppliers"]["supplier_id"]})])
    watch = combine(pd.concat([dealers, suppliers]), borrowers)
    assert len(watch) == len(borrowers)
    rr = roll_rates(frames, as_of, prior=as_of - dt.timedelta(days=30))
    assert rr.sum(axis=1).to_numpy() == pytest.approx(1.0)

    # riskier dealers (true PD of the simulator's oracle) fire more rules and get a higher level
    day = pd.Timestamp(as_of - dt.timedelta(days=1))
    true_pd = oracle[(oracle["borrower_type"] == "dealer") & (pd.to_datetime(oracle["as_of"]) == day)]
    true_pd = true_pd.set_index("borrower_id")["true_pd"]
    fired = dealers.groupby("borrower_id").size().reindex(true_pd.index, fill_value=0)
    assert fired.sum() > 0 and true_pd.corr(fired, method="spearman") > 0.2
    riskier = true_pd > true_pd.median()
    assert fired[riskier].mean() > fired[~riskier].mean()
    assert dealers.groupby("rule")["borrower_id"].nunique().max() < 0.3 * len(true_pd)
    level = watch[watch["borrower_type"] == "dealer"].set_index("borrower_id")["level"].reindex(true_pd.index)
    share = level.value_counts(normalize=True)
    assert share.get("green", 0.0) >= 0.6 and share.get("red", 0.0) <= 0.1, share
    flagged = level != "green"
    assert true_pd[flagged].mean() > 1.5 * true_pd[~flagged].mean()
    assert level.map(LEVELS.index).corr(true_pd, method="spearman") > 0.35
    assert as_of > START and time.perf_counter() - started < 60
