"""Credit operations at the edge: the inputs of the pure decisions (:mod:`lending`) from the
warehouse, the champion models from the registry, and the upserts of their results.

Only published (gated) rows are decided on. Each run works on a *batch* whose membership is
stored, so a re-run recomputes the same batch and upserts the same keys:

- ``approve.<business date>``: the published applications dated within the 7 days up to the
  business date that have no decision yet, plus those already decided in this batch;
- ``sc.<interval end>``: the published line-off events of the last 7 days not yet taken by an
  earlier micro-batch (``credit_batch_events``), plus those this batch took before.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import sqlalchemy as sa

from chainlend.disbursement_ops import upsert_limits
from chainlend.systems import Warehouse
from sources.contract import table as contract_table

log = logging.getLogger(__name__)

# A supplier credit is repaid from the OEM's payment of the financed payable at its due date;
# credits of line-offs within this many days count as current exposure.
SUPPLIER_CREDIT_TERM_DAYS = 60
# An application is decided when it is published within this many days of its application date
# (late-published ones included); older undecided applications are history from before the bank
# connected (loans the dealer platform funded elsewhere) and are not decided.
APPROVAL_LOOKBACK_DAYS = 7
# Line-off events older than this at a micro-batch's end are history from before the bank
# connected (vehicles built before the programme): no micro-batch claims them.
SUPPLIER_CREDIT_LOOKBACK_DAYS = 7
DILUTION_WINDOW_DAYS = 90


class LendingOpsError(RuntimeError):
    """A credit operation cannot run; the message names the missing input."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def champion(family: str):
    """``(version, pyfunc model)`` of the family's champion; fails loudly when there is none."""
    import mlflow.pyfunc

    from chainlend import model_ops

    reg = model_ops.registry()
    version = reg.version(family, "champion")
    if version is None:
        raise LendingOpsError(f"no champion for {family}: train_risk_models has not promoted one; "
                              "credit decisions wait for a champion model")
    return version, mlflow.pyfunc.load_model(f"models:/{family}/{version}")


def insert_frame(conn, table: sa.Table, frame: pd.DataFrame) -> None:
    """Insert ``frame``'s rows (NaN/NaT as NULL), in chunks of 20,000."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    for i in range(0, len(records), 20_000):
        conn.execute(table.insert(), records[i:i + 20_000])


def _upsert(conn, table: sa.Table, frame: pd.DataFrame, key: str) -> None:
    """Delete the rows of ``frame``'s ``key`` values, insert ``frame`` (one transaction, chunked)."""
    if frame.empty:
        return
    keys = frame[key].astype(str).tolist()
    for i in range(0, len(keys), 5_000):
        conn.execute(sa.delete(table).where(table.c[key].in_(keys[i:i + 5_000])))
    insert_frame(conn, table, frame)


# --------------------------------------------------------------------------------------------
# Flow B: used-car order-loan approval


