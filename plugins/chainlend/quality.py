"""The data-quality gate between landing and publishing (Airflow-free; called from the DAGs).

For one landed batch: gather what the checks need from the warehouse, run
:func:`expectations.gate.run_gate`, then in one transaction publish the accepted rows (upsert by
key; a later batch's version is never overwritten by a re-run of an earlier one), store the
quarantined rows with their reasons, close the open quarantine records of keys that now
published (replay), and record the batch's gate result. Re-running a batch replaces its own
published and quarantined rows, so the outcome is the same.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import pandas as pd
import sqlalchemy as sa

from chainlend.alerts import mask
from chainlend.bulk import bulk_insert, placeholder, plain_columns
from chainlend.ingest import LANDED, batch_id_for, window_end_for
from chainlend.systems import BATCH_ID, LINEAGE_COLUMNS, SEQ, Warehouse
from expectations.gate import REASONS, GateInputs, GateOutcome, run_gate
from expectations.gx_runner import GxValidator
from sources.contract import Table
from sources.contract import table as contract_table

# Tables whose rows are maintained in place by the source (master data); the rest are
# append-only event tables with daily traffic (volume and freshness checks apply to them).
MASTER_TABLES = {
    "erp": {"suppliers", "supplier_links", "parts", "vehicle_models", "bom", "sub_bom"},
    "dealer": {"dealers"},
}


# quarantine reasons that can pass later without the source changing the row (an orphan whose
# parent lands later); rows of a blocked batch wait for a named release (`chainlend quarantine release`)
REPLAYABLE = ("fk:",)


@dataclass(frozen=True)
class GateSummary:
    batch_id: str
    source: str
    table: str
    rows_in: int
    published: int
    quarantined: int
    blocked: bool
    failures: list[dict]
    docs_url: str | None


LOOKUP_CHUNK = 5_000


def _in_lookup(conn, sql: str, values: list, params: tuple = (), before: tuple = ()) -> list[tuple]:
    """The rows of ``sql`` for every chunk of 5,000 ``values``: ``{marks}`` in ``sql`` is where
    the IN list's placeholders go, ``before`` and ``params`` the positional parameters before and
    after it.

    Plain DBAPI statements: SQLAlchemy compiles a bound parameter per value of an expanding IN
    (~10 µs each) and processes every result row, several seconds for the ~400,000 keys of a
    reference-scale day; the statement here is the one SQLAlchemy would send."""
    mark = placeholder(conn)
    rows: list[tuple] = []
    for start in range(0, len(values), LOOKUP_CHUNK):
        chunk = values[start:start + LOOKUP_CHUNK]
        rows += conn.exec_driver_sql(sql.format(marks=", ".join([mark] * len(chunk))),
                                     (*before, *chunk, *params)).fetchall()
    return rows


def _present(conn, column: sa.Column, values: list) -> list:
    """The distinct ``values`` that occur in ``column`` (chunked IN lookups on its index)."""
    q = conn.dialect.identifier_preparer
    col = q.quote(column.name)
    found = _in_lookup(conn, f"SELECT DISTINCT {col} FROM {q.format_table(column.table)} WHERE {col} IN ({{marks}})",
                       values)
    return sorted({r[0] for r in found})


def _distinct_str(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame.columns:
        return []
    values = frame[column].dropna()
    return sorted({str(v) for v in values.unique().tolist()})


def gate_inputs(warehouse: Warehouse, contract: Table, business_date: dt.date,
                batch_id: str, frame: pd.DataFrame) -> GateInputs:
    """What the checks of ``contract`` need to know beyond the batch ``frame`` itself.

    Parent keys and VINs already financed are looked up for the batch's own values only (an
    indexed IN lookup per 5,000 values), so the cost follows the batch, not the warehouse."""
    parent_keys = {}
    parents = [warehouse.landing(contract_table(contract.source, fk.table)) for fk in contract.foreign_keys]
    warehouse.metadata.create_all(warehouse.engine, tables=parents, checkfirst=True)
    with warehouse.engine.connect() as conn:
        wanted: dict[tuple[str, str], set[str]] = {}  # two FKs may point at the same parent column
        for fk in contract.foreign_keys:
            wanted.setdefault((fk.table, fk.ref_column), set()).update(_distinct_str(frame, fk.column))
        for (ptable, pcol), values in wanted.items():
            parent = warehouse.landing(contract_table(contract.source, ptable))
            keys = _present(conn, parent.c[pcol], sorted(values))
            parent_keys[f"{ptable}.{pcol}"] = pd.Index(keys, dtype="str")
        used_vins = None
        # a VIN-keyed table's uniqueness is its key's (unique:vin): the flag that reads the VINs
        # published by other keys exists only for other keys (expectations.frames.add_flags)
        if contract.unique_vin and contract.key != "vin":
            pub = warehouse.published(contract)
            vins = _distinct_str(frame, "vin")
            q = conn.dialect.identifier_preparer
            key, mark = q.quote(contract.key), placeholder(conn)
            rows = _in_lookup(conn, f"SELECT vin, {key} FROM {q.format_table(pub)} WHERE vin IN ({{marks}}) "
                                    f"AND {q.quote(BATCH_ID)} <> {mark} ORDER BY {key}", vins, (batch_id,))
            used_vins = pd.Series([r[1] for r in rows], index=pd.Index([r[0] for r in rows], dtype="str"),
                                  dtype="str")
            used_vins = used_vins[~used_vins.index.duplicated(keep="first")]
        b = warehouse.batches.c
        recent = [n for (n,) in conn.execute(
            sa.select(b.rows_extracted).where(
                b.source == contract.source, b.table_name == contract.name, b.status == LANDED,
                b.business_date < business_date, b.window_start.is_not(None),
            ).order_by(b.business_date.desc()).limit(5))]
    return GateInputs(
        window_end=window_end_for(business_date), parent_keys=parent_keys, used_vins=used_vins,
        recent_counts=tuple(reversed(recent)),
        append_only=contract.name not in MASTER_TABLES[contract.source],
    )


def gate_batch(warehouse: Warehouse, validator: GxValidator, contract: Table, business_date: dt.date,
               run_id: str, *, now: dt.datetime | None = None) -> GateSummary:
    """Validate, split and publish the landed batch of ``contract`` for ``business_date``."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    batch_id = batch_id_for(contract, business_date)
    warehouse.metadata.create_all(warehouse.engine, checkfirst=True, tables=[
        warehouse.gate_results, warehouse.quarantine, warehouse.alerts, warehouse.published(contract)])
    landed = warehouse.read_landing(contract, batch_id)
    frame = landed.drop(columns=[c for c in LINEAGE_COLUMNS if c in landed.columns])
    inputs = gate_inputs(warehouse, contract, business_date, batch_id, frame)
    outcome = run_gate(frame, contract, inputs, validator, run_name=batch_id)
    seqs = landed[SEQ]
    with warehouse.engine.begin() as conn:
        _publish(conn, warehouse, contract, batch_id, outcome, seqs)
        _quarantine(conn, warehouse, contract, batch_id, run_id, outcome, seqs, now)
        summary = _record(conn, warehouse, contract, business_date, batch_id, run_id, outcome, now)
    return summary


