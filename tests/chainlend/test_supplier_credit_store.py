"""Supplier-credit storage on SQLite, PostgreSQL and MariaDB: the claim of a micro-batch's events (an
anti-join in SQL), credits written as plain DBAPI rows, the lineage stored once per split and read
back per credit through the ``supplier_credit_lines`` view, and the re-run semantics (a batch
replaces its rows; ``allocated_at`` kept when the amount is unchanged)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lending.cascade import CASCADE_POLICY_V1, LINE_COLUMNS, allocate, bom_lineage

END = dt.datetime(2025, 3, 2, 12, 0)
T0 = pd.Timestamp("2025-03-02 08:00:00")
BOM = pd.DataFrame({
    "bom_line_id": ["M1-L1", "M1-L2", "M1-L3", "M2-L1", "M2-L2"],
    "model_id": ["M1", "M1", "M1", "M2", "M2"],
    "part_id": ["P1", "P2", "P3", "P1", "P4"],
    "supplier_id": ["S1", "S1", "S2", "S1", "S2"],
    "quantity": [1, 2, 1, 3, 1],
    "unit_price_fen": [1000, 500, 1001, 1000, 700],
})
SUB_BOM = pd.DataFrame({"sub_bom_line_id": ["X1", "X2", "X3"], "parent_part_id": ["P1", "P2", "P4"],
                        "supplier_id": ["T1", "T2", "T1"], "quantity": [2, 1, 1], "unit_price_fen": [100, 50, 70]})
PRODUCTION = pd.DataFrame({"vin": [f"V{i}" for i in range(6)], "model_id": ["M1", "M2", "M1", "M2", "M1", "M9"]})
SUPPLIERS = pd.DataFrame({"supplier_id": ["S1", "S2", "T1", "T2"], "tier": [1, 1, 2, 2],
                          "limit_fen": [3_000, 10**9, 10**9, 10**9], "exposure_fen": 0,
                          "confirmed_payables_fen": 10**9, "dilution_ratio": 0.0})


def _line_offs(n: int = 6, *, verified=lambda i: i != 2) -> pd.DataFrame:
    return pd.DataFrame({"event_id": [f"E{i}" for i in range(n)], "vin": [f"V{i}" for i in range(n)],
                         "line_off_at": [T0 + pd.Timedelta(minutes=i) for i in range(n)],
                         "iot_verified": [verified(i) for i in range(n)], "verification_note": None})


def _allocate(batch: str, line_offs: pd.DataFrame, suppliers: pd.DataFrame = SUPPLIERS):
    return allocate(line_offs, PRODUCTION, BOM, SUB_BOM, suppliers, CASCADE_POLICY_V1, batch_id=batch)


def _store(w, batch: str, result, line_offs: pd.DataFrame) -> None:
    from chainlend.lending_ops import _store_credits, _store_splits

    t = w.lending
    days = pd.Series([d.date() for d in line_offs.line_off_at], index=line_offs.event_id.to_numpy(), dtype=object)
    with w.engine.begin() as conn:
        _store_credits(conn, t, batch, result.credits, days)
        _store_splits(conn, t["supplier_credit_splits"], result.splits)


def _read(w, sql: str) -> pd.DataFrame:
    with w.engine.connect() as conn:
        return pd.read_sql(sa.text(sql), conn)


def _lines(w) -> pd.DataFrame:
    got = _read(w, "SELECT credit_id, bom_line_id, sub_bom_line_id, line_value_fen, batch_id FROM supplier_credit_lines")
    got["sub_bom_line_id"] = pd.Series([None if pd.isna(v) else v for v in got["sub_bom_line_id"]], dtype=object)
    return got.sort_values(["credit_id", "bom_line_id", "sub_bom_line_id"], na_position="first",
                           ignore_index=True).astype({"line_value_fen": np.int64})


def _per_credit_lineage(credits: pd.DataFrame) -> pd.DataFrame:
    """The lineage rows the earlier layout stored for each credit (its supplier's lines in its model)."""
    rows = []
    for c in credits.itertuples():
        lineage = bom_lineage(BOM[BOM.model_id == c.model_id], SUB_BOM)
        rows += [(c.credit_id, r.bom_line_id, None if pd.isna(r.sub_bom_line_id) else r.sub_bom_line_id,
                  int(r.line_value_fen), c.batch_id) for r in lineage[lineage.supplier_id == c.supplier_id].itertuples()]
    frame = pd.DataFrame(rows, columns=[*LINE_COLUMNS, "batch_id"])
    return frame.sort_values(["credit_id", "bom_line_id", "sub_bom_line_id"], na_position="first",
                             ignore_index=True).astype({"line_value_fen": np.int64})


def _records(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(None if pd.isna(v) else v for v in row) for row in frame.astype(object).itertuples(index=False)]


def test_lineage_view_gives_each_credit_the_lines_the_per_credit_layout_stored(warehouse):
    w = warehouse
    line_offs = _line_offs()
    result = _allocate("sc.A", line_offs)
    _store(w, "sc.A", result, line_offs)
    credits = _read(w, "SELECT * FROM supplier_credits")
    # V0, V4 (M1) × S1, S2, T1, T2 and V1, V3 (M2) × S1, S2, T1; V2 unverified, V5's model has no BOM
    assert len(credits) == len(result.credits) == 14
    expected = _per_credit_lineage(result.credits)
    assert _records(_lines(w)) == _records(expected)
    assert _records(_lines(w)[list(LINE_COLUMNS)]) == _records(result.lines)
    # the lineage is stored once per split (model × structure × supplier), not once per credit
    splits = _read(w, "SELECT split_id, COUNT(*) AS n FROM supplier_credit_splits GROUP BY split_id")
    assert len(splits) == 4 + 3 and splits.n.sum() == len(result.splits) < len(expected)
    # every column of a credit as the cascade decided it
    stored = credits.set_index("credit_id").loc[result.credits.credit_id]
    for column in ("batch_id", "event_id", "vin", "model_id", "supplier_id", "split_id", "policy_version"):
        assert stored[column].tolist() == result.credits[column].tolist(), column
    for column in ("tier", "share_fen", "amount_fen", "capped_fen"):
        assert stored[column].astype("int64").tolist() == result.credits[column].astype("int64").tolist(), column
    assert [None if pd.isna(v) else v for v in stored.capped_by] == result.credits.capped_by.tolist()
    assert (stored.capped_fen.astype("int64") > 0).any()  # S1's limit binds
    assert set(pd.to_datetime(stored.line_off_on).dt.date) == {dt.date(2025, 3, 2)}


def test_rerun_replaces_the_batch_keeps_times_of_unchanged_credits_and_adds_no_split(warehouse):
    w = warehouse
    line_offs = _line_offs()
    first = _allocate("sc.A", line_offs)
    _store(w, "sc.A", first, line_offs)
    with w.engine.begin() as conn:  # a recognisable earlier allocation time
        conn.execute(sa.text("UPDATE supplier_credits SET allocated_at = :t"), {"t": dt.datetime(2025, 3, 2, 8, 30)})
    splits_before = _read(w, "SELECT COUNT(*) AS n FROM supplier_credit_splits").n.iloc[0]
    # the re-run: S1's limit is higher now, so S1's capped credits change amount
    again = _allocate("sc.A", line_offs, SUPPLIERS.assign(limit_fen=[4_000, 10**9, 10**9, 10**9]))
    _store(w, "sc.A", again, line_offs)
    credits = _read(w, "SELECT credit_id, amount_fen, allocated_at FROM supplier_credits").set_index("credit_id")
    assert len(credits) == len(again.credits)
    before = first.credits.set_index("credit_id").amount_fen
    after = again.credits.set_index("credit_id").amount_fen
    changed = set(after.index[after != before.reindex(after.index)])
    assert changed and changed <= {c for c in after.index if c.endswith(":S1")}
    times = pd.to_datetime(credits.allocated_at)
    assert (times[~times.index.isin(changed)] == pd.Timestamp("2025-03-02 08:30")).all()
    assert (times[times.index.isin(list(changed))] > pd.Timestamp("2025-03-02 08:30")).all()
    assert _read(w, "SELECT COUNT(*) AS n FROM supplier_credit_splits").n.iloc[0] == splits_before
    assert _records(_lines(w)) == _records(_per_credit_lineage(again.credits))


def test_a_credit_id_of_another_batch_is_replaced_like_an_upsert(warehouse):
    w = warehouse
    early = _line_offs(2)  # V0, V1 in batch sc.A
    _store(w, "sc.A", _allocate("sc.A", early), early)
    late = _line_offs(2).assign(event_id=["E10", "E11"]).iloc[[1]]  # V1 again, in batch sc.B
    result = _allocate("sc.B", late)
    _store(w, "sc.B", result, late)
    credits = _read(w, "SELECT credit_id, batch_id FROM supplier_credits ORDER BY credit_id")
    assert dict(zip(credits.credit_id, credits.batch_id)) == {
        **{f"V0:{s}": "sc.A" for s in ("S1", "S2", "T1", "T2")}, **{f"V1:{s}": "sc.B" for s in ("S1", "S2", "T1")}}
    lines = _lines(w)
    assert lines.groupby("credit_id").batch_id.first().to_dict() == dict(zip(credits.credit_id, credits.batch_id))


def test_claim_is_an_anti_join_and_a_rerun_finds_its_claim(warehouse):
    from chainlend.lending_ops import _claim_events
    from sources.contract import table as contract_table

    w = warehouse
    ev = w.published(contract_table("erp", "line_off_events"))
    old = END - dt.timedelta(days=8)
    rows = [  # (event, line_off_at, updated_at)
        ("E1", END - dt.timedelta(hours=2), END - dt.timedelta(hours=1)),  # claimable
        ("E2", END - dt.timedelta(hours=2), END + dt.timedelta(minutes=1)),  # published after the interval
        ("E3", old, old + dt.timedelta(minutes=5)),  # before the look-back
        ("E4", END - dt.timedelta(hours=3), END - dt.timedelta(hours=2)),  # taken by an earlier batch
        ("E5", END - dt.timedelta(hours=1), END - dt.timedelta(minutes=30)),  # claimable, unverified
    ]
    with w.engine.begin() as conn:
        conn.execute(ev.insert(), [
            {"event_id": e, "vin": f"V{e}", "line_off_at": at, "iot_verified": e != "E5",
             "verification_note": "parts_mismatch" if e == "E5" else None, "updated_at": up, "_batch_id": "b", "_seq": i}
            for i, (e, at, up) in enumerate(rows)])
        conn.execute(w.lending["credit_batch_events"].insert(), [{"event_id": "E4", "batch_id": "sc.earlier"}])
    got = _claim_events(w, "sc.A", END)
    assert got.event_id.tolist() == ["E1", "E5"]
    assert got.iot_verified.tolist() == [True, False] and got.verification_note.tolist() == [None, "parts_mismatch"]
    assert pd.api.types.is_datetime64_any_dtype(got.line_off_at)
    assert _claim_events(w, "sc.A", END).event_id.tolist() == ["E1", "E5"]  # a re-run finds its claim
    assert _claim_events(w, "sc.B", END).empty  # nothing left for a later batch
    claims = _read(w, "SELECT event_id, batch_id FROM credit_batch_events ORDER BY event_id")
    assert dict(zip(claims.event_id, claims.batch_id)) == {"E1": "sc.A", "E4": "sc.earlier", "E5": "sc.A"}


def test_an_earlier_layout_is_refused_with_the_fix(tmp_path):
    from chainlend.lending_ops import LendingOpsError, _require_split_layout
    from chainlend.systems import Warehouse

    w = Warehouse.from_url(f"sqlite:///{tmp_path / 'old.db'}")
    w.create_all()
    with w.engine.begin() as conn:
        conn.execute(sa.text("DROP VIEW supplier_credit_lines"))
        conn.execute(sa.text("CREATE TABLE supplier_credit_lines (credit_id TEXT)"))
    with pytest.raises(LendingOpsError, match="earlier supplier-credit layout"):
        _require_split_layout(w)
    w.engine.dispose()
