"""Property: the gate accounts for every row of any batch, however malformed.

Hypothesis builds batches of a few contract tables from a mix of well-typed values and garbage
(wrong types, huge numbers, inf/nan, blanks, unicode and NUL, bytes, dicts, odd timestamp text,
tz-aware and out-of-range datetimes, typed and extension dtypes, a missing or an unexpected
column) and runs :func:`expectations.gate.run_gate` on each with one ephemeral GX validator.
Whatever the input, the gate must not raise, and:

- rows in = accepted + quarantined, the two indexes are disjoint and together are the input's;
- every quarantined row carries a non-empty ``_reasons`` naming known checks;
- an accepted row has a value (not null, not blank) in every non-nullable contract column and no
  value that cannot be read as its contract type;
- a batch missing a contract column or carrying an unexpected one is blocked: every row is
  quarantined (``blocked:…``).

One GX validator serves the module (building one is slow); ~40 examples per table keep the whole
module under a minute.
"""

from __future__ import annotations

import datetime as dt
import decimal
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expectations.frames import check_frame
from expectations.gate import REASONS, GateInputs, run_gate
from expectations.rules import ALLOWED, batch_checks, row_checks
from sources.contract import Column, Table, table

TABLES = [table("dealer", "loan_applications"), table("erp", "payables"), table("dealer", "dealers"),
          table("erp", "production"), table("erp", "line_off_events")]