def gate_day(warehouse: Warehouse, validator: GxValidator, mailer, owners: list[str], contract: Table,
             business_date: dt.date, run_id: str) -> tuple[GateSummary, int]:
    """The gate task: gate earlier batches that never were (see :func:`ungated_dates`), then
    today's, mailing the owners once per failing batch; stop at a blocked batch; then replay
    the open quarantine. Returns the last batch's summary and the rows replayed."""
    from chainlend.alerts import alert_once

    for day in [*ungated_dates(warehouse, contract, business_date), business_date]:
        summary = gate_batch(warehouse, validator, contract, day, run_id)
        alert_once(warehouse, mailer, summary, day, owners)
        if summary.blocked:
            return summary, 0
    return summary, replay_quarantine(warehouse, validator, contract, business_date, run_id)


def ungated_dates(warehouse: Warehouse, contract: Table, up_to: dt.date) -> list[dt.date]:
    """Business dates up to ``up_to`` whose batch landed but was never gated (its gate waited on
    a parent table that failed that day), oldest first."""
    b, g = warehouse.batches, warehouse.gate_results
    warehouse.metadata.create_all(warehouse.engine, tables=[g], checkfirst=True)
    with warehouse.engine.connect() as conn:
        rows = conn.execute(
            sa.select(b.c.business_date).where(
                b.c.source == contract.source, b.c.table_name == contract.name, b.c.status == LANDED,
                b.c.business_date < up_to, b.c.batch_id.not_in(sa.select(g.c.batch_id)),
            ).order_by(b.c.business_date)).all()
    return [r[0] for r in rows]


