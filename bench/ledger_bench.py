"""Ledger posting rate of :func:`chainlend.disbursement_ops.post_instructions` on SQLite and PostgreSQL.

The real code path, end to end: the lease (fencing token), what is payable, the plan, then one
transaction per chunk: fence check, account rows locked, limits read and checked, inserts of the
instructions, the items of supplier instructions, one ledger entry per instruction, the outbox
rows (copied from the instructions by ``INSERT … SELECT``), balance updates, holds cleared.

What a **posting** is: a leg of a ledger entry, a debit line or a credit line. The ledger stores
one row per balanced entry in ``ledger_entries`` (debit account, credit account, one amount: a
transfer, as TigerBeetle stores it), which is two postings; the view ``ledger_postings`` shows
them one row each. Each instruction here is one entry, so 2 postings. Per loan instruction SQLite
inserts into six B-trees: ``payment_instructions`` (rowid ``instruction_no`` and the unique
idempotency key), ``ledger_entries`` (rowid and the unique entry id) and ``payment_outbox``
(rowid = the instruction's number, and the index of pending rows); a supplier instruction also
has one ``instruction_items`` row (a ``WITHOUT ROWID`` table) per credit it carries.

Two shapes, each on a fresh SQLite file (in a temp dir) and a fresh PostgreSQL database (created
and dropped here; recorded as skipped, with the reason, when the server is unreachable):

- **single**: one instruction per transaction: 2,000 dealers with one loan each, ``chunk_size=1``;
- **batched**: 100,000 instructions in chunks of 5,000: 1,000 dealers × 90 loans and 500
  suppliers × 20 micro-batches × 2 credits (10,000 supplier instructions of 2 items each).

The rate is postings per second (2 per instruction) over the whole ``post_instructions`` call,
wall clock; ``chunks_s`` is the part spent inside the chunk transactions, ``post_cpu_s`` the CPU
time of this process (all of SQLite's work, none of the PostgreSQL server's), ``load_avg_1m`` the
machine's load when the case started: on two cores shared with other work the rate falls with
the load, so compare runs at similar loads. Each case is checked after the run: every planned
instruction posted, nothing held, entry, posting (view), outbox and item rows and account
balances as planned.

Floor (SQLite batched): the very rows ``post_instructions`` wrote (instructions, items, entries,
outbox) re-inserted into a fresh file of the same schema and settings by bare ``sqlite3``
``executemany`` in as many transactions: the physical insert work alone, with no plan, lease,
locks, limit checks or balance updates. Goal: ≥ 50,000 postings/s batched on SQLite. The sizes
are fixed: ``scale`` is ignored.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
import uuid
from pathlib import Path

GOAL_POSTINGS_PER_S = 50_000
GOAL_CASE = "sqlite_batched"
PG_ADMIN_URL = os.environ.get("CHAINLEND_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

DAY = dt.date(2026, 3, 2)
DECIDED = dt.datetime(2026, 3, 2, 1, 0)
INTERVAL_END = dt.datetime(2026, 3, 2, 18, 30)
LOAN_FEN = 10_000_000
CREDIT_FEN = 250_000
LIMIT_FEN = 10**15
# shape: dealers, loans per dealer, suppliers, micro-batches, credits per (batch, supplier), chunk size
SHAPES = {
    "single": {"dealers": 2_000, "loans_per_dealer": 1, "suppliers": 0, "micro_batches": 0,
               "credits_per_instruction": 0, "chunk_size": 1},
    "batched": {"dealers": 1_000, "loans_per_dealer": 90, "suppliers": 500, "micro_batches": 20,
                "credits_per_instruction": 2, "chunk_size": 5_000},
}


def _decision(d: int, k: int) -> dict:
    return {"application_id": f"LA{d:05d}{k:04d}", "decision_batch": f"approve.{DAY:%Y%m%d}",
            "dealer_id": f"D{d:05d}", "vin": f"LSV{d:06d}{k:08d}", "decision": "approved" if k % 4 else "reduced",
            "amount_fen": LOAN_FEN + k, "requested_fen": LOAN_FEN + k, "term_days": 60, "pd": 0.02, "band": "A",
            "el_fen": 1000, "reason_codes": "", "reason_text_en": "", "reason_text_zh": "", "model_version": "1",
            "policy_version": "bench", "feature_hash": "x", "decided_at": DECIDED}


def _credit(s: int, b: int, k: int) -> dict:
    sup, vin = f"S{s:05d}", f"LSVCAR{b:05d}{k:06d}"
    at = dt.datetime.combine(DAY, dt.time(8)) + dt.timedelta(minutes=15 * b)
    return {"credit_id": f"{vin}:{sup}", "batch_id": f"sc.{at:%Y%m%dT%H%M}", "event_id": f"E{b}.{k}", "vin": vin,
            "model_id": "M1", "supplier_id": sup, "tier": 1, "share_fen": CREDIT_FEN, "amount_fen": CREDIT_FEN + k,
            "capped_fen": 0, "capped_by": None, "policy_version": "bench", "line_off_on": DAY, "allocated_at": DECIDED,
            "split_id": f"M1:bench:{sup}"}


def seed(w, *, dealers: int, loans_per_dealer: int, suppliers: int, micro_batches: int,
         credits_per_instruction: int) -> dict:
    """Payable decisions, supplier credits and ample limits, written directly (one transaction)."""
    t = w.lending
    decisions = [_decision(d, k) for d in range(dealers) for k in range(loans_per_dealer)]
    credits = [_credit(s, b, s * credits_per_instruction + j) for s in range(suppliers) for b in range(micro_batches)
               for j in range(credits_per_instruction)]
    limits = ([{"borrower_type": "dealer", "borrower_id": f"D{d:05d}"} for d in range(dealers)]
              + [{"borrower_type": "supplier", "borrower_id": f"S{s:05d}"} for s in range(suppliers)])
    limits = [{**r, "limit_fen": LIMIT_FEN, "source": "bench", "updated_at": DECIDED} for r in limits]
    with w.engine.begin() as conn:
        for table, rows in (("loan_decisions", decisions), ("supplier_credits", credits), ("borrower_limits", limits)):
            for i in range(0, len(rows), 20_000):
                conn.execute(t[table].insert(), rows[i:i + 20_000])
    instructions = len(decisions) + suppliers * micro_batches
    return {"instructions": instructions, "items": len(decisions) + len(credits), "item_rows": len(credits),
            "amount_fen": sum(r["amount_fen"] for r in decisions) + sum(r["amount_fen"] for r in credits)}


def _post_timed(w, chunk_size: int) -> tuple[dict, float, float, float, int]:
    """``post_instructions`` with the time spent in its chunk transactions measured on the side."""
    import chainlend.disbursement_ops as ops

    original, spent = ops._post_chunk, {"s": 0.0, "n": 0}

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent["s"] += time.perf_counter() - t0
            spent["n"] += 1

    ops._post_chunk = timed
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        result = ops.post_instructions(INTERVAL_END, scope="bench/run/post", holder="bench", run_id="bench",
                                       warehouse=w, chunk_size=chunk_size)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        ops._post_chunk = original
    return result, total, cpu, spent["s"], spent["n"]


def _verify(w, expected: dict, result: dict) -> None:
    import sqlalchemy as sa

    t = w.lending

    def count(name: str) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(t[name])).scalar_one()

    with w.engine.connect() as conn:
        entries, postings = count("ledger_entries"), count("ledger_postings")
        outbox, item_rows = count("payment_outbox"), count("instruction_items")
        balance = conn.execute(sa.select(sa.func.sum(t["ledger_accounts"].c.balance_fen))).scalar_one()
    n = expected["instructions"]
    got = (result["instructions"], result["items"], result["postings"], result["held_frozen"] + result["held_over_limit"],
           entries, postings, outbox, item_rows, int(balance or 0))
    want = (n, expected["items"], 2 * n, 0, n, 2 * n, n, expected["item_rows"], expected["amount_fen"])
    if got != want:
        raise AssertionError(f"(instructions, items, postings, held, entry rows, posting rows (view), outbox rows, "
                             f"item rows, sum of balances): posted {got}, expected {want}")


def run_case(url: str, shape: str) -> dict:
    """Seed a fresh warehouse at ``url``, post everything once, check it, and time it."""
    from chainlend.systems import Warehouse
    from sources.sql import make_engine

    params = dict(SHAPES[shape])
    chunk_size = params.pop("chunk_size")
    w = Warehouse(make_engine(url))
    try:
        w.metadata.create_all(w.engine)
        t0 = time.perf_counter()
        expected = seed(w, **params)
        seed_s = time.perf_counter() - t0
        load = os.getloadavg()[0]
        result, total, cpu, chunks_s, chunks = _post_timed(w, chunk_size)
        _verify(w, expected, result)
    finally:
        w.engine.dispose()
    return {
        "instructions": result["instructions"],
        "items": result["items"],
        "postings": result["postings"],
        "chunk_size": chunk_size,
        "transactions": chunks,
        "seed_s": round(seed_s, 2),
        "load_avg_1m": round(load, 2),
        "post_s": round(total, 2),
        "post_cpu_s": round(cpu, 2),
        "chunks_s": round(chunks_s, 2),
        "postings_per_s": round(result["postings"] / total),
    }


FLOOR_TABLES = ("payment_instructions", "instruction_items", "ledger_entries", "payment_outbox")


def bare_sqlite(src_url: str, dst_url: str, transactions: int) -> dict:
    """Re-insert the rows ``post_instructions`` wrote at ``src_url`` into a fresh warehouse at
    ``dst_url`` with bare ``sqlite3`` ``executemany``, in ``transactions`` transactions."""
    from chainlend.systems import Warehouse
    from sources.sql import make_engine

    src, dst = make_engine(src_url), Warehouse(make_engine(dst_url))
    dst.metadata.create_all(dst.engine)
    rows, sql = {}, {}
    raw = src.raw_connection()
    try:
        for name in FLOOR_TABLES:
            cols = [c.name for c in dst.lending[name].c if c.name != "entry_no"]  # autoincrement, as ours
            key = ", ".join(c.name for c in dst.lending[name].primary_key)  # the order they were inserted in
            rows[name] = raw.cursor().execute(f"SELECT {', '.join(cols)} FROM {name} ORDER BY {key}").fetchall()
            sql[name] = f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    finally:
        raw.close()
        src.dispose()
    raw = dst.engine.raw_connection()  # the same pragmas as ours (WAL, synchronous=NORMAL)
    try:
        cur = raw.cursor()
        t0, c0 = time.perf_counter(), time.process_time()
        for k in range(transactions):
            for name in FLOOR_TABLES:
                n = len(rows[name])
                cur.executemany(sql[name], rows[name][k * n // transactions:(k + 1) * n // transactions])
            raw.commit()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        raw.close()
        dst.engine.dispose()
    postings = 2 * len(rows["ledger_entries"])  # each entry: a debit leg and a credit leg
    return {"floor_rows": sum(len(r) for r in rows.values()), "floor_insert_s": round(wall, 2),
            "floor_insert_cpu_s": round(cpu, 2), "floor_postings_per_s": round(postings / wall)}


def _pg_database():
    """``(admin engine, database name, url)`` of a fresh database, or ``(None, None, reason)``."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"chainlend_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        first_line = str(exc.orig or exc).strip().splitlines()[0]
        return None, None, f"PostgreSQL at {sa.make_url(PG_ADMIN_URL).render_as_string()} is not reachable: {first_line}"
    return admin, name, sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg(admin, name: str) -> None:
    import sqlalchemy as sa

    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


