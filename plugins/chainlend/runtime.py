"""The embedded Airflow runtime: migrate its metadata DB, load DAGs, run them with ``dag.test()``.

Call :func:`chainlend.settings.apply_embedded_defaults` before importing this module's users of
Airflow (the CLI does it first thing).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from chainlend.settings import PROJECT_ROOT


class DagRunFailed(RuntimeError):
    """A DAG run ended in a state other than success."""


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def subprocess_env() -> dict[str, str]:
    """The current environment with this venv's ``bin/`` first on PATH (Airflow spawns ``airflow``)."""
    env = os.environ.copy()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def migrate_metadata_db() -> None:
    """``airflow db migrate`` in a subprocess (idempotent; ~4 s on a fresh SQLite file), then the
    pools the DAGs use (the one-slot ``training`` pool)."""
    subprocess.run([airflow_bin(), "db", "migrate"], check=True, env=subprocess_env(),
                   stdout=subprocess.DEVNULL)
    ensure_pools()


def ensure_pools(env: dict[str, str] | None = None) -> None:
    """Create or resize the ``training`` pool to one slot (CPU-heavy tasks run one at a time), in
    the metadata DB of ``env`` (default: this process's environment)."""
    from chainlend.dag_defaults import TRAINING_POOL

    subprocess.run([airflow_bin(), "pools", "set", TRAINING_POOL, "1",
                    "CPU-heavy model training: one task at a time (explicit thread counts)"],
                   check=True, env=env or subprocess_env(), stdout=subprocess.DEVNULL)


def load_dag(dag_id: str):
    """The DAG ``dag_id`` parsed from the project's ``dags/`` folder."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / f"{dag_id}.py"))
    if bag.import_errors:
        raise RuntimeError(f"DAG {dag_id} failed to import: {bag.import_errors}")
    return bag.dags[dag_id]


def run_dag(dag, business_date: dt.date, *, conf: dict | None = None):
    """Run ``dag`` in-process for ``business_date`` (logical date 23:00 UTC of that day).

    Returns the DagRun; the caller decides what a failed run means.
    """
    logical = dt.datetime.combine(business_date, dt.time(23, 0), tzinfo=dt.UTC)
    return dag.test(logical_date=logical, run_conf=conf)


def task_states(dag_run) -> dict[str, str]:
    """``{task_id: state}`` of a finished DagRun."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        ).all()
        return {ti.task_id: str(ti.state) for ti in tis}