def approve_batch(business_date: dt.date, warehouse: Warehouse | None = None) -> dict:
    """Decide the batch ``approve.<business_date>`` and upsert decisions and the review queue."""
    from features.dealer import application_features
    from features.definitions import feature_names
    from lending.approval import decide, feature_hash
    from lending.policy import APPROVAL_POLICY_V1

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    t = w.lending
    batch = f"approve.{business_date:%Y%m%d}"
    frames = w.read_frames(("dealer.dealers", "dealer.inventory", "dealer.sales", "dealer.floor_audits",
                            "dealer.loan_applications", "dealer.loan_repayments"))
    apps = frames["dealer.loan_applications"]
    with w.engine.connect() as conn:
        decided = pd.read_sql(sa.select(t["loan_decisions"].c.application_id, t["loan_decisions"].c.decision_batch),
                              conn)
    mine = set(decided.loc[decided.decision_batch == batch, "application_id"])
    # a decision already paid out is final: a re-run does not decide it again
    mine -= _instructed(w, [f"loan:{a}" for a in mine], "loan:")
    done_elsewhere = set(decided.application_id) - mine
    cutoff = pd.Timestamp(business_date + dt.timedelta(days=1))
    start = pd.Timestamp(business_date - dt.timedelta(days=APPROVAL_LOOKBACK_DAYS))
    pending = apps[((apps.applied_at >= start) & (apps.applied_at < cutoff) | apps.application_id.isin(mine))
                   & ~apps.application_id.isin(done_elsewhere)]
    pending = pending.sort_values("application_id").reset_index(drop=True)
    if pending.empty:
        return {"batch": batch, "decided": 0}
    version, model = champion("dealer_pd")
    feats = application_features(frames, pending)
    names = feature_names("dealer_pd")
    X = feats.loc[pending.application_id, names].astype("float64")
    # an application whose vehicle is not published (its inventory row is quarantined or late)
    # cannot be checked against the vehicle rules: it waits for a later batch, undecided
    known = (X["vehicle_age_years"].notna() & X["mileage_km"].notna()).to_numpy()
    waiting = int((~known).sum())
    pending, X = pending[known].reset_index(drop=True), X[known]
    if pending.empty:
        return {"batch": batch, "decided": 0, "waiting_for_vehicle": waiting}
    scores = model.predict(X.reset_index(drop=True))  # one batch call
    scores.insert(0, "application_id", pending.application_id.to_numpy())
    dealers = _dealer_context(w, frames["dealer.dealers"], batch)
    upsert_limits(w, pd.DataFrame({  # the limits disbursement checks again at posting time
        "borrower_type": "dealer", "borrower_id": dealers.dealer_id.astype(str),
        "limit_fen": dealers.city_tier.map(APPROVAL_POLICY_V1.dealer_limit_fen_by_city_tier).astype("int64"),
        "source": APPROVAL_POLICY_V1.version, "updated_at": _now()}))
    financed = _financed_vins(w, batch)
    app_in = pd.DataFrame({
        "application_id": pending.application_id, "dealer_id": pending.dealer_id, "vin": pending.vin,
        "appraised_value_fen": pending.appraised_value_fen.astype("int64"),
        "requested_fen": pending.requested_fen.astype("int64"), "term_days": pending.term_days.astype("int64"),
        "applied_at": pending.applied_at.dt.strftime("%Y-%m-%dT%H:%M:%S"),
        "vehicle_age_years": X["vehicle_age_years"].to_numpy(), "mileage_km": X["mileage_km"].to_numpy(),
        "vin_financed": pending.vin.isin(financed).to_numpy(),
        "feature_hash": feature_hash(X.reset_index(drop=True)).to_numpy(),
    })
    out = decide(app_in, scores, dealers, APPROVAL_POLICY_V1, model_version=str(version))
    out.insert(1, "decision_batch", batch)
    out["decided_at"] = _keep_time(w, t["loan_decisions"], out, "application_id", ("decision", "amount_fen"),
                                   "decided_at")
    extra = pending.set_index("application_id").loc[out.application_id]
    out["requested_fen"] = extra.requested_fen.astype("int64").to_numpy()
    out["term_days"] = extra.term_days.astype("int64").to_numpy()
    review = out[out.decision == "review"]
    with w.engine.begin() as conn:
        _upsert(conn, t["loan_decisions"], out, "application_id")
        q = t["review_queue"]
        queued = set(conn.execute(sa.select(q.c.application_id).where(
            q.c.application_id.in_(review.application_id.tolist()))).scalars()) if len(review) else set()
        new = review[~review.application_id.isin(queued)]
        if len(new):
            conn.execute(q.insert(), [{"application_id": r.application_id, "dealer_id": r.dealer_id,
                                       "proposed_amount_fen": int(r.amount_fen), "status": "pending",
                                       "queued_at": _now()} for r in new.itertuples()])
    counts = out.decision.value_counts().to_dict()
    return {"batch": batch, "decided": int(len(out)), "waiting_for_vehicle": waiting, "model_version": str(version),
            **{k: int(v) for k, v in counts.items()}}


def _keep_time(w: Warehouse, table: sa.Table, frame: pd.DataFrame, key: str, same: tuple[str, ...],
               column: str) -> pd.Series:
    """Now, or the stored time of a row a re-run reproduces unchanged (a re-run writes the same rows)."""
    now = pd.Series(pd.Timestamp(_now()), index=frame.index)
    keys = frame[key].astype(str).tolist()
    old = []
    with w.engine.connect() as conn:
        for i in range(0, len(keys), 5_000):
            old.append(pd.read_sql(sa.select(table.c[key], *[table.c[c] for c in same], table.c[column]).where(
                table.c[key].in_(keys[i:i + 5_000])), conn))
    old = pd.concat(old, ignore_index=True) if old else pd.DataFrame()
    if old.empty:
        return now
    m = frame[[key, *same]].reset_index().merge(old, on=key, how="left", suffixes=("", "_old")).set_index("index")
    unchanged = np.logical_and.reduce([m[c].astype(str).eq(m[f"{c}_old"].astype(str)) for c in same])
    return pd.Series(np.where(unchanged, pd.to_datetime(m[column]), now), index=frame.index)


