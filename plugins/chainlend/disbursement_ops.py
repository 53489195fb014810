"""Disbursement at the edge: payable decisions → instructions, ledger entries and outbox rows
in the warehouse; the outbox → the payment rail; reconciliation.

Exactly once, whatever Airflow does (retries, re-runs, back-fills, two runs at once, a zombie
attempt whose heartbeat was lost):

- **Idempotency keys in the database.** ``payment_instructions.idempotency_key`` (a loan's
  ``loan:<application>``), ``instruction_items.item_key`` (a supplier credit) and
  ``ledger_entries.entry_id`` are unique, so a second insert of the same payment fails instead
  of paying twice.
- **One transaction per chunk** holds the instructions, their items, their ledger entries (one
  row per entry: both legs), the account balances, the outbox rows and the holds: a process
  killed (even with SIGKILL) between chunks leaves whole chunks; the retry plans again and posts
  only what is missing. The rows go in through the driver's ``executemany`` (no SQLAlchemy work
  per row).
- **Posting-time limits under a lock.** A chunk locks the receivable account row of each of its
  borrowers (``SELECT … FOR UPDATE`` in account order on PostgreSQL and MariaDB; SQLite
  serialises writers, and the chunk's first statement is a write), re-reads what is already
  instructed, then checks ``limit × early-warning cut − drawn balance``. A concurrent run for
  the same borrower waits for the lock and then sees the first run's instructions.
- **Fencing.** Each task attempt takes a lease on its scope (DAG, run, task) that increments a
  fencing token; every chunk transaction first updates the lease row *where the token is still
  its own*. An older attempt that lost its lease (a zombie twin) finds no row, raises
  :class:`LeaseLost` and rolls back: it cannot commit.
- **The outbox** is sent by a separate task with the instruction's idempotency key, which the
  rail deduplicates: a timeout after the rail accepted is retried and the rail returns the stored
  result; the outbox row then records the rail's payment id. No second payment.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import signal
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from chainlend.bulk import bulk_insert, in_clause, placeholder, where_in
from chainlend.settings import PAYMENT_RAIL_CONN_ID
from chainlend.systems import Warehouse

log = logging.getLogger(__name__)

CHUNK_INSTRUCTIONS = 5_000
# a run considers the decision and credit batches of the last 7 days (and the batches of held
# items, and of reviews approved since): older batches were settled by earlier runs; a full
# reconciliation over everything is ``reconcile_ledger(..., scope=EVERYTHING)`` (the demo report)
DISBURSE_LOOKBACK_DAYS = 7
OUTBOX_BATCH = 2_000  # payments per rail request (each keeps its own idempotency key)
# test hook: ``disburse.after_chunk:<k>`` SIGKILLs this process right after the k-th chunk commits
FAILPOINT_ENV = "CHAINLEND_FAILPOINT"


class DisbursementError(RuntimeError):
    """Disbursement cannot go on; the message names the cause."""


class LeaseLost(DisbursementError):
    """Another attempt of this task took the lease: this (zombie) attempt must not commit."""


class RailError(DisbursementError):
    """The payment rail refused a payment or could not be reached."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _insert_ignore(conn, table: sa.Table, rows: list[dict]) -> None:
    """Insert rows whose key is new; existing keys are left as they are."""
    if not rows:
        return
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        mod = __import__(f"sqlalchemy.dialects.{name}", fromlist=["insert"])
        conn.execute(mod.insert(table).on_conflict_do_nothing(), rows)
    else:
        conn.execute(table.insert().prefix_with("IGNORE"), rows)


_mark = placeholder  # the DBAPI's positional placeholder (sqlite3 ``?``; psycopg, PyMySQL ``%s``)
_bulk_insert = bulk_insert  # plain tuples through executemany, COPY on PostgreSQL (chainlend.bulk)


_in, _where_in = in_clause, where_in  # chunked plain-DBAPI IN lookups (chainlend.bulk)


def _outbox_rows(conn, numbers: list[int]) -> None:
    """The outbox row of each instruction numbered ``numbers`` (inserted by this transaction): a
    copy of what the rail needs, made by the database (``INSERT … SELECT``, no row through Python);
    one range when the numbers are consecutive (every number in it is this transaction's)."""
    head = ("INSERT INTO payment_outbox (instruction_no, instruction_id, idempotency_key, payee_type, payee_id, "
            "amount_fen, status, attempts, created_at) SELECT instruction_no, instruction_id, idempotency_key, "
            "borrower_type, borrower_id, amount_fen, 'pending', 0, created_at FROM payment_instructions WHERE "
            "instruction_no ")
    lo, hi = min(numbers), max(numbers)
    if hi - lo + 1 == len(numbers):  # the numbers are distinct: they are the whole range
        m = _mark(conn)
        conn.exec_driver_sql(f"{head}BETWEEN {m} AND {m}", (lo, hi))
        return
    for i in range(0, len(numbers), 5_000):
        where, params = _in(conn, numbers[i:i + 5_000])
        conn.exec_driver_sql(head + where, params)


# --------------------------------------------------------------------------------------------
# fencing


def acquire_lease(w: Warehouse, scope: str, holder: str) -> int:
    """Take the lease on ``scope`` for ``holder`` and return its new fencing token."""
    leases = w.lending["disbursement_leases"]
    now = _now()
    with w.engine.begin() as conn:
        _insert_ignore(conn, leases, [{"scope": scope, "fence": 0, "holder": holder, "acquired_at": now,
                                       "heartbeat_at": now}])
        conn.execute(sa.update(leases).where(leases.c.scope == scope).values(
            fence=leases.c.fence + 1, holder=holder, acquired_at=now, heartbeat_at=now))
        return int(conn.execute(sa.select(leases.c.fence).where(leases.c.scope == scope)).scalar_one())


def _check_fence(conn, w: Warehouse, scope: str, fence: int) -> None:
    leases = w.lending["disbursement_leases"]
    res = conn.execute(sa.update(leases).where(leases.c.scope == scope, leases.c.fence == fence).values(
        heartbeat_at=_now()))
    if res.rowcount != 1:
        current = conn.execute(sa.select(leases.c.fence, leases.c.holder).where(leases.c.scope == scope)).first()
        raise LeaseLost(f"lease on {scope!r} lost: this attempt holds fence {fence}, the lease is now at "
                        f"{current.fence if current else 'nothing'} ({current.holder if current else '-'}); "
                        "this attempt stops without committing")


# --------------------------------------------------------------------------------------------
# what is payable


@dataclass(frozen=True)
class Scope:
    """The source batches a run considers: those from ``since`` on, the batches of held items
    and, for loans, the batches of reviews an officer approved since then. ``since=None``: all."""

    since: dt.datetime | None
    held_batches: tuple[str, ...] = ()

    @classmethod
    def of(cls, w: Warehouse, interval_end: dt.datetime, lookback_days: int | None = None) -> Scope:
        ph = w.lending["payment_holds"]
        with w.engine.connect() as conn:
            held = tuple(sorted(conn.execute(sa.select(ph.c.source_batch).distinct()).scalars()))
        days = DISBURSE_LOOKBACK_DAYS if lookback_days is None else lookback_days
        return cls(interval_end - dt.timedelta(days=days), held)


EVERYTHING = Scope(None)


