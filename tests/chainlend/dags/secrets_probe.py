"""Test-only DAG (a bundle of its own, never in ``dags/``): tasks that print and log a connection's
password and token extra and the pseudonymisation key, render them into template fields, and
pass a pointer (the connection id), never the secret, through XCom. ``tests/chainlend/test_secrets.py``
runs it through Airflow's worker path and reads the task logs, rendered fields and XComs."""

from __future__ import annotations

import datetime as dt
import logging

from airflow.sdk import dag, task

PROBE_CONN_ID = "probe_api"
log = logging.getLogger(__name__)


@dag(dag_id="secrets_probe", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False,
     tags=["test"], doc_md=__doc__)
def secrets_probe():
    @task(retries=0)
    def use_connection(rendered_password: str, rendered_token: str) -> dict:
        from airflow.sdk import BaseHook, Variable

        conn = BaseHook.get_connection(PROBE_CONN_ID)
        token = conn.extra_dejson["api_token"]
        print(f"PRINTED password={conn.password} token={token}")
        log.warning("LOGGED password=%s token=%s", conn.password, token)
        print(f"RENDERED password={rendered_password} token={rendered_token}")
        print(f"PII KEY {Variable.get('chainlend_pii_hmac_secret')}")
        return {"conn_id": PROBE_CONN_ID}  # a pointer: the next task resolves the secret itself

    @task(retries=0)
    def resolve_again(pointer: dict) -> int:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(pointer["conn_id"])
        print(f"DOWNSTREAM password={conn.password}")
        return len(conn.password)

    resolve_again(use_connection("{{ conn.probe_api.password }}", "{{ conn.probe_api.extra_dejson.api_token }}"))


secrets_probe()
