"""Incremental extraction by watermark from a source table into its warehouse landing table.

A batch is one (source, table, business date). Its window on the source's change timestamp
``updated_at`` is half-open, ``[start, end)``:

- ``end`` is midnight after the business date (the business day is closed when the run starts);
- ``start`` is the ``end`` of the latest *landed* batch of an earlier business date, or open
  (the initial load takes everything before ``end``).

So a late-arriving row (an old business event written to the source today) is picked up by
today's batch, and a table whose batch failed (schema drift) catches up on the next run with
nothing lost. Re-running a business date reuses its recorded window and replaces the batch's
landing rows in one transaction: the same rows, never duplicates. A run for a date whose window
would overlap a later landed batch is refused (:class:`WindowConflictError`).

Personal columns (``pii=True`` in the contract) are pseudonymised on the way in, before a row is
written to the warehouse (:mod:`chainlend.pseudonym`): a table with personal columns cannot be
landed without a :class:`~chainlend.pseudonym.Pseudonymiser`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from chainlend.bulk import placeholder
from chainlend.pseudonym import Pseudonymiser, pii_columns
from chainlend.systems import BATCH_ID, RUN_ID, SEQ, SourceDB, Warehouse
from sources.contract import Table

LANDED = "landed"
SCHEMA_DRIFT = "schema_drift"
DEFAULT_CHUNK_ROWS = 50_000


class IngestError(RuntimeError):
    """Base class of ingestion failures that a retry cannot fix."""


class SchemaDriftError(IngestError):
    """The source table no longer has the columns of its contract."""


class WindowConflictError(IngestError):
    """The batch's window would overlap a later batch that already landed."""


class PseudonymiserRequired(IngestError):
    """A table with personal columns was to be landed without a pseudonymiser."""


@dataclass(frozen=True)
class BatchResult:
    batch_id: str
    source: str
    table: str
    business_date: dt.date
    window_start: dt.datetime | None
    window_end: dt.datetime
    rows: int


def batch_id_for(contract: Table, business_date: dt.date) -> str:
    return f"{contract.source}.{contract.name}.{business_date:%Y%m%d}"


def window_end_for(business_date: dt.date) -> dt.datetime:
    return dt.datetime.combine(business_date + dt.timedelta(days=1), dt.time())


def check_schema(source: SourceDB, contract: Table) -> None:
    """Raise :class:`SchemaDriftError` naming the missing (and unexpected) columns, if any."""
    actual = source.columns(contract.name)
    missing = [c for c in contract.column_names if c not in actual]
    if missing:
        unexpected = [c for c in actual if c not in contract.column_names]
        hint = f"; unexpected column(s) {unexpected} (renamed?)" if unexpected else ""
        raise SchemaDriftError(
            f"{contract.source}.{contract.name}: missing column(s) {missing}{hint}; "
            f"the batch is not landed and the rows will be picked up once the source is fixed"
        )


def plan_window(warehouse: Warehouse, contract: Table, business_date: dt.date) -> dt.datetime | None:
    """The start of the batch window for ``business_date`` (None: initial load)."""
    b = warehouse.batches.c
    with warehouse.engine.connect() as conn:
        same = conn.execute(
            sa.select(b.window_start).where(
                b.batch_id == batch_id_for(contract, business_date), b.status == LANDED
            )
        ).first()
        if same is not None:
            return same.window_start
        prev_end = conn.execute(
            sa.select(sa.func.max(b.window_end)).where(
                b.source == contract.source, b.table_name == contract.name,
                b.business_date < business_date, b.status == LANDED,
            )
        ).scalar()
        later = conn.execute(
            sa.select(b.business_date, b.window_start).where(
                b.source == contract.source, b.table_name == contract.name,
                b.business_date > business_date, b.status == LANDED,
            ).order_by(b.business_date).limit(1)
        ).first()
    end = window_end_for(business_date)
    if later is not None and (later.window_start is None or later.window_start < end):
        raise WindowConflictError(
            f"{contract.source}.{contract.name}: the batch of {later.business_date} already covers "
            f"changes before {end}; re-run that date instead of {business_date}"
        )
    return prev_end


