"""The warehouse queries of ``approve_batch`` against real databases: which applications a batch
decides (an anti-join), each dealer's outstanding exposure (one aggregate) and the VINs already
financed. Each is compared with the pandas computation it replaced, on SQLite, PostgreSQL and
MariaDB (the paid-out check concatenates strings, which differs by dialect)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from chainlend import lending_ops
from chainlend.systems import BATCH_ID, SEQ, Warehouse
from sources.contract import table

DAY = dt.date(2026, 3, 4)
BATCH = "approve.20260304"
NOW = dt.datetime(2026, 3, 4, 12)


def _app(i: int, applied: dt.datetime, dealer: str) -> dict:
    return {"application_id": f"APP{i:04d}", "dealer_id": dealer, "vin": f"VIN{i:014d}", "purchase_price_fen": 100,
            "appraised_value_fen": 120, "requested_fen": 90, "term_days": 30, "applied_at": applied,
            "updated_at": applied, BATCH_ID: "b", SEQ: i}


def _decision(i: int, batch: str, decision: str, amount: int, dealer: str) -> dict:
    return {"application_id": f"APP{i:04d}", "decision_batch": batch, "dealer_id": dealer, "vin": f"VIN{i:014d}",
            "decision": decision, "amount_fen": amount, "requested_fen": 90, "term_days": 30, "pd": 0.1,
            "band": "B", "el_fen": 1, "reason_codes": "", "reason_text_en": "", "reason_text_zh": "",
            "model_version": "1", "policy_version": "p", "feature_hash": "h", "decided_at": NOW}


def _world(url: str) -> Warehouse:
    """Applications inside and outside the look-back, decided by this batch (one of them paid
    out), by earlier batches (approved, reduced, declined, in review with each status) or not at
    all; repayments of some live loans."""
    w = Warehouse.from_url(url)
    w.create_all()
    t = w.lending
    inside, before = dt.datetime(2026, 3, 1, 9), dt.datetime(2026, 2, 20, 9)  # look-back starts 2026-02-25
    late = dt.datetime(2026, 3, 4, 23, 59, 59, 999_999)
    apps = [_app(i, inside if i % 3 else before, f"D{i % 4}") for i in range(1, 40)] + [
        _app(40, late, "D1"), _app(41, dt.datetime(2026, 3, 5), "D1")]
    decisions = [
        _decision(1, BATCH, "approved", 90, "D1"), _decision(2, BATCH, "review", 80, "D2"),
        _decision(3, BATCH, "approved", 70, "D3"),  # paid out below: final
        _decision(6, BATCH, "declined", 0, "D2"),  # outside the look-back, decided here before: again
        *[_decision(i, "approve.20260303", d, a, f"D{i % 4}") for i, d, a in (
            (4, "approved", 50), (5, "reduced", 40), (7, "declined", 0), (8, "review", 60), (10, "review", 61),
            (11, "review", 62), (13, "approved", 63), (14, "approved", 64), (16, "reduced", 65))],
    ]
    reviews = [{"application_id": f"APP{i:04d}", "dealer_id": f"D{i % 4}", "proposed_amount_fen": a, "status": s,
                "amount_fen": o, "queued_at": NOW} for i, a, s, o in (
        (8, 60, "approved", 33), (10, 61, "declined", 0), (11, 62, "pending", None), (2, 80, "pending", None))]
    repayments = [{"repayment_id": f"R{i}", "application_id": f"APP{i:04d}", "dealer_id": f"D{i % 4}",
                   "amount_fen": 1, "due_on": DAY, "paid_at": NOW, "updated_at": NOW, BATCH_ID: "b", SEQ: i}
                  for i in (8, 13)]
    paid = {"instruction_no": 1, "instruction_id": "i1", "idempotency_key": "loan:APP0003", "kind": "dealer_loan",
            "borrower_type": "dealer", "borrower_id": "D3", "amount_fen": 70, "source_batch": BATCH, "run_id": "r",
            "fence": 1, "created_at": NOW}
    with w.engine.begin() as conn:
        conn.execute(w.published(table("dealer", "loan_applications")).insert(), apps)
        conn.execute(w.published(table("dealer", "loan_repayments")).insert(), repayments)
        conn.execute(t["loan_decisions"].insert(), decisions)
        conn.execute(t["review_queue"].insert(), reviews)
        conn.execute(t["payment_instructions"].insert(), [paid])
    return w


def _old_pending(w: Warehouse, apps: pd.DataFrame) -> list[str]:
    """The selection approve_batch made before (every decision read, sets in pandas)."""
    t = w.lending
    with w.engine.connect() as conn:
        decided = pd.read_sql(t["loan_decisions"].select(), conn)
    mine = set(decided.loc[decided.decision_batch == BATCH, "application_id"])
    mine -= lending_ops._instructed(w, [f"loan:{a}" for a in mine], "loan:")
    done_elsewhere = set(decided.application_id) - mine
    cutoff = pd.Timestamp(DAY + dt.timedelta(days=1))
    start = pd.Timestamp(DAY - dt.timedelta(days=lending_ops.APPROVAL_LOOKBACK_DAYS))
    pending = apps[((apps.applied_at >= start) & (apps.applied_at < cutoff) | apps.application_id.isin(mine))
                   & ~apps.application_id.isin(done_elsewhere)]
    return sorted(pending.application_id)


@pytest.fixture(params=["sqlite", "postgres_url", "mariadb_url"])
def world(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}" if request.param == "sqlite" else request.getfixturevalue(request.param)
    w = _world(url)
    yield w
    w.engine.dispose()


def test_pending_is_the_anti_join_of_the_pandas_selection(world):
    apps = world.read_frames(("dealer.loan_applications",))["dealer.loan_applications"]
    got = lending_ops._pending_ids(world, BATCH, DAY)
    assert got == _old_pending(world, apps)
    assert "APP0003" not in got and "APP0006" in got and "APP0040" in got and "APP0041" not in got
    assert {"APP0001", "APP0002"} <= set(got) and not {"APP0004", "APP0005", "APP0007"} & set(got)


def test_outstanding_exposure_per_dealer(world):
    dealers = pd.DataFrame({"dealer_id": ["D0", "D1", "D2", "D3", "D9"], "status": "active", "city_tier": 1})
    ctx = lending_ops._dealer_context(dealers, *lending_ops._dealer_exposure(world, BATCH)).set_index("dealer_id")
    # other batches' live loans: 4 approved 50 (D0), 5 reduced 40 (D1), 8 review approved at 33 but
    # repaid (D0), 10 review declined (D2), 11 review pending 62 (D3), 13 approved repaid (D1),
    # 14 approved 64 (D2), 16 reduced 65 (D0); this batch's own decisions do not count
    assert ctx.outstanding_fen.to_dict() == {"D0": 50 + 65, "D1": 40, "D2": 64, "D3": 62, "D9": 0}
    assert ctx.outstanding_fen.dtype == "int64"


def test_financed_vins_are_those_of_live_decisions_of_other_batches(world):
    vins = [f"VIN{i:014d}" for i in (1, 4, 5, 7, 8, 10, 30)]
    assert lending_ops._financed_vins(world, BATCH, vins) == {f"VIN{i:014d}" for i in (4, 5, 8, 10)}


def test_requirement_mismatches_reads_pins_markers_and_missing_distributions(tmp_path):
    import importlib.metadata

    numpy = importlib.metadata.version("numpy")
    req = tmp_path / "requirements.txt"
    req.write_text(f"# pinned\nnumpy=={numpy}\n-c constraints.txt\n\npandas==0.0.1\n"
                   "no-such-distribution-xyz==1.0\nscipy==0.0.1; python_version < '3'\n", encoding="utf-8")
    pandas = importlib.metadata.version("pandas")
    assert lending_ops._requirement_mismatches(str(req)) == [
        f"pandas==0.0.1 (installed: {pandas})", "no-such-distribution-xyz==1.0 (not installed)"]
    assert lending_ops._requirement_mismatches(str(tmp_path / "absent.txt")) == []