def run(scale: str, workdir: Path) -> dict:
    cases: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        for shape in SHAPES:
            cases[f"sqlite_{shape}"] = run_case(f"sqlite:///{Path(tmp) / f'{shape}.db'}", shape)
        batched = cases["sqlite_batched"]
        batched.update(bare_sqlite(f"sqlite:///{Path(tmp) / 'batched.db'}", f"sqlite:///{Path(tmp) / 'floor.db'}",
                                   batched["transactions"]))
    for shape in SHAPES:
        admin, name, url = _pg_database()
        if admin is None:
            cases[f"postgresql_{shape}"] = {"skipped": url}
            continue
        try:
            cases[f"postgresql_{shape}"] = run_case(url, shape)
        finally:
            _drop_pg(admin, name)

    rates = {case: c.get("postings_per_s") for case, c in cases.items()}
    goal_rate = rates[GOAL_CASE]
    meets = goal_rate >= GOAL_POSTINGS_PER_S

    def fmt(case: str) -> str:
        c = cases[case]
        return f"skipped ({c['skipped']})" if "skipped" in c else f"{c['postings_per_s']:,}/s"

    return {
        "cases": cases,
        "postings_per_s": rates,
        "sqlite_batched_time_vs_floor": round(batched["post_s"] / batched["floor_insert_s"], 2),
        "goal_case": GOAL_CASE,
        "goal_postings_per_s": GOAL_POSTINGS_PER_S,
        "meets_goal": meets,
        "summary": (f"post_instructions ledger postings/s (2 per instruction): SQLite single {fmt('sqlite_single')}, "
                    f"batched {fmt('sqlite_batched')}; PostgreSQL single {fmt('postgresql_single')}, batched "
                    f"{fmt('postgresql_batched')}; single = {SHAPES['single']['dealers']:,} instructions, one per "
                    f"transaction; batched = {cases['sqlite_batched']['instructions']:,} instructions in chunks of "
                    f"{SHAPES['batched']['chunk_size']:,}; goal ≥ {GOAL_POSTINGS_PER_S:,}/s batched on SQLite: "
                    f"{'met' if meets else 'not met'}; floor: the same rows by bare sqlite3 executemany "
                    f"{batched['floor_postings_per_s']:,}/s"),
    }


if __name__ == "__main__":  # one case, for profiling: python -m bench.ledger_bench sqlite batched
    import json
    import sys

    from chainlend import settings

    settings.apply_embedded_defaults()
    backend, shape = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        if backend == "sqlite":
            print(json.dumps(run_case(f"sqlite:///{Path(tmp) / 'w.db'}", shape), indent=2))
        else:
            admin, name, url = _pg_database()
            if admin is None:
                raise SystemExit(url)
            try:
                print(json.dumps(run_case(url, shape), indent=2))
            finally:
                _drop_pg(admin, name)
