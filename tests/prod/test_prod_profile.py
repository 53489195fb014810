"""The production profile for real: Airflow on PostgreSQL with the CeleryExecutor and a Redis
broker, an MLflow tracking server on PostgreSQL, the warehouse and the dealer source on
PostgreSQL, the ERP source on MariaDB. ``chainlend.prod.up`` starts the scheduler, the
dag-processor, the API server, a Celery worker, the MLflow server and the loopback stand-ins (SMTP,
payment rail) as separate processes; every DAG is triggered through Airflow's REST API and run by
the scheduler on the Celery worker; ``chainlend.prod.down`` stops them by PID and the test checks
that no process is left.

The simulated history is ingested and the three model families trained (through the scheduler
too), then one full business day runs: both ingestions, approval, supplier allocation,
disbursement and post-loan monitoring, and its business outcomes are asserted in the databases,
the MLflow server and the mailbox.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import uuid
from pathlib import Path

import pytest

from chainlend.mail import _free_port
from tests.conftest import MARIADB_ADMIN_URL, PG_ADMIN_URL, _service_missing

HISTORY = 160  # business days: 60 of feature burn-in, then enough matured loans to train on
START = dt.date(2025, 7, 7)
DAILY = ("ingest_erp", "ingest_dealer", "approve_dealer_loans", "allocate_supplier_credit", "disburse_credit",
         "monitor_post_loan")
RUN_TIMEOUT_S = 900
pytestmark = [pytest.mark.postgres, pytest.mark.mariadb, pytest.mark.timeout(2400)]


def _scale():
    from sources.simulator import Scale

    # small, with a stressed supplier base (as the demo's) so that supplier_pd has defaults to learn
    return Scale(dealers=80, tier1_suppliers=40, tier2_suppliers=100, vehicle_models=4, bom_lines_per_model=80,
                 vehicles_per_day=60, applications_per_day=600, supplier_target_pd=0.3)


def _require_services() -> None:
    import redis
    import sqlalchemy as sa

    problems = []
    for name, url in (("PostgreSQL", PG_ADMIN_URL), ("MariaDB", MARIADB_ADMIN_URL)):
        engine = sa.create_engine(url)
        try:
            with engine.connect():
                pass
        except sa.exc.OperationalError as exc:
            problems.append(f"{name}: {str(exc.orig or exc).splitlines()[0]}")
        finally:
            engine.dispose()
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        problems.append(f"Redis: {exc}")
    if problems:
        _service_missing("the production profile's services", RuntimeError("; ".join(problems)))


def _clean_environ() -> dict[str, str]:
    """This process's environment without the test session's embedded-profile settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW_", "AIRFLOW__", "CHAINLEND_", "MLFLOW_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The profile started for real on fresh databases; stopped by PID and dropped afterwards."""
    import psutil

    from chainlend import prod

    _require_services()
    var = tmp_path_factory.mktemp("prodvar")
    tag = uuid.uuid4().hex[:8]
    ports = {name: _free_port("127.0.0.1") for name in ("api_port", "mlflow_port", "smtp_port", "rail_port",
                                                         "log_server_port")}
    cfg = prod.ProdConfig(var=var, prefix=f"cle2e_{tag}", **ports,
                          queue=f"e2e_{tag}")
    path = prod.init(cfg)
    env = _clean_environ() | prod.read_env_file(path) | {
        "CHAINLEND_ENV_FILE": str(path),
        # runs come from the REST API only: no scheduled run for the wall-clock date
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "CHAINLEND_SUPPLIER_HORIZON_DAYS": "90",  # as the demo: 12 months cannot mature on 7
        "CHAINLEND_RETRY_DELAY_S": "5",
        "CHAINLEND_MODEL_APPROVAL": "auto",
        "CHAINLEND_GIT_COMMIT": "e2e",
    }
    pids: dict[str, int] = {}
    try:
        pids = prod.up(env)
        members = {p.pid for pid in pids.values() for p in prod._group(pid)}
        yield {"env": env, "cfg": cfg, "pids": pids, "var": var}
    finally:
        stopped = prod.down(env)
        left = [p for p in psutil.process_iter(["pid", "cmdline"])
                if p.info["pid"] in members and p.status() != psutil.STATUS_ZOMBIE] if pids else []
        left += [p for p in psutil.process_iter(["pid", "cmdline"]) if _mentions(p, str(var))]
        prod.drop_databases(cfg)
    assert set(stopped) == set(pids.values())
    assert not left, f"processes left behind: {[(p.pid, p.info['cmdline']) for p in left]}"


def _mentions(p, text: str) -> bool:
    """Whether a live process has ``text`` in its command line or environment (an orphan of ours)."""
    import psutil

    try:
        if p.status() == psutil.STATUS_ZOMBIE or p.pid == os.getpid():
            return False
        return any(text in a for a in (p.info["cmdline"] or [])) or any(text in v for v in p.environ().values())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _run_all(api, day: dt.date, dag_ids, *, conf: dict | None = None) -> dict[str, str]:
    runs = [(d, api.trigger(d, f"{day.isoformat()}T23:00:00Z", run_id=f"e2e__{d}__{day}", conf=conf))
            for d in dag_ids]
    return {d: s for (d, _), s in api.wait(runs, timeout=RUN_TIMEOUT_S).items()}


def test_one_business_day_through_the_scheduler_and_celery(profile):
    import sqlalchemy as sa
    from mlflow import MlflowClient

    from chainlend import prod
    from chainlend.mail import read_maildir
    from sources.simulator import FaultRates, Simulator

    env = profile["env"]
    cfg = profile["cfg"]
    erp_url = f"mysql+pymysql://{cfg.mariadb}/{cfg.database('erp')}"
    dealer_url, warehouse_url = cfg.pg_url("dealer"), cfg.pg_url("warehouse")
    sim = Simulator(erp_url, dealer_url, env["CHAINLEND_SIM_URL"])
    sim.init(seed=11, scale=_scale(), faults=FaultRates.none(), start=START)
    (*_, history_end) = sim.advance(HISTORY)

    api = prod.AirflowApi.from_env(env)
    assert api.dag_ids() == sorted([*DAILY, "train_risk_models"])
    for dag_id in (*DAILY, "train_risk_models"):
        api.set_paused(dag_id, False)

    # the bank connects: the history lands as the initial load, then the first champions
    assert _run_all(api, history_end, ("ingest_erp", "ingest_dealer")) == dict.fromkeys(
        ("ingest_erp", "ingest_dealer"), "success")
    assert _run_all(api, history_end, ("train_risk_models",)) == {"train_risk_models": "success"}

    # one full business day
    (day,) = sim.advance(1)
    sim.dispose()
    for stage in (("ingest_erp", "ingest_dealer"), ("approve_dealer_loans", "allocate_supplier_credit"),
                  ("disburse_credit",), ("monitor_post_loan",)):
        states = _run_all(api, day, stage)
        assert set(states.values()) == {"success"}, states

    # every task ran on the Celery worker, from the profile's queue
    tis = api.task_instances("disburse_credit", f"e2e__disburse_credit__{day}")
    assert {t["state"] for t in tis} == {"success"}
    assert {t["queue"] for t in tis} == {cfg.queue}
    assert all(t["hostname"] for t in tis)

    engine = sa.create_engine(warehouse_url)
    try:
        with engine.connect() as conn:
            def one(sql: str, **params):
                return conn.execute(sa.text(sql), params).scalar_one()

            # rows published for the day by both ingestions
            for source in ("erp", "dealer"):
                assert one("SELECT sum(published) FROM gate_results WHERE source = :s AND business_date = :d",
                           s=source, d=day) > 0
            assert one("SELECT count(*) FROM loan_decisions WHERE decision_batch LIKE :b",
                       b=f"approve.{day:%Y%m%d}%") > 0
            assert one("SELECT count(*) FROM supplier_credits WHERE line_off_on = :d", d=day) > 0
            instructions = one("SELECT count(*) FROM payment_instructions")
            assert instructions > 0
            assert one("SELECT count(*) FROM payment_outbox WHERE status = 'accepted'") == instructions
            # two legs per disbursement entry (monitoring has posted repayment entries too)
            assert one("SELECT count(*) FROM ledger_postings WHERE entry_id LIKE 'disb:%'") == 2 * instructions
            assert one("SELECT count(*) FROM (SELECT entry_id FROM ledger_postings GROUP BY entry_id "
                       "HAVING sum(debit_fen) <> sum(credit_fen)) x") == 0
            assert one("SELECT count(*) FROM watchlist WHERE as_of = :d", d=day) > 0
    finally:
        engine.dispose()

    # champions of all three families on the MLflow server
    client = MlflowClient(env["CHAINLEND_MLFLOW_TRACKING_URI"], registry_uri=env["CHAINLEND_MLFLOW_TRACKING_URI"])
    for family in ("dealer_pd", "supplier_pd", "post_loan_behaviour"):
        assert client.get_model_version_by_alias(family, "champion").version

    # the early-warning digest reached the (loopback) mail relay
    mails = read_maildir(profile["var"] / "prod" / "mail")
    assert any("warning" in (m["Subject"] or "").lower() for m in mails), [m["Subject"] for m in mails]
