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
from itertools import repeat

import numpy as np
import pandas as pd
import sqlalchemy as sa

from chainlend.settings import PAYMENT_RAIL_CONN_ID
from chainlend.systems import Warehouse

log = logging.getLogger(__name__)

CHUNK_INSTRUCTIONS = 5_000
# a run considers the decision and credit batches of the last 7 days (and the batches of held
# items, and of reviews approved since): older batches were settled by earlier runs; a full
# reconciliation over everything is ``reconcile_ledger(..., scope=EVERYTHING)`` (the demo report)
DISBURSE_LOOKBACK_DAYS = 7
OUTBOX_BATCH = 500
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


def _mark(conn) -> str:
    """The DBAPI's positional placeholder (sqlite3: ``?``; psycopg, PyMySQL: ``%s``)."""
    style = conn.dialect.paramstyle
    if style not in ("qmark", "format", "pyformat"):
        raise DisbursementError(f"driver {conn.dialect.driver!r} uses paramstyle {style!r}; the ledger writes "
                                "plain DBAPI statements with qmark or format placeholders")
    return "?" if style == "qmark" else "%s"


def _bulk_insert(conn, table: sa.Table, columns: dict[str, list], const: dict[str, object]) -> None:
    """Insert one row per position of ``columns`` (name → list of plain values), each row also
    getting ``const``: plain tuples through the DBAPI ``executemany`` (PostgreSQL: ``COPY``, whose
    psycopg ``executemany`` costs ~30 µs of Python a row), so SQLAlchemy does not build and process
    a parameter dict per row. Constraints and triggers apply as to any insert."""
    if not columns or not len(next(iter(columns.values()))):
        return

    names = [*columns, *const]
    q = conn.dialect.identifier_preparer
    into = f"{q.format_table(table)} ({', '.join(q.quote(n) for n in names)})"
    if conn.dialect.name == "postgresql":  # psycopg adapts the Python values itself
        rows = zip(*columns.values(), *map(repeat, const.values()))
        with conn.connection.driver_connection.cursor() as cur, cur.copy(f"COPY {into} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    bind = {n: table.c[n].type.dialect_impl(conn.dialect).bind_processor(conn.dialect) for n in names}
    varying = [v if bind[n] is None else list(map(bind[n], v)) for n, v in columns.items()]
    fixed = [v if bind[n] is None else bind[n](v) for n, v in const.items()]  # e.g. a datetime for SQLite
    rows = list(zip(*varying, *map(repeat, fixed)))
    conn.exec_driver_sql(f"INSERT INTO {into} VALUES ({', '.join([_mark(conn)] * len(names))})", rows)


def _in(conn, keys: list | tuple) -> tuple[str, tuple]:
    """``IN (?, ?, …)`` and its parameters; on PostgreSQL one array parameter, ``= ANY(%s)``."""
    if conn.dialect.name == "postgresql":
        return "= ANY(%s)", (list(keys),)
    return f"IN ({', '.join([_mark(conn)] * len(keys))})", tuple(keys)


def _where_in(conn, table: sa.Table, column: str, keys: list, *, delete: bool = False,
              select: str | None = None) -> list[tuple]:
    """``SELECT select`` (default: ``column``; or ``DELETE``) from ``table`` where ``column`` is one
    of ``keys``, 5,000 keys a statement, as plain DBAPI statements (no per-key SQLAlchemy bind
    parameters)."""
    q, rows = conn.dialect.identifier_preparer, []
    head = "DELETE" if delete else f"SELECT {q.quote(select or column)}"
    for i in range(0, len(keys), 5_000):
        where, params = _in(conn, keys[i:i + 5_000])
        res = conn.exec_driver_sql(f"{head} FROM {q.format_table(table)} WHERE {q.quote(column)} {where}", params)
        if res.returns_rows:
            rows += res.all()
    return rows


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


def payable(w: Warehouse, interval_end: dt.datetime, cutoff: dt.datetime,
            scope: Scope = EVERYTHING) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(loans, credits)`` to pay: decisions of batches up to ``interval_end`` made before
    ``cutoff``, within ``scope``.

    Loans: ``approved`` and ``reduced`` decisions at their amount, and ``review`` decisions a
    credit officer approved (at the officer's amount). Credits: supplier credits with an amount."""
    t = w.lending
    d, rq, c = t["loan_decisions"], t["review_queue"], t["supplier_credits"]
    last_batch = f"approve.{interval_end:%Y%m%d}"
    last_sc = f"sc.{interval_end:%Y%m%dT%H%M}"
    auto_w = [d.c.decision.in_(["approved", "reduced"]), d.c.decision_batch <= last_batch, d.c.decided_at < cutoff]
    rev_w = [d.c.decision == "review", rq.c.status == "approved", d.c.decision_batch <= last_batch,
             rq.c.decided_at < cutoff]
    cred_w = [c.c.amount_fen > 0, c.c.batch_id <= last_sc, c.c.allocated_at < cutoff]
    if scope.since is not None:
        held = list(scope.held_batches)
        auto_w.append(sa.or_(d.c.decision_batch >= f"approve.{scope.since:%Y%m%d}", d.c.decision_batch.in_(held)))
        rev_w.append(sa.or_(d.c.decision_batch >= f"approve.{scope.since:%Y%m%d}", rq.c.decided_at >= scope.since,
                            d.c.decision_batch.in_(held)))
        cred_w.append(sa.or_(c.c.batch_id >= f"sc.{scope.since:%Y%m%dT%H%M}", c.c.batch_id.in_(held)))
    with w.engine.connect() as conn:
        auto = _read(conn, sa.select(d.c.application_id, d.c.dealer_id, d.c.amount_fen,
                                     d.c.decision_batch.label("source_batch")).where(*auto_w))
        reviewed = _read(conn, sa.select(d.c.application_id, d.c.dealer_id, rq.c.amount_fen,
                                         d.c.decision_batch.label("source_batch")).join(
            rq, rq.c.application_id == d.c.application_id).where(*rev_w))
        credits = _read(conn, sa.select(c.c.credit_id, c.c.batch_id, c.c.supplier_id, c.c.amount_fen).where(*cred_w))
    loans = pd.concat([auto, reviewed], ignore_index=True) if len(reviewed) else auto
    return loans[loans.amount_fen > 0].reset_index(drop=True), credits


def _read(conn, stmt) -> pd.DataFrame:
    """The rows of ``stmt`` as a frame: text columns as numpy objects (see :func:`_objects`), integer
    columns numeric; without ``pandas.read_sql``'s inference of every value."""
    res = conn.execute(stmt)
    names, rows = list(res.keys()), res.all()
    columns = list(zip(*rows)) if rows else [()] * len(names)
    return pd.DataFrame({n: pd.to_numeric(pd.Series(v, dtype=object)) if isinstance(c.type, sa.Integer)
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
    """The instructions to post with their entries and items as plain lists, converted from pandas
    once: instruction ``j``'s entry is ``entries[j]``, its items ``items[item_at[j]:item_at[j + 1]]``
    (every item, loans included, for the holds; ``stored`` marks those ``instruction_items`` keeps)."""

    frame: pd.DataFrame  # the instructions (for :func:`lending.disbursement.apply_limits`)
    ins: dict[str, list]
    entries: dict[str, list]
    items: dict[str, list]
    item_at: list[int]
    stored: list[bool]

    @classmethod
    def of(cls, todo: pd.DataFrame, items: pd.DataFrame, entries: pd.DataFrame) -> _Plan:
        from lending.disbursement import LOAN_PREFIX

        ipos = pd.Index(todo.instruction_id).get_indexer(items.instruction_id)
        io = np.argsort(ipos, kind="stable")
        io = io[ipos[io] >= 0]  # items of instructions posted earlier are not ours to post
        cols = {c: items[c].to_numpy()[io].tolist() for c in items.columns}
        return cls(frame=todo, ins={c: todo[c].tolist() for c in todo.columns},
                   entries={c: entries[c].tolist() for c in entries.columns}, items=cols,
                   item_at=np.searchsorted(ipos[io], np.arange(len(todo) + 1)).tolist(),
                   stored=[not k.startswith(LOAN_PREFIX) for k in cols["item_key"]])

    def take(self, rows: range | list[int]) -> tuple[dict[str, list], dict[str, list], dict[str, list]]:
        """Instruction, entry and item columns of the instructions at ``rows``."""
        if isinstance(rows, range):  # contiguous: slices
            a, b = rows.start, rows.stop
            return ({c: v[a:b] for c, v in self.ins.items()}, {c: v[a:b] for c, v in self.entries.items()},
                    {c: v[self.item_at[a]:self.item_at[b]] for c, v in self.items.items()})
        ii = [i for j in rows for i in range(self.item_at[j], self.item_at[j + 1])]
        return ({c: [v[j] for j in rows] for c, v in self.ins.items()},
                {c: [v[j] for j in rows] for c, v in self.entries.items()},
                {c: [v[i] for i in ii] for c, v in self.items.items()})

    def stored_items(self, rows: range | list[int]) -> dict[str, list]:
        """The item columns of the instructions at ``rows`` that ``instruction_items`` keeps."""
        if isinstance(rows, range):
            ii = range(self.item_at[rows.start], self.item_at[rows.stop])
        else:
            ii = [i for j in rows for i in range(self.item_at[j], self.item_at[j + 1])]
        keep = [i for i in ii if self.stored[i]]
        return {c: [v[i] for i in keep] for c, v in self.items.items()}


def post_instructions(interval_end: dt.datetime, *, scope: str, holder: str, run_id: str,
                      warehouse: Warehouse | None = None, chunk_size: int = CHUNK_INSTRUCTIONS) -> dict:
    """Post everything payable up to ``interval_end`` that has no instruction yet.

    Returns counts and the ``cutoff`` (the decisions this run could see) for reconciliation."""
    from lending.disbursement import check_entries, disbursement_entries, plan_instructions

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    fence = acquire_lease(w, scope, holder)
    cutoff = _now() + dt.timedelta(seconds=1)
    batches = Scope.of(w, interval_end)
    loans, credits = payable(w, interval_end, cutoff, batches)
    instructions, items = plan_instructions(loans, credits)
    with w.engine.connect() as conn:
        done = _existing(conn, w.lending["payment_instructions"], "idempotency_key",
                         instructions.idempotency_key.tolist())
    todo = instructions[~instructions.idempotency_key.isin(done)].reset_index(drop=True) if done else instructions
    entries = disbursement_entries(todo)
    check_entries(entries)  # every entry of the plan, before any of it is posted
    plan = _Plan.of(todo, items, entries)
    totals, held = _Totals(already=len(done)), {"frozen": 0, "over_limit": 0}
    failpoint = os.environ.get(FAILPOINT_ENV, "")
    for begin, end in _chunks(todo, chunk_size):
        h = _post_chunk(w, plan, range(begin, end), scope=scope, fence=fence, run_id=run_id, totals=totals)
        for k, v in h.items():
            held[k] += v
        totals.chunks += 1
        if failpoint == f"disburse.after_chunk:{totals.chunks}":
            log.error("failpoint %s: SIGKILL", failpoint)
            os.kill(os.getpid(), signal.SIGKILL)
    _drop_stale_holds(w, set(items.item_key), run_id)
    return {"fence": fence, "cutoff": cutoff.isoformat(), "planned": int(len(instructions)),
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
        ins, entries, items = plan.take(post)
        n = len(ins["instruction_id"])
        if n:
            numbers = _instruction_numbers(conn, n)
            _bulk_insert(conn, t["payment_instructions"], {"instruction_no": numbers, **ins},
                         {"run_id": run_id, "fence": fence, "created_at": now})
            _bulk_insert(conn, t["instruction_items"], plan.stored_items(post), {})
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
            _where_in(conn, ph, "item_key", [k for k in plan.take(rows)[2]["item_key"] if k in held_before],
                      delete=True)
        if hold:
            held_ins, _, held_items = plan.take(list(hold))
            owner = dict(zip(held_ins["instruction_id"], zip(held_ins["borrower_type"], held_ins["borrower_id"],
                                                               [hold[j] for j in hold], held_ins["source_batch"])))
            conn.execute(ph.insert(), [
                {"item_key": k, "borrower_type": owner[i][0], "borrower_id": owner[i][1], "amount_fen": a,
                 "reason": owner[i][2], "source_batch": owner[i][3], "run_id": run_id, "checked_at": now}
                for k, i, a in zip(held_items["item_key"], held_items["instruction_id"], held_items["amount_fen"])])
    totals.instructions += n
    totals.items += len(items["item_key"])
    totals.postings += 2 * n  # each entry: its debit leg and its credit leg
    totals.amount_fen += sum(ins["amount_fen"])
    return dict(Counter(hold.values()))


def _drop_stale_holds(w: Warehouse, payable_keys: set[str], run_id: str) -> None:
    """Holds of items that are no longer payable (declined after a review, say) are removed."""
    ph = w.lending["payment_holds"]
    with w.engine.begin() as conn:
        keys = list(conn.execute(sa.select(ph.c.item_key)).scalars())
        stale = [k for k in keys if k not in payable_keys]
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
    a refusal (after recording the attempt), so Airflow retries the task."""
    w = warehouse or Warehouse.from_conn()
    ob = w.lending["payment_outbox"]
    with w.engine.connect() as conn:
        pending = pd.read_sql(sa.select(ob).where(ob.c.status == "pending").order_by(ob.c.instruction_no), conn)
    sent = accepted = replayed = 0
    refused: list[str] = []
    for i in range(0, len(pending), batch):
        part = pending.iloc[i:i + batch]
        payments = [{"idempotency_key": r.idempotency_key, "instruction_id": r.instruction_id,
                     "payee_type": r.payee_type, "payee_id": r.payee_id, "amount_fen": int(r.amount_fen)}
                    for r in part.itertuples()]
        number = dict(zip(part.idempotency_key, part.instruction_no.astype(int).tolist()))
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
        now = _now()
        ok = [r for r in results if r["code"] in (200, 201)]
        bad = [r for r in results if r["code"] not in (200, 201)]
        with w.engine.begin() as conn:
            if ok:
                conn.execute(sa.update(ob).where(ob.c.instruction_no == sa.bindparam("no"), ob.c.status == "pending")
                             .values(status="accepted", rail_reference=sa.bindparam("ref"), sent_at=now,
                                     last_error=None),
                             [{"no": number[r["idempotency_key"]], "ref": r["payment_id"]} for r in ok])
            if bad:
                conn.execute(sa.update(ob).where(ob.c.instruction_no == sa.bindparam("no")).values(
                    status="rejected", last_error=sa.bindparam("err")),
                    [{"no": number[p["idempotency_key"]], "err": r.get("error", str(r["code"]))[:500]}
                     for p, r in zip(payments, results) if r["code"] not in (200, 201)])
        sent += len(part)
        accepted += sum(r["code"] == 201 for r in ok)
        replayed += sum(r["code"] == 200 for r in ok)
        refused += [p["idempotency_key"] for p, r in zip(payments, results) if r["code"] not in (200, 201)]
    if refused:
        raise RailError(f"the payment rail refused {len(refused)} payment(s), e.g. {refused[:3]}: see "
                        "payment_outbox.last_error; they need an operator (reverse or correct)")
    return {"sent": sent, "accepted": accepted, "replayed": replayed}


# --------------------------------------------------------------------------------------------
# reconciliation


def reconcile_ledger(interval_end: dt.datetime, cutoff: dt.datetime, warehouse: Warehouse | None = None,
                     scope: Scope | None = None):
    """Prove decisions = instructions = postings = outbox for everything decided before
    ``cutoff`` in ``scope`` (default: the run's scope, :class:`Scope.of`; :data:`EVERYTHING` for
    a full reconciliation), and that every entry of the whole ledger balances and every account
    balance equals the sum of its postings; raise
    :class:`lending.disbursement.ReconciliationError` listing the differences."""
    from lending.disbursement import (
        CREDIT_PREFIX,
        ITEM_COLUMNS,
        ReconciliationError,
        entry_legs,
        implied_items,
        plan_instructions,
        reconcile,
    )

    w = warehouse or Warehouse.from_conn()
    t = w.lending
    scope = Scope.of(w, interval_end) if scope is None else scope
    _, expected = plan_instructions(*payable(w, interval_end, cutoff, scope))
    # payments of this scope decided after the cutoff or in later batches (a later run's)
    far = dt.datetime(9999, 12, 31)
    planned, everything = plan_instructions(*payable(w, far, far, scope))
    pi, ii, ob, le = t["payment_instructions"], t["instruction_items"], t["payment_outbox"], t["ledger_entries"]
    ins_cols = (pi.c.instruction_id, pi.c.idempotency_key, pi.c.amount_fen, pi.c.source_batch)

    def by_keys(conn, table: sa.Table, cols, column: sa.Column, keys: list[str], empty: list[str]) -> pd.DataFrame:
        parts = [pd.read_sql(sa.select(*cols).where(column.in_(keys[i:i + 5_000])), conn)
                 for i in range(0, len(keys), 5_000)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=empty)

    with w.engine.connect() as conn:
        held = pd.read_sql(sa.select(t["payment_holds"].c.item_key), conn)
        credit_keys = [k for k in everything.item_key.tolist() if k.startswith(CREDIT_PREFIX)]
        stored = by_keys(conn, ii, [ii], ii.c.item_key, credit_keys, ITEM_COLUMNS)
        ins_q = sa.select(*ins_cols)
        if scope.since is not None:  # the scope's instructions: by batch, and those carrying its items
            ins_q = ins_q.where(sa.or_(pi.c.source_batch >= f"approve.{scope.since:%Y%m%d}",
                                       pi.c.source_batch.in_(list(scope.held_batches))))
        ins = pd.read_sql(ins_q, conn)
        if scope.since is not None:
            ins = ins[ins.source_batch.str.startswith("approve.")
                      & (ins.source_batch >= f"approve.{scope.since:%Y%m%d}")
                      | ins.source_batch.str.startswith("sc.") & (ins.source_batch >= f"sc.{scope.since:%Y%m%dT%H%M}")
                      | ins.source_batch.isin(scope.held_batches)]
            # instructions of the scope's payable items in other batches (a review approved later), by key
            extra = sorted(set(planned.idempotency_key) - set(ins.idempotency_key))
            ins = pd.concat([ins, by_keys(conn, pi, ins_cols, pi.c.idempotency_key, extra, list(ins.columns))],
                            ignore_index=True)
        entries = pd.read_sql(sa.select(le.c.entry_id, le.c.instruction_id, le.c.debit_account, le.c.credit_account,
                                        le.c.amount_fen, le.c.borrower_type, le.c.borrower_id), conn)
        outbox = pd.read_sql(sa.select(ob.c.instruction_id, ob.c.amount_fen), conn)
        bal = pd.read_sql(sa.select(t["ledger_accounts"].c.account, t["ledger_accounts"].c.balance_fen), conn)
    held, stored, ins, entries, outbox = map(_objects, (held, stored, ins, entries, outbox))
    # a loan's item is its instruction (not stored): rebuilt from the instruction rows
    items = pd.concat([stored[ITEM_COLUMNS], implied_items(ins)], ignore_index=True)
    legs = _objects(entry_legs(entries))
    ids = set(ins.instruction_id)
    later = set(everything.item_key) - set(expected.item_key)
    outside = frozenset(items.instruction_id[items.item_key.isin(later)])
    rec = reconcile(expected[["item_key", "amount_fen"]], held[held.item_key.isin(expected.item_key)],
                    items, ins[["instruction_id", "amount_fen"]], legs[legs.instruction_id.isin(ids)
                                                                       | ~legs.entry_id.str.startswith("disb:")],
                    outbox[outbox.instruction_id.isin(ids)], bal.set_index("account")["balance_fen"],
                    out_of_scope=outside, all_legs=legs)
    if not rec.reconciled:
        raise ReconciliationError("disbursement does not reconcile: " + "; ".join(rec.differences))
    return rec
