"""Where everything lives, and the embedded runtime's defaults.

The embedded profile keeps all state under one git-ignored folder, ``var/`` at the project root
(override with ``CHAINLEND_VAR``):

- ``var/airflow/``      Airflow home (SQLite metadata, logs); dags_folder = ``dags/``
- ``var/warehouse.db``  the warehouse (landing tables, batch log)
- ``var/sources/``      the simulated source systems: ``erp.db``, ``dealer.db`` and the
                        simulator's own ``sim.db`` (oracle and fault manifest; never read by DAGs)
- ``var/mlflow/``       MLflow tracking and registry store (``mlflow.db``) and artifacts
- ``var/models/``       training datasets (parquet) the model runs point at
- ``var/demo/``         demo report and mailbox

Every location can be overridden: an environment variable that is already set always wins
over these defaults (``AIRFLOW_HOME``, ``AIRFLOW__…`` settings, ``AIRFLOW_CONN_ERP_DEFAULT``,
``AIRFLOW_CONN_DEALER_DEFAULT``, ``AIRFLOW_CONN_WAREHOUSE_DEFAULT``, ``AIRFLOW_CONN_SMTP_DEFAULT``,
``AIRFLOW_CONN_PAYMENT_RAIL_DEFAULT``, ``CHAINLEND_SIM_URL``), and connections can equally come from a secrets backend or the
Airflow metadata database, so the same DAGs run against PostgreSQL/MariaDB in production.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from chainlend.pseudonym import embedded_secrets_backend

PROJECT_ROOT = Path(__file__).resolve().parents[2]

ERP_CONN_ID = "erp_default"
DEALER_CONN_ID = "dealer_default"
WAREHOUSE_CONN_ID = "warehouse_default"
SMTP_CONN_ID = "smtp_default"
PAYMENT_RAIL_CONN_ID = "payment_rail_default"
PAYMENT_RAIL_PORT = 8765


def var_dir(environ: dict[str, str] | None = None) -> Path:
    """The state folder: ``$CHAINLEND_VAR`` or ``<project>/var``."""
    env = os.environ if environ is None else environ
    return Path(env.get("CHAINLEND_VAR") or PROJECT_ROOT / "var").resolve()


def _sqlite_conn(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


def airflow_basics(airflow_home: Path) -> dict[str, str]:
    """The Airflow settings every profile shares: home, the project's DAGs and plugins, no
    examples, new DAGs paused, the API on loopback."""
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__API__HOST": "127.0.0.1",
    }


def embedded_defaults(var: Path) -> dict[str, str]:
    """Environment of the embedded profile rooted at ``var`` (nothing is read or written here)."""
    airflow_home = var / "airflow"
    return {
        **airflow_basics(airflow_home),
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__API__PORT": "8080",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW_CONN_ERP_DEFAULT": _sqlite_conn(var / "sources" / "erp.db"),
        "AIRFLOW_CONN_DEALER_DEFAULT": _sqlite_conn(var / "sources" / "dealer.db"),
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": _sqlite_conn(var / "warehouse.db"),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": 8025,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "chainlend@localhost"},
        }),
        "AIRFLOW_CONN_PAYMENT_RAIL_DEFAULT": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": PAYMENT_RAIL_PORT, "extra": {"timeout_s": 10}}),
        "CHAINLEND_SIM_URL": f"sqlite:///{var / 'sources' / 'sim.db'}",
    }


def apply_embedded_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Fill ``environ`` (default ``os.environ``) with the embedded defaults it does not set yet.

    Must run before ``airflow`` is imported (Airflow reads its configuration at import).
    Creates the state folders. Returns the values that were applied.
    """
    env = os.environ if environ is None else environ
    var = var_dir(env)
    applied = {}
    for key, value in embedded_defaults(var).items():
        if key not in env:
            env[key] = value
            applied[key] = value
    for sub in ("airflow", "sources", "demo", "mlflow", "models"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    applied.update(embedded_secrets_backend(env, var))  # the PII key, var/secrets (chainlend.pseudonym)
    return applied


PROFILES = ("embedded", "prod")


def profile(environ: dict[str, str] | None = None) -> str:
    """``$CHAINLEND_PROFILE``: ``embedded`` (default) or ``prod`` (:mod:`chainlend.prod`)."""
    env = os.environ if environ is None else environ
    value = env.get("CHAINLEND_PROFILE", "embedded").strip().lower() or "embedded"
    if value not in PROFILES:
        raise ValueError(f"CHAINLEND_PROFILE must be one of {PROFILES}, got {value!r}")
    return value


def apply_profile(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Fill ``environ`` with the selected profile's settings it does not set yet.

    ``embedded``: :func:`apply_embedded_defaults`. ``prod``: every ``KEY=VALUE`` of the env file
    (``$CHAINLEND_ENV_FILE``, default ``var/prod/prod.env``, written by ``chainlend prod init``);
    a missing file or a missing required setting is an error, never a fall-back to SQLite.
    Must run before ``airflow`` is imported. Returns the values that were applied.
    """
    env = os.environ if environ is None else environ
    if profile(env) == "embedded":
        return apply_embedded_defaults(env)
    from chainlend.prod import env_file, read_env_file

    applied = {}
    for key, value in read_env_file(env_file(env)).items():
        if key not in env:
            env[key] = value
            applied[key] = value
    return applied


def mlflow_tracking_uri(environ: dict[str, str] | None = None) -> str:
    """``$CHAINLEND_MLFLOW_TRACKING_URI``, else ``$MLFLOW_TRACKING_URI``, else the embedded
    SQLite store ``var/mlflow/mlflow.db`` (MLflow 3 refuses the file store). The registry uses
    the same URI."""
    env = os.environ if environ is None else environ
    uri = env.get("CHAINLEND_MLFLOW_TRACKING_URI") or env.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{var_dir(env) / 'mlflow' / 'mlflow.db'}"


def mlflow_artifact_root(environ: dict[str, str] | None = None) -> str:
    """Where new experiments put artifacts: ``$CHAINLEND_MLFLOW_ARTIFACT_ROOT`` (any URI MLflow
    accepts, e.g. ``s3://bucket/mlflow``) or ``var/mlflow/artifacts``."""
    env = os.environ if environ is None else environ
    root = env.get("CHAINLEND_MLFLOW_ARTIFACT_ROOT")
    return root or (var_dir(env) / "mlflow" / "artifacts").as_uri()


def model_approval_required(environ: dict[str, str] | None = None) -> bool:
    """Maker/checker for promotions: ``CHAINLEND_MODEL_APPROVAL=required`` makes a challenger that
    passes the gate wait for ``chainlend models approve``; ``auto`` (default) promotes it."""
    env = os.environ if environ is None else environ
    value = env.get("CHAINLEND_MODEL_APPROVAL", "auto").strip().lower()
    if value not in ("auto", "required"):
        raise ValueError(f"CHAINLEND_MODEL_APPROVAL must be 'auto' or 'required', got {value!r}")
    return value == "required"
