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

import contextlib
import datetime as dt
import logging
import os
import platform
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import sqlalchemy as sa

from chainlend import settings
from chainlend.bulk import bulk_insert
from chainlend.disbursement_ops import upsert_limits
from chainlend.systems import Warehouse, insert_rows
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
    """``(version, pyfunc model)`` of the family's champion; fails loudly when there is none.

    The alias is resolved on every call; a registered version is immutable, so its loaded model
    is kept for the life of the process (keyed by registry, family, version and the version's
    logged-model source): a second task or family run in the same process does not load it again.
    """
    from chainlend import model_ops

    reg = model_ops.registry()
    version = reg.version(family, "champion")
    if version is None:
        raise LendingOpsError(f"no champion for {family}: train_risk_models has not promoted one; "
                              "credit decisions wait for a champion model")
    mv = reg.client.get_model_version(family, str(version))
    key = (settings.mlflow_tracking_uri(), family, str(version), str(mv.source), str(mv.run_id))
    model = _CHAMPIONS.get(key)
    if model is None:
        model = _CHAMPIONS[key] = _load_pyfunc(f"models:/{family}/{version}")
    return version, model


_CHAMPIONS: dict[tuple[str, ...], object] = {}


def _load_pyfunc(uri: str):
    """``mlflow.pyfunc.load_model(uri)`` with its environment check done here: MLflow's own check
    maps every installed distribution to its modules (~1.6 s a process) to compare the model's
    ``requirements.txt``; the model pins ``name==version`` lines (:func:`models.serving.pinned_requirements`),
    compared here with the installed versions directly. A mismatch is logged as a warning, as MLflow does."""
    import mlflow.artifacts
    import mlflow.pyfunc

    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    mismatches = _requirement_mismatches(os.path.join(local, "requirements.txt"))
    if mismatches:
        log.warning("model %s: its dependencies differ from this Python environment:\n - %s", uri,
                    "\n - ".join(mismatches))
    model = mlflow.pyfunc.load_model(local, suppress_warnings=True)
    logged = (model.metadata.flavors.get("python_function") or {}).get("python_version")
    here = platform.python_version()
    if logged and logged.split(".")[:2] != here.split(".")[:2]:
        log.warning("model %s was logged with Python %s; this is Python %s", uri, logged, here)
    return model


