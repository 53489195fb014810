"""Seed a warehouse with payable decisions, supplier credits, limits and controls (test helper).

Decisions are what the approval and allocation steps write (their own tests cover how); the
disbursement tests start from them so each case controls exactly what is payable."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from chainlend.systems import Warehouse

DAY = dt.date(2026, 3, 2)
DECIDED = dt.datetime(2026, 3, 2, 1, 0)
INTERVAL_END = dt.datetime(2026, 3, 2, 18, 30)


def warehouse(url: str) -> Warehouse:
    from sources.sql import make_engine

    w = Warehouse(make_engine(url))
    w.metadata.create_all(w.engine)
    return w


def seed(w: Warehouse, *, dealers: int = 5, loans_per_dealer: int = 4, suppliers: int = 3,
         credits_per_supplier: int = 6, loan_fen: int = 10_000_000, credit_fen: int = 250_000,
         dealer_limit_fen: int = 10**12, supplier_limit_fen: int = 10**12) -> dict:
    """``dealers × loans_per_dealer`` approved loans (every 4th ``reduced``, plus one declined and
    one pending review per dealer, which are not payable) and ``suppliers × credits_per_supplier``
    credits in two micro-batches (plus a zero credit, not payable)."""
    t = w.lending
    decisions, credits, limits = [], [], []
    for d in range(dealers):
        dealer = f"D{d:05d}"
        limits.append({"borrower_type": "dealer", "borrower_id": dealer, "limit_fen": dealer_limit_fen,
                       "source": "test", "updated_at": DECIDED})
        for k in range(loans_per_dealer + 2):
            decision = "approved" if k % 4 else "reduced"
            if k == loans_per_dealer:
                decision = "declined"
            if k == loans_per_dealer + 1:
                decision = "review"
            decisions.append({
                "application_id": f"LA{d:05d}{k:04d}", "decision_batch": f"approve.{DAY:%Y%m%d}", "dealer_id": dealer,
                "vin": f"LSV{d:06d}{k:08d}", "decision": decision,
                "amount_fen": 0 if decision == "declined" else loan_fen + k, "requested_fen": loan_fen + k,
                "term_days": 60, "pd": 0.02, "band": "A", "el_fen": 1000, "reason_codes": "", "reason_text_en": "",
                "reason_text_zh": "", "model_version": "1", "policy_version": "test", "feature_hash": "x",
                "decided_at": DECIDED})
    for s in range(suppliers):
        sup = f"S{s:05d}"
        limits.append({"borrower_type": "supplier", "borrower_id": sup, "limit_fen": supplier_limit_fen,
                       "source": "test", "updated_at": DECIDED})
        for k in range(credits_per_supplier + 1):
            batch = f"sc.{DAY:%Y%m%d}T{'0915' if k % 2 else '0930'}"
            credits.append({
                "credit_id": f"LSVCAR{k:011d}:{sup}", "batch_id": batch, "event_id": f"E{k}", "vin": f"LSVCAR{k:011d}",
                "model_id": "M1", "supplier_id": sup, "tier": 1, "share_fen": credit_fen,
                "amount_fen": 0 if k == credits_per_supplier else credit_fen + k, "capped_fen": 0, "capped_by": None,
                "policy_version": "test", "line_off_on": DAY, "allocated_at": DECIDED,
                "split_id": f"M1:test:{sup}"})
    with w.engine.begin() as conn:
        conn.execute(t["loan_decisions"].insert(), decisions)
        if credits:
            conn.execute(t["supplier_credits"].insert(), credits)
        conn.execute(t["borrower_limits"].insert(), limits)
    payable_loans = [r for r in decisions if r["decision"] in ("approved", "reduced")]
    payable_credits = [r for r in credits if r["amount_fen"] > 0]
    supplier_instr = {(r["batch_id"], r["supplier_id"]) for r in payable_credits}
    return {"loans": len(payable_loans), "credits": len(payable_credits),
            "instructions": len(payable_loans) + len(supplier_instr),
            "amount_fen": sum(r["amount_fen"] for r in payable_loans + payable_credits)}


def control(w: Warehouse, borrower_type: str, borrower_id: str, *, frozen: bool, limit_cut: float = 1.0,
            level: str = "red") -> None:
    c = w.lending["credit_controls"]
    with w.engine.begin() as conn:
        conn.execute(sa.delete(c).where(c.c.borrower_type == borrower_type, c.c.borrower_id == borrower_id))
        conn.execute(c.insert(), {"borrower_type": borrower_type, "borrower_id": borrower_id, "frozen": frozen,
                                  "limit_cut": limit_cut, "level": level, "reason": "test", "since": DAY})


def counts(w: Warehouse) -> dict[str, int]:
    t = w.lending
    with w.engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(t[name])).scalar_one()
                for name in ("payment_instructions", "instruction_items", "ledger_entries", "ledger_postings",
                             "payment_outbox", "payment_holds")}


def ledger(w: Warehouse) -> list[tuple]:
    """Every posting (leg), through the ``ledger_postings`` view on the entries."""
    p = w.lending["ledger_postings"]
    with w.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(p).order_by(p.c.posting_id))]