WINDOW_END = dt.datetime(2026, 3, 3)
KEY_POOL = [f"K{i}" for i in range(1, 9)]  # small: duplicate keys and FK hits are common
VIN_POOL = [f"LSVAB1234CD56789{i}" for i in range(8)]
MAX_ROWS = 8
PROFILE = settings(max_examples=40, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def validator():
    from expectations.gx_runner import GxValidator

    return GxValidator()  # ephemeral: slow to build, so one per module


# -- values ------------------------------------------------------------------------------------
ODD_TEXT = st.sampled_from([
    "", " ", "\t\n", "\u3000", "\u00a0", "\x00", "a\x00b", "😀", "🚗💨", "汽车经销商", "שלום עולם",
    "\u202eevil", "مرحبا", "١٢٣", "NaN", "nan", "null", "None", "True", "yes", "0", "1", "-1",
    "1e5", " 42 ", "0x10", "1_000", "9" * 40, "-0", "inf", "-inf",
])
ODD_TIME_TEXT = st.sampled_from([
    "2026-03-02", "2026-03-02 10:00:00", "2026-03-02T10:00:00+08:00", "2026-03-02T23:59:59Z",
    "03/02/2026", "2/3/2026", "2 March 2026", "Mar 2, 2026", "20260302", "2026-03-02T10:00:00.123456789",
    "1677-09-21", "1677-09-22", "2262-04-11", "2262-04-12", "9999-12-31", "0001-01-01", "1900-01-01",
    "2026-13-45", "2026-02-30", "yesterday", "now", "today", "1e10", "2026-03-04", "2030-01-01",
])
TZS = st.sampled_from([None, dt.UTC, dt.timezone(dt.timedelta(hours=8)), dt.timezone(dt.timedelta(hours=-11))])
DATETIMES = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31), timezones=TZS)
NEAR_DATETIMES = st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2026, 3, 10), timezones=TZS)
WILD = st.one_of(
    st.none(), st.sampled_from([np.nan, pd.NaT, pd.NA, np.datetime64("NaT"), float("inf"), -float("inf"),
                                1e308, -1e308, 2**70, -(2**70), 2**63, 2**63 - 1, -(2**63), 0, -1, 0.5,
                                True, False, np.int64(7), np.float32(1.5), np.bool_(True),
                                decimal.Decimal("12.5"), decimal.Decimal("NaN"), 1 + 2j, b"", b"\xff\xfe",
                                dt.time(12, 0), pd.Timedelta("1D"), (), frozenset()]),
    st.integers(), st.floats(), st.booleans(), st.text(max_size=6), ODD_TEXT, ODD_TIME_TEXT,
    DATETIMES, NEAR_DATETIMES, st.dates(), st.binary(max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.lists(st.integers(), max_size=2),
)


def good_values(col: Column, contract: Table) -> st.SearchStrategy:
    """Values a clean source would land in ``col``."""
    fk_cols = {fk.column for fk in contract.foreign_keys}
    if col.type == "str":
        if col.name == "vin":  # from the pool (FK hits, duplicates) unless it is the key
            fresh = st.text("0123456789ABCDEFGHJKLMNPRSTUVWXYZ", min_size=17, max_size=17)
            return st.sampled_from(VIN_POOL) | fresh if col.name == contract.key else st.sampled_from(VIN_POOL)
        if col.name in fk_cols:
            return st.sampled_from(KEY_POOL)
        if col.name == contract.key:
            return st.sampled_from(KEY_POOL) | st.text(min_size=1, max_size=4).filter(str.strip)
        if col.name in ALLOWED:
            return st.sampled_from(ALLOWED[col.name])
        return st.text(min_size=1, max_size=8).filter(str.strip)
    if col.type == "int":
        if col.name in ALLOWED:
            return st.sampled_from(ALLOWED[col.name])
        return st.integers(-5, 2_000_000) | st.integers(0, 10**12)
    if col.type == "float":
        return st.floats(-1e6, 1e6)
    if col.type == "bool":
        return st.booleans()
    return NEAR_DATETIMES.map(lambda t: t.replace(tzinfo=None)) if col.type == "ts" else \
        st.dates(dt.date(2020, 1, 1), dt.date(2026, 4, 1))


def _typed(values: list, col: Column, kind: str) -> pd.Series:
    """``values`` in one of the dtypes a loader may produce (falls back to object)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": dateutil parses the odd text
        try:
            return _typed_as(values, col, kind)
        except (TypeError, ValueError, OverflowError):
            return pd.Series(values, dtype=object)


def _typed_as(values: list, col: Column, kind: str) -> pd.Series:
    """``values`` as the dtype ``kind`` names (object when it does not apply)."""
    if kind == "infer":
        return pd.Series(values)
    if kind == "native":
        if col.type == "int":
            return pd.Series(pd.array([v if isinstance(v, int) and abs(v) < 2**63 else None for v in values],
                                      dtype="Int64"))
        if col.type in ("ts", "date"):
            return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), errors="coerce", utc=True))
        if col.type == "bool":
            return pd.Series(pd.array([v if isinstance(v, bool) else None for v in values], dtype="boolean"))
        return pd.Series(values, dtype="str")
    if kind == "category":
        return pd.Series([v if isinstance(v, str | int | float) and not isinstance(v, bool) else None
                          for v in values], dtype="category")
    if kind == "datetime_us":
        return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), errors="coerce").astype("datetime64[us]"))
    return pd.Series(values, dtype=object)


@st.composite
def column_values(draw, col: Column, contract: Table, n: int, dirty_rows: set[int]) -> pd.Series:
    """``n`` values of ``col``: garbage in ``dirty_rows``, clean values elsewhere, in some dtype."""
    good = good_values(col, contract)
    values = [draw(WILD if i in dirty_rows else good) for i in range(n)]
    kinds = ["object", "infer", "native", "native", "category", "datetime_us"]
    if not dirty_rows:  # clean values in any dtype that can hold them
        kinds = ["object", "infer", "native"] + (["datetime_us"] if col.type in ("ts", "date") else []) + \
            (["category"] if col.type in ("str", "int") else [])
    return _typed(values, col, draw(st.sampled_from(kinds)))


@st.composite
def batches(draw, contract: Table):
    n = draw(st.integers(0, MAX_ROWS))
    index = draw(st.sampled_from(["range", "shifted", "labels"]))
    idx = {"range": pd.RangeIndex(n), "shifted": pd.Index(np.arange(n) * 7 + 100)[::-1],
           "labels": pd.Index([f"r{i}" for i in range(n)])}[index]
    # garbage in a few rows of a few columns (or of all columns), so batches also have rows to accept
    some = st.sets(st.sampled_from(contract.column_names), max_size=2)
    dirty_cols = draw(st.one_of(some, some, some, st.just(set(contract.column_names))))
    dirty_rows = {i for i in range(n) if draw(st.integers(0, 3)) == 0}
    cols = {}
    for col in contract.columns:
        s = draw(column_values(col, contract, n, dirty_rows if col.name in dirty_cols else set()))
        cols[col.name] = pd.Series(s.array, index=idx)
    df = pd.DataFrame(cols, index=idx)
    shape = draw(st.sampled_from(["exact", "exact", "exact", "missing", "extra", "both"]))
    if shape in ("missing", "both"):
        df = df.drop(columns=[draw(st.sampled_from(contract.column_names))])
    if shape in ("extra", "both"):
        junk = st.sampled_from([b"\xff\xfe", 1, "x"]) | WILD  # bytes + numbers: pandas hashing raises
        df["unexpected_col"] = pd.Series(draw(st.lists(junk, min_size=n, max_size=n)), index=idx, dtype=object)
    keys = {}
    for fk in contract.foreign_keys:  # the whole pool but a few keys, so most references hit
        absent = draw(st.sets(st.sampled_from(KEY_POOL + VIN_POOL), max_size=2))
        keys[f"{fk.table}.{fk.ref_column}"] = pd.Index([k for k in KEY_POOL + VIN_POOL if k not in absent],
                                                       dtype="str")
    used_vins = None
    if contract.unique_vin and draw(st.booleans()):
        vins = draw(st.lists(st.sampled_from(VIN_POOL), max_size=3, unique=True))
        used_vins = pd.Series([draw(st.sampled_from(KEY_POOL)) for _ in vins], index=pd.Index(vins, dtype="str"),
                              dtype="str")
    recent = draw(st.sampled_from([(), (5, 5, 5), (0, 3, 4)]))
    inputs = GateInputs(window_end=WINDOW_END, parent_keys=keys, used_vins=used_vins, recent_counts=recent,
                        append_only=draw(st.booleans()))
    return df, inputs


# -- the property ------------------------------------------------------------------------------
def _blank(s: pd.Series) -> pd.Series:
    return s.astype(object).map(lambda v: isinstance(v, str) and v.strip() == "").astype(bool)


def check_outcome(df: pd.DataFrame, contract: Table, outcome) -> None:
    acc, q = outcome.accepted, outcome.quarantined
    assert outcome.rows_in == len(df)
    assert len(acc) + len(q) == len(df)
    assert acc.index.intersection(q.index).empty, "a row is both accepted and quarantined"
    assert acc.index.union(q.index).sort_values().equals(df.index.sort_values()), "rows lost or invented"
    assert list(acc.columns) == list(df.columns), "accepted rows keep the landed columns"
    assert REASONS in q.columns
    names = {c.name for c in row_checks(contract) + batch_checks(contract)}
    for reasons in q[REASONS]:
        assert isinstance(reasons, str) and reasons, f"quarantined without a reason: {reasons!r}"
        for part in reasons.split(";"):
            assert part in names or part.startswith("blocked:"), f"unknown reason {part!r} in {reasons!r}"
    missing = [c for c in contract.column_names if c not in df.columns]
    unexpected = [c for c in df.columns if c not in contract.column_names]
    if missing or unexpected:
        assert outcome.blocked and acc.empty, f"missing {missing}, unexpected {unexpected}, yet not blocked"
    if outcome.blocked:
        assert acc.empty and all(r.startswith("blocked:") for r in q[REASONS])
    for col in contract.columns:
        if not col.nullable and col.name in acc.columns:
            nulls = acc[col.name].isna() | _blank(acc[col.name])
            assert not nulls.any(), f"accepted row with a null {col.name}: {acc.loc[nulls, col.name].tolist()}"
    if len(acc):
        _, type_fail = check_frame(acc, contract)
        assert not type_fail, f"accepted rows with unreadable values in {sorted(type_fail)}"


@pytest.mark.parametrize("contract", TABLES, ids=[f"{t.source}.{t.name}" for t in TABLES])
def test_gate_accounts_for_every_row(contract, validator):
    @PROFILE
    @given(batches(contract))
    def prop(batch):
        df, inputs = batch
        outcome = run_gate(df, contract, inputs, validator, run_name="prop")
        check_outcome(df, contract, outcome)

    prop()