def _bounds(t: dict[str, sa.Table], interval_end: dt.datetime,
            cutoff: dt.datetime) -> tuple[list, list, list]:
    """The conditions that bound what a run pays (batches up to ``interval_end``, decided before
    ``cutoff``): for automatic decisions, officer-approved reviews and supplier credits."""
    d, rq, c = t["loan_decisions"], t["review_queue"], t["supplier_credits"]
    last_batch = f"approve.{interval_end:%Y%m%d}"
    return ([d.c.decision_batch <= last_batch, d.c.decided_at < cutoff],
            [d.c.decision_batch <= last_batch, rq.c.decided_at < cutoff],
            [c.c.batch_id <= f"sc.{interval_end:%Y%m%dT%H%M}", c.c.allocated_at < cutoff])


def _payable_where(t: dict[str, sa.Table], scope: Scope, interval_end: dt.datetime | None = None,
                   cutoff: dt.datetime | None = None) -> tuple[list, list, list]:
    """The WHERE conditions of the payable automatic decisions, officer-approved reviews (joined to
    their decision) and supplier credits of ``scope``; without ``interval_end``/``cutoff``: also
    what later runs will pay. :func:`payable` and :func:`reconcile_ledger` both read through these."""
    d, rq, c = t["loan_decisions"], t["review_queue"], t["supplier_credits"]
    auto_w = [d.c.decision.in_(["approved", "reduced"]), d.c.amount_fen > 0]
    rev_w = [d.c.decision == "review", rq.c.status == "approved", rq.c.amount_fen > 0]
    cred_w = [c.c.amount_fen > 0]
    if interval_end is not None:
        for w, b in zip((auto_w, rev_w, cred_w), _bounds(t, interval_end, cutoff)):
            w.extend(b)
    if scope.since is not None:
        # the batches of held items only when there are some: an OR with an empty IN costs the
        # index range on SQLite (a multi-index OR over millions of credits)
        held = list(scope.held_batches)
        approve, sc = f"approve.{scope.since:%Y%m%d}", f"sc.{scope.since:%Y%m%dT%H%M}"
        auto_w.append(sa.or_(d.c.decision_batch >= approve, d.c.decision_batch.in_(held)) if held
                      else d.c.decision_batch >= approve)
        rev_w.append(sa.or_(d.c.decision_batch >= approve, rq.c.decided_at >= scope.since,
                            *([d.c.decision_batch.in_(held)] if held else [])))
        cred_w.append(sa.or_(c.c.batch_id >= sc, c.c.batch_id.in_(held)) if held else c.c.batch_id >= sc)
    return auto_w, rev_w, cred_w


def _credit_batch_where(t: dict[str, sa.Table], scope: Scope, interval_end: dt.datetime | None) -> list:
    """The conditions on ``supplier_credits.batch_id`` alone of :func:`_payable_where` (an index-only
    scan); the last one is the scope's."""
    c = t["supplier_credits"]
    w = [] if interval_end is None else [c.c.batch_id <= f"sc.{interval_end:%Y%m%dT%H%M}"]
    if scope.since is not None:
        sc = f"sc.{scope.since:%Y%m%dT%H%M}"
        w.append(sa.or_(c.c.batch_id >= sc, c.c.batch_id.in_(list(scope.held_batches))) if scope.held_batches
                 else c.c.batch_id >= sc)
    return w


