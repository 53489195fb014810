"""Faults the simulator injects into the rows it writes, and schema drift of the source tables.

Every fault is recorded in the fault manifest. A row fault changes exactly one column of exactly
one row, or adds one extra row (a duplicate key or a duplicate VIN); no row carries two faults,
and the row a duplicate copies carries none. Keys (and ``updated_at``) are never nulled or
changed, so the manifest's ``key_value`` always finds the faulty row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sqlalchemy as sa

from sources import sim_world as w
from sources.contract import WATERMARK, Table
from sources.sim_store import Batch

ROW_KINDS = ("null", "duplicate_key", "duplicate_vin", "negative_amount", "orphan_fk", "future_timestamp",
             "late_arrival")
DRIFT_KINDS = ("renamed_column", "missing_column")

# the id format (sim_world.ID_FORMATS) of each referenced key; None = a VIN
PARENT_ID_KIND: dict[str, str | None] = {
    "suppliers": "supplier", "parts": "part", "vehicle_models": "model", "orders": "order",
    "goods_receipts": "receipt", "payables": "payable", "production": None, "dealers": "dealer",
    "inventory": None, "loan_applications": "application",
}
# the id format of each transactional table's key (for the fresh key of a duplicate VIN)
KEY_ID_KIND: dict[str, str] = {
    "orders": "order", "line_off_events": "event", "goods_receipts": "receipt", "payables": "payable",
    "credit_memos": "memo", "supplier_repayments": "supplier_repayment", "sales": "sale",
    "floor_audits": "audit", "loan_applications": "application", "loan_repayments": "loan_repayment",
}


def inject(batch: Batch, rates, rng: np.random.Generator, day: int,
           fresh_keys: Callable[[str, int], np.ndarray]) -> tuple[Batch, list[dict]]:
    """Apply the row faults of ``rates`` to ``batch`` (written on ``day``).

    Returns the faulty batch and its manifest rows. ``fresh_keys(table, n)`` allocates new keys.
    """
    t: Table = batch.table
    n = batch.n
    if n == 0 or all(getattr(rates, kind) <= 0 for kind in ROW_KINDS):
        return batch, []
    cols = {c: v.copy() for c, v in batch.cols.items()}
    nulls = {c: v.copy() for c, v in batch.nulls.items()}
    used = np.zeros(n, dtype=bool)
    manifest: list[dict] = []
    extras: list[Batch] = []
    key = t.key

    def null_mask(c: str) -> np.ndarray:
        if c not in nulls:
            nulls[c] = np.zeros(n, dtype=bool)
        return nulls[c]

    def pick(p: float, eligible: np.ndarray | None = None) -> np.ndarray:
        if p <= 0:
            return np.array([], dtype=np.int64)
        ok = ~used if eligible is None else (eligible & ~used)
        cand = np.flatnonzero(ok)
        k = int(rng.binomial(len(cand), p)) if len(cand) else 0
        if k == 0:
            return np.array([], dtype=np.int64)
        chosen = np.sort(rng.choice(cand, k, replace=False))
        used[chosen] = True
        return chosen

    def record(rows: np.ndarray, column: str | list, kind: str, keys: np.ndarray | None = None) -> None:
        keys = cols[key][rows] if keys is None else keys
        columns = [column] * len(rows) if isinstance(column, str) else column
        for kv, c in zip(keys.tolist(), columns):
            manifest.append({"sim_date": day, "source": t.source, "table_name": t.name, "key_value": str(kv),
                             "column_name": c, "kind": kind})

    def copies(rows: np.ndarray) -> Batch:
        """Extra rows copying ``rows``, written a little later the same day."""
        extra = Batch(t, {c: v[rows].copy() for c, v in cols.items()},
                      {c: v[rows].copy() for c, v in nulls.items()})
        upd = extra.cols[WATERMARK]
        delta = rng.integers(1, 601, len(rows))
        day_end = day * w.DAY_S + w.WRITE_END_HOUR * w.HOUR_S - 1
        extra.cols[WATERMARK] = np.where(upd + delta <= day_end, upd + delta, upd - delta)
        return extra

    fen = [c.name for c in t.columns if c.name.endswith("_fen")]
    nullable_targets = [c.name for c in t.columns if not c.nullable and c.name not in (key, WATERMARK)]
    ev = t.event_time

    # null: one non-nullable column of the row
    rows = pick(rates.null)
    if len(rows):
        chosen = [nullable_targets[i] for i in rng.integers(0, len(nullable_targets), len(rows))]
        for r, c in zip(rows.tolist(), chosen):
            null_mask(c)[r] = True
        record(rows, chosen, "null")

    # duplicate key: the same key again, another value changed
    rows = pick(rates.duplicate_key)
    if len(rows):
        extra = copies(rows)
        if fen:
            c = fen[0]
            old = extra.cols[c]
            new = np.round(old * rng.uniform(0.85, 1.15, len(rows))).astype(np.int64)
            extra.cols[c] = np.where(new == old, old + 100, new)
        elif ev:
            extra.cols[ev] = extra.cols[ev] - rng.integers(60, 1_800, len(rows))
        extras.append(extra)
        record(rows, key, "duplicate_key")

    # duplicate VIN: a new row (fresh key) for a VIN the table already has
    if t.unique_vin and key != "vin":
        rows = pick(rates.duplicate_vin)
        if len(rows):
            extra = copies(rows)
            extra.cols[key] = fresh_keys(t.name, len(rows))
            extras.append(extra)
            record(rows, "vin", "duplicate_vin", keys=extra.cols[key])

    # negative amount
    if fen:
        rows = pick(rates.negative_amount)
        if len(rows):
            chosen = [fen[i] for i in rng.integers(0, len(fen), len(rows))]
            for r, c in zip(rows.tolist(), chosen):
                v = int(cols[c][r])
                cols[c][r] = -abs(v) if v != 0 else -100
            record(rows, chosen, "negative_amount")

    # orphan foreign key
    if t.foreign_keys:
        rows = pick(rates.orphan_fk)
        if len(rows):
            fks = [t.foreign_keys[i] for i in rng.integers(0, len(t.foreign_keys), len(rows))]
            for r, fk in zip(rows.tolist(), fks):
                kind = PARENT_ID_KIND[fk.table]
                value = w.orphan_vins(rng, 1)[0] if kind is None else w.orphan_ids(kind, rng, 1)[0]
                cols[fk.column][r] = value
            record(rows, [fk.column for fk in fks], "orphan_fk")

    if ev:
        has_ev = ~null_mask(ev)
        # a business timestamp more than a year after the day it was written
        rows = pick(rates.future_timestamp, has_ev)
        if len(rows):
            tod = cols[ev][rows] % w.DAY_S
            cols[ev][rows] = (day + rng.integers(366, 1_000, len(rows))) * w.DAY_S + tod
            record(rows, ev, "future_timestamp")
        # late arrival: the event happened 1-3 business days ago and is only written today
        if rates.late_arrival > 0:
            back = rng.integers(1, 4, n)
            earlier = w.bday_add(np.full(n, day), -back) * w.DAY_S + cols[ev] % w.DAY_S
            rows = pick(rates.late_arrival, has_ev & (earlier >= batch.min_event))
            if len(rows):
                cols[ev][rows] = earlier[rows]
                record(rows, ev, "late_arrival")

    out = Batch(t, cols, nulls, batch.min_event)
    if extras:
        out = Batch.concat([out, *extras])
    return out, manifest


# --------------------------------------------------------------------------------------------
# schema drift


def renamed(column: str) -> str:
    """The name a drifting source gives ``column``: camelCase, or ``<column>_v2``."""
    parts = column.split("_")
    if len(parts) > 1:
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    return f"{column}_v2"


def drift_candidates(t: Table) -> list[str]:
    return [c.name for c in t.columns if c.name not in (t.key, WATERMARK)]


def columns_of(engine: sa.Engine, name: str) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns(name)]


def hidden_name(name: str) -> str:
    """Where the original table waits while its drifted copy (without a column) stands in."""
    return f"sim_drift_{name}"


def _q(engine: sa.Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def _check_sqlite(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite":
        import sqlite3

        if sqlite3.sqlite_version_info < (3, 25, 0):
            raise RuntimeError(f"schema drift needs SQLite >= 3.25 (ALTER TABLE ... RENAME COLUMN); this Python "
                               f"has {sqlite3.sqlite_version}; set FaultRates.schema_drift=0")


def rename_column(engine: sa.Engine, tname: str, old: str, new: str) -> None:
    _check_sqlite(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {_q(engine, tname)} RENAME COLUMN {_q(engine, old)} TO {_q(engine, new)}")


def drop_column(engine: sa.Engine, t: Table, column: str) -> None:
    """Make ``column`` disappear from the source table ``t``, losing nothing.

    The original table is renamed to :func:`hidden_name` (keeping its rows, types, column order
    and indexes) and a copy of it without ``column`` takes its name; :func:`restore_column` swaps
    the original back, which is instant and exact on every database. (Dropping the column and
    writing its values back row by row took minutes for a table of a few million rows.)
    """
    _check_sqlite(engine)
    from sources.sql import sa_table

    keep = [c.name for c in t.columns if c.name != column]
    hidden = hidden_name(t.name)
    copy = sa_table(Table(t.source, t.name, tuple(c for c in t.columns if c.name != column), t.key), sa.MetaData())
    cols = ", ".join(_q(engine, c) for c in keep)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {_q(engine, t.name)} RENAME TO {_q(engine, hidden)}")
        copy.create(conn)
        conn.exec_driver_sql(f"INSERT INTO {_q(engine, t.name)} ({cols}) SELECT {cols} FROM {_q(engine, hidden)}")


def restore_column(engine: sa.Engine, t: Table) -> bool:
    """Put back the original of a table that :func:`drop_column` replaced; False if none waits."""
    hidden = hidden_name(t.name)
    if not sa.inspect(engine).has_table(hidden):
        return False
    with engine.begin() as conn:
        if sa.inspect(conn).has_table(t.name):
            conn.exec_driver_sql(f"DROP TABLE {_q(engine, t.name)}")
        conn.exec_driver_sql(f"ALTER TABLE {_q(engine, hidden)} RENAME TO {_q(engine, t.name)}")
    return True
