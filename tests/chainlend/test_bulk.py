"""chainlend.bulk.bulk_insert on SQLite, PostgreSQL and MariaDB: it stores what a SQLAlchemy insert
of the same rows stores (dates and times converted once per distinct value), its
constant columns included, and on a connection with no transaction begun yet the caller's commit
keeps the rows (SQLite streams them to the driver's ``executemany`` outside SQLAlchemy)."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from chainlend.bulk import bulk_insert
from chainlend.systems import Warehouse

T0 = dt.datetime(2026, 3, 2, 8, 30, 15, 123456)


@pytest.fixture(params=["sqlite", "postgres_url", "mariadb_url"])
def engine(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'bulk.db'}" if request.param == "sqlite" else request.getfixturevalue(request.param)
    e = Warehouse.from_url(url).engine
    yield e
    e.dispose()


def _table(md: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(name, md, sa.Column("k", sa.String(32), primary_key=True), sa.Column("day", sa.Date),
                    sa.Column("at", sa.DateTime), sa.Column("n", sa.BigInteger),
                    sa.Column("batch", sa.String(16)), sa.Column("stamped", sa.DateTime))


def test_bulk_insert_stores_what_the_sqlalchemy_insert_stores(engine):
    md = sa.MetaData()
    a, b = _table(md, "bulk_a"), _table(md, "bulk_b")
    md.create_all(engine)
    days = [dt.date(2026, 3, 1 + i % 2) for i in range(6)]  # repeated values: converted once
    ats = [T0, T0, None, T0 + dt.timedelta(seconds=1), T0, None]
    columns = {"k": [f"K{i}" for i in range(6)], "day": days, "at": ats, "n": [1, -2, None, 10**12, 5, 0]}
    const = {"batch": "B1", "stamped": T0}
    try:
        with engine.begin() as conn:
            conn.execute(a.insert(), [dict(zip(columns, row, strict=True), **const)
                                      for row in zip(*columns.values(), strict=True)])
            bulk_insert(conn, b, columns, const)
            bulk_insert(conn, b, {"k": []}, const)  # nothing to insert
        with engine.connect() as conn:
            want = pd.read_sql(sa.select(a).order_by(a.c.k), conn)
            got = pd.read_sql(sa.select(b).order_by(b.c.k), conn)
            raw = {t: conn.execute(sa.text(f"SELECT day, at, stamped FROM {t} ORDER BY k")).all()
                   for t in ("bulk_a", "bulk_b")}
        pd.testing.assert_frame_equal(got, want)
        assert raw["bulk_a"] == raw["bulk_b"]  # the stored values themselves, not only their reading
        assert len(got) == 6
    finally:
        md.drop_all(engine)


def test_rows_written_before_anything_else_are_kept_by_the_callers_commit(engine):
    md = sa.MetaData()
    b = _table(md, "bulk_c")
    md.create_all(engine)
    try:
        with engine.connect() as conn:  # no begin(): the first statement on it is the bulk insert
            bulk_insert(conn, b, {"k": ["K1", "K2"], "day": [dt.date(2026, 3, 1)] * 2}, {})
            conn.commit()
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(b)).scalar_one() == 2
        with engine.connect() as conn:  # and without the commit they are rolled back
            bulk_insert(conn, b, {"k": ["K3"]}, {})
            conn.rollback()
        with engine.connect() as conn:
            assert conn.execute(sa.select(b.c.k).order_by(b.c.k)).scalars().all() == ["K1", "K2"]
    finally:
        md.drop_all(engine)