def replay_quarantine(warehouse: Warehouse, validator: GxValidator, contract: Table, business_date: dt.date,
                      run_id: str, *, now: dt.datetime | None = None, release_batch: str | None = None,
                      released_by: str | None = None) -> int:
    """Re-validate the table's open quarantined rows against today's warehouse.

    A row quarantined as an orphan publishes once its parent has landed (the parent's batch may
    have been blocked that day); rows of a blocked batch publish once the batch-level problem is
    gone. Volume and freshness do not apply to a replay. Rows that pass are published with their
    original batch lineage and their records resolved (``resolved_batch_id = "replay:<batch>"``);
    the others stay open. Returns the number of rows replayed.
    """
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    q = warehouse.quarantine
    records = warehouse.read_table(q, q.c.source == contract.source, q.c.table_name == contract.name,
                                   q.c.status == "open")
    if release_batch is not None:  # an operator releases a blocked batch: its row checks still apply
        records = records[records.batch_id == release_batch]
        replayable = ("fk:", "blocked:")
    else:  # only reasons the rest of the warehouse can cure; a bad value needs a source correction
        replayable = REPLAYABLE
    curable = records.reasons.map(lambda r: all(x.startswith(replayable) for x in r.split(";")))
    records = records[curable]
    if records.empty:
        return 0
    frame = pd.DataFrame([json.loads(r) for r in records.row_json], index=records.index)
    frame = frame.reindex(columns=list(contract.column_names))
    inputs = gate_inputs(warehouse, contract, business_date, batch_id="", frame=frame)
    inputs = GateInputs(window_end=inputs.window_end, parent_keys=inputs.parent_keys, used_vins=inputs.used_vins,
                        recent_counts=(), append_only=False)
    outcome = run_gate(frame, contract, inputs, validator,
                       run_name=f"replay.{batch_id_for(contract, business_date)}")
    if outcome.blocked or outcome.accepted.empty:
        return 0
    accepted = typed(outcome.accepted, contract)
    replay_id = (f"release:{released_by}" if release_batch is not None
                 else f"replay:{batch_id_for(contract, business_date)}")
    pub = warehouse.published(contract)
    with warehouse.engine.begin() as conn:
        for batch_id, part in accepted.groupby(records.loc[accepted.index, "batch_id"]):
            keys = part[contract.key].astype(str).tolist()
            conn.execute(sa.delete(pub).where(pub.c[contract.key] == sa.bindparam("k")), [{"k": k} for k in keys])
            rows = part.assign(**{BATCH_ID: batch_id, SEQ: records.loc[part.index, "seq"].to_numpy()})
            conn.execute(pub.insert(), _records(rows, list(contract.column_names) + [BATCH_ID, SEQ]))
        conn.execute(
            sa.update(q).where(q.c.quarantine_id == sa.bindparam("qid"))
            .values(status="resolved", resolved_batch_id=replay_id, resolved_at=now),
            [{"qid": int(i)} for i in records.loc[accepted.index, "quarantine_id"]],
        )
    return len(accepted)


