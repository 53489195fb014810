"""Typed interfaces to the external systems: the two sources and the warehouse.

Each is built from an Airflow connection id (``from_conn``) or a SQLAlchemy URL (``from_url``);
tests use the real implementation against real databases and only choose the constructor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import sqlalchemy as sa

from chainlend import settings
from sources.contract import DEALER, ERP, TABLES, WATERMARK, Table
from sources.sql import SA_TYPES, make_engine, sa_table

BATCH_ID = "_batch_id"
RUN_ID = "_run_id"
SEQ = "_seq"
LINEAGE_COLUMNS = (BATCH_ID, RUN_ID, SEQ)


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
        if key not in self._published:
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

    def read_frames(self, names) -> dict:
        """Published tables as DataFrames keyed ``"<source>.<table>"`` with the contract's columns
        only; timestamps and dates parsed to datetime64 (the input of :mod:`features`)."""
        import pandas as pd

        from sources.contract import table as contract_of

        frames = {}
        for name in names:
            source, tname = name.split(".", 1)
            contract = contract_of(source, tname)
            table = self.published(contract)
            cols = [table.c[c] for c in contract.column_names]
            with self.engine.connect() as conn:
                df = pd.read_sql(sa.select(*cols).order_by(table.c[contract.key]), conn)
            for c in contract.columns:
                if c.type in ("ts", "date"):
                    df[c.name] = pd.to_datetime(df[c.name])
                elif c.type == "bool" and df[c.name].notna().all():  # SQLite/MariaDB return 0/1
                    df[c.name] = df[c.name].astype(bool)
            frames[name] = df
        return frames

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


def _referenced(contract: Table) -> tuple[str, ...]:
    """Columns of ``contract`` that foreign keys of its source point at (the gate looks them up)."""
    cols = {fk.ref_column for t in TABLES[contract.source] for fk in t.foreign_keys if fk.table == contract.name}
    return tuple(sorted(cols))


def landing_name(contract: Table) -> str:
    return f"landing_{contract.source}_{contract.name}"
