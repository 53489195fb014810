"""Airflow's worker execution path for tests that must read real task logs.

``dag.test()`` (what the other DAG tests and the demo use) runs each task inside the calling
process: Airflow 3.3 then writes no task log file, and what tasks print or log goes to the
process's console *without* the secrets masker (the masker runs in the supervisor's log
pipeline). A Local or Celery worker instead runs ``supervise_task``: a supervisor forks the task
process, masks everything it logs or prints and writes the task log file
``<base_log_folder>/dag_id=…/run_id=…/task_id=…/attempt=N.log`` (JSON lines, what the UI shows).

:func:`worker_path` gives tests that path without a separate API server: ``dag.test(use_executor=
True)`` queues every task to the configured LocalExecutor, whose worker processes call
``supervise_task`` against Airflow's own Execution API app (``InProcessExecutionAPI``, the app
``dag.test()`` uses in-process) served over HTTP on 127.0.0.1 in a thread of the test process.
Test-only DAGs live in ``tests/chainlend/dags``, a DAG bundle of its own next to ``dags-folder``
(``dag.test()`` only runs DAGs that a configured bundle contains).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

TEST_DAGS = Path(__file__).resolve().parent / "dags"
BUNDLES = [
    {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
    {"name": "chainlend-tests", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
     "kwargs": {"path": str(TEST_DAGS), "refresh_interval": 0}},
]


class WorkerPath:
    """Run DAGs through LocalExecutor workers and read their task log files."""

    def __init__(self, api_url: str):
        self.api_url = api_url

    @staticmethod
    def load(dag_id: str):
        """A DAG from ``dags/`` or the test bundle ``tests/chainlend/dags``."""
        from chainlend.runtime import load_dag

        test_file = TEST_DAGS / f"{dag_id}.py"
        if not test_file.exists():
            return load_dag(dag_id)
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(test_file))
        if bag.import_errors:
            raise RuntimeError(f"{dag_id} failed to import: {bag.import_errors}")
        return bag.dags[dag_id]

    @staticmethod
    def run(dag, business_date: dt.date, *, conf: dict | None = None):
        """Run ``dag`` for ``business_date`` (logical date 23:00 UTC) on the workers.

        While it runs, the workers (forked from this process when the executor starts) log at
        INFO like a worker with the default configuration: the test session logs at WARNING, and
        a supervisor writes what a task prints at INFO (Airflow's structlog keeps the default
        level in ``PER_LOGGER_LEVELS[""]`` of the module that configured logging). And
        ``sys.stdout``/``sys.stderr`` are the interpreter's own streams on fd 1/2, as in a real
        worker (pytest still captures fd 1/2 of this process)."""
        import importlib
        import logging

        import structlog

        logical = dt.datetime.combine(business_date, dt.time(23, 0), tzinfo=dt.UTC)
        levels = importlib.import_module(structlog.get_config()["wrapper_class"].__module__).PER_LOGGER_LEVELS
        captured, level = (sys.stdout, sys.stderr), levels[""]
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        levels[""] = logging.INFO
        try:
            return dag.test(logical_date=logical, run_conf=conf, use_executor=True)
        finally:
            levels[""] = level
            sys.stdout, sys.stderr = captured

    @staticmethod
    def log_files(dag_run) -> dict[str, list[Path]]:
        """``{task_id: [attempt log files]}`` of a run, from ``[logging] base_log_folder``."""
        base = Path(os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
        run_dir = base / f"dag_id={dag_run.dag_id}" / f"run_id={dag_run.run_id}"
        out: dict[str, list[Path]] = {}
        for path in sorted(run_dir.glob("task_id=*/**/attempt=*.log")):
            task_dir = next(p for p in path.parents if p.name.startswith("task_id="))
            out.setdefault(task_dir.name[len("task_id="):], []).append(path)
        return out

    @classmethod
    def log_events(cls, dag_run) -> dict[str, list[dict]]:
        """``{task_id: [JSON log events]}``: every line of every attempt's log file, parsed."""
        return {task: [json.loads(line) for path in paths for line in path.read_text().splitlines() if line]
                for task, paths in cls.log_files(dag_run).items()}


def _serve_execution_api():
    import uvicorn
    from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(InProcessExecutionAPI().app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="execution-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Execution API server did not start on 127.0.0.1")
        time.sleep(0.05)
    return server, thread, sock, f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture
def test_bundle(airflow_db, monkeypatch):
    """The test DAG bundle configured next to ``dags-folder``; returns the DAG loader."""
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(BUNDLES))
    return WorkerPath.load


@pytest.fixture
def worker_path(test_bundle, monkeypatch):
    """LocalExecutor workers against the Execution API on 127.0.0.1; no process is left behind."""
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")  # the task processes log at INFO too
    server, thread, sock, url = _serve_execution_api()
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", url)
    try:
        yield WorkerPath(url)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "the Execution API server thread did not stop"
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"worker processes left behind: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def warehouse(request, tmp_path):
    """A fresh warehouse with every table, on each of SQLite, PostgreSQL and MariaDB."""
    from chainlend.systems import Warehouse

    url = {"sqlite": lambda: f"sqlite:///{tmp_path / 'warehouse.db'}",
           "postgresql": lambda: request.getfixturevalue("postgres_url"),
           "mariadb": lambda: request.getfixturevalue("mariadb_url")}[request.param]()
    w = Warehouse.from_url(url)
    w.create_all()
    yield w
    w.engine.dispose()
