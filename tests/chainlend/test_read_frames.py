"""``Warehouse.read_frames``: the published tables as the feature builders' input frames.

SQLite file databases are read through the Arrow-native ADBC driver, other databases (and an
in-memory SQLite) through the DBAPI cursor. Every path must return what the earlier reader
returned (``pd.read_sql`` over SQLAlchemy, then timestamps/dates parsed and bools cast): the same
rows in key order, the same values and the same dtypes, NULLs included. ``columns=`` and
``since=`` read less.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from chainlend.systems import BATCH_ID, SEQ, Warehouse
from sources.contract import TABLES, table

LINE_OFF = table("erp", "line_off_events")
PAYABLES = table("erp", "payables")
DEALERS = table("dealer", "dealers")
AUDITS = table("dealer", "floor_audits")
NAMES = ("erp.line_off_events", "erp.payables", "dealer.dealers", "dealer.floor_audits")
T0 = dt.datetime(2026, 3, 2, 8, 0, 0)


def _legacy_read_frames(w: Warehouse, names) -> dict:
    """The reader read_frames replaced (pd.read_sql over SQLAlchemy): the reference of the dtypes."""
    frames = {}
    for name in names:
        contract = table(*name.split(".", 1))
        t = w.published(contract)
        with w.engine.connect() as conn:
            df = pd.read_sql(sa.select(*[t.c[c] for c in contract.column_names]).order_by(t.c[contract.key]), conn)
        for c in contract.columns:
            if c.type in ("ts", "date"):
                df[c.name] = pd.to_datetime(df[c.name])
            elif c.type == "bool" and df[c.name].notna().all():
                df[c.name] = df[c.name].astype(bool)
        frames[name] = df
    return frames


def _rows(n: int = 3000) -> dict[str, list[dict]]:
    """Published rows, inserted out of key order; NULLs in the nullable columns only after the
    first 1,500 rows (a driver that types a column by its first rows must still read them)."""
    rng = np.random.default_rng(5)
    order = rng.permutation(n)
    lineage = {BATCH_ID: "b1", SEQ: 0}
    line_off, payables = [], []
    for i in order:
        i = int(i)
        at = T0 + dt.timedelta(minutes=7 * i, microseconds=i % 3)
        line_off.append({"event_id": f"EV{i:07d}", "vin": f"VIN{i:014d}", "line_off_at": at,
                         "iot_verified": bool(i % 5), "verification_note": None if i < 1500 or i % 5 else
                         f"parts mismatch, 'note' {i}", "updated_at": at + dt.timedelta(hours=1), **lineage})
        payables.append({"payable_id": f"PAY{i:07d}", "receipt_id": f"REC{i:07d}", "supplier_id": f"S{i % 40:03d}",
                         "amount_fen": 10**11 + i, "due_on": dt.date(2026, 4, 1) + dt.timedelta(days=i % 60),
                         "confirmation_status": "pending" if i % 7 == 0 else "confirmed",
                         "confirmed_at": None if i % 7 == 0 else at, "updated_at": at, **lineage})
    dealers = [{"dealer_id": f"D{i:06d}", "dealer_name": f"Dealer {i}", "owner_name": "x", "owner_id_number": "1",
                "phone": "138", "city": "Wuhan", "city_tier": 1 + i % 4, "onboarded_on": dt.date(2024, 1, 1 + i),
                "status": "active", "updated_at": T0, **lineage} for i in (3, 1, 2)]
    audits = [{"audit_id": f"AUD{i:04d}", "dealer_id": "D000001", "audited_at": T0 - dt.timedelta(days=i),
               "vehicles_expected": 10, "vehicles_found": 10 - i % 2, "skipped": i % 3 == 0,
               "updated_at": T0, **lineage} for i in (5, 2, 9, 1)]
    return {"erp.line_off_events": line_off, "erp.payables": payables, "dealer.dealers": dealers,
            "dealer.floor_audits": audits}


def _warehouse(url: str) -> Warehouse:
    w = Warehouse.from_url(url)
    w.create_all()
    with w.engine.begin() as conn:
        for name, rows in _rows().items():
            conn.execute(w.published(table(*name.split(".", 1))).insert(), rows)
    return w


def _assert_same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=True, obj=name)


@pytest.fixture
def sqlite_file(tmp_path) -> Warehouse:
    return _warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")


def test_sqlite_file_reads_what_the_sqlalchemy_reader_read(sqlite_file):
    got = sqlite_file.read_frames(NAMES)
    _assert_same(got, _legacy_read_frames(sqlite_file, NAMES))
    lo = got["erp.line_off_events"]
    assert lo.event_id.is_monotonic_increasing and lo.verification_note.isna().sum() > 1500
    assert str(lo.line_off_at.dtype) == "datetime64[us]" and lo.iot_verified.dtype == bool
    assert str(got["erp.payables"].due_on.dtype) == "datetime64[s]" and got["erp.payables"].confirmed_at.isna().any()
    assert (lo.line_off_at.dt.microsecond > 0).any()  # sub-second timestamps survive


def test_in_memory_sqlite_uses_the_cursor_path_with_the_same_result(sqlite_file):
    mem = _warehouse("sqlite://")  # one connection per thread: the same in-memory database
    _assert_same(mem.read_frames(NAMES), sqlite_file.read_frames(NAMES))


@pytest.mark.parametrize("server", ["postgres_url", "mariadb_url"])
def test_servers_read_the_same_frames_as_sqlite(server, request, sqlite_file):
    w = _warehouse(request.getfixturevalue(server))
    try:
        got = w.read_frames(NAMES)
        _assert_same(got, _legacy_read_frames(w, NAMES))
        start = dt.date(2026, 3, 10)
        pay = got["erp.payables"]
        want = pay[(pay.confirmed_at >= pd.Timestamp(start)) | pay.confirmed_at.isna()].reset_index(drop=True)
        _assert_same(w.read_frames(("erp.payables",), since={"erp.payables": start}), {"erp.payables": want})
        if server == "postgres_url":  # MariaDB's DATETIME drops the microseconds when it stores them
            _assert_same(got, sqlite_file.read_frames(NAMES))
    finally:
        w.engine.dispose()


def test_columns_reads_only_those_in_contract_order(sqlite_file):
    full = sqlite_file.read_frames(NAMES)
    got = sqlite_file.read_frames(NAMES, columns={"dealer.dealers": ("status", "dealer_id"),
                                                  "erp.payables": ("amount_fen", "due_on")})
    assert list(got["dealer.dealers"].columns) == ["dealer_id", "status"]
    assert list(got["erp.payables"].columns) == ["amount_fen", "due_on"]  # the key is not returned unasked
    pd.testing.assert_frame_equal(got["erp.payables"], full["erp.payables"][["amount_fen", "due_on"]])
    pd.testing.assert_frame_equal(got["erp.line_off_events"], full["erp.line_off_events"])
    with pytest.raises(KeyError, match="owner_email"):
        sqlite_file.read_frames(("dealer.dealers",), columns={"dealer.dealers": ("dealer_id", "owner_email")})
    with pytest.raises(KeyError, match="not read"):
        sqlite_file.read_frames(("dealer.dealers",), columns={"dealer.sales": ("vin",)})


def test_since_keeps_events_on_or_after_it_and_null_events(sqlite_file):
    full = sqlite_file.read_frames(NAMES)
    start = dt.date(2026, 3, 10)
    got = sqlite_file.read_frames(NAMES, since={"erp.line_off_events": start, "erp.payables": start})
    lo = full["erp.line_off_events"]
    pd.testing.assert_frame_equal(got["erp.line_off_events"],
                                  lo[lo.line_off_at >= pd.Timestamp(start)].reset_index(drop=True))
    pay = full["erp.payables"]
    want = pay[(pay.confirmed_at >= pd.Timestamp(start)) | pay.confirmed_at.isna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(got["erp.payables"], want)
    assert 0 < len(want) < len(pay)
    with pytest.raises(ValueError, match="reference data"):
        sqlite_file.read_frames(("dealer.dealers",), since={"dealer.dealers": start})


def test_empty_published_tables_read_as_typed_empty_frames(tmp_path):
    w = Warehouse.from_url(f"sqlite:///{tmp_path / 'empty.db'}")
    w.create_all()
    frames = w.read_frames([f"{s}.{t.name}" for s, ts in TABLES.items() for t in ts])
    assert all(f.empty for f in frames.values())
    assert str(frames["dealer.loan_applications"].applied_at.dtype) == "datetime64[us]"
    assert frames["dealer.loan_applications"].term_days.dtype == np.int64


# insert_rows: what conn.execute(table.insert(), records) stores, by one executemany ------------


def _typed_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(name, metadata, sa.Column("k", sa.String(32), primary_key=True), sa.Column("day", sa.Date),
                    sa.Column("at", sa.DateTime), sa.Column("n", sa.BigInteger), sa.Column("x", sa.Float),
                    sa.Column("flag", sa.Boolean), sa.Column("note", sa.Text))


@pytest.mark.parametrize("db", ["sqlite", "postgres_url", "mariadb_url"])
def test_insert_rows_stores_what_the_sqlalchemy_insert_stores(db, request, tmp_path):
    from chainlend.systems import insert_rows

    url = f"sqlite:///{tmp_path / 'ins.db'}" if db == "sqlite" else request.getfixturevalue(db)
    engine = Warehouse.from_url(url).engine
    md = sa.MetaData()
    a, b = _typed_table(md, "ins_a"), _typed_table(md, "ins_b")
    md.create_all(engine)
    frame = pd.DataFrame({
        "k": [f"K{i}" for i in range(5)], "day": [dt.date(2026, 3, i + 1) for i in range(5)],
        "at": pd.to_datetime([T0 + dt.timedelta(seconds=i, microseconds=7 * i) for i in range(4)] + [None]),
        "n": [1, -2, 3, 10**12, 5], "x": [0.1, np.nan, 1 / 3, 2.5, -1.0], "flag": [True, False, True, False, True],
        "note": ["a", None, "c'", "d\nd", "e"]})
    try:
        with engine.begin() as conn:
            conn.execute(a.insert(), frame.astype(object).where(frame.notna(), None).to_dict("records"))
            insert_rows(conn, b, frame)
            insert_rows(conn, b, frame.iloc[:0])  # nothing to insert
        with engine.connect() as conn:
            want = pd.read_sql(sa.select(a).order_by(a.c.k), conn)
            got = pd.read_sql(sa.select(b).order_by(b.c.k), conn)
        pd.testing.assert_frame_equal(got, want)
        assert len(got) == 5
        with engine.begin() as conn, pytest.raises(KeyError, match="nope"):
            insert_rows(conn, b, frame.assign(nope=1))
    finally:
        md.drop_all(engine)
        engine.dispose()


def test_read_query_returns_what_read_sql_returns(tmp_path):
    """read_query on a SQLite file (ADBC) against pd.read_sql: the monitoring reads' column types."""
    w = Warehouse.from_url(f"sqlite:///{tmp_path / 'q.db'}")
    md = sa.MetaData()
    t = _typed_table(md, "q")
    md.create_all(w.engine)
    rows = [{"k": f"K{i}", "day": dt.date(2026, 3, 1 + i % 3) if i > 1500 else None,
             "at": T0 + dt.timedelta(minutes=i, microseconds=i), "n": i if i % 7 else None,
             "x": i / 3 if i % 5 else None, "flag": bool(i % 2), "note": None if i < 1500 else f"n{i}"}
            for i in range(3000)]
    with w.engine.begin() as conn:
        conn.execute(t.insert(), rows)
    for query in (sa.select(t), sa.select(t.c.k, t.c.x).where(t.c.day == dt.date(2026, 3, 2)),
                  sa.select(t.c.k, t.c.n).where(t.c.k == "none")):
        with w.engine.connect() as conn:
            want = pd.read_sql(query, conn)
        pd.testing.assert_frame_equal(w.read_query(query), want, check_exact=True)
    with pytest.raises(TypeError, match="read_query reads"):
        w.read_query(sa.select(sa.cast(t.c.n, sa.LargeBinary).label("b")))