def extract_load(
    source: SourceDB,
    warehouse: Warehouse,
    contract: Table,
    business_date: dt.date,
    run_id: str,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    recorded_at: dt.datetime | None = None,
    pseudonymiser: Pseudonymiser | None = None,
) -> BatchResult:
    """Land one batch of ``contract`` for ``business_date``; see the module docstring.

    Raises:
        PseudonymiserRequired: ``contract`` has personal columns and no ``pseudonymiser`` is given.
    """
    if pii_columns(contract) and pseudonymiser is None:
        raise PseudonymiserRequired(
            f"{contract.source}.{contract.name} has personal columns {list(pii_columns(contract))}: "
            "pass a Pseudonymiser (Pseudonymiser.from_secrets()); raw values never enter the warehouse")
    pseudonymise = pseudonymiser.rows if pii_columns(contract) else None
    recorded_at = recorded_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    batch_id = batch_id_for(contract, business_date)
    end = window_end_for(business_date)
    landing = warehouse.landing(contract)
    warehouse.metadata.create_all(warehouse.engine, tables=[warehouse.batches, landing], checkfirst=True)
    start = plan_window(warehouse, contract, business_date)
    try:
        check_schema(source, contract)
    except SchemaDriftError as exc:
        if not _landed(warehouse, batch_id):  # never overwrite the record of a landed batch
            _record(warehouse, batch_id, contract, business_date, run_id, start, end, 0,
                    SCHEMA_DRIFT, str(exc), recorded_at)
        raise
    # Same dialect on both ends: copy the driver's values as they are (no per-value type
    # conversion, ~2x faster); across dialects let SQLAlchemy convert types.
    raw = source.engine.dialect.name == warehouse.engine.dialect.name
    rows = 0
    with warehouse.engine.begin() as wconn:
        wconn.execute(sa.delete(landing).where(landing.c[BATCH_ID] == batch_id))
        for chunk in source.stream(contract, start, end, chunk_rows, raw=raw):
            if pseudonymise is not None:
                chunk = pseudonymise(contract, chunk)
            lineage = (batch_id, run_id)
            if raw:
                wconn.exec_driver_sql(
                    _positional_insert(wconn, landing),
                    [(*row, *lineage, rows + i) for i, row in enumerate(chunk)],
                )
            else:
                names = contract.column_names
                wconn.execute(landing.insert(), [
                    {**dict(zip(names, row)), BATCH_ID: batch_id, RUN_ID: run_id, SEQ: rows + i}
                    for i, row in enumerate(chunk)
                ])
            rows += len(chunk)
        _record(warehouse, batch_id, contract, business_date, run_id, start, end, rows, LANDED, None,
                recorded_at, conn=wconn)
    return BatchResult(batch_id, contract.source, contract.name, business_date, start, end, rows)


def _positional_insert(conn: sa.Connection, table: sa.Table) -> str:
    """``INSERT INTO t (c1, …) VALUES (?, …)`` in the driver's positional paramstyle."""
    quote = conn.dialect.identifier_preparer.quote
    mark = placeholder(conn)
    cols = ", ".join(quote(c.name) for c in table.columns)
    return f"INSERT INTO {quote(table.name)} ({cols}) VALUES ({', '.join([mark] * len(table.columns))})"


def _landed(warehouse: Warehouse, batch_id: str) -> bool:
    b = warehouse.batches.c
    with warehouse.engine.connect() as conn:
        status = conn.execute(sa.select(b.status).where(b.batch_id == batch_id)).scalar()
    return status == LANDED


def _record(warehouse, batch_id, contract, business_date, run_id, start, end, rows, status, detail,
            recorded_at, conn=None) -> None:
    values = dict(
        batch_id=batch_id, source=contract.source, table_name=contract.name,
        business_date=business_date, run_id=run_id, window_start=start, window_end=end,
        rows_extracted=rows, status=status, detail=detail, recorded_at=recorded_at,
    )
    b = warehouse.batches
    if conn is None:
        with warehouse.engine.begin() as own:
            _record(warehouse, batch_id, contract, business_date, run_id, start, end, rows, status,
                    detail, recorded_at, conn=own)
        return
    conn.execute(sa.delete(b).where(b.c.batch_id == batch_id))
    conn.execute(b.insert(), [values])