def _instructed(w: Warehouse, item_keys: list[str], prefix: str) -> set[str]:
    """The business keys (without ``prefix``) of loans that already have a payment instruction (a
    loan's item key is its instruction's idempotency key; no ``instruction_items`` row is kept)."""
    pi = w.lending["payment_instructions"]
    found: set[str] = set()
    with w.engine.connect() as conn:
        for i in range(0, len(item_keys), 5_000):
            found.update(k.removeprefix(prefix) for k in conn.execute(sa.select(pi.c.idempotency_key).where(
                pi.c.idempotency_key.in_(item_keys[i:i + 5_000]))).scalars())
    return found


def _dealer_context(w: Warehouse, dealers: pd.DataFrame, batch: str) -> pd.DataFrame:
    """blocked, frozen, city tier, outstanding exposure (decisions of other batches whose loan is
    not repaid, and pending reviews) and the early-warning limit cut of every dealer."""
    t = w.lending
    d, rq = t["loan_decisions"], t["review_queue"]
    with w.engine.connect() as conn:
        live = pd.read_sql(sa.select(d.c.application_id, d.c.dealer_id, d.c.amount_fen, d.c.decision).where(
            d.c.decision_batch != batch, d.c.decision.in_(["approved", "reduced", "review"])), conn)
        reviews = pd.read_sql(sa.select(rq.c.application_id, rq.c.status, rq.c.amount_fen), conn)
        controls = pd.read_sql(sa.select(t["credit_controls"]).where(
            t["credit_controls"].c.borrower_type == "dealer"), conn)
        repaid_ids = set()
        pub = w.published(contract_table("dealer", "loan_repayments"))
        for i in range(0, len(live), 5_000):
            chunk = live.application_id.iloc[i:i + 5_000].tolist()
            repaid_ids.update(conn.execute(sa.select(pub.c.application_id).where(
                pub.c.application_id.in_(chunk))).scalars())
    rv = reviews.set_index("application_id")
    amount = live.amount_fen.astype("int64").copy()
    is_review = live.decision == "review"
    status = live.application_id.map(rv["status"]) if len(rv) else pd.Series(None, index=live.index)
    officer_amount = live.application_id.map(rv["amount_fen"]) if len(rv) else pd.Series(None, index=live.index)
    amount[is_review & (status == "declined")] = 0
    approved_review = is_review & (status == "approved")
    amount[approved_review] = officer_amount[approved_review].astype("int64")
    amount[live.application_id.isin(repaid_ids)] = 0
    outstanding = amount.groupby(live.dealer_id).sum()
    ctx = pd.DataFrame({
        "dealer_id": dealers.dealer_id,
        "blocked": dealers.status.eq("blocked").to_numpy(),
        "city_tier": dealers.city_tier.astype("int64"),
    })
    ctrl = controls.set_index("borrower_id") if len(controls) else None
    ctx["frozen"] = ctx.dealer_id.map(ctrl["frozen"]).fillna(False).astype(bool) if ctrl is not None else False
    ctx["limit_cut"] = ctx.dealer_id.map(ctrl["limit_cut"]).fillna(1.0).astype(float) if ctrl is not None else 1.0
    ctx["outstanding_fen"] = ctx.dealer_id.map(outstanding).fillna(0).astype("int64")
    return ctx[["dealer_id", "blocked", "frozen", "city_tier", "outstanding_fen", "limit_cut"]]


def _financed_vins(w: Warehouse, batch: str) -> set[str]:
    d = w.lending["loan_decisions"]
    with w.engine.connect() as conn:
        return set(conn.execute(sa.select(d.c.vin).where(
            d.c.decision_batch != batch, d.c.decision.in_(["approved", "reduced", "review"]))).scalars())


