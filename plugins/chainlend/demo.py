"""``make demo``: simulate a history and N business days, run the daily DAGs for each under Airflow.

The sources first play ``history`` business days before the demo window (the OEM and the dealer
platform have been running for months when the bank connects): the first day's ingestion lands
that history as its initial load, ``train_risk_models`` then trains every family on it and
promotes the first champions, and the daily DAGs run for each of the ``days`` demo days.

Starts from a clean state each time (the simulated sources, the warehouse, the MLflow store and
the Airflow metadata under ``var/`` are recreated), so the report is the same for the same seed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

from chainlend import settings

DEMO_START = dt.date(2026, 3, 2)  # a Monday
DAILY_DAGS = ("ingest_erp", "ingest_dealer", "approve_dealer_loans", "allocate_supplier_credit", "disburse_credit",
              "monitor_post_loan")
HISTORY_DAYS = 150  # business days the sources ran before the demo window (~7 months)
# The supplier label (60+ DPD within 12 months) cannot mature on 7 months of history: the demo
# trains supplier_pd on a 90-day horizon, said in the validation pack's data window and README.
DEMO_SUPPLIER_HORIZON_DAYS = "90"


def _reset_state(var: Path) -> None:
    for path in (var / "sources", var / "demo", var / "gx", var / "data_docs", var / "mlflow", var / "models"):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    for name in ("warehouse.db", "warehouse.db-wal", "warehouse.db-shm"):
        (var / name).unlink(missing_ok=True)
    for name in ("airflow.db", "airflow.db-wal", "airflow.db-shm"):
        (var / "airflow" / name).unlink(missing_ok=True)


def history_start(days: int) -> dt.date:
    """The first business day of a ``days``-business-day history ending the day before DEMO_START."""
    import numpy as np

    return np.busday_offset(np.datetime64(DEMO_START, "D"), -days, roll="forward").astype(dt.date)


def run_demo(*, days: int, scale: str, seed: int, faults: str, history: int = HISTORY_DAYS,
             progress: bool = True) -> dict:
    from tqdm import tqdm

    from chainlend.alerts import gx_paths
    from chainlend.connections import sqlalchemy_url
    from chainlend.mail import SmtpSink
    from chainlend.quality import validator_for
    from chainlend.report import (
        approval_section,
        disbursement_section,
        early_warning_section,
        ingest_section,
        models_section,
        quality_section,
        supplier_credit_section,
        write_report,
    )
    from chainlend.runtime import load_dag, migrate_metadata_db, run_dag, task_states
    from chainlend.systems import Warehouse
    from sources.payment_rail import PaymentRailServer
    from sources.simulator import FaultRates, Simulator

    var = settings.var_dir()
    t0 = time.perf_counter()
    # a failing task retries after 5 s in the demo, not the production minute (read at DAG parse)
    os.environ.setdefault("CHAINLEND_RETRY_DELAY_S", "5")
    _reset_state(var)
    migrate_metadata_db()
    sim = Simulator(
        sqlalchemy_url(settings.ERP_CONN_ID).render_as_string(hide_password=False),
        sqlalchemy_url(settings.DEALER_CONN_ID).render_as_string(hide_password=False),
        os.environ["CHAINLEND_SIM_URL"],
    )
    rates = FaultRates.demo() if faults == "demo" else FaultRates.none()
    sim.init(seed=seed, scale=scale, faults=rates, start=history_start(history) if history else DEMO_START)
    if history:
        sim.advance(history)
    os.environ.setdefault("CHAINLEND_SUPPLIER_HORIZON_DAYS", DEMO_SUPPLIER_HORIZON_DAYS)
    warehouse = Warehouse.from_conn()
    warehouse.create_all()
    dags = {dag_id: load_dag(dag_id) for dag_id in DAILY_DAGS}
    training = load_dag("train_risk_models")

    # the data owners' mailbox: a real SMTP server on loopback storing mail in var/demo/mail/
    sink = SmtpSink(var / "demo" / "mail")
    os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = sink.connection_json()
    # the payment rail disbursement pays through: a real HTTP server on loopback (var/demo/rail.db)
    rail = PaymentRailServer(var / "demo" / "rail.db")
    os.environ["AIRFLOW_CONN_PAYMENT_RAIL_DEFAULT"] = json.dumps(
        {"conn_type": "http", "host": rail.host, "port": rail.port, "extra": {"timeout_s": 30}})
    sink.__enter__()
    rail.__enter__()
    try:
        runs = _play(sim, dags, training, days, progress, run_dag, task_states, tqdm)
        rail_totals = rail.totals()
    finally:
        rail.__exit__(None, None, None)
        sink.__exit__(None, None, None)
    docs_index = validator_for(*gx_paths()).build_index()

    report = {
        "run": {"days": days, "scale": scale, "seed": seed, "faults": faults,
                "first_day": DEMO_START.isoformat(), "last_day": sim.current_date.isoformat(),
                "wall_s": round(time.perf_counter() - t0, 1), "mailbox": str(sink.maildir)},
        "dag_runs": runs,
        "ingest": ingest_section(warehouse),
        "quality": quality_section(warehouse, str(docs_index)),
        "models": models_section(),
        "approval": approval_section(warehouse),
        "supplier_credit": supplier_credit_section(warehouse),
        "disbursement": disbursement_section(warehouse, rail_totals),
        "early_warning": early_warning_section(warehouse),
    }
    json_path, md_path = write_report(var / "demo", report)
    report["run"]["report_json"] = str(json_path)
    report["run"]["report_md"] = str(md_path)
    return report


def _play(sim, dags, training, days, progress, run_dag, task_states, tqdm) -> list[dict]:
    runs: list[dict] = []
    bar = tqdm(total=days * (1 + len(dags)) + 1, unit="stage", disable=not progress, dynamic_ncols=True)
    for i in range(days):
        bar.set_postfix_str("simulate")
        (day,) = sim.advance(1)
        bar.update(1)
        daily = list(dags.items())
        if i == 0:  # the history has landed: train the first champions before anything decides
            daily.insert(2, (training.dag_id, training))
        for dag_id, dag in daily:
            bar.set_postfix_str(f"{day} {dag_id}")
            dag_run = run_dag(dag, day)
            states = task_states(dag_run)
            failed = sorted(t for t, s in states.items() if s not in ("success", "skipped"))
            runs.append({"dag_id": dag_id, "business_date": day.isoformat(),
                         "state": str(dag_run.state), "failed_tasks": failed})
            if dag_id == "monitor_post_loan" and states.get("request_retrain") == "success":
                # the model_retrain_request asset event: the scheduler would start train_risk_models
                bar.set_postfix_str(f"{day} train_risk_models (retrain requested)")
                retrain = run_dag(training, day)
                runs.append({"dag_id": training.dag_id, "business_date": day.isoformat(),
                             "state": str(retrain.state), "trigger": "model_retrain_request",
                             "failed_tasks": sorted(t for t, s in task_states(retrain).items()
                                                    if s not in ("success", "skipped"))})
            bar.update(1)
    bar.close()
    return runs