def payable(w: Warehouse, interval_end: dt.datetime, cutoff: dt.datetime,
            scope: Scope = EVERYTHING) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(loans, credits)`` to pay: decisions of batches up to ``interval_end`` made before
    ``cutoff``, within ``scope``.

    Loans: ``approved`` and ``reduced`` decisions at their amount, and ``review`` decisions a
    credit officer approved (at the officer's amount). Credits: supplier credits with an amount."""
    loans, credits, _ = _payable(w, interval_end, cutoff, scope, pending=False)
    return loans, credits


def _payable(w: Warehouse, interval_end: dt.datetime, cutoff: dt.datetime, scope: Scope, *,
             pending: bool) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """:func:`payable`; ``pending``: only what has no instruction yet, decided in the database (a
    loan whose ``loan:<application>`` key is instructed, a credit whose micro-batch and supplier
    have their ``sc:<batch>:<supplier>`` instruction, is not read), the credits as totals per
    (micro-batch, supplier) (:func:`_pending_credit_totals`), and the number of the scope's
    instructions that exist already (0 unless ``pending``)."""
    from lending.disbursement import LOAN_PREFIX

    t = w.lending
    d, rq, c, pi = t["loan_decisions"], t["review_queue"], t["supplier_credits"], t["payment_instructions"]
    auto_w, rev_w, cred_w = _payable_where(t, scope, interval_end, cutoff)
    instructed = sa.exists().where(pi.c.idempotency_key == sa.literal(LOAN_PREFIX) + d.c.application_id)
    already = 0
    with w.engine.connect() as conn:
        if pending:
            for where, frm in ((auto_w, d), (rev_w, d.join(rq, rq.c.application_id == d.c.application_id))):
                already += conn.execute(sa.select(sa.func.count()).select_from(frm).where(*where, instructed)
                                        ).scalar_one()
            auto_w, rev_w = [*auto_w, ~instructed], [*rev_w, ~instructed]
        auto = _read(conn, sa.select(d.c.application_id, d.c.dealer_id, d.c.amount_fen,
                                     d.c.decision_batch.label("source_batch")).where(*auto_w))
        reviewed = _read(conn, sa.select(d.c.application_id, d.c.dealer_id, rq.c.amount_fen,
                                         d.c.decision_batch.label("source_batch")).join(
            rq, rq.c.application_id == d.c.application_id).where(*rev_w))
        if pending:
            credits, done = _pending_credit_totals(conn, t, scope, interval_end, cred_w)
            already += done
        else:
            credits = _read(conn, sa.select(c.c.credit_id, c.c.batch_id, c.c.supplier_id, c.c.amount_fen).where(*cred_w))
    loans = pd.concat([auto, reviewed], ignore_index=True) if len(reviewed) else auto
    return loans.reset_index(drop=True), credits, already


def _total(expr) -> sa.ColumnElement:
    """``SUM(expr)`` as a BIGINT, 0 over no rows (PostgreSQL sums BIGINTs as NUMERIC)."""
    return sa.cast(sa.func.coalesce(sa.func.sum(expr), 0), sa.BigInteger)


def _pending_credit_totals(conn, t: dict[str, sa.Table], scope: Scope, interval_end: dt.datetime,
                           cred_w: list) -> tuple[pd.DataFrame, int]:
    """The totals (``batch_id, supplier_id, amount_fen, credits``) of the payable credits of
    ``scope`` per (micro-batch, supplier) whose instruction does not exist, and the number of the
    scope's micro-batch instructions that do: per micro-batch, summed per supplier by the
    database, the suppliers with an instruction left out by a short ``NOT IN`` list the database
    checks per row (a probe of the instruction key per credit costs ~5 times as much). The credits themselves (~1.8 M a day) stay in the database: the chunks
    write their items with ``INSERT … SELECT`` (:func:`_insert_credit_items`)."""
    c, pi = t["supplier_credits"], t["payment_instructions"]
    batches = list(conn.execute(sa.select(c.c.batch_id).distinct().where(*_credit_batch_where(t, scope, interval_end)))
                   .scalars())
    done: dict[str, list[str]] = {}
    if batches:
        q = sa.select(pi.c.idempotency_key, pi.c.source_batch, pi.c.borrower_id).where(
            pi.c.kind == "supplier_credit", pi.c.source_batch >= min(batches), pi.c.source_batch <= max(batches))
        for key, batch, supplier in conn.execute(q):
            if key != f"sc:{batch}:{supplier}":
                raise DisbursementError(f"instruction {key!r} of batch {batch!r} and supplier {supplier!r} does "
                                        "not carry the key sc:<batch>:<supplier>: the instructions were not "
                                        "written by this ledger; an operator must look")
            done.setdefault(batch, []).append(supplier)
    rows: list[tuple] = []
    for b in batches:
        where = [*cred_w, c.c.batch_id == b]
        if done.get(b):
            where.append(c.c.supplier_id.not_in(done[b]))
        rows += [(b, s, a, n) for s, a, n in _fetch(conn, sa.select(
            c.c.supplier_id, _total(c.c.amount_fen), sa.func.count()).where(*where).group_by(c.c.supplier_id))]
    n_done = sum(len(done.get(b, ())) for b in batches)
    return _frame_of(rows, ["batch_id", "supplier_id", "amount_fen", "credits"], {"batch_id", "supplier_id"}), n_done


def _fetch(conn, stmt) -> list[tuple]:
    """The rows of ``stmt`` as the driver's tuples when no column converts anything (text,
    integers), without a SQLAlchemy row each; else SQLAlchemy's rows as tuples."""
    res = conn.execute(stmt)
    if all(c.type.result_processor(conn.dialect, None) is None for c in stmt.selected_columns):
        rows = res.cursor.fetchall()
        res.close()
        return rows
    return [tuple(r) for r in res.all()]


def _columns(rows: list[tuple], n: int) -> list[list]:
    """The ``n`` columns of ``rows``: one comprehension a column (``zip(*rows)`` over millions of
    rows takes ~10 times as long)."""
    return [[r[k] for r in rows] for k in range(n)]


def _numeric(values: tuple | list) -> pd.Series:
    """``pandas.to_numeric`` of the driver's values: Python integers straight into an int64 array
    (~5 times faster); anything else (NULLs, floats, text, beyond int64) as ``to_numeric`` does it."""
    if len(values):
        a = np.array(values)
        if a.dtype == np.int64 and all(type(v) is int for v in values[:1]):
            return pd.Series(a)
    return pd.to_numeric(pd.Series(values, dtype=object))


def _frame_of(rows: list[tuple], names: list[str], text: set[str]) -> pd.DataFrame:
    """``rows`` as a frame: the ``text`` columns as numpy objects (see :func:`_objects`), the others numeric."""
    columns = _columns(rows, len(names))
    return pd.DataFrame({n: pd.Series(v, dtype=object) if n in text else _numeric(v)
                         for n, v in zip(names, columns)})


def _read(conn, stmt) -> pd.DataFrame:
    """The rows of ``stmt`` as a frame: text columns as numpy objects (see :func:`_objects`), integer
    columns numeric; without ``pandas.read_sql``'s inference of every value. Columns whose type
    converts nothing (text, integers) come as the driver's tuples, without a SQLAlchemy row each."""
    names = list(stmt.selected_columns.keys())
    rows = _fetch(conn, stmt)
    columns = _columns(rows, len(names))
    return pd.DataFrame({n: _numeric(v) if isinstance(c.type, sa.Integer)
                         else pd.Series(v, dtype=object)
                         for n, v, c in zip(names, columns, stmt.selected_columns)})


def _objects(frame: pd.DataFrame) -> pd.DataFrame:
    """String columns as numpy objects: pandas' Arrow-backed ``isin`` iterates in Python."""
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            frame[col] = frame[col].astype(object)
    return frame


def upsert_limits(w: Warehouse, frame: pd.DataFrame) -> None:
    """Replace the limits of the borrowers in ``frame`` (one transaction)."""
    bl = w.lending["borrower_limits"]
    with w.engine.begin() as conn:
        for bt, group in frame.groupby("borrower_type"):
            ids = group.borrower_id.tolist()
            for i in range(0, len(ids), 5_000):
                conn.execute(sa.delete(bl).where(bl.c.borrower_type == bt, bl.c.borrower_id.in_(ids[i:i + 5_000])))
        conn.execute(bl.insert(), frame.to_dict("records"))


# --------------------------------------------------------------------------------------------
# posting


def _chunks(instructions: pd.DataFrame, size: int) -> list[tuple[int, int]]:
    """Row ranges of consecutive whole borrowers, about ``size`` instructions each (limits are per borrower)."""
    if instructions.empty:
        return []
    borrower = (instructions.borrower_type + "\x00" + instructions.borrower_id).to_numpy()
    starts = np.flatnonzero(np.r_[True, borrower[1:] != borrower[:-1]])
    out, begin = [], 0
    for s in [*starts[1:].tolist(), len(instructions)]:
        if s - begin >= size or s == len(instructions):
            out.append((begin, s))
            begin = s
    return out


def _existing(conn, table: sa.Table, column: str, keys: list[str]) -> set[str]:
    return {r[0] for r in _where_in(conn, table, column, keys)}


def _instruction_numbers(conn, n: int) -> list[int]:
    """``n`` new instruction numbers: max + 1 on SQLite, which serialises writers (the chunk's first
    statement, the fence update, took the write lock); the ``payment_instruction_no`` sequence on
    PostgreSQL and MariaDB, whose writers run side by side."""
    d = conn.dialect
    if d.name == "sqlite":
        top = conn.exec_driver_sql("SELECT coalesce(max(instruction_no), 0) FROM payment_instructions").scalar_one()
        return list(range(top + 1, top + 1 + n))
    if d.name == "postgresql":
        return list(conn.exec_driver_sql("SELECT nextval('payment_instruction_no') FROM generate_series(1, %s)",
                                         (n,)).scalars())
    if d.name == "mysql" and getattr(d, "is_mariadb", False):  # seq_1_to_<n>: MariaDB's sequence engine
        return list(conn.exec_driver_sql(f"SELECT NEXTVAL(payment_instruction_no) FROM seq_1_to_{int(n)}").scalars())
    raise DisbursementError(f"the ledger numbers instructions with SQLite's write lock or a sequence; "
                            f"{d.name!r} (MySQL has no sequences) is not supported: use SQLite, PostgreSQL or MariaDB")


@dataclass
class _Totals:
    chunks: int = 0
    instructions: int = 0
    items: int = 0
    postings: int = 0
    amount_fen: int = 0
    already: int = 0


@dataclass
class _Plan:
    """The instructions to post with their entries as plain lists, converted from pandas once:
    instruction ``j``'s entry is ``entries[j]``; ``credits[j]`` is the number of supplier credits
    it carries (0 for a loan, whose one item is the instruction itself). The credits stay in the
    warehouse: those of instruction ``j`` are the ones ``cred_w`` selects in its micro-batch
    (``source_batch``) and of its supplier (``borrower_id``)."""

    frame: pd.DataFrame  # the instructions (for :func:`lending.disbursement.apply_limits`)
    ins: dict[str, list]
    entries: dict[str, list]
    credits: list[int]
    table: sa.Table  # supplier_credits
    cred_w: list

    @classmethod
    def of(cls, todo: pd.DataFrame, entries: pd.DataFrame, totals: pd.DataFrame, table: sa.Table,
           cred_w: list) -> _Plan:
        ins = {c: todo[c].tolist() for c in todo.columns}
        count = dict(zip(zip(totals.batch_id.tolist(), totals.supplier_id.tolist()), totals.credits.tolist()))
        return cls(frame=todo, ins=ins, entries={c: entries[c].tolist() for c in entries.columns},
                   credits=[int(count[(b, s)]) if bt == "supplier" else 0
                            for bt, b, s in zip(ins["borrower_type"], ins["source_batch"], ins["borrower_id"])],
                   table=table, cred_w=cred_w)

    def take(self, rows: range | list[int]) -> tuple[dict[str, list], dict[str, list]]:
        """Instruction and entry columns of the instructions at ``rows``."""
        if isinstance(rows, range):  # contiguous: slices
            a, b = rows.start, rows.stop
            return {c: v[a:b] for c, v in self.ins.items()}, {c: v[a:b] for c, v in self.entries.items()}
        return ({c: [v[j] for j in rows] for c, v in self.ins.items()},
                {c: [v[j] for j in rows] for c, v in self.entries.items()})

    def is_loan(self, j: int) -> bool:
        return self.ins["borrower_type"][j] != "supplier"

    def pair(self, j: int) -> tuple[str, str]:
        """The (micro-batch, supplier) of supplier instruction ``j``."""
        return self.ins["source_batch"][j], self.ins["borrower_id"][j]


def _credit_key(c: sa.Table) -> sa.ColumnElement:
    """A credit's item key ``credit:<credit_id>`` (``concat`` on MariaDB, ``||`` elsewhere)."""
    from lending.disbursement import CREDIT_PREFIX

    return sa.literal(CREDIT_PREFIX, c.c.credit_id.type) + c.c.credit_id


def _numbered(column: sa.Column, numbers: list[int]) -> list[sa.ColumnElement]:
    """Conditions, one a statement, selecting ``numbers`` of ``column``: one range when they are
    consecutive (every number in it is this transaction's), else lists of 5,000."""
    lo, hi = min(numbers), max(numbers)
    if hi - lo + 1 == len(numbers):
        return [column.between(lo, hi)]
    return [column.in_(numbers[i:i + 5_000]) for i in range(0, len(numbers), 5_000)]


def _insert_credit_items(conn, t: dict[str, sa.Table], plan: _Plan, post: range | list[int],
                         numbers: list[int]) -> int:
    """The items of the supplier instructions at ``post`` (just inserted as ``numbers``): their
    credits copied by the database, no credit through Python: per micro-batch one ``INSERT …
    SELECT`` that reads the batch's credits in storage order (credit id order, which is the item
    key's: the key's B-tree fills page after page) and finds each one's instruction by its key
    ``sc:<batch>:<supplier>``. Then proven (:func:`_check_credit_items`): as many items as the plan
    counted, and per instruction as many as its credits adding up to its amount; else
    :class:`DisbursementError` (the transaction rolls back: the credits changed since they were
    planned, e.g. a re-allocation; a retry plans again). Returns the number of items written."""
    pi, c, ii = t["payment_instructions"], t["supplier_credits"], t["instruction_items"]
    want = {plan.ins["instruction_id"][j]: (plan.credits[j], plan.ins["amount_fen"][j]) for j in post
            if not plan.is_loan(j)}
    if not want:
        return 0
    batches: dict[str, dict[str, str]] = {}  # batch -> supplier -> instruction id
    for j in post:
        if not plan.is_loan(j):
            batches.setdefault(plan.ins["source_batch"][j], {})[plan.ins["borrower_id"][j]] = plan.ins["instruction_id"][j]
    instruction = pi.c.idempotency_key == (sa.literal("sc:", pi.c.idempotency_key.type) + c.c.batch_id
                                           + sa.literal(":", pi.c.idempotency_key.type) + c.c.supplier_id)
    wrote, got = 0, {}
    for b, numbered in ((b, n) for b in sorted(batches) for n in _numbered(pi.c.instruction_no, numbers)):
        ours = [c.c.batch_id == b, *plan.cred_w, pi.c.kind == "supplier_credit", numbered]
        rows = sa.select(_credit_key(c), pi.c.instruction_id, c.c.amount_fen).select_from(c.join(pi, instruction))
        wrote += conn.execute(ii.insert().from_select(["item_key", "instruction_id", "amount_fen"], rows.where(*ours))
                              .execution_options(preserve_rowcount=True)).rowcount  # else -1 on psycopg
    for b, suppliers in batches.items():
        got.update(_check_credit_items(conn, t, plan, b, suppliers, numbers))
    expected = sum(n for n, _ in want.values())
    bad = sorted(i for i in want if got.get(i, (0, 0)) != want[i])
    if wrote != expected or bad:
        raise DisbursementError(
            f"the items written for {len(want)} supplier instruction(s) differ from the plan: {wrote} item(s) "
            f"written for {expected} planned credit(s); {len(bad)} instruction(s) whose items (count, sum) differ, "
            f"e.g. {[(i, got.get(i), want[i]) for i in bad[:3]]}: their credits changed since planning "
            "(re-allocated?); nothing of this chunk is committed, a retry plans again")
    return wrote


def _check_credit_items(conn, t: dict[str, sa.Table], plan: _Plan, batch: str, suppliers: dict[str, str],
                        numbers: list[int]) -> dict[str, tuple[int, int]]:
    """``(count, sum)`` of the items just written for the instructions of ``batch`` (``suppliers``:
    supplier → instruction id), numbered ``numbers``. On SQLite the chunk's transaction holds the
    write lock since its first statement, so the credits cannot change under it: the items are
    what the credits of each supplier sum to now (a grouping of the batch in storage order). On
    PostgreSQL and MariaDB, where another transaction may commit between two statements, the
    items themselves are read back (through their credits' keys)."""
    pi, c, ii = t["payment_instructions"], t["supplier_credits"], t["instruction_items"]
    if conn.dialect.name == "sqlite":
        q = (sa.select(c.c.supplier_id, sa.func.count(), _total(c.c.amount_fen))  # (no IN on supplier_id:
             .where(c.c.batch_id == batch, *plan.cred_w).group_by(c.c.supplier_id))  # it would take that index)
        return {suppliers[s]: (int(n), int(a)) for s, n, a in conn.execute(q) if s in suppliers}
    key = pi.c.idempotency_key == (sa.literal("sc:", pi.c.idempotency_key.type) + c.c.batch_id
                                   + sa.literal(":", pi.c.idempotency_key.type) + c.c.supplier_id)
    got = {}
    for numbered in _numbered(pi.c.instruction_no, numbers):
        q = (sa.select(pi.c.instruction_no, sa.func.min(pi.c.instruction_id), sa.func.count(), _total(ii.c.amount_fen))
             .select_from(c.join(pi, key).join(ii, sa.and_(ii.c.item_key == _credit_key(c),
                                                          ii.c.instruction_id == pi.c.instruction_id)))
             .where(c.c.batch_id == batch, *plan.cred_w, pi.c.kind == "supplier_credit", numbered)
             .group_by(pi.c.instruction_no))
        got.update((i, (int(n), int(a))) for _, i, n, a in conn.execute(q))
    return got


def _credit_pairs(conn, plan: _Plan, keys) -> dict[str, tuple[str, str]]:
    """The (micro-batch, supplier) of each credit among item ``keys`` that the plan's conditions
    select (a key of another kind, or of a credit they do not select, is not in the result)."""
    from lending.disbursement import CREDIT_PREFIX

    c = plan.table
    ids = sorted(k[len(CREDIT_PREFIX):] for k in keys if k.startswith(CREDIT_PREFIX))
    out = {}
    for i in range(0, len(ids), 5_000):
        out.update((CREDIT_PREFIX + cid, (b, s)) for cid, b, s in conn.execute(
            sa.select(c.c.credit_id, c.c.batch_id, c.c.supplier_id).where(c.c.credit_id.in_(ids[i:i + 5_000]),
                                                                         *plan.cred_w)))
    return out


def _item_keys_among(conn, plan: _Plan, rows: range | list[int], keys: set[str]) -> list[str]:
    """Those of ``keys`` that are items of the instructions at ``rows``: a loan's own key, or a
    credit of an instruction's micro-batch and supplier."""
    ins = plan.ins["idempotency_key"]
    out = [ins[j] for j in rows if plan.is_loan(j) and ins[j] in keys]
    pairs = {plan.pair(j) for j in rows if not plan.is_loan(j)}
    if pairs:
        out += [k for k, p in _credit_pairs(conn, plan, keys).items() if p in pairs]
    return out


def _held_items(conn, plan: _Plan, j: int) -> list[tuple[str, int]]:
    """``(item_key, amount_fen)`` of each item of instruction ``j`` (to hold it): a loan's own, or
    the credits of a supplier instruction, read from the warehouse and checked against the plan."""
    if plan.is_loan(j):
        return [(plan.ins["idempotency_key"][j], plan.ins["amount_fen"][j])]
    c = plan.table
    batch, supplier = plan.pair(j)
    items = [(k, int(a)) for k, a in conn.execute(sa.select(_credit_key(c), c.c.amount_fen).where(
        c.c.batch_id == batch, c.c.supplier_id == supplier, *plan.cred_w))]
    if (len(items), sum(a for _, a in items)) != (plan.credits[j], plan.ins["amount_fen"][j]):
        raise DisbursementError(
            f"the credits of {plan.ins['idempotency_key'][j]!r} changed since planning (re-allocated?): "
            f"{len(items)} credit(s) of {sum(a for _, a in items)} fen, planned {plan.credits[j]} of "
            f"{plan.ins['amount_fen'][j]} fen; nothing of this chunk is committed, a retry plans again")
    return items


def post_instructions(interval_end: dt.datetime, *, scope: str, holder: str, run_id: str,
                      warehouse: Warehouse | None = None, chunk_size: int = CHUNK_INSTRUCTIONS) -> dict:
    """Post everything payable up to ``interval_end`` that has no instruction yet.

    The plan is made from the loans and from the totals of the credits per (micro-batch,
    supplier): the ~1.8 M credits a day never come into Python; each chunk's transaction copies
    the items of its supplier instructions from the credits in the database and proves them
    against the plan (:func:`_insert_credit_items`).

    Returns counts and the ``cutoff`` (the decisions this run could see) for reconciliation."""
    from lending.disbursement import check_entries, disbursement_entries, plan_from_totals

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    fence = acquire_lease(w, scope, holder)
    cutoff = _now() + dt.timedelta(seconds=1)
    batches = Scope.of(w, interval_end)
    # what has no instruction yet (a concurrent run's are skipped again under the chunk's locks)
    loans, credit_totals, already = _payable(w, interval_end, cutoff, batches, pending=True)
    todo = plan_from_totals(loans, credit_totals)
    entries = disbursement_entries(todo)
    check_entries(entries)  # every entry of the plan, before any of it is posted
    plan = _Plan.of(todo, entries, credit_totals, w.lending["supplier_credits"],
                    _payable_where(w.lending, batches, interval_end, cutoff)[2])
    totals, held = _Totals(already=already), {"frozen": 0, "over_limit": 0}
    failpoint = os.environ.get(FAILPOINT_ENV, "")
    for begin, end in _chunks(todo, chunk_size):
        h = _post_chunk(w, plan, range(begin, end), scope=scope, fence=fence, run_id=run_id, totals=totals)
        for k, v in h.items():
            held[k] += v
        totals.chunks += 1
        if failpoint == f"disburse.after_chunk:{totals.chunks}":
            log.error("failpoint %s: SIGKILL", failpoint)
            os.kill(os.getpid(), signal.SIGKILL)
    _drop_stale_holds(w, plan)
    return {"fence": fence, "cutoff": cutoff.isoformat(), "planned": int(len(todo)) + already,
            "already_instructed": totals.already, "instructions": totals.instructions, "items": totals.items,
            "postings": totals.postings, "amount_fen": totals.amount_fen,
            "held_frozen": held["frozen"], "held_over_limit": held["over_limit"]}


def _limit_holds(plan: _Plan, rows: range | list[int], headroom: dict[tuple[str, str], int],
                 frozen: dict[tuple[str, str], bool]) -> dict[int, str]:
    """Why each instruction at ``rows`` is held (only those that are): :func:`apply_limits` when
    some borrower is frozen or its instructions together exceed its headroom."""
    from lending.disbursement import apply_limits

    ins = plan.ins
    need: dict[tuple[str, str], int] = {}
    for j in rows:
        k = (ins["borrower_type"][j], ins["borrower_id"][j])
        need[k] = need.get(k, 0) + ins["amount_fen"][j]
    if not any(frozen[k] for k in need) and all(v <= headroom[k] for k, v in need.items()):
        return {}  # every borrower's whole share fits (amounts are > 0): no prefix can be over
    key = pd.MultiIndex.from_tuples(list(headroom))
    hold = apply_limits(plan.frame.iloc[list(rows)], pd.Series(list(headroom.values()), index=key, dtype="int64"),
                        pd.Series(list(frozen.values()), index=key, dtype=bool))
    return {j: r for j, r in zip(rows, hold.tolist()) if isinstance(r, str)}


def _post_chunk(w: Warehouse, plan: _Plan, rows: range, *, scope: str, fence: int, run_id: str,
                totals: _Totals) -> dict[str, int]:
    """One transaction: fence, lock the borrowers' accounts, check limits, post the instructions at
    ``rows`` of ``plan`` that fit, hold the others; returns the held count per reason."""
    from lending.disbursement import CLEARING, NOSTRO, receivable_account

    t = w.lending
    acc, ctl, bl = t["ledger_accounts"], t["credit_controls"], t["borrower_limits"]
    now = _now()
    keys = plan.ins["idempotency_key"]
    borrowers = list(dict.fromkeys(zip(plan.ins["borrower_type"][rows.start:rows.stop],
                                       plan.ins["borrower_id"][rows.start:rows.stop])))
    acct_of = {receivable_account(bt, b): (bt, b) for bt, b in borrowers}
    accounts = sorted(acct_of)
    with w.engine.begin() as conn:
        _check_fence(conn, w, scope, fence)  # first statement a write: SQLite takes its write lock here
        _insert_ignore(conn, acc, [{"account": a, "borrower_type": acct_of[a][0], "borrower_id": acct_of[a][1],
                                    "balance_fen": 0, "updated_at": now} for a in accounts])
        balance = {}
        for i in range(0, len(accounts), 5_000):
            q = sa.select(acc.c.account, acc.c.balance_fen).where(acc.c.account.in_(accounts[i:i + 5_000]))
            balance.update(conn.execute(q.order_by(acc.c.account).with_for_update()).all())
        # a concurrent run may have posted some of these while we waited for the locks
        already = _existing(conn, t["payment_instructions"], "idempotency_key", keys[rows.start:rows.stop])
        if already:
            totals.already += len(already)
            rows = [j for j in rows if keys[j] not in already]
        ids = [b for _, b in borrowers]
        limit = {(bt, b): lim for bt, b, lim in conn.execute(
            sa.select(bl.c.borrower_type, bl.c.borrower_id, bl.c.limit_fen).where(bl.c.borrower_id.in_(ids)))}
        control = {(bt, b): (bool(fr), float(cut)) for bt, b, fr, cut in conn.execute(
            sa.select(ctl.c.borrower_type, ctl.c.borrower_id, ctl.c.frozen, ctl.c.limit_cut).where(
                ctl.c.borrower_id.in_(ids)))}
        headroom = {k: math.floor(limit.get(k, 0) * control.get(k, (False, 1.0))[1]) - balance[receivable_account(*k)]
                    for k in borrowers}
        hold = _limit_holds(plan, rows, headroom, {k: control.get(k, (False, 1.0))[0] for k in borrowers})
        post = [j for j in rows if j not in hold] if hold else rows
        ins, entries = plan.take(post)
        n = len(ins["instruction_id"])
        n_items = 0
        if n:
            numbers = _instruction_numbers(conn, n)
            _bulk_insert(conn, t["payment_instructions"], {"instruction_no": numbers, **ins},
                         {"run_id": run_id, "fence": fence, "created_at": now})
            n_items = _insert_credit_items(conn, t, plan, post, numbers) + sum(plan.is_loan(j) for j in post)
            _bulk_insert(conn, t["ledger_entries"], {**entries, "instruction_id": ins["instruction_id"]},
                         {"posted_at": now})
            _outbox_rows(conn, numbers)
            delta: dict[str, int] = {}
            for d, c, a in zip(entries["debit_account"], entries["credit_account"], entries["amount_fen"]):
                delta[d] = delta.get(d, 0) + a
                delta[c] = delta.get(c, 0) - a
            conn.execute(sa.update(acc).where(acc.c.account == sa.bindparam("a")).values(
                balance_fen=acc.c.balance_fen + sa.bindparam("d"), updated_at=now),
                [{"a": a, "d": d} for a, d in delta.items() if a not in (CLEARING, NOSTRO)])  # house: no balance
        # holds of these items from an earlier run go (a concurrent run's were committed before it
        # released the borrowers' account rows we hold now)
        ph = t["payment_holds"]
        held_before = {r[0] for r in _where_in(conn, ph, "borrower_id", ids, select="item_key")}
        if held_before:
            _where_in(conn, ph, "item_key", _item_keys_among(conn, plan, rows, held_before), delete=True)
        if hold:
            conn.execute(ph.insert(), [
                {"item_key": k, "borrower_type": plan.ins["borrower_type"][j], "borrower_id": plan.ins["borrower_id"][j],
                 "amount_fen": a, "reason": reason, "source_batch": plan.ins["source_batch"][j], "run_id": run_id,
                 "checked_at": now}
                for j, reason in hold.items() for k, a in _held_items(conn, plan, j)])
    totals.instructions += n
    totals.items += n_items
    totals.postings += 2 * n  # each entry: its debit leg and its credit leg
    totals.amount_fen += sum(ins["amount_fen"])
    return dict(Counter(hold.values()))


def _drop_stale_holds(w: Warehouse, plan: _Plan) -> None:
    """Holds of items that are no longer payable (declined after a review, say) are removed: those
    that are no item of the plan (a loan's key, a credit of a planned micro-batch and supplier)."""
    ph = w.lending["payment_holds"]
    with w.engine.begin() as conn:
        keys = list(conn.execute(sa.select(ph.c.item_key)).scalars())
        kept = set(_item_keys_among(conn, plan, range(len(plan.credits)), set(keys))) if keys else set()
        stale = [k for k in keys if k not in kept]
        for i in range(0, len(stale), 5_000):
            conn.execute(sa.delete(ph).where(ph.c.item_key.in_(stale[i:i + 5_000])))


# --------------------------------------------------------------------------------------------
# the outbox and the payment rail


@dataclass(frozen=True)
class PaymentRail:
    """The payment rail's HTTP API (see :mod:`sources.payment_rail`)."""

    url: str
    timeout_s: float = 10.0

    @classmethod
    def from_conn(cls, conn_id: str = PAYMENT_RAIL_CONN_ID) -> PaymentRail:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson
        url = extra.get("url") or f"{conn.schema or 'http'}://{conn.host}:{conn.port}"
        return cls(url=url.rstrip("/"), timeout_s=float(extra.get("timeout_s", 10.0)))

    def pay_batch(self, payments: list[dict]) -> list[dict]:
        """Send payments; the rail answers each with its stored result (idempotent by key)."""
        req = urllib.request.Request(f"{self.url}/payments/batch", data=json.dumps({"payments": payments}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())["results"]
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            raise RailError(f"payment rail {self.url} did not answer within {self.timeout_s} s ({exc}); "
                            "the payments may have been accepted: the retry resends the same idempotency "
                            "keys and the rail returns what it stored") from exc


def send_outbox(rail: PaymentRail, warehouse: Warehouse | None = None, *, batch: int = OUTBOX_BATCH) -> dict:
    """Send every pending outbox row to the rail and record its answer; raises on a timeout or
    a refusal (after recording the attempt), so Airflow retries the task. Each payment carries
    its own idempotency key; ``batch`` of them go in one request, and their answers are recorded
    with plain DBAPI ``executemany`` (no SQLAlchemy parameter dict per row)."""
    w = warehouse or Warehouse.from_conn()
    ob = w.lending["payment_outbox"]
    with w.engine.connect() as conn:
        pending = conn.execute(sa.select(ob.c.instruction_no, ob.c.idempotency_key, ob.c.instruction_id,
                                         ob.c.payee_type, ob.c.payee_id, ob.c.amount_fen)
                               .where(ob.c.status == "pending").order_by(ob.c.instruction_no)).all()
    sent = accepted = replayed = 0
    refused: list[str] = []
    for i in range(0, len(pending), batch):
        part = pending[i:i + batch]
        payments = [{"idempotency_key": key, "instruction_id": iid, "payee_type": pt, "payee_id": pid,
                     "amount_fen": int(amount)} for _, key, iid, pt, pid, amount in part]
        number = {r[1]: int(r[0]) for r in part}
        with w.engine.begin() as conn:
            conn.execute(sa.update(ob).where(ob.c.instruction_no.in_(list(number.values()))).values(
                attempts=ob.c.attempts + 1))
        try:
            results = rail.pay_batch(payments)
        except RailError as exc:
            with w.engine.begin() as conn:
                conn.execute(sa.update(ob).where(ob.c.instruction_no.in_(list(number.values()))).values(
                    last_error=str(exc)[:500]))
            raise
        if len(results) != len(payments):
            raise RailError(f"the payment rail answered {len(results)} results for {len(payments)} payments; "
                            "nothing recorded: the retry resends the same idempotency keys")
        ok = [r for r in results if r["code"] in (200, 201)]
        bad = [(p, r) for p, r in zip(payments, results) if r["code"] not in (200, 201)]
        with w.engine.begin() as conn:
            m = _mark(conn)
            at = ob.c.sent_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
            now = _now() if at is None else at(_now())
            if ok:
                conn.exec_driver_sql(
                    f"UPDATE payment_outbox SET status = 'accepted', rail_reference = {m}, sent_at = {m}, "
                    f"last_error = NULL WHERE instruction_no = {m} AND status = 'pending'",
                    [(r["payment_id"], now, number[r["idempotency_key"]]) for r in ok])
            if bad:
                conn.exec_driver_sql(
                    f"UPDATE payment_outbox SET status = 'rejected', last_error = {m} WHERE instruction_no = {m}",
                    [(r.get("error", str(r["code"]))[:500], number[p["idempotency_key"]]) for p, r in bad])
        sent += len(part)
        accepted += sum(r["code"] == 201 for r in ok)
        replayed += sum(r["code"] == 200 for r in ok)
        refused += [p["idempotency_key"] for p, _ in bad]
    if refused:
        raise RailError(f"the payment rail refused {len(refused)} payment(s), e.g. {refused[:3]}: see "
                        "payment_outbox.last_error; they need an operator (reverse or correct)")
    return {"sent": sent, "accepted": accepted, "replayed": replayed}


# --------------------------------------------------------------------------------------------
# reconciliation


def _per_instruction(w: Warehouse, conn, query: sa.Select, batch: sa.Column, first: str | None,
                     last: str | None) -> list[tuple]:
    """The rows of ``query`` (grouped by instruction; NULL: credits without one) over the credit
    batches from ``first`` to ``last``: the micro-batches before and from the one halfway in time
    read side by side on two connections (the database does the work; the drivers release the
    GIL). An instruction's credits are all of one batch, so only the NULL group is in both halves,
    and is added up."""
    from concurrent.futures import ThreadPoolExecutor

    try:
        lo, hi = (dt.datetime.strptime(b, "sc.%Y%m%dT%H%M") for b in (first, last))
    except (TypeError, ValueError):  # no credits, or batch ids of another form: one statement
        return list(conn.execute(query).all())
    middle = f"sc.{lo + (hi - lo) / 2:%Y%m%dT%H%M}"
    url = w.engine.url
    if not first < middle <= last or url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return list(conn.execute(query).all())  # one batch; or a memory database, one per connection

    def half(lower: bool) -> list[tuple]:
        with w.engine.connect() as own:
            return list(own.execute(query.where(batch < middle if lower else batch >= middle)).all())

    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(half, (True, False)))
    merged: dict = {}
    for row in (r for part in parts for r in part):
        if row[0] in merged:  # the NULL group: counts and sums add up, the flag is the smaller
            old = merged[row[0]]
            merged[row[0]] = (row[0], old[1] + row[1], old[2] + row[2], min(old[3], row[3]),
                              *(a + b for a, b in zip(old[4:], row[4:])))
        else:
            merged[row[0]] = tuple(row)
    return list(merged.values())


def reconcile_ledger(interval_end: dt.datetime, cutoff: dt.datetime, warehouse: Warehouse | None = None,
                     scope: Scope | None = None):
    """Prove decisions = instructions = postings = outbox for everything decided before
    ``cutoff`` in ``scope`` (default: the run's scope, :class:`Scope.of`; :data:`EVERYTHING` for
    a full reconciliation), and that every entry of the whole ledger balances and every account
    balance equals the sum of its postings; raise
    :class:`lending.disbursement.ReconciliationError` listing the differences.

    The same proof as :func:`lending.disbursement.reconcile`, with the same differences named,
    computed by the database: the scope's supplier credits (millions a week) are joined to their
    instruction items and holds and summed per instruction in one statement (their keys are read
    only when something differs); loans, instructions with their outbox rows, each instruction's
    entries and the account balances come back per instruction or per account (aggregates).

    Two checks cannot fail on the current layout and are kept because they cost next to nothing:
    "postings of unknown instructions" compares the postings already restricted to the scope's
    instructions (one set difference; a posting whose instruction was deleted shows as the
    payable item it paid being neither instructed nor held); "unbalanced entries" groups the
    ``ledger_postings`` view, whose two legs of an entry balance by construction unless the view
    itself is redefined (what it guards), a grouping of ~1 M short rows at reference scale."""
    from lending.disbursement import (
        CLEARING,
        CREDIT_PREFIX,
        LOAN_PREFIX,
        NOSTRO,
        Reconciliation,
        ReconciliationError,
    )

    w = warehouse or Warehouse.from_conn()
    t = w.lending
    scope = Scope.of(w, interval_end) if scope is None else scope
    d, rq, c = t["loan_decisions"], t["review_queue"], t["supplier_credits"]
    pi, ii, ob, le, ph = (t["payment_instructions"], t["instruction_items"], t["payment_outbox"],
                          t["ledger_entries"], t["payment_holds"])
    auto_w, rev_w, cred_w = _payable_where(t, scope)  # everything payable in scope, whenever decided
    auto_b, rev_b, cred_b = _bounds(t, interval_end, cutoff)  # ... and what this run had to pay

    def flag(cond) -> sa.ColumnElement:
        return sa.case((cond, 1), else_=0)

    def total(expr) -> sa.ColumnElement:
        return sa.cast(sa.func.coalesce(sa.func.sum(expr), 0), sa.BigInteger)

    loan_key, credit_key = sa.literal(LOAN_PREFIX) + d.c.application_id, sa.literal(CREDIT_PREFIX) + c.c.credit_id
    lh, ch = ph.alias("lh"), ph.alias("ch")
    loans_q = [sa.select(loan_key.label("item_key"), amount.label("amount_fen"), flag(sa.and_(*bounds)).label("e"),
                         flag(lh.c.item_key.is_not(None)).label("held"), pi.c.instruction_no)
               .select_from(frm.outerjoin(pi, pi.c.idempotency_key == loan_key)
                            .outerjoin(lh, lh.c.item_key == loan_key)).where(*where)
               for amount, bounds, frm, where in (
                   (d.c.amount_fen, auto_b, d, auto_w),
                   (rq.c.amount_fen, rev_b, d.join(rq, rq.c.application_id == d.c.application_id), rev_w))]
    # an item (a hold) is there when its NOT NULL amount is: the grouping then sorts short records, not keys
    e, held, has_item = flag(sa.and_(*cred_b)), ch.c.amount_fen.is_not(None), ii.c.amount_fen.is_not(None)
    credits_from = c.outerjoin(ii, ii.c.item_key == credit_key).outerjoin(ch, ch.c.item_key == credit_key)
    per_instruction_q = (  # the scope's credits per instruction that carries them (NULL: none)
        sa.select(ii.c.instruction_id, sa.func.count(ii.c.amount_fen), total(ii.c.amount_fen), sa.func.min(e),
                  total(flag(sa.and_(e == 1, sa.or_(~has_item, held, ii.c.amount_fen != c.c.amount_fen)))),
                  total(e), total(flag(sa.and_(e == 1, held))))
        .select_from(credits_from).where(*cred_w).group_by(ii.c.instruction_id))
    ins_cols = (pi.c.instruction_no, pi.c.instruction_id, pi.c.idempotency_key, pi.c.amount_fen, pi.c.source_batch,
                ob.c.instruction_id.label("ob_id"), ob.c.amount_fen.label("ob_amount"))
    ins_q = sa.select(*ins_cols).select_from(pi.outerjoin(ob, ob.c.instruction_no == pi.c.instruction_no))
    if scope.since is not None:  # the scope's instructions by batch (and, below, those of its loans by key)
        ins_q = ins_q.where(sa.or_(pi.c.source_batch >= f"approve.{scope.since:%Y%m%d}",
                                   pi.c.source_batch.in_(list(scope.held_batches))))
    disb = sa.select(le.c.instruction_id, total(le.c.amount_fen)).where(le.c.entry_id.like("disb:%")).group_by(
        le.c.instruction_id)
    legs = t["ledger_postings"]
    unbalanced_q = sa.select(legs.c.entry_id).group_by(legs.c.entry_id).having(
        sa.func.sum(legs.c.debit_fen) != sa.func.sum(legs.c.credit_fen))
    sides = sa.union_all(sa.select(le.c.debit_account.label("account"), le.c.amount_fen.label("delta")),
                         sa.select(le.c.credit_account, -le.c.amount_fen)).subquery()
    computed_q = sa.select(sides.c.account, total(sides.c.delta)).group_by(sides.c.account)
    acc = t["ledger_accounts"]
    orphans_q = sa.select(ob.c.instruction_id).select_from(
        ob.outerjoin(pi, pi.c.instruction_no == ob.c.instruction_no)).where(pi.c.instruction_no.is_(None))

    with w.engine.connect() as conn:
        loans = _frame_of([r for q in loans_q for r in _fetch(conn, q)],
                          ["item_key", "amount_fen", "e", "held", "instruction_no"], text={"item_key"})
        in_scope = [] if scope.since is None else _credit_batch_where(t, scope, None)[-1:]
        first = conn.execute(sa.select(sa.func.min(c.c.batch_id)).where(*in_scope)).scalar()  # from the index
        last = conn.execute(sa.select(sa.func.max(c.c.batch_id)).where(*in_scope)).scalar()
        groups = _per_instruction(w, conn, per_instruction_q, c.c.batch_id, first, last)
        ins = _frame_of(_fetch(conn, ins_q), [col.name for col in ins_cols],
                        text={"instruction_id", "idempotency_key", "source_batch", "ob_id"})
        if scope.since is not None:
            # (plain str methods: pandas' .str accessor costs ~1 µs a row on ~500,000 instructions)
            approve, sc, held_batches = f"approve.{scope.since:%Y%m%d}", f"sc.{scope.since:%Y%m%dT%H%M}", \
                set(scope.held_batches)
            ins = ins[np.fromiter(((b.startswith("approve.") and b >= approve) or (b.startswith("sc.") and b >= sc)
                                   or b in held_batches for b in ins.source_batch.tolist()), bool, len(ins))]
            # instructions of the scope's payable loans in other batches (a review approved later)
            extra = sorted(set(loans.instruction_no.dropna().astype(int)) - set(ins.instruction_no))
            for i in range(0, len(extra), 5_000):
                ins = pd.concat([ins, pd.DataFrame([tuple(r) for r in conn.execute(sa.select(*ins_cols).select_from(
                    pi.outerjoin(ob, ob.c.instruction_no == pi.c.instruction_no)).where(
                    pi.c.instruction_no.in_(extra[i:i + 5_000])))], columns=ins.columns)], ignore_index=True)
        posted = dict(_fetch(conn, disb))
        unbalanced = list(conn.execute(unbalanced_q).scalars())
        computed = {a: v for a, v in conn.execute(computed_q).all() if a not in (CLEARING, NOSTRO)}
        balances = dict(conn.execute(sa.select(acc.c.account, acc.c.balance_fen)).all())
        orphans = list(conn.execute(orphans_q).scalars())
        entries = conn.execute(sa.select(sa.func.count()).select_from(le)).scalar_one()
        # the instructions carrying a payment decided after the cutoff (a later run's): left out
        out = {g[0] for g in groups if g[0] is not None and g[3] == 0}
        later_loans = set(loans.instruction_no[(loans.e == 0) & loans.instruction_no.notna()].astype(int))
        bad_credits = sum(int(g[4]) for g in groups) + sum(int(g[5]) - int(g[6]) for g in groups if g[0] in out)
        credit_rows = pd.DataFrame(columns=["item_key", "instruction_id", "e", "held", "same_amount"])
        if bad_credits:  # the failure path: the keys of the credits that differ
            credit_rows = pd.DataFrame([tuple(r) for r in conn.execute(
                sa.select(credit_key, ii.c.instruction_id, e, flag(held), flag(ii.c.amount_fen == c.c.amount_fen))
                .select_from(credits_from).where(*cred_w, sa.or_(
                    ~has_item, held, ii.c.amount_fen != c.c.amount_fen,
                    ii.c.instruction_id.in_(sorted(out)))))], columns=credit_rows.columns)
    ins = ins[~ins.instruction_no.isin(later_loans) & ~ins.instruction_id.isin(out)]
    diffs: list[str] = []

    def note(what: str, keys) -> None:
        keys = sorted(map(str, keys))
        if keys:
            diffs.append(f"{what}: {len(keys)} (e.g. {keys[:3]})")

    payable_loans = loans[loans.e == 1]
    instructed = set(ins.instruction_no)
    loan_in = payable_loans.instruction_no.isin(instructed)  # its instruction is in scope (the item it implies)
    cr_in = credit_rows.instruction_id.notna() & ~credit_rows.instruction_id.isin(out)
    cr_e, cr_held = credit_rows.e == 1, credit_rows.held == 1
    note("payable items neither instructed nor held",
         [*payable_loans.item_key[~loan_in & (payable_loans.held == 0)], *credit_rows.item_key[cr_e & ~cr_in & ~cr_held]])
    note("payable items both instructed and held",
         [*payable_loans.item_key[loan_in & (payable_loans.held == 1)], *credit_rows.item_key[cr_e & cr_in & cr_held]])
    loan_ins = ins[ins.idempotency_key.str.startswith(LOAN_PREFIX)]
    note("instruction items that no decision or allocation pays",
         set(loan_ins.idempotency_key) - set(payable_loans.item_key))
    decided = payable_loans.set_index("item_key").amount_fen
    by_key = loan_ins.set_index("idempotency_key").amount_fen
    both = decided.index.intersection(by_key.index)
    note("items whose instructed amount differs from the decision",
         [*both[decided[both].to_numpy() != by_key[both].to_numpy()],
          *credit_rows.item_key[cr_e & cr_in & (credit_rows.same_amount == 0)]])
    # Python ints (not numpy scalars): the dicts and comparisons below run over every instruction
    amount = dict(zip(ins.instruction_id.tolist(), ins.amount_fen.astype(int).tolist()))
    items = {g[0]: int(g[2]) for g in groups if g[0] is not None and g[0] not in out}
    items.update(zip(loan_ins.instruction_id.tolist(), loan_ins.amount_fen.astype(int).tolist()))  # implied
    note("instructions without items", set(amount) - set(items))
    note("items of unknown instructions", set(items) - set(amount))
    note("instructions whose amount ≠ the sum of their items", [i for i in amount if i in items and items[i] != amount[i]])
    posted = {i: int(v) for i, v in posted.items() if i in amount}
    note("instructions without postings", set(amount) - set(posted))
    note("postings of unknown instructions", set(posted) - set(amount))
    note("instructions whose postings ≠ the amount", [i for i in amount if i in posted and posted[i] != amount[i]])
    note("unbalanced entries", unbalanced)
    listed = ins.ob_id.notna() & (ins.ob_id == ins.instruction_id)
    note("instructions missing from the outbox", ins.instruction_id[~listed])
    note("outbox rows without an instruction", [*ins.ob_id[ins.ob_id.notna() & ~listed], *orphans])
    note("outbox amounts ≠ instruction amounts", ins.instruction_id[listed & (ins.ob_amount != ins.amount_fen)])
    accounts = set(computed) | set(balances)
    note("account balances ≠ the sum of their postings",
         [a for a in accounts if int(computed.get(a, 0)) != int(balances.get(a, 0))])
    rec = Reconciliation(
        payable_items=int(len(payable_loans)) + sum(int(g[5]) for g in groups),
        held_items=int(payable_loans.held.sum()) + sum(int(g[6]) for g in groups),
        instructions=len(amount), postings=2 * int(entries), outbox=int(listed.sum()),
        amount_fen=sum(amount.values()), differences=tuple(diffs))
    if not rec.reconciled:
        raise ReconciliationError("disbursement does not reconcile: " + "; ".join(rec.differences))
    return rec