def review(application_id: str, *, action: str, by: str, amount_fen: int | None = None,
           note: str | None = None, warehouse: Warehouse | None = None) -> dict:
    """A credit officer's decision on a queued application (approve with an amount, or decline
    with a reason). The amount may not exceed the proposed amount (the policy's and the limit's
    bound); a decided item cannot be decided again."""
    if not (by or "").strip():
        raise LendingOpsError("a review decision needs the officer's name (--by NAME)")
    if action not in ("approve", "decline"):
        raise LendingOpsError(f"action must be approve or decline, got {action!r}")
    w = warehouse or Warehouse.from_conn()
    q = w.lending["review_queue"]
    with w.engine.begin() as conn:
        row = conn.execute(sa.select(q).where(q.c.application_id == application_id)).mappings().first()
        if row is None:
            raise LendingOpsError(f"application {application_id} is not in the review queue")
        if row["status"] != "pending":
            raise LendingOpsError(f"application {application_id} was already {row['status']} by {row['officer']}")
        if action == "approve":
            amount = int(row["proposed_amount_fen"] if amount_fen is None else amount_fen)
            if not 0 < amount <= row["proposed_amount_fen"]:
                raise LendingOpsError(f"approved amount must be in (0, {row['proposed_amount_fen']}] fen "
                                      f"(the proposed amount), got {amount}")
            values = {"status": "approved", "amount_fen": amount}
        else:
            if not (note or "").strip():
                raise LendingOpsError("a decline needs a reason (--reason TEXT)")
            values = {"status": "declined", "amount_fen": 0}
        conn.execute(sa.update(q).where(q.c.application_id == application_id, q.c.status == "pending").values(
            **values, officer=by.strip(), note=note, decided_at=_now()))
    return {"application_id": application_id, **values, "officer": by.strip()}


# --------------------------------------------------------------------------------------------
# Flow A: IoT-triggered, BOM-proportional supplier credit


def allocate_batch(interval_end: dt.datetime, warehouse: Warehouse | None = None) -> dict:
    """Allocate the micro-batch ``sc.<interval_end>``: published line-off events not yet taken."""
    from lending.cascade import CASCADE_POLICY_V1, allocate, supplier_limits

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    t = w.lending
    batch = f"sc.{interval_end:%Y%m%dT%H%M}"
    frames = w.read_frames(("erp.suppliers", "erp.supplier_links", "erp.parts", "erp.vehicle_models", "erp.bom",
                            "erp.sub_bom", "erp.production", "erp.goods_receipts", "erp.payables",
                            "erp.credit_memos", "erp.supplier_repayments", "erp.line_off_events"))
    events = frames["erp.line_off_events"]
    be = t["credit_batch_events"]
    with w.engine.begin() as conn:  # claim the batch's events (a re-run finds its claim)
        taken = pd.read_sql(sa.select(be), conn)
        since = pd.Timestamp(interval_end) - pd.Timedelta(days=SUPPLIER_CREDIT_LOOKBACK_DAYS)
        new = events[(events.updated_at < pd.Timestamp(interval_end)) & (events.line_off_at >= since)
                     & ~events.event_id.isin(taken.event_id)].event_id.tolist()
        if new:
            conn.execute(be.insert(), [{"event_id": e, "batch_id": batch} for e in new])
    mine = set(taken.loc[taken.batch_id == batch, "event_id"]) | set(new)
    line_offs = events[events.event_id.isin(mine)]
    if line_offs.empty:
        return {"batch": batch, "events": 0}
    pi = t["payment_instructions"]
    with w.engine.connect() as conn:
        paid = conn.execute(sa.select(sa.func.count()).select_from(pi).where(pi.c.source_batch == batch)).scalar_one()
    if paid:  # credits already paid out are final: a re-run does not allocate them again
        return {"batch": batch, "events": int(len(line_offs)), "already_disbursed": int(paid)}
    as_of = interval_end.date()
    version, model = champion("supplier_pd")
    sup = frames["erp.suppliers"]
    pds = _supplier_pd(frames, model, sup.supplier_id.tolist(), as_of)
    limits = supplier_limits(pds, CASCADE_POLICY_V1)
    upsert_limits(w, pd.DataFrame({"borrower_type": "supplier", "borrower_id": limits.index.astype(str),
                                   "limit_fen": limits.to_numpy(dtype="int64"),
                                   "source": f"{CASCADE_POLICY_V1.version}/supplier_pd v{version}",
                                   "updated_at": _now()}))
    suppliers = _supplier_caps(w, frames, batch, as_of, limits)
    result = allocate(line_offs[["event_id", "vin", "line_off_at", "iot_verified", "verification_note"]],
                      frames["erp.production"][["vin", "model_id"]], frames["erp.bom"], frames["erp.sub_bom"],
                      suppliers, CASCADE_POLICY_V1, batch_id=batch)
    credits = result.credits.copy()
    lo = line_offs.set_index("event_id")["line_off_at"]
    credits["line_off_on"] = pd.to_datetime(credits.event_id.map(lo)).dt.date
    credits["allocated_at"] = _keep_time(w, t["supplier_credits"], credits, "credit_id", ("amount_fen",),
                                         "allocated_at")
    lines = result.lines.assign(batch_id=batch)
    with w.engine.begin() as conn:
        conn.execute(sa.delete(t["supplier_credit_lines"]).where(t["supplier_credit_lines"].c.batch_id == batch))
        conn.execute(sa.delete(t["supplier_credits"]).where(t["supplier_credits"].c.batch_id == batch))
        conn.execute(sa.delete(t["line_off_exceptions"]).where(t["line_off_exceptions"].c.batch_id == batch))
        _upsert(conn, t["supplier_credits"], credits, "credit_id")
        insert_frame(conn, t["supplier_credit_lines"], lines)
        _upsert(conn, t["line_off_exceptions"], result.exceptions, "event_id")
    capped = credits[credits.capped_fen > 0]
    return {"batch": batch, "events": int(len(line_offs)), "credits": int(len(credits)),
            "amount_fen": int(credits.amount_fen.sum()), "exceptions": int(len(result.exceptions)),
            "suppliers_capped": int(capped.supplier_id.nunique()), "supplier_pd_version": str(version)}