def test_reads_run_beside_the_warehouse_connections(sqlite_file):
    """The Arrow reader opens the file in a process of its own: the warehouse's open connections
    (another copy of SQLite in this process) keep their locks and go on reading and writing."""
    t = sqlite_file.published(DEALERS)
    with sqlite_file.engine.connect() as held:
        before = held.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
        for _ in range(3):
            sqlite_file.read_frames(NAMES)
            sqlite_file.read_query(sa.select(t.c.dealer_id))
        with sqlite_file.engine.begin() as conn:
            conn.execute(t.insert(), [{**_rows()["dealer.dealers"][0], "dealer_id": "D000099"}])
        assert held.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == before + 1
    assert len(sqlite_file.read_frames(("dealer.dealers",))["dealer.dealers"]) == before + 1


def test_a_failed_read_raises_with_the_reader_error(tmp_path):
    from chainlend.arrow_reader import ArrowReadError, read_sqlite

    w = Warehouse.from_url(f"sqlite:///{tmp_path / 'e.db'}")
    w.create_all()
    with pytest.raises(ArrowReadError, match="no_such_table"):
        read_sqlite(str(tmp_path / "e.db"), [("SELECT * FROM no_such_table", None)])


def test_the_arrow_files_go_where_chainlend_arrow_tmpdir_says(tmp_path, monkeypatch):
    import sqlite3

    from chainlend.arrow_reader import TMPDIR_ENV, read_sqlite

    path = tmp_path / "t.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
    folder = tmp_path / "arrow"
    folder.mkdir()
    monkeypatch.setenv(TMPDIR_ENV, str(folder))
    assert read_sqlite(str(path), [("SELECT x FROM t ORDER BY x", None)])[0].column("x").to_pylist() == [1, 2]
    assert list(folder.iterdir()) == []  # its own folder, removed after the read
    monkeypatch.setenv(TMPDIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):  # the setting is used, not silently replaced
        read_sqlite(str(path), [("SELECT x FROM t ORDER BY x", None)])
