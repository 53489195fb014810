"""Real services for the tests: SQLite files, PostgreSQL and MariaDB on 127.0.0.1, Airflow.

The embedded profile is pointed at a throw-away ``var/`` folder before Airflow is imported, so
tests never touch the developer's ``var/``. A test that needs PostgreSQL or MariaDB gets its own
database, created and dropped here; when the server is absent the test is skipped with the
reason, except in CI (``CI=true``) where a missing service is a failure.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest

_TEST_VAR = Path(tempfile.mkdtemp(prefix="chainlend-test-var-"))
os.environ["CHAINLEND_VAR"] = str(_TEST_VAR)
for _key in [k for k in os.environ if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))] + ["AIRFLOW_HOME"]:
    os.environ.pop(_key, None)
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
os.environ["CHAINLEND_RETRY_DELAY_S"] = "1"  # a transient failure retries after 1 s, not 1 min

from chainlend import settings  # noqa: E402
from chainlend.mail import SmtpSink  # noqa: E402

settings.apply_embedded_defaults()
# every DAG run in the session mails a real SMTP server on loopback (quality alerts)
_SESSION_SINK = SmtpSink(_TEST_VAR / "mail").__enter__()
os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = _SESSION_SINK.connection_json()

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("CHAINLEND_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MARIADB_ADMIN_URL = os.environ.get("CHAINLEND_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def _service_missing(name: str, exc: Exception):
    reason = f"{name} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def airflow_db():
    """The Airflow metadata DB of the test profile, migrated once per session."""
    from chainlend.runtime import migrate_metadata_db

    migrate_metadata_db()
    return os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


@pytest.fixture
def sqlite_urls(tmp_path) -> dict[str, str]:
    """Fresh SQLite files for the sources, the simulator and the warehouse."""
    return {name: f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("erp", "dealer", "sim", "warehouse")}


def _server_database(admin_url: str, name: str, kind: str):
    import sqlalchemy as sa

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    db = f"chainlend_t_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {db}"))
    except sa.exc.OperationalError as exc:
        _service_missing(kind, exc)
    url = sa.make_url(admin_url).set(database=db).render_as_string(hide_password=False)
    return admin, db, url


def _drop(admin, db: str, kind: str) -> None:
    import sqlalchemy as sa

    with admin.connect() as conn:
        if kind == "PostgreSQL":
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        else:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db}"))
    admin.dispose()


@pytest.fixture
def postgres_url():
    """A new PostgreSQL database on 127.0.0.1, dropped after the test."""
    admin, db, url = _server_database(PG_ADMIN_URL, "pg", "PostgreSQL")
    yield url
    _drop(admin, db, "PostgreSQL")


@pytest.fixture
def mariadb_url():
    """A new MariaDB database on 127.0.0.1, dropped after the test."""
    admin, db, url = _server_database(MARIADB_ADMIN_URL, "maria", "MariaDB")
    yield url
    _drop(admin, db, "MariaDB")


@pytest.fixture
def mailbox(tmp_path, monkeypatch):
    """A fresh SMTP server on 127.0.0.1 that this test's DAG runs mail to."""
    with SmtpSink(tmp_path / "mail") as sink:
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", sink.connection_json())
        yield sink


@pytest.fixture
def use_connections(monkeypatch):
    """Point Airflow connections at SQLAlchemy URLs: ``use_connections(erp_default=url, …)``."""

    def _use(**urls: str) -> None:
        for conn_id, url in urls.items():
            monkeypatch.setenv(
                f"AIRFLOW_CONN_{conn_id.upper()}",
                json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": url}}),
            )

    return _use


def pytest_sessionfinish(session, exitstatus):
    """Stop the session's SMTP server and remove the throw-away state folder."""
    import shutil

    _SESSION_SINK.__exit__(None, None, None)
    shutil.rmtree(_TEST_VAR, ignore_errors=True)


@pytest.fixture
def rail(tmp_path, monkeypatch):
    """A payment rail on 127.0.0.1 that the DAG's ``payment_rail_default`` connection points at."""
    from sources.payment_rail import PaymentRailServer

    with PaymentRailServer(tmp_path / "rail.db") as server:
        monkeypatch.setenv("AIRFLOW_CONN_PAYMENT_RAIL_DEFAULT", json.dumps(
            {"conn_type": "http", "host": server.host, "port": server.port, "extra": {"timeout_s": 10}}))
        yield server
