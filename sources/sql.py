"""SQLAlchemy tables for the contract, for any database URL (SQLite, PostgreSQL, MariaDB)."""

from __future__ import annotations

import sqlalchemy as sa

from sources.contract import ColumnType, Table

# Strings get a length so MariaDB can index them; 255 is ample for keys and names.
SA_TYPES: dict[ColumnType, sa.types.TypeEngine] = {
    "str": sa.String(255),
    "int": sa.BigInteger(),
    "float": sa.Float(),
    "bool": sa.Boolean(create_constraint=False),
    "date": sa.Date(),
    "ts": sa.DateTime(),
}


def sa_table(
    contract: Table,
    metadata: sa.MetaData,
    *,
    name: str | None = None,
    extra: tuple[sa.Column, ...] = (),
    indexes: tuple[str, ...] = (),
) -> sa.Table:
    """The SQLAlchemy table of a contract table (no key constraints: sources are legacy exports).

    Every contract column is nullable in SQL so that faulty rows can be stored and caught by
    the quality gate rather than refused by the database.
    """
    cols = [sa.Column(c.name, SA_TYPES[c.type], nullable=True) for c in contract.columns]
    tname = name or contract.name
    idx = [sa.Index(f"ix_{tname}_{col}", col) for col in indexes]
    return sa.Table(tname, metadata, *cols, *extra, *idx)


def make_engine(url: str | sa.URL, **kwargs) -> sa.Engine:
    """An engine with the settings every chainlend database connection uses.

    SQLite gets WAL journaling and a busy timeout so a reader and a writer can share a file.
    """
    if sa.make_url(url).get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"timeout": 60}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # 64 MiB page cache (default 2 MiB): bulk inserts into tables with random-key indexes
            # (ledger postings, landing tables) otherwise thrash the cache
            cur.execute("PRAGMA cache_size=-65536")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)