def _requirement_mismatches(path: str) -> list[str]:
    """The lines of a pip requirements file the installed distributions do not satisfy."""
    import importlib.metadata

    from packaging.requirements import InvalidRequirement, Requirement

    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            try:
                req = Requirement(line)
            except InvalidRequirement:
                out.append(f"{line} (not a requirement this check reads)")
                continue
            if req.marker is not None and not req.marker.evaluate():
                continue
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                out.append(f"{line} (not installed)")
                continue
            if req.specifier and not req.specifier.contains(installed, prereleases=True):
                out.append(f"{line} (installed: {installed})")
    return out


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
    from features.dealer import APPLICATIONS, DEALER_COLUMNS, DEALERS, application_features
    from features.definitions import feature_names
    from features.frames import positions
    from lending.approval import decide, feature_hash
    from lending.policy import APPROVAL_POLICY_V1

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    t = w.lending
    batch = f"approve.{business_date:%Y%m%d}"
    with _side_by_side(w) as pool:
        # the reads wait on the reader process or on SQLite (which release the GIL): they run
        # side by side, the champion loads meanwhile (its failure surfaces only if it is needed)
        read = pool.submit(w.read_frames, DEALER_COLUMNS,
                           columns={**DEALER_COLUMNS, DEALERS: (*DEALER_COLUMNS[DEALERS], "status")})
        pending_ids = pool.submit(_pending_ids, w, batch, business_date)
        exposure = pool.submit(_dealer_exposure, w, batch)
        loaded = pool.submit(champion, "dealer_pd")
        frames = read.result()
        apps = frames[APPLICATIONS]
        # membership by Arrow's hash lookup (Series.isin on Arrow strings builds a Python list of the set)
        pending = apps[positions(pd.Series(pending_ids.result(), dtype=object), apps.application_id) >= 0]
        pending = pending.sort_values("application_id").reset_index(drop=True)
        if pending.empty:
            return {"batch": batch, "decided": 0}
        # the VINs of every pending application: a superset of those decided below, so the same
        # financed VINs among them
        financed_vins = pool.submit(_financed_vins, w, batch, pending.vin.dropna().astype(str).unique().tolist())
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
        version, model = loaded.result()
        X = X.reset_index(drop=True)
        scoring = pool.submit(model.predict, X)  # one batch call; the feature hashes meanwhile
        hashes = feature_hash(X).to_numpy()
        dealers = _dealer_context(frames["dealer.dealers"], *exposure.result())
        scores = scoring.result()
        financed = financed_vins.result()
    scores.insert(0, "application_id", pending.application_id.to_numpy())
    upsert_limits(w, pd.DataFrame({  # the limits disbursement checks again at posting time
        "borrower_type": "dealer", "borrower_id": dealers.dealer_id.astype(str),
        "limit_fen": dealers.city_tier.map(APPROVAL_POLICY_V1.dealer_limit_fen_by_city_tier).astype("int64"),
        "source": APPROVAL_POLICY_V1.version, "updated_at": _now()}))
    app_in = pd.DataFrame({
        "application_id": pending.application_id, "dealer_id": pending.dealer_id, "vin": pending.vin,
        "appraised_value_fen": pending.appraised_value_fen.astype("int64"),
        "requested_fen": pending.requested_fen.astype("int64"), "term_days": pending.term_days.astype("int64"),
        "applied_at": pending.applied_at.dt.strftime("%Y-%m-%dT%H:%M:%S"),
        "vehicle_age_years": X["vehicle_age_years"].to_numpy(), "mileage_km": X["mileage_km"].to_numpy(),
        "vin_financed": pending.vin.isin(financed).to_numpy(),
        "feature_hash": hashes,
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
        d = t["loan_decisions"]
        keys = out.application_id.astype(str).tolist()
        for i in range(0, len(keys), 5_000):  # upsert by application id: delete, insert
            conn.execute(sa.delete(d).where(d.c.application_id.in_(keys[i:i + 5_000])))
        insert_rows(conn, d, out)
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


@contextlib.contextmanager
def _side_by_side(w: Warehouse) -> Iterator[ThreadPoolExecutor | _Deferred]:
    """An executor for reads that can overlap: threads on a database file or server (each
    thread's statements on a connection of its own); on an in-memory SQLite database (a
    connection per thread would be a different database) each call runs in the calling thread
    when its result is asked for, as without an executor. Leaving the block waits for what was
    submitted."""
    url = w.engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        yield _Deferred()
        return
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


class _Deferred:
    """``submit`` of an executor whose calls run in the calling thread at ``result()``."""

    class Call:
        def __init__(self, fn, args, kwargs):
            self.fn, self.args, self.kwargs = fn, args, kwargs

        def result(self):
            return self.fn(*self.args, **self.kwargs)

    def submit(self, fn, /, *args, **kwargs) -> _Deferred.Call:
        return self.Call(fn, args, kwargs)


def _pending_ids(w: Warehouse, batch: str, business_date: dt.date) -> list[str]:
    """The published applications the batch ``approve.<business date>`` decides (one anti-join in
    the warehouse): those applied within the look-back up to the business date or decided by this
    batch before, less those decided by another batch and those whose decision by this batch is
    already paid out (final: a re-run does not decide it again)."""
    t = w.lending
    d, pi = t["loan_decisions"], t["payment_instructions"]
    apps = w.published(contract_table("dealer", "loan_applications"))
    cutoff = dt.datetime.combine(business_date + dt.timedelta(days=1), dt.time())
    start = dt.datetime.combine(business_date - dt.timedelta(days=APPROVAL_LOOKBACK_DAYS), dt.time())
    mine = sa.select(d.c.application_id).where(d.c.decision_batch == batch)
    paid = sa.exists().where(pi.c.idempotency_key == sa.literal("loan:") + d.c.application_id)
    done = sa.exists().where(d.c.application_id == apps.c.application_id, sa.or_(d.c.decision_batch != batch, paid))
    query = sa.select(apps.c.application_id).where(
        sa.or_(sa.and_(apps.c.applied_at >= start, apps.c.applied_at < cutoff), apps.c.application_id.in_(mine)),
        ~done)
    with w.engine.connect() as conn:
        return list(conn.execute(query).scalars())


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


def _dealer_exposure(w: Warehouse, batch: str) -> tuple[list, pd.DataFrame]:
    """Per dealer, the outstanding exposure of decisions of other batches whose loan is not repaid
    and of pending reviews (``(dealer_id, fen)`` rows), and the dealers' credit controls."""
    t = w.lending
    d, rq = t["loan_decisions"], t["review_queue"]
    pub = w.published(contract_table("dealer", "loan_repayments"))
    # a live decision's exposure: 0 once repaid (a published repayment) or declined in review, the
    # officer's amount once approved in review, else the decided amount (one aggregate query)
    exposure = sa.case(
        (d.c.application_id.in_(sa.select(pub.c.application_id)), 0),
        (sa.and_(d.c.decision == "review", rq.c.status == "declined"), 0),
        (sa.and_(d.c.decision == "review", rq.c.status == "approved"), rq.c.amount_fen),
        else_=d.c.amount_fen)
    with w.engine.connect() as conn:
        per_dealer = conn.execute(sa.select(d.c.dealer_id, sa.func.sum(exposure)).select_from(
            d.outerjoin(rq, rq.c.application_id == d.c.application_id)).where(
            d.c.decision_batch != batch, d.c.decision.in_(["approved", "reduced", "review"])).group_by(
            d.c.dealer_id)).all()
        controls = pd.read_sql(sa.select(t["credit_controls"]).where(
            t["credit_controls"].c.borrower_type == "dealer"), conn)
    return per_dealer, controls


def _dealer_context(dealers: pd.DataFrame, per_dealer: list, controls: pd.DataFrame) -> pd.DataFrame:
    """blocked, frozen, city tier, outstanding exposure and the early-warning limit cut of every
    dealer (``per_dealer`` and ``controls`` as :func:`_dealer_exposure` reads them)."""
    outstanding = pd.Series({dealer: int(v) for dealer, v in per_dealer}, dtype="int64")
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


def _financed_vins(w: Warehouse, batch: str, vins: list[str]) -> set[str]:
    """Those of ``vins`` that a live decision of another batch finances (by the VIN index, 5,000 a
    statement)."""
    d = w.lending["loan_decisions"]
    found: set[str] = set()
    with w.engine.connect() as conn:
        for i in range(0, len(vins), 5_000):
            found.update(conn.execute(sa.select(d.c.vin).where(
                d.c.vin.in_(vins[i:i + 5_000]), d.c.decision_batch != batch,
                d.c.decision.in_(["approved", "reduced", "review"]))).scalars())
    return found


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


# what supplier_pd's features (features.supplier.supplier_features) and the caps read, whole: the
# features look back over the suppliers' whole history (tenure, last payment, open instalments)
SUPPLIER_CREDIT_TABLES = ("erp.suppliers", "erp.bom", "erp.sub_bom", "erp.production", "erp.goods_receipts",
                          "erp.payables", "erp.credit_memos", "erp.supplier_repayments")


def allocate_batch(interval_end: dt.datetime, warehouse: Warehouse | None = None) -> dict:
    """Allocate the micro-batch ``sc.<interval_end>``: published line-off events not yet taken.

    Reads: the batch's claim is one ``INSERT … SELECT`` anti-join in the warehouse (events of the
    look-back not in ``credit_batch_events``), then only the claimed events; nothing else is read
    when the batch is empty. The suppliers' features, the BOM and the caps read the published ERP
    tables of ``SUPPLIER_CREDIT_TABLES`` whole (``_published_frames``; the vehicles' models come
    from ``erp.production``, which the features read anyway); line-off events, parts, models and
    supplier links are not read.

    Writes, in one transaction, a batch replacing its own rows: its credits (one per VIN ×
    supplier; a credit of another batch with the same ``credit_id`` is replaced, as an upsert by
    key would) by the warehouse's own ``INSERT … SELECT`` of the batch's vehicles × their model's
    shares (``_store_credits``), the splits its credits name that are not stored yet (``supplier_credit_splits``:
    the lineage once per model × BOM structure × supplier, see :mod:`lending.cascade`; the view
    ``supplier_credit_lines`` gives each credit's lines) and its exceptions. ``allocated_at`` of
    a credit a re-run reproduces with the same amount is kept.
    """
    from lending.cascade import CASCADE_POLICY_V1, allocate, supplier_limits

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    _require_split_layout(w)
    t = w.lending
    batch = f"sc.{interval_end:%Y%m%dT%H%M}"
    line_offs = _claim_events(w, batch, interval_end)
    if line_offs.empty:
        return {"batch": batch, "events": 0}
    pi = t["payment_instructions"]
    with w.engine.connect() as conn:
        paid = conn.execute(sa.select(sa.func.count()).select_from(pi).where(pi.c.source_batch == batch)).scalar_one()
    if paid:  # credits already paid out are final: a re-run does not allocate them again
        return {"batch": batch, "events": int(len(line_offs)), "already_disbursed": int(paid)}
    as_of = interval_end.date()
    with _side_by_side(w) as pool:  # the exposure query (SQLite, without the GIL) and the champion
        exposure = pool.submit(_supplier_exposure, w, batch, as_of)  # beside the ERP reads
        loaded = pool.submit(champion, "supplier_pd")
        frames = _published_frames(w, SUPPLIER_CREDIT_TABLES)
        version, model = loaded.result()
        exposure = exposure.result()
    sup = frames["erp.suppliers"]
    pds = _supplier_pd(frames, model, sup.supplier_id.tolist(), as_of)
    limits = supplier_limits(pds, CASCADE_POLICY_V1)
    upsert_limits(w, pd.DataFrame({"borrower_type": "supplier", "borrower_id": limits.index.astype(str),
                                   "limit_fen": limits.to_numpy(dtype="int64"),
                                   "source": f"{CASCADE_POLICY_V1.version}/supplier_pd v{version}",
                                   "updated_at": _now()}))
    suppliers = _supplier_caps(frames, as_of, limits, exposure)
    production = frames["erp.production"]
    production = production.loc[production.vin.isin(line_offs.vin), ["vin", "model_id"]]
    result = allocate(line_offs, production, frames["erp.bom"], frames["erp.sub_bom"],
                      suppliers, CASCADE_POLICY_V1, batch_id=batch)
    credits = result.credits
    event_day = pd.Series([d.date() for d in line_offs.line_off_at], index=line_offs.event_id.to_numpy(),
                          dtype=object)
    with w.engine.begin() as conn:
        _store_credits(conn, t, batch, credits, event_day)
        _store_splits(conn, t["supplier_credit_splits"], result.splits)
        conn.execute(sa.delete(t["line_off_exceptions"]).where(t["line_off_exceptions"].c.batch_id == batch))
        _upsert(conn, t["line_off_exceptions"], result.exceptions, "event_id")
    amount = credits.amount_fen.to_numpy(dtype=np.int64)
    return {"batch": batch, "events": int(len(line_offs)), "credits": int(len(credits)),
            "amount_fen": int(amount.sum()), "exceptions": int(len(result.exceptions)),
            "suppliers_capped": int(credits.supplier_id[credits.capped_fen.to_numpy() > 0].nunique()),
            "supplier_pd_version": str(version)}


def _published_frames(w: Warehouse, names: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Published tables as DataFrames keyed ``"<source>.<table>"``: the contract's columns in key
    order, timestamps and dates parsed to datetime64, 0/1 booleans as bool (the frames the
    supplier features were defined on). Read through the warehouse engine's own connections:
    a second SQLite library in this process (an ADBC driver) closing its connection to the
    warehouse file would delete the WAL that this task's open connections still write to."""
    from sources.contract import table as contract_of

    frames = {}
    with w.engine.connect() as conn:
        for name in names:
            contract = contract_of(*name.split(".", 1))
            table = w.published(contract)
            df = pd.read_sql(sa.select(*[table.c[c] for c in contract.column_names]).order_by(
                table.c[contract.key]), conn)
            for c in contract.columns:
                if c.type in ("ts", "date"):
                    df[c.name] = pd.to_datetime(df[c.name])
                elif c.type == "bool" and df[c.name].notna().all():  # SQLite/MariaDB return 0/1
                    df[c.name] = df[c.name].astype(bool)
            frames[name] = df
    return frames


def _require_split_layout(w: Warehouse) -> None:
    """Fail with the fix when the warehouse still has the per-credit lineage table."""
    inspector = sa.inspect(w.engine)
    columns = {c["name"] for c in inspector.get_columns("supplier_credits")}
    if "split_id" not in columns or "supplier_credit_lines" not in inspector.get_view_names():
        raise LendingOpsError(
            "the warehouse has the earlier supplier-credit layout (a supplier_credit_lines table, no "
            "supplier_credits.split_id): migrate it as chainlend.lending_store's docstring says before "
            "allocating")


def _claim_events(w: Warehouse, batch: str, interval_end: dt.datetime) -> pd.DataFrame:
    """Claim for ``batch`` the published line-off events written before ``interval_end`` within the
    look-back that no micro-batch took yet (one ``INSERT … SELECT … WHERE NOT EXISTS``; the
    event_id key of ``credit_batch_events`` refuses a second claim), and return every event the
    batch holds (claimed now or by an earlier run of it), ordered by event_id, with the
    columns of :data:`lending.cascade.LINE_OFF_COLUMNS`."""
    from lending.cascade import LINE_OFF_COLUMNS

    ev = w.published(contract_table("erp", "line_off_events"))
    be = w.lending["credit_batch_events"]
    since = interval_end - dt.timedelta(days=SUPPLIER_CREDIT_LOOKBACK_DAYS)
    taken = sa.select(be.c.event_id).where(be.c.event_id == ev.c.event_id)
    claim = sa.select(ev.c.event_id, sa.literal(batch, be.c.batch_id.type)).where(
        ev.c.updated_at < interval_end, ev.c.line_off_at >= since, ~taken.exists())
    mine = sa.select(*[ev.c[c] for c in LINE_OFF_COLUMNS]).join(be, be.c.event_id == ev.c.event_id).where(
        be.c.batch_id == batch).order_by(ev.c.event_id)
    with w.engine.begin() as conn:
        conn.execute(be.insert().from_select(["event_id", "batch_id"], claim))
        rows = conn.execute(mine).all()
    frame = pd.DataFrame({c: pd.Series([r[i] for r in rows], dtype=object) for i, c in enumerate(LINE_OFF_COLUMNS)})
    frame["line_off_at"] = pd.to_datetime(frame["line_off_at"])
    return frame


def _store_credits(conn, t: dict[str, sa.Table], batch: str, credits: pd.DataFrame, event_day: pd.Series) -> None:
    """Replace the batch's credits with ``credits`` (and any other batch's row of one of their
    credit ids, as an upsert by key would). ``allocated_at``: now, or the stored time of a credit
    whose amount is unchanged (a re-run writes the same rows).

    A batch's credits are its vehicles × their model's suppliers (``lending.cascade.allocate``
    broadcasts one share per model and supplier to the model's vehicles), so they are written as
    the warehouse's own ``INSERT … SELECT`` of three staged tables: the vehicles (one row per
    event), the shares (one per split, i.e. model × supplier) and the credits that differ from
    their share (capped, or keeping an earlier ``allocated_at``), in vehicle then supplier order
    (credit_id order when the VINs have one length; the order only places rows, it decides nothing). ~1.8 M
    credits cost ~16,000 staged rows instead of 1.8 M rows bound one by one from Python. Before
    writing it checks that ``credits`` is such a product, and after, that every credit was
    written once."""
    from chainlend.disbursement_ops import _where_in

    c = t["supplier_credits"]
    now = _now()
    old = _stored_credits(conn, c, batch, credits.vin.unique().tolist())  # the credits of these vehicles
    override = credits.capped_fen.to_numpy(dtype=np.int64) > 0
    kept_at = np.full(len(credits), None, dtype=object)
    if len(old):
        pos = pd.Index(old.credit_id).get_indexer(credits.credit_id)
        found = pos >= 0
        same = np.zeros(len(credits), dtype=bool)
        same[found] = old.amount_fen.to_numpy(dtype=np.int64)[pos[found]] == \
            credits.amount_fen.to_numpy(dtype=np.int64)[found]
        kept_at[same] = old.allocated_at.to_numpy(dtype=object)[pos[same]]
        override |= same
        elsewhere = old.credit_id[(old.batch_id != batch).to_numpy() & old.credit_id.isin(credits.credit_id).to_numpy()]
        if len(elsewhere):
            _where_in(conn, c, "credit_id", elsewhere.tolist(), delete=True)
    conn.execute(sa.delete(c).where(c.c.batch_id == batch))
    if credits.empty:
        return
    vehicles, shares = _credit_product(credits)
    days = event_day.reindex(vehicles.event_id).to_numpy(dtype=object)
    changed = credits[override]
    capped_by = changed.capped_by.to_numpy(dtype=object)
    # positions that give the rows in credit_id order (for VINs of one length) without a sort: the
    # vehicles in order of their first credit, each model's shares in supplier order
    shares = shares.sort_values(["model_id", "supplier_id"], kind="mergesort", ignore_index=True)
    share_pos = shares.groupby("model_id", sort=False).cumcount().to_numpy(dtype=np.int64)
    staged = {
        "vehicles": (("pos", "event_id", "vin", "model_id", "line_off_on"), {
            "pos": list(range(len(vehicles))), "event_id": vehicles.event_id.tolist(), "vin": vehicles.vin.tolist(),
            "model_id": vehicles.model_id.tolist(), "line_off_on": days.tolist()}),
        "shares": (("model_id", "pos", "supplier_id", "tier", "share_fen", "split_id"), {
            "model_id": shares.model_id.tolist(), "pos": share_pos.tolist(), "supplier_id": shares.supplier_id.tolist(),
            "tier": shares.tier.tolist(), "share_fen": shares.share_fen.tolist(), "split_id": shares.split_id.tolist()}),
        "changed": (("credit_id", "amount_fen", "capped_fen", "capped_by", "allocated_at"), {
            "credit_id": changed.credit_id.tolist(), "amount_fen": changed.amount_fen.to_numpy(dtype=np.int64).tolist(),
            "capped_fen": changed.capped_fen.to_numpy(dtype=np.int64).tolist(),
            "capped_by": np.where(pd.isna(capped_by), None, capped_by).tolist(),
            "allocated_at": kept_at[override].tolist()}),
    }
    tables = {}
    keys = {"vehicles": ("pos",), "shares": ("model_id", "pos"), "changed": ("credit_id",)}
    for name, (names, values) in staged.items():
        tables[name] = _staging_table(conn, f"tmp_sc_{name}", [
            sa.Column(n, sa.Integer if n == "pos" else c.c[n].type, primary_key=n in keys[name],
                      autoincrement=False, nullable=(n in ("capped_by", "allocated_at"))) for n in names])
        bulk_insert(conn, tables[name], values, {})
    v, sh, ch = tables["vehicles"], tables["shares"], tables["changed"]
    credit_id = v.c.vin + ":" + sh.c.supplier_id
    rows = sa.select(
        credit_id, sa.literal(batch, c.c.batch_id.type), v.c.event_id, v.c.vin, v.c.model_id, sh.c.supplier_id,
        sh.c.tier, sh.c.share_fen, sa.func.coalesce(ch.c.amount_fen, sh.c.share_fen),
        sa.func.coalesce(ch.c.capped_fen, 0), ch.c.capped_by,
        sa.literal(str(credits.policy_version.iloc[0]), c.c.policy_version.type), v.c.line_off_on,
        sa.func.coalesce(ch.c.allocated_at, sa.literal(now, c.c.allocated_at.type)), sh.c.split_id,
    ).select_from(v.join(sh, sh.c.model_id == v.c.model_id).outerjoin(ch, ch.c.credit_id == credit_id)
                  ).order_by(v.c.pos, sh.c.pos)  # SQLite: the scan order of the keys, no sort
    # the rows the statement inserted (the batch's rows were deleted above; a key already stored fails it)
    written = conn.execute(c.insert().from_select(
        ["credit_id", "batch_id", "event_id", "vin", "model_id", "supplier_id", "tier", "share_fen", "amount_fen",
         "capped_fen", "capped_by", "policy_version", "line_off_on", "allocated_at", "split_id"], rows)).rowcount
    for table in tables.values():
        conn.execute(sa.text(_drop_temporary(conn, table)))
    if written < 0:  # DBAPI: the driver cannot tell (psycopg after an INSERT … SELECT): count them
        written = conn.execute(sa.select(sa.func.count()).select_from(c).where(c.c.batch_id == batch)).scalar_one()
    if written != len(credits):
        raise LendingOpsError(f"supplier credits of {batch}: expected {len(credits)} rows written, got {written}")


def _credit_product(credits: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``credits`` as (vehicles, shares) whose product (on model_id) is exactly ``credits``: one
    policy version, one (vin, model) per event, one (tier, share, model, supplier) per split_id,
    and as many credits as each vehicle's model has splits. Raises LendingOpsError otherwise."""
    if credits.policy_version.nunique() != 1:
        raise LendingOpsError(f"supplier credits: expected one policy version, got "
                              f"{sorted(map(str, credits.policy_version.unique()))}")
    ev_codes, events = pd.factorize(credits.event_id)
    first = np.full(len(events), -1, dtype=np.int64)
    first[ev_codes[::-1]] = np.arange(len(credits) - 1, -1, -1)  # first row of each event
    vehicles = credits.iloc[first][["event_id", "vin", "model_id"]].reset_index(drop=True)
    sp_codes, splits = pd.factorize(credits.split_id)
    first_split = np.full(len(splits), -1, dtype=np.int64)
    first_split[sp_codes[::-1]] = np.arange(len(credits) - 1, -1, -1)
    shares = credits.iloc[first_split][["model_id", "supplier_id", "tier", "share_fen", "split_id"]].reset_index(
        drop=True).astype({"tier": np.int64, "share_fen": np.int64})
    consistent = (
        (credits.vin.to_numpy() == vehicles.vin.to_numpy()[ev_codes]).all()
        and (credits.model_id.to_numpy() == vehicles.model_id.to_numpy()[ev_codes]).all()
        and all((credits[col].to_numpy() == shares[col].to_numpy()[sp_codes]).all()
                for col in ("model_id", "supplier_id", "tier", "share_fen"))
        and not shares.duplicated(["model_id", "supplier_id"]).any()
        and int(vehicles.model_id.map(shares.groupby("model_id").size()).fillna(0).sum()) == len(credits))
    if not consistent:
        raise LendingOpsError("supplier credits: expected every vehicle's credits to be its model's shares "
                              "(lending.cascade.allocate); got credits that are not such a product")
    return vehicles, shares


def _staging_table(conn, name: str, columns: list[sa.Column]) -> sa.Table:
    """A new temporary table of this connection (the caller drops it when done; one a failed
    earlier run left in a pooled MariaDB session, where temporary tables outlive a rollback, is
    dropped first)."""
    table = sa.Table(name, sa.MetaData(), *columns, prefixes=["TEMPORARY"])
    conn.execute(sa.text(_drop_temporary(conn, table, if_exists=True)))
    table.create(conn)
    return table


def _drop_temporary(conn, table: sa.Table, *, if_exists: bool = False) -> str:
    """DROP of a temporary table only (never a permanent table of the same name)."""
    name = conn.dialect.identifier_preparer.format_table(table)
    guard = " IF EXISTS" if if_exists else ""
    if conn.dialect.name == "mysql":
        return f"DROP TEMPORARY TABLE{guard} {name}"
    if conn.dialect.name == "sqlite":
        return f"DROP TABLE{guard} temp.{name}"
    return f"DROP TABLE{guard} pg_temp.{name}"  # PostgreSQL: the session's temporary schema


def _stored_credits(conn, c: sa.Table, batch: str, vins: list[str]) -> pd.DataFrame:
    """credit_id, batch_id, amount_fen, allocated_at of the stored credits of ``vins``: this
    batch's (its index) and any other batch's credit of one of these vehicles (a credit_id range
    per vehicle on SQLite, the vin index elsewhere; on a first run none)."""
    columns = (c.c.credit_id, c.c.batch_id, c.c.amount_fen, c.c.allocated_at)
    parts = list(conn.execute(sa.select(*columns).where(c.c.batch_id == batch)).all())
    if conn.dialect.name == "sqlite":  # the key's range of each vehicle (see lending_store)
        # one statement, compiled once and run per vehicle on the driver's cursor (its statement
        # cache): ~3,000 executions of a compiled SQLAlchemy select cost ~0.5 s of Python
        compiled = sa.select(*columns).where(
            c.c.credit_id >= sa.bindparam("lo"), c.c.credit_id < sa.bindparam("hi"),
            c.c.batch_id != sa.bindparam("batch")).compile(dialect=conn.dialect)
        sql, order = str(compiled), list(compiled.positiontup)  # the qmark placeholders' names, in order
        when = c.c.allocated_at.type.dialect_impl(conn.dialect).result_processor(conn.dialect, None)
        if not conn.in_transaction():  # SQLAlchemy's autobegin, which the driver cursor bypasses
            conn.begin()
        cursor = conn.connection.driver_connection.cursor()
        try:
            for vin in vins:
                bound = {"lo": f"{vin}:", "hi": f"{vin};", "batch": batch}
                parts.extend((cid, b, amount, when(at) if when else at) for cid, b, amount, at in
                             cursor.execute(sql, [bound[k] for k in order]).fetchall())
        finally:
            cursor.close()
    else:
        for i in range(0, len(vins), 5_000):
            parts.extend(conn.execute(sa.select(*columns).where(
                c.c.vin.in_(vins[i:i + 5_000]), c.c.batch_id != batch)).all())
    return pd.DataFrame({n: pd.Series([r[i] for r in parts], dtype=object)
                         for i, n in enumerate(("credit_id", "batch_id", "amount_fen", "allocated_at"))})


def _store_splits(conn, table: sa.Table, splits: pd.DataFrame) -> int:
    """Insert the splits not stored yet (a split is content-addressed: a stored one already holds
    these rows); a tier-1 line's sub_bom_line_id is stored as ''. Two runs storing one new split
    at once: the second fails on the key and its retry finds it stored. Returns the rows added."""
    from chainlend.disbursement_ops import _where_in

    if splits.empty:
        return 0
    stored = {r[0] for r in _where_in(conn, table, "split_id", splits.split_id.unique().tolist())}
    new = splits[~splits.split_id.isin(stored)]
    if new.empty:
        return 0
    sub = new.sub_bom_line_id.to_numpy(dtype=object)
    bulk_insert(conn, table, {
        "split_id": new.split_id.tolist(), "bom_line_id": new.bom_line_id.tolist(),
        "sub_bom_line_id": np.where(pd.isna(sub), "", sub).tolist(), "model_id": new.model_id.tolist(),
        "structure_hash": new.structure_hash.tolist(), "supplier_id": new.supplier_id.tolist(),
        "line_value_fen": new.line_value_fen.to_numpy(dtype=np.int64).tolist()}, {})
    return len(new)


def _supplier_pd(frames, model, supplier_ids: list[str], as_of: dt.date) -> pd.Series:
    from features.definitions import feature_names
    from features.supplier import supplier_features

    feats = supplier_features(frames, supplier_ids, [as_of])
    X = feats[feature_names("supplier_pd")].astype("float64").reset_index(drop=True)
    scores = model.predict(X)  # one batch call
    return pd.Series(np.clip(scores["pd"].to_numpy(), 1e-6, 1.0), index=pd.Index(supplier_ids, name="supplier_id"))


def _supplier_exposure(w: Warehouse, batch: str, as_of: dt.date) -> pd.Series:
    """Current exposure per supplier: the amounts of other batches' credits of line-offs within
    the credit term before ``as_of``."""
    c = w.lending["supplier_credits"]
    since = as_of - dt.timedelta(days=SUPPLIER_CREDIT_TERM_DAYS)
    # grouped by an expression of supplier_id (NOT NULL: the same groups), so SQLite scans the table
    # in order and sorts ~1.8 M small rows a day instead of visiting them in supplier order through
    # ix_supplier_credits_supplier, one random page read each (several times slower, cold or warm)
    supplier = sa.func.coalesce(c.c.supplier_id, sa.literal_column("''")).label("supplier_id")
    with w.engine.connect() as conn:
        exp = pd.read_sql(sa.select(supplier, sa.func.sum(c.c.amount_fen).label("exposure")).where(
            c.c.batch_id != batch, c.c.line_off_on >= since).group_by(supplier), conn)
    return exp.set_index("supplier_id")["exposure"] if len(exp) else pd.Series(dtype="int64")


def _supplier_caps(frames, as_of: dt.date, limits: pd.Series, exposure: pd.Series) -> pd.DataFrame:
    """tier, limit, current exposure, OEM-confirmed unpaid payables and dilution ratio per supplier.

    Payables: a tier-1 supplier's confirmed payables due on or after ``as_of``; a tier-2
    supplier's share of those through the sub-BOM (receipt quantity × component quantity ×
    component price). Dilution: credit memos / payables of the last 90 days (tier-1). Exposure:
    :func:`_supplier_exposure`."""
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
    sup["limit_fen"] = sup.supplier_id.map(limits).astype("int64")
    sup["exposure_fen"] = sup.supplier_id.map(exposure).fillna(0).astype("int64")
    sup["confirmed_payables_fen"] = sup.supplier_id.map(payables).fillna(0).astype("int64")
    sup["dilution_ratio"] = sup.supplier_id.map(dilution).fillna(0.0).astype(float)
    sup["tier"] = sup.tier.astype("int64")
    return sup.reset_index(drop=True)
