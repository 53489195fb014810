"""Quality alert e-mails, received by a real SMTP server on 127.0.0.1, from real DAG runs."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa

from chainlend.alerts import mask
from chainlend.systems import Warehouse
from sources.simulator import FaultRates, Simulator

START = dt.date(2026, 3, 2)
OWNERS = {"erp": ["erp-owner@test.example"], "dealer": ["dealer-owner@test.example", "risk-data@test.example"]}


@pytest.fixture
def env(airflow_db, sqlite_urls, use_connections, mailbox, monkeypatch, tmp_path):
    use_connections(erp_default=sqlite_urls["erp"], dealer_default=sqlite_urls["dealer"],
                    warehouse_default=sqlite_urls["warehouse"])
    monkeypatch.setenv("AIRFLOW_VAR_CHAINLEND_DATA_OWNERS", json.dumps(OWNERS))
    monkeypatch.setenv("CHAINLEND_GX_DIR", str(tmp_path / "gx"))
    monkeypatch.setenv("CHAINLEND_DATA_DOCS_DIR", str(tmp_path / "docs"))
    sim = Simulator(sqlite_urls["erp"], sqlite_urls["dealer"], sqlite_urls["sim"])
    sim.init(seed=4, scale="tiny", faults=FaultRates(negative_amount=0.03, orphan_fk=0.03, null=0.02), start=START)
    return sim, sqlite_urls, mailbox


def _run(dag_id: str, day: dt.date):
    from chainlend.runtime import load_dag, run_dag, task_states

    dag_run = run_dag(load_dag(dag_id), day)
    return dag_run, task_states(dag_run)


def _body(msg) -> str:
    part = msg.get_body(preferencelist=("html", "plain"))
    return part.get_content()


def _personal_values(dealer_url: str) -> set[str]:
    engine = sa.create_engine(dealer_url)
    with engine.connect() as conn:
        df = pd.read_sql("SELECT dealer_name, owner_name, owner_id_number, phone FROM dealers", conn)
    engine.dispose()
    return {str(v) for v in df.to_numpy().ravel() if v is not None and len(str(v)) >= 5}


def test_one_mail_per_failing_batch_with_owners_counts_samples_and_docs_link(env):
    sim, urls, mailbox = env
    (day,) = sim.advance(1)
    dag_run, states = _run("ingest_dealer", day)
    assert str(dag_run.state) == "success", states
    warehouse = Warehouse.from_url(urls["warehouse"])
    results = warehouse.read_table(warehouse.gate_results)
    failing = results[results.failures != "[]"]
    assert len(failing) >= 2
    mails = mailbox.messages()
    assert len(mails) == len(failing)
    by_subject = {m["Subject"]: m for m in mails}
    pii = _personal_values(urls["dealer"])
    for r in failing.itertuples():
        (subject,) = [s for s in by_subject if r.batch_id in s]
        assert subject.startswith(f"[chainlend] dealer.{r.table_name} batch {r.batch_id}: ")
        assert f"{r.quarantined:,} row(s) quarantined" in subject
        msg = by_subject[subject]
        assert sorted(a.strip() for a in msg["To"].split(",")) == sorted(OWNERS["dealer"])
        body = _body(msg)
        for f in json.loads(r.failures):
            assert f["check"] in body and f"<td>{f['count']:,}</td>" in body
            for key in f["sample_keys"]:
                assert key in body
        assert r.docs_url in body and r.docs_url.startswith("file://")
        assert not [v for v in pii if v in body], "personal data leaked into an alert"

    # a re-run (or a retried task) sends nothing new
    dag_run, _ = _run("ingest_dealer", day)
    assert str(dag_run.state) == "success"
    assert len(mailbox.messages()) == len(mails)
    assert len(warehouse.read_table(warehouse.alerts)) == len(mails)


def test_a_renamed_column_blocks_the_batch_and_mails_the_owners(env):
    sim, urls, mailbox = env
    (day,) = sim.advance(1)
    src = sa.create_engine(urls["erp"])
    with src.begin() as conn:
        conn.execute(sa.text("ALTER TABLE payables RENAME COLUMN amount_fen TO amount"))
    src.dispose()
    dag_run, states = _run("ingest_erp", day)
    assert str(dag_run.state) == "failed"
    assert states["land_payables"] == "failed" and states["publish"] == "upstream_failed"
    warehouse = Warehouse.from_url(urls["warehouse"])
    g = warehouse.read_table(warehouse.gate_results).set_index("table_name")
    assert bool(g.loc["payables", "blocked"])
    detail = json.loads(g.loc["payables", "failures"])[0]
    assert detail["check"] == "schema:columns" and "amount_fen" in detail["detail"] and "'amount'" in detail["detail"]
    blocked = [m for m in mailbox.messages() if "erp.payables" in m["Subject"]]
    assert len(blocked) == 1 and "BLOCKED" in blocked[0]["Subject"]
    assert "amount_fen" in _body(blocked[0]) and "not published" in _body(blocked[0])
    assert blocked[0]["To"] == OWNERS["erp"][0]


@pytest.mark.parametrize(("value", "masked"), [("13812345678", "13*******78"), ("Wang", "W***"),
                                               ("110101199001011234", "1101**********1234")])
def test_mask(value, masked):
    assert mask(value) == masked
