"""Database side of the source simulator: column batches, a fast bulk writer, and the
simulator's own tables (state, oracle, fault manifest, pending future events).

A :class:`Batch` holds the rows of one table as numpy columns, with timestamps as integer
seconds and dates as integer days since 1970-01-01; :func:`insert` turns them into the values the
database expects. On SQLite it hands pre-formatted values straight to the driver (the same text
SQLAlchemy would store, about 5x faster than SQLAlchemy's per-value processing); on other
databases it goes through ``Table.insert()`` with Python ``datetime``/``date`` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from sources.contract import Table
from sources.sql import SA_TYPES

CHUNK_ROWS = 50_000
NO_TIME = np.iinfo(np.int64).min // 2  # "no lower bound" for an event time


def sa_type(kind: str) -> sa.types.TypeEngine:
    if kind == "float":
        return sa.Double()  # FLOAT is single precision on MariaDB; state must round-trip exactly
    if kind == "text":
        return sa.Text()
    return SA_TYPES[kind]


@dataclass
class Batch:
    """Rows of one source table, column by column, in contract order (``updated_at`` included).

    ``nulls`` marks NULL cells per column; ``min_event`` is, per row, the earliest event time that
    keeps the row consistent with its parents (used to pick rows that may arrive late); ``fresh``
    marks rows that may receive a fault (not the extra rows a fault added).
    """

    table: Table
    cols: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray] = field(default_factory=dict)
    min_event: np.ndarray | None = None

    def __post_init__(self) -> None:
        missing = set(self.table.column_names) - set(self.cols)
        extra = set(self.cols) - set(self.table.column_names)
        if missing or extra:
            raise ValueError(f"batch for {self.table.name}: missing columns {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        lengths = {len(v) for v in self.cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"batch for {self.table.name}: columns of different lengths {lengths}")
        if self.min_event is None:
            self.min_event = np.full(self.n, NO_TIME, dtype=np.int64)

    @property
    def n(self) -> int:
        return len(next(iter(self.cols.values())))

    def null_mask(self, col: str) -> np.ndarray:
        return self.nulls.get(col, np.zeros(self.n, dtype=bool))

    def take(self, idx: np.ndarray) -> Batch:
        return Batch(self.table, {k: v[idx] for k, v in self.cols.items()},
                     {k: v[idx] for k, v in self.nulls.items()}, self.min_event[idx])

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        first = parts[0]
        cols = {k: np.concatenate([p.cols[k] for p in parts]) for k in first.cols}
        names = set().union(*(p.nulls for p in parts))
        nulls = {k: np.concatenate([p.null_mask(k) for p in parts]) for k in names}
        return Batch(first.table, cols, nulls, np.concatenate([p.min_event for p in parts]))


def _ts_text(values: np.ndarray) -> list:
    return [f"{s[:10]} {s[11:]}.000000" for s in np.datetime_as_string(values.astype("datetime64[s]")).tolist()]


def encode(kind: str, values: np.ndarray, nulls: np.ndarray | None, sqlite: bool) -> list:
    """Python values of one column for the DBAPI (SQLite) or for SQLAlchemy (others)."""
    if kind == "ts":
        out = _ts_text(values) if sqlite else values.astype(np.int64).astype("datetime64[s]").tolist()
    elif kind == "date":
        d = values.astype(np.int64).astype("datetime64[D]")
        out = np.datetime_as_string(d).tolist() if sqlite else d.tolist()
    elif kind == "bool":
        out = values.astype(np.int64).tolist() if sqlite else values.astype(bool).tolist()
    elif kind == "int":
        out = values.astype(np.int64).tolist()
    elif kind == "float":
        out = values.astype(np.float64).tolist()
    else:
        out = values.tolist()
    if nulls is not None and nulls.any():
        for i in np.flatnonzero(nulls).tolist():
            out[i] = None
    return out


def is_sqlite(conn: sa.Connection) -> bool:
    return conn.dialect.name == "sqlite"


def insert(conn: sa.Connection, table: sa.Table, kinds: dict[str, str], cols: dict[str, np.ndarray],
           nulls: dict[str, np.ndarray] | None = None) -> int:
    """Bulk-insert column arrays into ``table``; returns the number of rows."""
    names = list(cols)
    if not names:
        return 0
    n = len(cols[names[0]])
    if n == 0:
        return 0
    nulls = nulls or {}
    sqlite = is_sqlite(conn)
    for lo in range(0, n, CHUNK_ROWS):
        hi = min(n, lo + CHUNK_ROWS)
        lists = [encode(kinds[c], cols[c][lo:hi], nulls[c][lo:hi] if c in nulls else None, sqlite) for c in names]
        if sqlite:
            prep = conn.dialect.identifier_preparer
            sql = (f"INSERT INTO {prep.quote(table.name)} ({', '.join(prep.quote(c) for c in names)}) "
                   f"VALUES ({', '.join('?' * len(names))})")
            conn.exec_driver_sql(sql, list(zip(*lists)))
        else:
            conn.execute(table.insert(), [dict(zip(names, row)) for row in zip(*lists)])
    return n


def insert_batch(conn: sa.Connection, table: sa.Table, batch: Batch) -> int:
    kinds = {c.name: c.type for c in batch.table.columns}
    return insert(conn, table, kinds, batch.cols, batch.nulls)


# --------------------------------------------------------------------------------------------
# the simulator's own tables

STATE = "sim_state"
DEALER_STATE = "sim_dealers"
SUPPLIER_STATE = "sim_suppliers"
ORACLE_PD = "oracle_pd"
ORACLE_LOANS = "oracle_loans"
ORACLE_MACRO = "oracle_macro"
ORACLE_INSTALMENTS = "oracle_instalments"
ORACLE_LOAN_REPAYMENTS = "oracle_loan_repayments"
ORACLE_SUPPLIER_REPAYMENTS = "oracle_supplier_repayments"
MANIFEST = "fault_manifest"

SIM_SCHEMAS: dict[str, tuple[tuple[str, str, bool], ...]] = {  # (column, kind, nullable)
    STATE: (("id", "int", False), ("seed", "int", False), ("scale_json", "text", False),
            ("faults_json", "text", False), ("start_on", "date", False), ("played_through", "date", True),
            ("day_index", "int", False), ("counters_json", "text", False), ("macro", "float", False),
            ("drift_json", "text", True), ("in_progress_on", "date", True), ("format_version", "int", False)),
    DEALER_STATE: (("idx", "int", False), ("dealer_id", "str", False), ("u", "float", False),
                   ("stock", "int", False), ("blocked", "bool", False)),
    SUPPLIER_STATE: (("idx", "int", False), ("supplier_id", "str", False), ("u", "float", False),
                     ("defaulted_on", "int", False)),
    ORACLE_PD: (("borrower_type", "str", False), ("borrower_id", "str", False), ("as_of", "date", False),
                ("true_pd", "float", False)),
    # per application: its true PD and outcome, and the state its repayment law depends on (the car's
    # acquisition, days-to-sale mean and sale day, the dealer's repayment view); repaid_on is the
    # day the repayment is written (NULL: never repaid)
    ORACLE_LOANS: (("application_id", "str", False), ("dealer_id", "str", False), ("true_pd", "float", False),
                   ("will_default", "bool", False), ("acquired_on", "date", False), ("applied_on", "date", False),
                   ("loan_due_on", "date", False), ("sale_on", "date", False), ("dts_mean", "float", False),
                   ("repay_view", "float", False), ("repaid_on", "date", True)),
    # the common (macro) factor of the latent risk on every played day, after that day's step
    ORACLE_MACRO: (("as_of", "date", False), ("macro", "float", False)),
    # every supplier instalment: created (the payable's day), due, the day it is paid unless its
    # supplier has defaulted by then, and the supplier's late-payment view on the created day
    ORACLE_INSTALMENTS: (("supplier_id", "str", False), ("payable_id", "str", False), ("created_on", "date", False),
                         ("due_on", "date", False), ("pay_on", "date", False), ("late_view", "float", False)),
    # the key of every repayment row written and what it repays (faults never change a key, but may
    # change or null its references; a faulty row that is quarantined leaves its loan or
    # instalment unpaid in the data)
    ORACLE_LOAN_REPAYMENTS: (("repayment_id", "str", False), ("application_id", "str", False)),
    ORACLE_SUPPLIER_REPAYMENTS: (("repayment_id", "str", False), ("payable_id", "str", False),
                                 ("supplier_id", "str", False)),
    MANIFEST: (("fault_id", "int", False), ("sim_date", "date", False), ("source", "str", False),
               ("table_name", "str", False), ("key_value", "str", True), ("column_name", "str", True),
               ("kind", "str", False)),
}

# future events decided on an earlier day: payload columns of each pending table
PENDING: dict[str, tuple[tuple[str, str], ...]] = {
    "production": (("order_id", "str"), ("model_idx", "int"), ("ordered_at", "int")),
    "sales": (("vin", "str"), ("dealer_idx", "int"), ("acquired_at", "int"), ("appraised_fen", "int")),
    "apps": (("vin", "str"), ("dealer_idx", "int"), ("acquired_at", "int"), ("purchase_fen", "int"),
             ("appraised_fen", "int"), ("sale_on", "int"), ("age", "int"), ("dts_mean", "float")),
    "loan_repayments": (("application_id", "str"), ("dealer_idx", "int"), ("amount_fen", "int"),
                        ("due_on", "int"), ("applied_at", "int")),
    "memos": (("payable_id", "str"), ("supplier_idx", "int"), ("amount_fen", "int"), ("reason", "str"),
              ("received_at", "int")),
    "supplier_repayments": (("supplier_idx", "int"), ("payable_id", "str"), ("amount_fen", "int"),
                            ("due_on", "int"), ("confirmed_at", "int")),
}


def pending_name(kind: str) -> str:
    return f"sim_pending_{kind}"


def sim_metadata() -> tuple[sa.MetaData, dict[str, sa.Table], dict[str, dict[str, str]]]:
    """The simulator's tables, and the column kinds of each (for :func:`insert`)."""
    md = sa.MetaData()
    tables: dict[str, sa.Table] = {}
    kinds: dict[str, dict[str, str]] = {}
    for name, schema in SIM_SCHEMAS.items():
        tables[name] = sa.Table(name, md, *[sa.Column(c, sa_type(k), nullable=nl) for c, k, nl in schema])
        kinds[name] = {c: k for c, k, _ in schema}
    for kind, payload in PENDING.items():
        name = pending_name(kind)
        cols = [sa.Column("seq", sa.BigInteger(), nullable=False),
                sa.Column("write_on", sa.BigInteger(), nullable=False)]
        cols += [sa.Column(c, sa_type(k), nullable=False) for c, k in payload]
        tables[name] = sa.Table(name, md, *cols, sa.Index(f"ix_{name}_write_on", "write_on", "seq"))
        kinds[name] = {"seq": "int", "write_on": "int", **dict(payload)}
    return md, tables, kinds


def read_pending(conn: sa.Connection, table: sa.Table, kind: str, day: int) -> dict[str, np.ndarray]:
    """The pending rows due on ``day``, in the order they were planned."""
    payload = PENDING[kind]
    rows = conn.execute(sa.select(*[table.c[c] for c, _ in payload]).where(table.c.write_on == day)
                        .order_by(table.c.seq)).fetchall()
    out: dict[str, np.ndarray] = {}
    for i, (c, k) in enumerate(payload):
        vals = [r[i] for r in rows]
        dtype = {"int": np.int64, "float": np.float64}.get(k, object)
        out[c] = np.array(vals, dtype=dtype)
    return out
