"""Typed interfaces to the external systems: the two sources and the warehouse.

Each is built from an Airflow connection id (``from_conn``) or a SQLAlchemy URL (``from_url``);
tests use the real implementation against real databases and only choose the constructor.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from chainlend import settings
from sources.contract import DEALER, ERP, TABLES, WATERMARK, Table
from sources.sql import SA_TYPES, make_engine, sa_table

BATCH_ID = "_batch_id"
RUN_ID = "_run_id"
SEQ = "_seq"
LINEAGE_COLUMNS = (BATCH_ID, RUN_ID, SEQ)
DECODE_THREADS = 2  # published tables decoded and sorted at once by read_frames (2 cores)


class SourceDB:
    """A source system database whose tables follow ``sources.contract``."""

    source: str = ""
    default_conn_id: str = ""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    @classmethod
    def from_url(cls, url: str | sa.URL) -> SourceDB:
        return cls(make_engine(url))

    @classmethod
    def from_conn(cls, conn_id: str | None = None) -> SourceDB:
        from chainlend.connections import engine_for

        return cls(engine_for(conn_id or cls.default_conn_id))

    @property
    def tables(self) -> tuple[Table, ...]:
        return TABLES[self.source]

    def columns(self, table: str) -> list[str]:
        """The columns the source table has right now (schema drift shows here)."""
        return [c["name"] for c in sa.inspect(self.engine).get_columns(table)]

    def stream(
        self, contract: Table, start: dt.datetime | None, end: dt.datetime, chunk_rows: int,
        *, raw: bool = False,
    ) -> Iterator[list[tuple]]:
        """Rows changed in ``[start, end)`` by the watermark, in chunks, ordered by (watermark, key).

        Uses a server-side cursor where the driver has one, so a large day never needs the
        whole table in memory. ``raw=True`` skips SQLAlchemy's type processing and yields the
        driver's own values (only for copying into a database of the same dialect).
        """
        cols = [sa.column(c.name) if raw else sa.column(c.name, SA_TYPES[c.type]) for c in contract.columns]
        wm = sa.column(WATERMARK, sa.DateTime())
        query = sa.select(*cols).select_from(sa.table(contract.name)).where(wm < end)
        if start is not None:
            query = query.where(wm >= start)
        query = query.order_by(wm, sa.column(contract.key))
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(query)
            yield from result.partitions(chunk_rows)


class ErpSource(SourceDB):
    source = ERP
    default_conn_id = settings.ERP_CONN_ID


class DealerSource(SourceDB):
    source = DEALER
    default_conn_id = settings.DEALER_CONN_ID


SOURCE_CLASSES: dict[str, type[SourceDB]] = {ERP: ErpSource, DEALER: DealerSource}


def _batch_identity() -> tuple[sa.Column, ...]:
    """The columns that name one batch and the run that processed it (fresh objects per table)."""
    return (
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("business_date", sa.Date, nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
    )


class Warehouse:
    """The warehouse: landing tables per source table and the ingestion batch log."""

    default_conn_id = settings.WAREHOUSE_CONN_ID

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self.metadata = sa.MetaData()
        self.batches = sa.Table(
            "ingest_batches", self.metadata,
            *_batch_identity(),
            sa.Column("window_start", sa.DateTime, nullable=True),
            sa.Column("window_end", sa.DateTime, nullable=False),
            sa.Column("rows_extracted", sa.BigInteger, nullable=False),
            sa.Column("status", sa.String(32), nullable=False),
            sa.Column("detail", sa.Text, nullable=True),
            sa.Column("recorded_at", sa.DateTime, nullable=False),
            sa.Index("ix_ingest_batches_table_date", "source", "table_name", "business_date"),
        )
        self.gate_results = sa.Table(
            "gate_results", self.metadata,
            *_batch_identity(),
            sa.Column("rows_in", sa.BigInteger, nullable=False),
            sa.Column("published", sa.BigInteger, nullable=False),
            sa.Column("quarantined", sa.BigInteger, nullable=False),
            sa.Column("blocked", sa.Boolean, nullable=False),
            sa.Column("failures", sa.Text, nullable=False),  # JSON list
            sa.Column("docs_url", sa.Text, nullable=True),
            sa.Column("validated_at", sa.DateTime, nullable=False),
        )
        self.quarantine = sa.Table(
            "quarantine", self.metadata,
            sa.Column("quarantine_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column("batch_id", sa.String(128), nullable=False),
            sa.Column("run_id", sa.String(255), nullable=False),
            sa.Column("source", sa.String(32), nullable=False),
            sa.Column("table_name", sa.String(64), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
            sa.Column("key_value", sa.String(255), nullable=True),
            sa.Column("reasons", sa.Text, nullable=False),
            sa.Column("row_json", sa.Text, nullable=False),
            sa.Column("quarantined_at", sa.DateTime, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),  # open | resolved
            sa.Column("resolved_batch_id", sa.String(128), nullable=True),
            sa.Column("resolved_at", sa.DateTime, nullable=True),
            sa.Index("ix_quarantine_batch", "batch_id"),
            sa.Index("ix_quarantine_key", "source", "table_name", "key_value", "status"),
        )
        self.alerts = sa.Table(
            "alerts", self.metadata,
            sa.Column("batch_id", sa.String(128), primary_key=True),
            sa.Column("kind", sa.String(32), primary_key=True),
            sa.Column("subject", sa.Text, nullable=False),
            sa.Column("recipients", sa.Text, nullable=False),
            sa.Column("sent_at", sa.DateTime, nullable=False),
        )
        self.model_audit = sa.Table(
            "model_alias_audit", self.metadata,
            sa.Column("audit_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column("family", sa.String(64), nullable=False),
            sa.Column("alias", sa.String(32), nullable=False),
            sa.Column("action", sa.String(16), nullable=False),  # set | refused | pending
            sa.Column("version", sa.String(16), nullable=False),
            sa.Column("previous_version", sa.String(16), nullable=True),
            sa.Column("actor", sa.String(255), nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("metrics", sa.Text, nullable=False),  # JSON
            sa.Column("at", sa.DateTime, nullable=False),
            sa.Index("ix_model_alias_audit_family", "family", "alias"),
        )
        from chainlend import lending_store

        self.lending = lending_store.define(self.metadata)
        self._landing: dict[tuple[str, str], sa.Table] = {}
        self._published: dict[tuple[str, str], sa.Table] = {}
        # approval and allocation read through one Warehouse from several threads
        # (lending_ops._side_by_side): two first uses of a published table must not both define it
        self._define_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str | sa.URL) -> Warehouse:
        return cls(make_engine(url))

    @classmethod
    def from_conn(cls, conn_id: str | None = None) -> Warehouse:
        from chainlend.connections import engine_for

        return cls(engine_for(conn_id or cls.default_conn_id))

    def landing(self, contract: Table) -> sa.Table:
        """The landing table of a source table: the contract columns plus batch lineage."""
        key = (contract.source, contract.name)
        if key not in self._landing:
            self._landing[key] = sa_table(
                contract, self.metadata, name=landing_name(contract),
                extra=(
                    sa.Column(BATCH_ID, sa.String(128), nullable=False),
                    sa.Column(RUN_ID, sa.String(255), nullable=False),
                    sa.Column(SEQ, sa.BigInteger, nullable=False),
                ),
                indexes=(BATCH_ID, *_referenced(contract)),
            )
        return self._landing[key]

    def published(self, contract: Table) -> sa.Table:
        """The published table: rows that passed the gate, one per key (latest batch wins)."""
        key = (contract.source, contract.name)
        if key in self._published:
            return self._published[key]
        with self._define_lock:
            if key in self._published:
                return self._published[key]
            name = f"published_{contract.source}_{contract.name}"
            self._published[key] = sa_table(
                contract, self.metadata, name=name,
                extra=(sa.Column(BATCH_ID, sa.String(128), nullable=False),
                       sa.Column(SEQ, sa.BigInteger, nullable=False),
                       sa.Index(f"ux_{name}_key", contract.key, unique=True)),
                indexes=(BATCH_ID, *(("vin",) if contract.unique_vin else ())),
            )
        return self._published[key]

    def read_published(self, contract: Table):
        import pandas as pd

        table = self.published(contract)
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(table).order_by(table.c[contract.key]), conn)

    def read_frames(self, names, *, columns: Mapping[str, Iterable[str]] | None = None,
                    since: Mapping[str, dt.date] | None = None) -> dict:
        """Published tables as DataFrames keyed ``"<source>.<table>"``, sorted by the table's key
        (the input of :mod:`features`).

        Columns are the contract's (in contract order) with these dtypes: ``str`` → pandas' string
        dtype (NaN for NULL), ``int`` → int64 (float64 with NaN if a value is NULL), ``float`` →
        float64, ``bool`` → bool (object with None if a value is NULL), ``date`` →
        datetime64[s], ``ts`` → datetime64[us] (NaT for NULL).

        - ``columns``: per table, the contract columns to read (the others are not read; the
          default is all of them). Asking for a column the contract does not have raises
          ``KeyError``.
        - ``since``: per transactional table, a date: only the rows whose event time (the
          contract's ``event_time``) is on or after it, or NULL, are read. Point-in-time safe
          only for a caller whose every feature of an as-of date ``D`` looks at events no older
          than ``D - w``, passing ``since <= earliest D - w``: a row with an older event is then
          never used. Reference tables (no event time) raise ``ValueError``.

        A SQLite file database is read through the Arrow-native ADBC driver in a reader process
        (:mod:`chainlend.arrow_reader`: no Python object per cell, tables in parallel); other
        databases through the DBAPI cursor (tuples decoded per column).
        """
        from sources.contract import table as contract_of

        columns, since = dict(columns or {}), dict(since or {})
        unknown = (set(columns) | set(since)) - set(names)
        if unknown:
            raise KeyError(f"columns/since name table(s) {sorted(unknown)} that are not read ({list(names)})")
        jobs = {}
        for name in names:
            source, tname = name.split(".", 1)
            contract = contract_of(source, tname)
            wanted = contract.column_names if name not in columns else tuple(columns[name])
            for c in wanted:
                contract.column(c)  # KeyError naming the contract's columns
            cols = [c for c in contract.column_names if c in wanted]
            read = cols if contract.key in cols else [contract.key, *cols]
            start = since.get(name)
            if start is not None and contract.event_time is None:
                raise ValueError(f"since= needs a transactional table; {name} is reference data (no event time)")
            jobs[name] = (contract, read, start, cols)

        if not self._arrow_native():
            return {name: self._read_published(contract, read, start)[cols]
                    for name, (contract, read, start, cols) in jobs.items()}
        from chainlend.arrow_reader import read_sqlite

        queries = [self._sqlite_query(contract, read, start) for contract, read, start, _ in jobs.values()]
        tables = read_sqlite(str(self.engine.url.database), queries)
        # decoding and sorting are Arrow kernels (the GIL released): two tables at a time
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            frames = pool.map(lambda job, data: _decode(data, job[0], job[1], sort_by=job[0].key)[job[3]],
                              jobs.values(), tables)
            return dict(zip(jobs, frames, strict=True))

    def _arrow_native(self) -> bool:
        """Whether this warehouse is read through the Arrow reader process (a SQLite file)."""
        url = self.engine.url
        return url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")

    def _read_published(self, contract: Table, cols: list[str], since: dt.date | None):
        """The published rows of ``cols`` (with the key), sorted by key, decoded to the dtypes of
        :meth:`read_frames`, through the DBAPI cursor."""
        table = self.published(contract)
        types = {c.name: c.type for c in contract.columns}
        query = sa.select(*[table.c[c] for c in cols]).order_by(table.c[contract.key])
        if since is not None:
            ev = table.c[contract.event_time]
            query = query.where(sa.or_(ev >= _since_value(since, types[contract.event_time]), ev.is_(None)))
        compiled = query.compile(dialect=self.engine.dialect, compile_kwargs={"render_postcompile": True})
        params = ([compiled.params[k] for k in compiled.positiontup] if self.engine.dialect.positional
                  else compiled.params)
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(str(compiled), params)
            rows = cur.fetchall()
            cur.close()
        finally:
            raw.close()
        values = list(zip(*rows, strict=True)) if rows else [() for _ in cols]
        arrays = {c: _to_arrow(_py_array(v, types[c]), types[c], f"{table.name}.{c}")
                  for c, v in zip(cols, values, strict=True)}
        return _frame(arrays, types)

    def _sqlite_query(self, contract: Table, cols: list[str], since: dt.date | None) -> tuple[str, str]:
        """(select, count) of ``cols`` of a published table for the Arrow reader;
        ``since``: rows whose event time is on or after it (as stored: ISO text) or NULL."""
        quote = self.engine.dialect.identifier_preparer.quote
        table = self.published(contract).name
        sql = f"SELECT {', '.join(quote(c) for c in cols)} FROM {quote(table)}"
        if since is not None:
            event = contract.event_time
            bound = _since_value(since, contract.column(event).type)
            literal = bound.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(bound, dt.datetime) else bound.isoformat()
            sql += f" WHERE {quote(event)} >= '{literal}' OR {quote(event)} IS NULL"
        # the rows come in storage order: read_frames sorts them by the key (unique in a published
        # table) once decoded (SQLite's ORDER BY would walk the key index, a random read per row;
        # sorting in the reader moved every text timestamp, 3x the bytes of the decoded value)
        return sql, f"SELECT COUNT(*) FROM {quote(table)}"

    def read_query(self, query: sa.Select):
        """The rows of ``query`` as the DataFrame ``pd.read_sql`` returns (string columns as
        pandas' string dtype, integers as int64 or float64 with NaN, floats, dates as
        ``datetime.date`` objects, timestamps as datetime64[us], booleans).

        On a SQLite file database the rows come through the Arrow-native ADBC driver in a reader
        process (:mod:`chainlend.arrow_reader`; parameters rendered as literals); elsewhere
        through ``pd.read_sql``. The selected columns must have
        one of those types (``TypeError`` otherwise)."""
        import pandas as pd

        if not self._arrow_native():
            with self.engine.connect() as conn:
                return pd.read_sql(query, conn)
        kinds = []
        for col in query.selected_columns:
            t = col.type
            kind = ("bool" if isinstance(t, sa.Boolean) else "int" if isinstance(t, sa.Integer)
                    else "float" if isinstance(t, sa.Float) else "str" if isinstance(t, sa.String)
                    else "ts" if isinstance(t, sa.DateTime) else "date" if isinstance(t, sa.Date) else None)
            if kind is None:
                raise TypeError(f"read_query reads string, integer, float, boolean, date and timestamp columns; "
                                f"{col.name} is {t!r}")
            kinds.append((col.name, kind))
        from chainlend.arrow_reader import read_sqlite

        sql = str(query.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True}))
        data, = read_sqlite(str(self.engine.url.database), [(sql, None)])
        if not data.num_rows:  # as pd.read_sql: no rows, no types
            return pd.DataFrame(columns=[name for name, _ in kinds], dtype=object)
        arrays = {name: _to_arrow(data.column(i).combine_chunks(), kind, f"query column {name}")
                  for i, (name, kind) in enumerate(kinds)}
        frame = _frame(arrays, dict(kinds))
        for name, kind in kinds:
            if kind == "date":  # pd.read_sql keeps SQLAlchemy's datetime.date objects (None for NULL)
                frame[name] = pd.Series(arrays[name].to_pandas(date_as_object=True).to_numpy(dtype=object),
                                        index=frame.index, dtype=object)
        return frame

    def read_table(self, table: sa.Table, *where):
        import pandas as pd

        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(table).where(*where), conn)

    def create_all(self) -> None:
        """Create the batch log, the gate's tables and every landing/published table."""
        for tables in TABLES.values():
            for contract in tables:
                self.landing(contract)
                self.published(contract)
        self.metadata.create_all(self.engine, checkfirst=True)

    def read_landing(self, contract: Table, batch_id: str | None = None):
        """A landing table (or one batch of it) as a DataFrame, in batch and sequence order."""
        import pandas as pd

        table = self.landing(contract)
        query = sa.select(table).order_by(table.c[BATCH_ID], table.c[SEQ])
        if batch_id is not None:
            query = query.where(table.c[BATCH_ID] == batch_id)
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def read_batches(self, source: str | None = None):
        import pandas as pd

        query = sa.select(self.batches).order_by(self.batches.c.business_date, self.batches.c.batch_id)
        if source is not None:
            query = query.where(self.batches.c.source == source)
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)