def _supplier_pd(frames, model, supplier_ids: list[str], as_of: dt.date) -> pd.Series:
    from features.definitions import feature_names
    from features.supplier import supplier_features

    feats = supplier_features(frames, supplier_ids, [as_of])
    X = feats[feature_names("supplier_pd")].astype("float64").reset_index(drop=True)
    scores = model.predict(X)  # one batch call
    return pd.Series(np.clip(scores["pd"].to_numpy(), 1e-6, 1.0), index=pd.Index(supplier_ids, name="supplier_id"))


def _supplier_caps(w: Warehouse, frames, batch: str, as_of: dt.date, limits: pd.Series) -> pd.DataFrame:
    """tier, limit, current exposure, OEM-confirmed unpaid payables and dilution ratio per supplier.

    Payables: a tier-1 supplier's confirmed payables due on or after ``as_of``; a tier-2
    supplier's share of those through the sub-BOM (receipt quantity × component quantity ×
    component price). Dilution: credit memos / payables of the last 90 days (tier-1)."""
    sup = frames["erp.suppliers"][["supplier_id", "tier"]].copy()
    pay = frames["erp.payables"]
    day = pd.Timestamp(as_of)
    open_pay = pay[(pay.confirmation_status == "confirmed") & (pay.due_on >= day)]
    t1 = open_pay.groupby("supplier_id").amount_fen.sum()
    rec = frames["erp.goods_receipts"].set_index("receipt_id")
    r = rec.loc[rec.index.intersection(open_pay.receipt_id), ["part_id", "quantity"]].reset_index()
    sub = frames["erp.sub_bom"]
    j = r.merge(sub, left_on="part_id", right_on="parent_part_id", suffixes=("_r", ""))
    t2 = (j.quantity_r * j.quantity * j.unit_price_fen).groupby(j.supplier_id).sum()
    payables = pd.concat([t1, t2]).groupby(level=0).sum()
    recent = pay[pay.updated_at >= day - pd.Timedelta(days=DILUTION_WINDOW_DAYS)]
    memos = frames["erp.credit_memos"]
    memos = memos[memos.issued_at >= day - pd.Timedelta(days=DILUTION_WINDOW_DAYS)]
    pay_sum = recent.groupby("supplier_id").amount_fen.sum()
    dilution = (memos.groupby("supplier_id").amount_fen.sum() / pay_sum).reindex(pay_sum.index).fillna(0.0)
    c = w.lending["supplier_credits"]
    since = as_of - dt.timedelta(days=SUPPLIER_CREDIT_TERM_DAYS)
    with w.engine.connect() as conn:
        exp = pd.read_sql(sa.select(c.c.supplier_id, sa.func.sum(c.c.amount_fen).label("exposure")).where(
            c.c.batch_id != batch, c.c.line_off_on >= since).group_by(c.c.supplier_id), conn)
    exposure = exp.set_index("supplier_id")["exposure"] if len(exp) else pd.Series(dtype="int64")
    sup["limit_fen"] = sup.supplier_id.map(limits).astype("int64")
    sup["exposure_fen"] = sup.supplier_id.map(exposure).fillna(0).astype("int64")
    sup["confirmed_payables_fen"] = sup.supplier_id.map(payables).fillna(0).astype("int64")
    sup["dilution_ratio"] = sup.supplier_id.map(dilution).fillna(0.0).astype(float)
    sup["tier"] = sup.tier.astype("int64")
    return sup.reset_index(drop=True)