def typed(df: pd.DataFrame, contract: Table) -> pd.DataFrame:
    """Rows rebuilt from JSON as the contract's Python types (for publishing)."""
    from expectations.frames import coerce_column

    out = df.copy()
    for c in contract.columns:
        values = coerce_column(df[c.name], c)
        if c.type == "int":
            values = values.astype("Int64")
        elif c.type == "date":
            values = values.dt.date
        out[c.name] = values
    return out


def gate_schema_drift(warehouse: Warehouse, validator: GxValidator, contract: Table,
                      business_date: dt.date, run_id: str, source_columns: list[str], *,
                      now: dt.datetime | None = None) -> GateSummary:
    """Run the suite on the drifted shape of the source table (no rows landed): blocks the batch."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    batch_id = batch_id_for(contract, business_date)
    warehouse.metadata.create_all(warehouse.engine, checkfirst=True, tables=[
        warehouse.gate_results, warehouse.quarantine, warehouse.alerts])
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in source_columns})
    inputs = GateInputs(window_end=window_end_for(business_date),
                        parent_keys={f"{fk.table}.{fk.ref_column}": pd.Index([]) for fk in contract.foreign_keys})
    outcome = run_gate(empty, contract, inputs, validator, run_name=batch_id)
    with warehouse.engine.begin() as conn:
        return _record(conn, warehouse, contract, business_date, batch_id, run_id, outcome, now)


def _publish(conn, warehouse, contract, batch_id, outcome: GateOutcome, seqs: pd.Series) -> None:
    """Publish the accepted rows of the batch: one row per key, the latest batch wins.

    A key already published by an earlier batch (a correction, a replay) is replaced; a key that a
    later batch already published (a re-run of an older date) keeps the later row. Both are found
    for the batch's own keys only (an indexed lookup per 5,000 keys), so the cost follows the
    batch, not the published table; the rows go in as plain tuples (:func:`chainlend.bulk.bulk_insert`)."""
    pub = warehouse.published(contract)
    key = pub.c[contract.key]
    conn.execute(sa.delete(pub).where(pub.c[BATCH_ID] == batch_id))
    accepted = outcome.accepted
    if accepted.empty:
        return
    keys = accepted[contract.key].astype(str).unique().tolist()
    q = conn.dialect.identifier_preparer
    table, kcol, bcol, mark = q.format_table(pub), q.quote(key.name), q.quote(BATCH_ID), placeholder(conn)
    # one lookup finds the keys other batches published, and whether that batch is later (the
    # comparison is the database's, as in the delete below); most keys of a day are new
    found = _in_lookup(conn, f"SELECT {kcol}, {bcol} > {mark} FROM {table} WHERE {kcol} IN ({{marks}}) "
                             f"AND {bcol} <> {mark}", keys, (batch_id,), before=(batch_id,))
    newer = {str(k) for k, later in found if later}
    older = sorted({str(k) for k, later in found if not later})
    # the earlier rows of these keys are replaced (the unique key index finds each)
    for start in range(0, len(older), LOOKUP_CHUNK):
        chunk = older[start:start + LOOKUP_CHUNK]
        conn.exec_driver_sql(f"DELETE FROM {table} WHERE {kcol} IN ({', '.join([mark] * len(chunk))}) "
                             f"AND {bcol} < {mark}", (*chunk, batch_id))
    records = accepted.assign(**{BATCH_ID: batch_id, SEQ: seqs.loc[accepted.index].to_numpy()})
    if newer:
        records = records[~records[contract.key].astype(str).isin(newer)]
    for c in contract.columns:  # ints read back as float when the batch had nulls
        if c.type == "int":
            records[c.name] = pd.to_numeric(records[c.name]).astype("Int64")
    bulk_insert(conn, pub, plain_columns(records, [*contract.column_names, SEQ]), {BATCH_ID: batch_id})


def _quarantine(conn, warehouse, contract, batch_id, run_id, outcome: GateOutcome, seqs, now) -> None:
    q = warehouse.quarantine
    conn.execute(sa.delete(q).where(q.c.batch_id == batch_id))
    # replay: keys that published now close earlier open records of the same table
    if not outcome.accepted.empty:
        open_keys = set(conn.execute(sa.select(q.c.key_value).where(
            q.c.source == contract.source, q.c.table_name == contract.name, q.c.status == "open")).scalars())
        closing = [{"k": k} for k in outcome.accepted[contract.key].astype(str).unique().tolist() if k in open_keys]
        if closing:
            conn.execute(
                sa.update(q).where(q.c.source == contract.source, q.c.table_name == contract.name,
                                   q.c.status == "open", q.c.key_value == sa.bindparam("k"))
                .values(status="resolved", resolved_batch_id=batch_id, resolved_at=now),
                closing,
            )
    bad = outcome.quarantined
    if bad.empty:
        return
    payload = bad.drop(columns=[REASONS])
    rows = []
    for idx, rec in zip(bad.index, _records(payload, list(payload.columns)), strict=True):
        k = rec.get(contract.key)
        rows.append({
            "batch_id": batch_id, "run_id": run_id, "source": contract.source, "table_name": contract.name,
            "seq": int(seqs.loc[idx]), "key_value": None if k is None else str(k),
            "reasons": bad.at[idx, REASONS], "row_json": json.dumps(rec, default=str, ensure_ascii=False),
            "quarantined_at": now, "status": "open", "resolved_batch_id": None, "resolved_at": None,
        })
    conn.execute(q.insert(), rows)


def _record(conn, warehouse, contract, business_date, batch_id, run_id, outcome: GateOutcome, now) -> GateSummary:
    pii = {c.name for c in contract.columns if c.pii}
    failures = [{"check": f.check, "severity": f.severity, "count": f.count, "sample_keys": f.sample_keys,
                 "column": f.column, "detail": f.detail,
                 # personal data never leaves the gate unmasked (results, alerts, logs)
                 "sample_values": [mask(v) for v in f.sample_values] if f.column in pii else f.sample_values}
                for f in outcome.failures]
    published = 0 if outcome.blocked else len(outcome.accepted)
    g = warehouse.gate_results
    conn.execute(sa.delete(g).where(g.c.batch_id == batch_id))
    conn.execute(g.insert(), [{
        "batch_id": batch_id, "source": contract.source, "table_name": contract.name,
        "business_date": business_date, "run_id": run_id, "rows_in": outcome.rows_in,
        "published": published, "quarantined": len(outcome.quarantined), "blocked": outcome.blocked,
        "failures": json.dumps(failures, default=str), "docs_url": outcome.validation.docs_url,
        "validated_at": now,
    }])
    return GateSummary(batch_id, contract.source, contract.name, outcome.rows_in, published,
                       len(outcome.quarantined), outcome.blocked, failures, outcome.validation.docs_url)


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    """Rows as dicts of plain Python values (NaN/NaT → None) for SQLAlchemy."""
    out = df[columns].astype(object).where(df[columns].notna(), None)
    return out.to_dict("records")


def open_quarantine(warehouse: Warehouse, source: str | None = None, table: str | None = None) -> pd.DataFrame:
    q = warehouse.quarantine
    where = [q.c.status == "open"]
    if source:
        where.append(q.c.source == source)
    if table:
        where.append(q.c.table_name == table)
    return warehouse.read_table(q, *where)


_VALIDATORS: dict[tuple[str, str], GxValidator] = {}


def validator_for(project_dir: str, docs_dir: str) -> GxValidator:
    """One GX validator per process and folder pair (the file context loads once)."""
    from pathlib import Path

    key = (project_dir, docs_dir)
    if key not in _VALIDATORS:
        _VALIDATORS[key] = GxValidator(Path(project_dir), Path(docs_dir))
    return _VALIDATORS[key]