def _decode(data, contract: Table, cols: list[str], *, sort_by: str | None = None):
    """An Arrow table of published ``cols`` (SQLite's storage types) as the frame of read_frames,
    its rows in the order of the column ``sort_by`` (one of ``cols``) if given."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types = {c.name: c.type for c in contract.columns}
    arrays = {c: _to_arrow(data.column(c).combine_chunks() if data.num_rows else pa.nulls(0), types[c],
                           f"published {contract.source}.{contract.name}.{c}") for c in cols}
    if sort_by is not None and data.num_rows > 1:
        order = pc.array_sort_indices(arrays[sort_by])
        arrays = {c: arr.take(order) for c, arr in arrays.items()}
    return _frame(arrays, types)


def insert_rows(conn: sa.Connection, table: sa.Table, frame) -> None:
    """Insert ``frame``'s rows into ``table`` (NaN/NaT as NULL) with one DBAPI ``executemany``
    (PostgreSQL: ``COPY``), through :func:`chainlend.bulk.bulk_insert`.

    Stores what ``conn.execute(table.insert(), records)`` stores: each column's values go through
    the bind conversion of its SQLAlchemy type for this dialect (dates and timestamps as SQLite
    text, …), applied column by column instead of by SQLAlchemy per row and parameter, which is
    most of the time of inserting 100,000s of rows. ``frame``'s columns must be columns of
    ``table``; a column it lacks may not have a default (none would be applied).
    """
    if frame.empty:
        return
    cols = [str(c) for c in frame.columns]
    unknown = [c for c in cols if c not in table.c]
    if unknown:
        raise KeyError(f"{table.name} has no column(s) {unknown}")
    defaulted = [c.name for c in table.c if c.name not in cols and (c.default is not None or c.server_default is not None)]
    if defaulted:
        raise ValueError(f"insert_rows does not apply defaults; the frame lacks {table.name}.{defaulted}")
    from chainlend.bulk import bulk_insert, plain_columns

    bulk_insert(conn, table, plain_columns(frame, cols), {})


def _since_value(since: dt.date, kind: str) -> dt.date:
    """``since`` as the bound of an event-time column: midnight for a timestamp column."""
    if kind == "ts":
        return since if isinstance(since, dt.datetime) else dt.datetime.combine(since, dt.time())
    return since.date() if isinstance(since, dt.datetime) else since


def _py_array(values, kind: str):
    """A column of a DBAPI result (Python objects) as an Arrow array."""
    import pyarrow as pa

    if kind == "str":
        return pa.array(values, type=pa.large_string())
    return pa.array(values)  # the driver's own types (int, bool, date, datetime, ISO text), inferred


def _to_arrow(arr, kind: str, what: str):
    """An Arrow array of a contract column in its canonical Arrow type (large string, int64,
    float64, bool, date32, timestamp[us]); text dates and timestamps (SQLite) are parsed as ISO
    8601. A column of another type raises (no silent coercion)."""
    import pyarrow as pa

    t = arr.type
    if arr.null_count == len(arr):
        return pa.nulls(len(arr), _arrow_type(kind))
    ok = {
        "str": pa.types.is_string(t) or pa.types.is_large_string(t),
        "int": pa.types.is_integer(t),
        "float": pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t),
        "bool": pa.types.is_boolean(t) or pa.types.is_integer(t),
        "date": pa.types.is_date(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
        "ts": pa.types.is_timestamp(t) or pa.types.is_string(t) or pa.types.is_large_string(t),
    }[kind]
    if not ok:
        raise TypeError(f"{what}: a contract {kind!r} column read as Arrow {t}")
    if kind == "bool" and pa.types.is_integer(t):
        import pyarrow.compute as pc

        return pc.not_equal(arr, 0)
    return arr.cast(_arrow_type(kind))


def _arrow_type(kind: str):
    """The canonical Arrow type of a contract column type."""
    import pyarrow as pa

    return {"str": pa.large_string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
            "date": pa.date32(), "ts": pa.timestamp("us")}[kind]


def _frame(arrays: dict, types: dict):
    """Canonical Arrow columns as the DataFrame of :meth:`Warehouse.read_frames`."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    out = {}
    for name, arr in arrays.items():
        kind, nulls = types[name], arr.null_count > 0
        if kind == "str":
            out[name] = pd.array(arr, dtype=pd.StringDtype(na_value=np.nan))
        elif kind == "bool" and nulls:
            out[name] = np.array(arr.to_pylist(), dtype=object)
        elif kind == "date":
            out[name] = arr.cast(pa.timestamp("s")).to_numpy(zero_copy_only=False)
        else:  # int (float64 with NaN where NULL), float, bool, ts
            out[name] = arr.to_numpy(zero_copy_only=False)
    return pd.DataFrame(out, columns=list(arrays))


def _referenced(contract: Table) -> tuple[str, ...]:
    """Columns of ``contract`` that foreign keys of its source point at (the gate looks them up)."""
    cols = {fk.ref_column for t in TABLES[contract.source] for fk in t.foreign_keys if fk.table == contract.name}
    return tuple(sorted(cols))


def landing_name(contract: Table) -> str:
    return f"landing_{contract.source}_{contract.name}"
