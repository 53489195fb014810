"""Bulk writes of millions of rows without a Python dict per row.

SQLAlchemy's ``conn.execute(table.insert(), [dict, …])`` costs ~15-30 µs of Python per row
(the dict, bind-parameter construction and processing): a day at reference scale writes several
million rows (published gate rows, supplier credits, instruction items). Here the rows go to the
DBAPI as plain tuples (SQLite ``executemany``; PostgreSQL ``COPY``), with the column types' own
bind processors applied a column at a time, so what is stored is byte-identical to what a
SQLAlchemy insert stores (e.g. SQLite's ``YYYY-MM-DD HH:MM:SS.ffffff`` datetimes) and the
constraints and triggers of the table apply as to any insert.
"""

from __future__ import annotations

from itertools import repeat

import numpy as np
import pandas as pd
import sqlalchemy as sa


class BulkWriteError(RuntimeError):
    """The driver cannot take plain DBAPI statements the way :func:`bulk_insert` writes them."""


def placeholder(conn) -> str:
    """The DBAPI's positional placeholder (sqlite3: ``?``; psycopg, PyMySQL: ``%s``)."""
    style = conn.dialect.paramstyle
    if style not in ("qmark", "format", "pyformat"):
        raise BulkWriteError(f"driver {conn.dialect.driver!r} uses paramstyle {style!r}; bulk writes use "
                             "plain DBAPI statements with qmark or format placeholders")
    return "?" if style == "qmark" else "%s"


def in_clause(conn, keys: list | tuple) -> tuple[str, tuple]:
    """``IN (?, ?, …)`` and its parameters; on PostgreSQL one array parameter, ``= ANY(%s)``."""
    if conn.dialect.name == "postgresql":
        return "= ANY(%s)", (list(keys),)
    return f"IN ({', '.join([placeholder(conn)] * len(keys))})", tuple(keys)


def where_in(conn, table: sa.Table, column: str, keys: list, *, delete: bool = False,
              select: str | None = None) -> list[tuple]:
    """``SELECT select`` (default: ``column``; or ``DELETE``) from ``table`` where ``column`` is one
    of ``keys``, 5,000 keys a statement, as plain DBAPI statements (no per-key SQLAlchemy bind
    parameters)."""
    q, rows = conn.dialect.identifier_preparer, []
    head = "DELETE" if delete else f"SELECT {q.quote(select or column)}"
    for i in range(0, len(keys), 5_000):
        where, params = in_clause(conn, keys[i:i + 5_000])
        res = conn.exec_driver_sql(f"{head} FROM {q.format_table(table)} WHERE {q.quote(column)} {where}", params)
        if res.returns_rows:
            rows += res.all()
    return rows


def bulk_insert(conn, table: sa.Table, columns: dict[str, list], const: dict[str, object]) -> None:
    """Insert one row per position of ``columns`` (name → list of plain values), each row also
    getting ``const``: plain tuples through the DBAPI ``executemany`` (PostgreSQL: ``COPY``, whose
    psycopg ``executemany`` costs ~30 µs of Python a row), so SQLAlchemy does not build and process
    a parameter dict per row. Each column's bind conversion runs once per distinct value, and on
    SQLite the rows are streamed to ``executemany`` (no list of millions of tuples). Constraints
    and triggers apply as to any insert."""
    if not columns or not len(next(iter(columns.values()))):
        return

    names = [*columns, *const]
    q = conn.dialect.identifier_preparer
    into = f"{q.format_table(table)} ({', '.join(q.quote(n) for n in names)})"
    if not conn.in_transaction():  # SQLAlchemy's autobegin, which the driver cursors below bypass:
        conn.begin()  # else the caller's commit() would not commit these rows
    if conn.dialect.name == "postgresql":  # psycopg adapts the Python values itself
        rows = zip(*columns.values(), *map(repeat, const.values()))
        with conn.connection.driver_connection.cursor() as cur, cur.copy(f"COPY {into} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    varying = [_bound(conn, table.c[n], v) for n, v in columns.items()]
    fixed = [_bound(conn, table.c[n], [v])[0] for n, v in const.items()]  # e.g. a datetime for SQLite
    rows = zip(*varying, *map(repeat, fixed))
    sql = f"INSERT INTO {into} VALUES ({', '.join([placeholder(conn)] * len(names))})"
    if conn.dialect.name == "sqlite":  # sqlite3 takes an iterator: no list of millions of tuples
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()
        return
    conn.exec_driver_sql(sql, list(rows))


# types whose Python values may be unhashable (dicts, lists): bound value by value, not memoised
_UNHASHABLE = (sa.JSON, sa.PickleType, sa.ARRAY)


def _bound(conn, column: sa.Column, values: list) -> list:
    """``values`` through the column type's bind processor for this dialect (the values themselves
    when it has none, e.g. text and integers), each distinct value converted once: the columns
    that have one (dates, timestamps) repeat few values over many rows (a batch's day, its time)."""
    process = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    if process is None:
        return values
    if isinstance(column.type, _UNHASHABLE):
        return list(map(process, values))
    memo: dict = {}
    return [memo[v] if v in memo else memo.setdefault(v, process(v)) for v in values]


def plain_values(series: pd.Series) -> list:
    """A column as a list of plain Python values for a DBAPI: ``int``/``float``/``bool``/``str``,
    ``datetime.datetime`` for timestamps, ``None`` for every missing value (NaN, NaT, ``pd.NA``)."""
    missing = series.isna().to_numpy()
    kind = series.dtype.kind
    if kind in "iub" and not isinstance(series.dtype, pd.api.extensions.ExtensionDtype):
        return series.to_numpy().tolist()  # numpy ints/bools cannot be missing
    if kind == "M":
        values = np.asarray(series.dt.to_pydatetime(), dtype=object)
    elif kind == "f" and not isinstance(series.dtype, pd.api.extensions.ExtensionDtype):
        values = series.to_numpy(dtype=object)
    else:  # object, string, nullable Int64/boolean: astype(object) boxes to Python scalars
        values = series.astype(object).to_numpy()
    if missing.any():
        values = values.copy()
        values[missing] = None
    return values.tolist()


def plain_columns(frame: pd.DataFrame, names: list[str]) -> dict[str, list]:
    """``{name: plain_values(frame[name])}`` in the order of ``names`` (the input of :func:`bulk_insert`)."""
    return {n: plain_values(frame[n]) for n in names}
