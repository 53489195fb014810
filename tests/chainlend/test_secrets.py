"""Secrets: connections come from the environment (``AIRFLOW_CONN_…`` JSON) or a secrets backend,
and what a task prints or logs of them, renders into template fields or returns through XCom
never shows the secret.

The probe DAG (``tests/chainlend/dags/secrets_probe.py``) prints and logs a connection's password
and its ``api_token`` extra and the pseudonymisation key (served by the embedded profile's
secrets backend), and renders the password and token into its template fields. It runs through
Airflow's worker path (LocalExecutor → ``supervise_task`` → task process; see
``tests/chainlend/conftest.py``), whose supervisor writes the task log files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets

import pytest

DAY = dt.date(2026, 3, 2)


@pytest.fixture
def probe_secrets(monkeypatch) -> dict[str, str]:
    """A fresh password and token in the probe connection, from the environment (JSON form)."""
    values = {"password": f"pw-{secrets.token_urlsafe(12)}", "token": f"tok-{secrets.token_urlsafe(16)}"}
    monkeypatch.setenv("AIRFLOW_CONN_PROBE_API", json.dumps({
        "conn_type": "http", "host": "api.bank.example", "login": "svc-chainlend",
        "password": values["password"], "extra": {"api_token": values["token"], "timeout_s": 5}}))
    return values


def _pii_key() -> str:
    """The embedded profile's pseudonymisation key, read from the file the secrets backend serves."""
    from chainlend.pseudonym import PII_KEY_VARIABLE

    kwargs = json.loads(os.environ["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    with open(kwargs["variables_file_path"]) as fh:
        return json.load(fh)[PII_KEY_VARIABLE]


def _stored(dag_run) -> tuple[str, str]:
    """(rendered template fields, XCom values) stored for the run's task instances, as text."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rendered = session.query(RTIF).filter(RTIF.dag_id == dag_run.dag_id, RTIF.run_id == dag_run.run_id).all()
        xcoms = session.query(XComModel).filter(XComModel.dag_id == dag_run.dag_id,
                                                XComModel.run_id == dag_run.run_id).all()
        return (json.dumps({r.task_id: r.rendered_fields for r in rendered}, default=str),
                json.dumps({f"{x.task_id}.{x.key}": x.value for x in xcoms}, default=str))


def test_embedded_profile_serves_the_pii_key_from_a_secrets_backend():
    from chainlend.pseudonym import LOCAL_BACKEND, PII_KEY_ENV

    assert os.environ["AIRFLOW__SECRETS__BACKEND"] == LOCAL_BACKEND
    assert PII_KEY_ENV not in os.environ  # the key itself is not in any process environment
    path = json.loads(os.environ["AIRFLOW__SECRETS__BACKEND_KWARGS"])["variables_file_path"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert len(bytes.fromhex(_pii_key())) == 32


def test_worker_task_logs_rendered_fields_and_xcom_hide_the_secrets(worker_path, probe_secrets):
    dag_run = worker_path.run(worker_path.load("secrets_probe"), DAY)
    assert str(dag_run.state) == "success"
    hidden = {**probe_secrets, "pii key": _pii_key()}

    events = worker_path.log_events(dag_run)
    assert set(events) == {"use_connection", "resolve_again"}, events.keys()
    text = {task: "\n".join(json.dumps(e) for e in ev) for task, ev in events.items()}
    for task, log_text in text.items():
        leaked = [name for name, value in hidden.items() if value in log_text]
        assert not leaked, f"{task} log shows {leaked}"
    # the lines are there, with the secrets replaced by ***: the probe did print and log them
    lines = [e["event"] for e in events["use_connection"]]
    assert "PRINTED password=*** token=***" in lines
    assert "LOGGED password=*** token=***" in lines
    assert "RENDERED password=*** token=***" in lines
    assert "PII KEY ***" in lines
    assert "DOWNSTREAM password=***" in [e["event"] for e in events["resolve_again"]]

    rendered, xcom = _stored(dag_run)
    assert '"***"' in rendered and not [n for n, v in hidden.items() if v in rendered], rendered
    assert not [n for n, v in hidden.items() if v in xcom], xcom
    assert '"conn_id": "probe_api"' in xcom  # a pointer went through XCom, not the secret


def test_in_process_dag_test_stores_no_secret_in_rendered_fields_or_xcom(test_bundle, probe_secrets):
    """The path the demo and the other DAG tests use (``dag.test()`` in-process): rendered fields
    and XCom are as clean. (Its console output is not masked and it writes no task log file: see
    ``tests/chainlend/conftest.py``; the project's tasks never print a connection's secrets.)"""
    from chainlend.runtime import run_dag

    dag_run = run_dag(test_bundle("secrets_probe"), DAY)
    assert str(dag_run.state) == "success"
    rendered, xcom = _stored(dag_run)
    hidden = {**probe_secrets, "pii key": _pii_key()}
    assert '"***"' in rendered and not [n for n, v in hidden.items() if v in rendered], rendered
    assert not [n for n, v in hidden.items() if v in xcom], xcom
    assert '"conn_id": "probe_api"' in xcom
