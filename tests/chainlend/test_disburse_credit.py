"""Disbursement pays exactly once: the ``disburse_credit`` DAG under Airflow, SIGKILL mid-run,
a zombie attempt, two runs at once on PostgreSQL, a payment rail that times out after accepting,
freezes and limits at posting time; the ledger's guarantees in the database (immutable entries,
the entry CHECKs, one instruction per loan, one per credit, one entry per id) on SQLite,
PostgreSQL and MariaDB; repayments and the report on the same ledger; the reconciliation the
database computes fails naming each kind of corruption of the stored books, on the three
databases; a re-run reads only what has no instruction; the rail's batch API pays once per key.
Real databases and a real HTTP rail."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import disburse_seed as S
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent


def _post(w, scope="t/run/post", holder="test", **kw):
    from chainlend.disbursement_ops import post_instructions

    return post_instructions(S.INTERVAL_END, scope=scope, holder=holder, run_id="run", warehouse=w, **kw)


def _send_and_reconcile(w, rail_server, posted):
    from chainlend.disbursement_ops import PaymentRail, reconcile_ledger, send_outbox

    sent = send_outbox(PaymentRail(rail_server.url, timeout_s=5), w)
    rec = reconcile_ledger(S.INTERVAL_END, dt.datetime.fromisoformat(posted["cutoff"]), w)
    return sent, rec


def _balanced_per_instruction(w) -> dict[str, tuple[int, int, int]]:
    t = w.lending
    p, i = t["ledger_postings"], t["payment_instructions"]
    q = (sa.select(i.c.instruction_id, i.c.amount_fen, sa.func.sum(p.c.debit_fen), sa.func.sum(p.c.credit_fen))
         .join(p, p.c.instruction_id == i.c.instruction_id).group_by(i.c.instruction_id, i.c.amount_fen))
    with w.engine.connect() as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(q)}


def test_dag_run_clear_and_rerun_pays_once(tmp_path, airflow_db, use_connections, rail):
    from chainlend.runtime import load_dag, run_dag, task_states

    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    w = S.warehouse(url)
    expected = S.seed(w)
    use_connections(warehouse_default=url)
    dag = load_dag("disburse_credit")
    conf = {"interval_end": S.INTERVAL_END.isoformat()}
    states = task_states(run_dag(dag, S.DAY, conf=conf))
    assert states == {"post_instructions": "success", "send_payments": "success", "reconcile": "success"}
    first, ledger = S.counts(w), S.ledger(w)
    assert first["payment_instructions"] == expected["instructions"] == rail.totals()["count"]
    assert rail.totals()["amount_fen"] == expected["amount_fen"]
    assert first["ledger_postings"] == 2 * expected["instructions"]
    states = task_states(run_dag(dag, S.DAY, conf=conf))  # the same interval again
    assert set(states.values()) == {"success"}, states
    assert S.counts(w) == first and S.ledger(w) == ledger
    assert rail.totals()["count"] == expected["instructions"]
    for amount, debit, credit in _balanced_per_instruction(w).values():
        assert amount == debit == credit


def test_sigkill_after_k_chunks_then_retry_pays_each_exactly_once(tmp_path, rail):
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    w = S.warehouse(url)
    expected = S.seed(w, dealers=8, suppliers=4)
    code = (f"import sys, datetime as dt; sys.path.insert(0, {str(HERE)!r})\n"
            "from chainlend import settings; settings.apply_embedded_defaults()\n"
            "import disburse_seed as S\n"
            "from chainlend.disbursement_ops import post_instructions\n"
            "post_instructions(S.INTERVAL_END, scope='t/run/post', holder='victim', run_id='run',\n"
            f"                  warehouse=S.warehouse({url!r}), chunk_size=1)\n")
    env = {**__import__("os").environ, "CHAINLEND_FAILPOINT": "disburse.after_chunk:3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL right after chunk 3 committed
    killed = S.counts(w)
    assert 3 <= killed["payment_instructions"] < expected["instructions"]  # 3 chunks = 3 whole borrowers
    assert killed["ledger_postings"] == 2 * killed["payment_instructions"]
    posted = _post(w, holder="retry")  # the retry
    assert posted["already_instructed"] == killed["payment_instructions"]
    assert S.counts(w)["payment_instructions"] == expected["instructions"]
    for amount, debit, credit in _balanced_per_instruction(w).values():
        assert amount == debit == credit
    sent, rec = _send_and_reconcile(w, rail, posted)
    assert rec.reconciled and rec.instructions == expected["instructions"]
    assert rail.totals() == {"count": expected["instructions"], "amount_fen": expected["amount_fen"]}


def test_a_zombie_attempt_that_lost_its_lease_cannot_commit(tmp_path):
    from chainlend.disbursement_ops import LeaseLost, acquire_lease

    w = S.warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    expected = S.seed(w, dealers=600, loans_per_dealer=1, suppliers=0)
    outcome, takeover_count = {}, {}

    def zombie():
        try:
            outcome["result"] = _post(w, holder="zombie", chunk_size=1)
        except LeaseLost as exc:
            outcome["error"] = exc

    th = threading.Thread(target=zombie)
    th.start()
    deadline = time.monotonic() + 60
    while S.counts(w)["payment_instructions"] == 0:  # the zombie is posting, chunk by chunk
        assert time.monotonic() < deadline and th.is_alive(), outcome
        time.sleep(0.01)
    fence = acquire_lease(w, "t/run/post", "retry")  # the retried attempt takes over
    takeover_count["n"] = S.counts(w)["payment_instructions"]
    th.join(120)
    assert "lost" in str(outcome.get("error", "")), outcome
    assert S.counts(w)["payment_instructions"] == takeover_count["n"] < expected["instructions"]
    ins = w.lending["payment_instructions"]
    with w.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.max(ins.c.fence))).scalar_one() < fence
    _post(w, holder="retry")  # a retry takes the lease again and finishes the work
    assert S.counts(w)["payment_instructions"] == expected["instructions"]


def _concurrent_posters(url: str, n: int) -> list[subprocess.Popen]:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
            "from chainlend import settings; settings.apply_embedded_defaults()\n"
            "import disburse_seed as S\n"
            "from chainlend.disbursement_ops import post_instructions\n"
            "r = post_instructions(S.INTERVAL_END, scope='t/run-' + sys.argv[1] + '/post', holder=sys.argv[1],\n"
            f"                      run_id='run-' + sys.argv[1], warehouse=S.warehouse({url!r}), chunk_size=7)\n"
            "print(r['instructions'], r['held_over_limit'])\n")
    return [subprocess.Popen([sys.executable, "-c", code, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for k in range(n)]


def test_two_runs_at_once_on_postgres_no_double_payment_no_over_limit(postgres_url, tmp_path, rail):
    w = S.warehouse(postgres_url)
    # each dealer's limit fits 3 of its 8 loans (10M fen each): the limit binds under concurrency
    expected = S.seed(w, dealers=30, loans_per_dealer=8, dealer_limit_fen=35_000_000)
    procs = _concurrent_posters(postgres_url, 2)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    posted = [int(out.split()[0]) for out, _ in outs]
    t = w.lending
    with w.engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(t["payment_instructions"])).scalar_one()
        dup = conn.execute(sa.text("SELECT count(*) FROM (SELECT idempotency_key FROM payment_instructions "
                                   "GROUP BY idempotency_key HAVING count(*) > 1) d")).scalar_one()
        over = conn.execute(sa.text(
            "SELECT count(*) FROM ledger_accounts a JOIN borrower_limits l ON l.borrower_type = a.borrower_type "
            "AND l.borrower_id = a.borrower_id WHERE a.balance_fen > l.limit_fen")).scalar_one()
        dealer_instr = conn.execute(sa.text("SELECT count(*) FROM payment_instructions WHERE borrower_type = "
                                            "'dealer'")).scalar_one()
    assert dup == 0 and over == 0
    assert sum(posted) == n  # what each run says it posted adds up: nobody posted the same payment
    assert dealer_instr == 30 * 3  # 3 loans fit each dealer's limit; the other 5 are held
    sent, rec = _send_and_reconcile(w, rail, _post(w, holder="late"))
    assert rec.reconciled and rec.held_items == 30 * 5
    assert rail.totals()["count"] == n and expected["instructions"] == n + 30 * 5


def test_rail_times_out_after_accepting_retry_returns_stored_result(tmp_path, rail):
    from chainlend.disbursement_ops import PaymentRail, RailError, send_outbox

    w = S.warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    expected = S.seed(w)
    _post(w)
    client = PaymentRail(rail.url, timeout_s=1.0)
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(f"{rail.url}/_faults", data=json.dumps(
        {"stall_after_accept_s": 3.0, "count": 1}).encode(), method="POST"), timeout=5).read()
    with pytest.raises(RailError, match="did not answer"):
        send_outbox(client, w)
    assert rail.totals()["count"] == expected["instructions"]  # the rail accepted them all before stalling
    ob = w.lending["payment_outbox"]
    with w.engine.connect() as conn:
        assert set(conn.execute(sa.select(ob.c.status)).scalars()) == {"pending"}
    result = send_outbox(client, w)  # Airflow's retry
    assert result == {"sent": expected["instructions"], "accepted": 0, "replayed": expected["instructions"]}
    assert rail.totals() == {"count": expected["instructions"], "amount_fen": expected["amount_fen"]}
    with w.engine.connect() as conn:
        rows = conn.execute(sa.select(ob.c.idempotency_key, ob.c.rail_reference, ob.c.status, ob.c.attempts)).all()
    for key, ref, status, attempts in rows:
        assert status == "accepted" and attempts == 2 and ref == rail.lookup(key)["payment_id"]


def test_frozen_borrower_is_held_at_posting_and_paid_once_unfrozen(tmp_path, rail):
    w = S.warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    expected = S.seed(w)
    S.control(w, "dealer", "D00001", frozen=True)
    S.control(w, "supplier", "S00002", frozen=True)
    posted = _post(w)
    assert posted["held_frozen"] == 4 + 2  # the dealer's 4 loans, the supplier's 2 batch instructions
    t = w.lending
    with w.engine.connect() as conn:
        paid_to = set(conn.execute(sa.select(t["payment_instructions"].c.borrower_id)).scalars())
        holds = conn.execute(sa.select(t["payment_holds"].c.borrower_id, t["payment_holds"].c.reason)).all()
    assert "D00001" not in paid_to and "S00002" not in paid_to
    assert {r for r in holds} == {("D00001", "frozen"), ("S00002", "frozen")}
    _, rec = _send_and_reconcile(w, rail, posted)
    assert rec.reconciled and rec.held_items == 4 + 6
    S.control(w, "dealer", "D00001", frozen=False, limit_cut=1.0, level="green")
    S.control(w, "supplier", "S00002", frozen=False, limit_cut=1.0, level="green")
    posted = _post(w, holder="later")
    assert posted["instructions"] == 6 and S.counts(w)["payment_holds"] == 0
    _, rec = _send_and_reconcile(w, rail, posted)
    assert rec.reconciled and rec.instructions == expected["instructions"]


def test_limit_cut_holds_what_does_not_fit(tmp_path):
    w = S.warehouse(f"sqlite:///{tmp_path / 'warehouse.db'}")
    S.seed(w, dealers=1, loans_per_dealer=4, suppliers=0, dealer_limit_fen=40_000_100)
    S.control(w, "dealer", "D00000", frozen=False, limit_cut=0.5, level="orange")  # 20M fen of headroom
    posted = _post(w)
    assert posted["instructions"] == 2 and posted["held_over_limit"] == 2


DIALECTS = ["sqlite", "postgresql", pytest.param("mariadb", marks=pytest.mark.mariadb)]


def _url(dialect: str, tmp_path, request) -> str:
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'w.db'}"
    return request.getfixturevalue("postgres_url" if dialect == "postgresql" else "mariadb_url")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_ledger_entries_are_immutable(dialect, tmp_path, request):
    w = S.warehouse(_url(dialect, tmp_path, request))
    S.seed(w, dealers=1, suppliers=1)
    _post(w)
    e, p = w.lending["ledger_entries"], w.lending["ledger_postings"]
    for stmt in (sa.update(e).values(amount_fen=e.c.amount_fen + 1), sa.update(e).values(debit_account="nostro"),
                 sa.delete(e)):
        with pytest.raises(sa.exc.DatabaseError, match="ledger_entries are immutable"), w.engine.begin() as conn:
            conn.execute(stmt)
    for stmt in (sa.update(p).values(debit_fen=p.c.debit_fen + 1), sa.delete(p)):  # a view: not writable
        with pytest.raises(sa.exc.DatabaseError), w.engine.begin() as conn:
            conn.execute(stmt)
    counts = S.counts(w)
    assert len(S.ledger(w)) == counts["ledger_postings"] == 2 * counts["ledger_entries"] == 2 * counts[
        "payment_instructions"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_database_refuses_a_second_instruction_item_or_entry_and_bad_entries(dialect, tmp_path, request):
    from chainlend.lending_ops import _instructed
    from lending.disbursement import ENTRY_COLUMNS, entry_legs, reversal_entries

    w = S.warehouse(_url(dialect, tmp_path, request))
    S.seed(w, dealers=1, loans_per_dealer=2, suppliers=1, credits_per_supplier=2)
    _post(w)
    t = w.lending
    pi, ii, le = t["payment_instructions"], t["instruction_items"], t["ledger_entries"]
    with w.engine.connect() as conn:
        loan = dict(conn.execute(sa.select(pi).where(pi.c.kind == "dealer_loan").order_by(pi.c.instruction_no)
                                 ).mappings().first())
        top = conn.execute(sa.select(sa.func.max(pi.c.instruction_no))).scalar_one()
        item = dict(conn.execute(sa.select(ii).order_by(ii.c.item_key)).mappings().first())
        entries = pd.read_sql(sa.select(le).order_by(le.c.entry_no), conn)
        view = pd.read_sql(sa.select(t["ledger_postings"]).order_by(t["ledger_postings"].c.posting_id), conn)
    assert S.counts(w)["instruction_items"] == 2  # the credits; a loan has no item row (its key is unique)
    # what approval reads so as not to decide a paid loan again: the instruction's key
    assert _instructed(w, [loan["idempotency_key"], "loan:NOPE"], "loan:") == {loan["idempotency_key"][5:]}
    # the view shows each entry as its debit leg and its credit leg
    legs = entry_legs(entries[[*ENTRY_COLUMNS, "instruction_id"]]).assign(
        posting_id=np.concatenate([2 * entries.entry_no - 1, 2 * entries.entry_no]))
    cols = ["posting_id", "entry_id", "instruction_id", "account", "debit_fen", "credit_fen"]
    assert view[cols].astype(str).values.tolist() == legs.sort_values("posting_id")[cols].astype(str).values.tolist()
    entry = {c: entries[c].iloc[0] for c in [*ENTRY_COLUMNS, "instruction_id"]}
    entry = {**{k: v.item() if hasattr(v, "item") else v for k, v in entry.items()}, "posted_at": S.DECIDED}
    refused = [
        (pi, {**loan, "instruction_no": top + 1, "instruction_id": "pi_again"}, "uq_payment_instructions_key|idem"),
        (ii, {**item, "instruction_id": "pi_other"}, "item_key|instruction_items_pkey|PRIMARY"),
        (le, entry, "uq_ledger_entries_entry|entry_id"),
        (le, {**entry, "entry_id": "test:zero", "amount_fen": 0}, "ck_entry_amount_positive"),
        (le, {**entry, "entry_id": "test:negative", "amount_fen": -5}, "ck_entry_amount_positive"),
        (le, {**entry, "entry_id": "test:one-account", "credit_account": entry["debit_account"]},
         "ck_entry_two_accounts"),
    ]
    for table, row, match in refused:
        with pytest.raises(sa.exc.DatabaseError, match=match), w.engine.begin() as conn:
            conn.execute(table.insert(), row)
    # a correction is a new entry: the reversal posts once
    rev = reversal_entries(entries, [entry["entry_id"]]).assign(instruction_id=entry["instruction_id"],
                                                                posted_at=S.DECIDED)
    with w.engine.begin() as conn:
        conn.execute(le.insert(), rev.to_dict("records"))
    with pytest.raises(sa.exc.DatabaseError, match="uq_ledger_entries_entry|entry_id"), w.engine.begin() as conn:
        conn.execute(le.insert(), rev.to_dict("records"))
    assert S.counts(w)["ledger_entries"] == len(entries) + 1


def test_repayments_post_entries_once_and_the_report_reads_the_ledger(tmp_path, rail):
    from chainlend.disbursement_ops import EVERYTHING, reconcile_ledger
    from chainlend.lending_ops import SUPPLIER_CREDIT_TERM_DAYS
    from chainlend.monitoring_ops import post_repayments
    from chainlend.report import disbursement_section
    from sources.contract import table as contract_table

    w = S.warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    expected = S.seed(w, dealers=2, loans_per_dealer=2, suppliers=2, credits_per_supplier=2)
    posted = _post(w)
    _send_and_reconcile(w, rail, posted)
    repayments = w.published(contract_table("dealer", "loan_repayments"))
    w.metadata.create_all(w.engine)
    paid_at = S.DECIDED + dt.timedelta(days=30)
    with w.engine.begin() as conn:  # dealer D00000 repays its loan LA000000001 (10,000,001 fen)
        conn.execute(repayments.insert(), {"repayment_id": "R1", "application_id": "LA000000001", "dealer_id": "D00000",
                                           "amount_fen": 10_000_001, "due_on": S.DAY, "paid_at": paid_at,
                                           "updated_at": paid_at, "_batch_id": "test", "_seq": 1})
    later = S.DAY + dt.timedelta(days=SUPPLIER_CREDIT_TERM_DAYS + 1)  # every supplier credit settled too
    result = post_repayments(later, w)
    supplier_instructions = expected["instructions"] - expected["loans"]
    assert (result["loans"], result["supplier_settlements"]) == (1, supplier_instructions)
    assert post_repayments(later, w)["repayments_posted"] == 0  # posted once: the entry ids are unique
    acc = w.lending["ledger_accounts"]
    with w.engine.connect() as conn:
        balances = dict(conn.execute(sa.select(acc.c.account, acc.c.balance_fen)).all())
    # each dealer drew LA…0000 (10,000,000 fen) and LA…0001 (10,000,001 fen); D00000 repaid the second
    assert (balances["loans_receivable:D00000"], balances["loans_receivable:D00001"]) == (10_000_000, 20_000_001)
    assert {a: b for a, b in balances.items() if a.startswith("supplier")} == {
        "supplier_receivable:S00000": 0, "supplier_receivable:S00001": 0}
    assert reconcile_ledger(S.INTERVAL_END, dt.datetime.fromisoformat(posted["cutoff"]), w, scope=EVERYTHING).reconciled
    report = disbursement_section(w, rail.totals())
    entries = expected["instructions"] + 1 + supplier_instructions
    assert (report["instructions"], report["postings"], report["repayments_posted"]) == (
        expected["instructions"], 2 * entries, 1 + supplier_instructions)
    assert report["balanced"] and report["reconciled"] and report["differences"] == []
    assert report["outbox"] == {"accepted": expected["instructions"]} and report["amount_fen"] == expected["amount_fen"]


def _first(w, sql: str):
    with w.engine.connect() as conn:
        return conn.execute(sa.text(sql)).first()


def _corrupt_view(w) -> list[str]:
    """``ledger_postings`` redefined so the credit leg of the first entry is 1 fen more."""
    from chainlend.lending_store import _POSTINGS_VIEW

    bad = _POSTINGS_VIEW.replace("0 AS debit_fen, amount_fen AS credit_fen",
                                 "0 AS debit_fen, CASE WHEN entry_no = 1 THEN amount_fen + 1 ELSE amount_fen END "
                                 "AS credit_fen")
    assert bad != _POSTINGS_VIEW
    return ["DROP VIEW ledger_postings", bad]


# (id, SQL that corrupts the books (a callable of the warehouse: statements), the differences named)
CORRUPTIONS = [
    ("missing loan instruction",
     lambda w: ["DELETE FROM payment_instructions WHERE idempotency_key = 'loan:LA000010001'"],
     {"payable items neither instructed nor held", "outbox rows without an instruction"}),
    ("missing instruction item",
     lambda w: [f"DELETE FROM instruction_items WHERE item_key = '{_first(w, 'SELECT min(item_key) FROM instruction_items')[0]}'"],
     {"payable items neither instructed nor held", "instructions whose amount ≠ the sum of their items"}),
    ("item amount changed",
     lambda w: [f"UPDATE instruction_items SET amount_fen = amount_fen + 1 WHERE item_key = "
                f"'{_first(w, 'SELECT min(item_key) FROM instruction_items')[0]}'"],
     {"items whose instructed amount differs from the decision", "instructions whose amount ≠ the sum of their items"}),
    ("instructed and held",
     lambda w: ["INSERT INTO payment_holds (item_key, borrower_type, borrower_id, amount_fen, reason, source_batch, "
                "run_id, checked_at) SELECT min(item_key), 'supplier', 'S00000', 1, 'frozen', 'x', 'x', "
                "'2026-03-02 00:00:00' FROM instruction_items"],
     {"payable items both instructed and held"}),
    ("decision declined after paying",
     lambda w: ["UPDATE loan_decisions SET decision = 'declined' WHERE application_id = 'LA000010001'"],
     {"instruction items that no decision or allocation pays"}),
    ("instruction amount changed",
     lambda w: ["UPDATE payment_instructions SET amount_fen = amount_fen + 1 WHERE kind = 'supplier_credit' AND "
                f"instruction_no = {_first(w, 'SELECT min(instruction_no) FROM payment_instructions WHERE kind = ' + chr(39) + 'supplier_credit' + chr(39))[0]}"],
     {"instructions whose amount ≠ the sum of their items", "instructions whose postings ≠ the amount",
      "outbox amounts ≠ instruction amounts"}),
    ("extra posting",
     lambda w: ["INSERT INTO ledger_entries (entry_id, instruction_id, debit_account, credit_account, amount_fen, "
                "borrower_type, borrower_id, posted_at) SELECT 'disb:extra', instruction_id, debit_account, "
                "credit_account, 5, borrower_type, borrower_id, posted_at FROM ledger_entries WHERE entry_id = "
                "'disb:loan:LA000010001'"],
     {"instructions whose postings ≠ the amount", "account balances ≠ the sum of their postings"}),
    ("unbalanced entry", _corrupt_view, {"unbalanced entries"}),
    ("wrong balance",
     lambda w: ["UPDATE ledger_accounts SET balance_fen = balance_fen + 1 WHERE account = 'loans_receivable:D00001'"],
     {"account balances ≠ the sum of their postings"}),
    ("missing outbox row",
     lambda w: ["DELETE FROM payment_outbox WHERE idempotency_key = 'loan:LA000010001'"],
     {"instructions missing from the outbox"}),
    ("outbox amount changed",
     lambda w: ["UPDATE payment_outbox SET amount_fen = amount_fen + 1 WHERE idempotency_key = 'loan:LA000010001'"],
     {"outbox amounts ≠ instruction amounts"}),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("corrupt", "expected"), [pytest.param(*c[1:], id=c[0]) for c in CORRUPTIONS])
def test_reconcile_names_each_difference_in_the_database(dialect, corrupt, expected, tmp_path, request):
    """The reconciliation the database computes (joins and aggregates over the scope) fails on
    each kind of corruption of the stored books and names it, with an example key."""
    from chainlend.disbursement_ops import reconcile_ledger
    from lending.disbursement import ReconciliationError

    w = S.warehouse(_url(dialect, tmp_path, request))
    S.seed(w, dealers=3, loans_per_dealer=3, suppliers=2, credits_per_supplier=4)
    S.control(w, "dealer", "D00002", frozen=True)  # held items are part of the proof
    posted = _post(w)
    cutoff = dt.datetime.fromisoformat(posted["cutoff"])
    rec = reconcile_ledger(S.INTERVAL_END, cutoff, w)
    assert rec.reconciled and rec.held_items == 3 and rec.instructions == 6 + 4
    statements = corrupt(w)
    with w.engine.begin() as conn:
        for sql in statements:
            conn.execute(sa.text(sql))
    with pytest.raises(ReconciliationError) as info:
        reconcile_ledger(S.INTERVAL_END, cutoff, w)
    named = {d.split(":")[0] for d in str(info.value).removeprefix("disbursement does not reconcile: ").split("; ")}
    assert named == expected, str(info.value)
    assert "(e.g. [" in str(info.value)


def test_the_rail_pays_a_batch_once_per_key_in_one_transaction(rail):
    """A batch request: each payment by its own idempotency key (a key again in the same batch or
    a later one replays the stored payment, a key reused with another amount is refused, a bad
    payment is refused alone), the new ones stored together."""
    from chainlend.disbursement_ops import PaymentRail

    client = PaymentRail(rail.url, timeout_s=5)

    def pay(key: str, amount: int, **kw) -> dict:
        return {"idempotency_key": key, "instruction_id": f"pi_{key}", "payee_type": "dealer", "payee_id": "D1",
                "amount_fen": amount, **kw}

    first = client.pay_batch([pay("loan:A", 100), pay("loan:B", 200), pay("loan:A", 100), pay("loan:C", 0),
                              pay("loan:B", 201), {**pay("x", 5), "idempotency_key": 7}])
    assert [r["code"] for r in first] == [201, 201, 200, 400, 409, 400]
    assert first[2]["payment_id"] == first[0]["payment_id"] and first[2]["replayed"]
    assert first[4]["stored"]["amount_fen"] == 200
    assert rail.totals() == {"count": 2, "amount_fen": 300}
    again = client.pay_batch([pay("loan:B", 200), pay("loan:A", 100), pay("loan:D", 400)])
    assert [r["code"] for r in again] == [200, 200, 201]
    assert [r["payment_id"] for r in again[:2]] == [first[1]["payment_id"], first[0]["payment_id"]]
    assert rail.lookup("loan:D")["amount_fen"] == 400 and rail.totals() == {"count": 3, "amount_fen": 700}


def test_a_rerun_reads_only_what_has_no_instruction_and_a_late_credit_is_named_not_paid(tmp_path):
    """The second run finds every instruction of the scope by its key in the database (nothing
    re-planned); a credit allocated later into a micro-batch whose instruction was already paid is
    not paid by a second instruction of the same key: reconciliation names it."""
    from chainlend.disbursement_ops import reconcile_ledger
    from lending.disbursement import ReconciliationError

    w = S.warehouse(f"sqlite:///{tmp_path / 'w.db'}")
    expected = S.seed(w)
    first = _post(w)
    assert (first["instructions"], first["already_instructed"]) == (expected["instructions"], 0)
    second = _post(w, holder="again")
    assert (second["instructions"], second["items"], second["already_instructed"], second["planned"]) == (
        0, 0, expected["instructions"], expected["instructions"])
    c = w.lending["supplier_credits"]
    with w.engine.begin() as conn:
        row = dict(conn.execute(sa.select(c).where(c.c.amount_fen > 0).order_by(c.c.credit_id)).mappings().first())
        conn.execute(c.insert(), {**row, "credit_id": "LATE:" + row["supplier_id"], "vin": "LATE"})
    third = _post(w, holder="late")
    assert third["instructions"] == 0 and S.counts(w)["payment_instructions"] == expected["instructions"]
    with pytest.raises(ReconciliationError, match=r"payable items neither instructed nor held: 1 \(e\.g\. "
                                                  r"\['credit:LATE:S0000\d'\]\)"):
        reconcile_ledger(S.INTERVAL_END, dt.datetime.fromisoformat(third["cutoff"]), w)


@pytest.mark.parametrize("values", [(1, 2, 3), (1, None), (None,), (1, 1.5), (2.0, 3.0), (2**70, 1), ("7", "8"),
                                    (True, 1), (), (-(2**63), 2**63 - 1)], ids=repr)
def test_numeric_columns_read_as_pandas_to_numeric_reads_them(values):
    """The reader's fast path for integer columns gives what ``pandas.to_numeric`` gives (dtype and
    values): a float or a NULL among them is kept, not truncated into int64."""
    from chainlend.disbursement_ops import _numeric

    got, want = _numeric(values), pd.to_numeric(pd.Series(values, dtype=object))
    assert got.dtype == want.dtype
    pd.testing.assert_series_equal(got, want)
