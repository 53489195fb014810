"""Airflow connections → SQLAlchemy URLs and engines.

A connection may carry its SQLAlchemy URL in the extra ``sqlalchemy_url``; otherwise it is built
from the connection's type, host, login, password, port and schema:

- ``sqlite``: ``host`` is the database file path;
- ``postgres``: PostgreSQL through psycopg 3;
- ``mysql``: MariaDB/MySQL through PyMySQL.

The URL is returned as a ``sqlalchemy.URL`` object, whose string form hides the password, so it
can be logged safely.
"""

from __future__ import annotations

import sqlalchemy as sa

from sources.sql import make_engine

_DRIVERS = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
}


class ConnectionConfigError(ValueError):
    """A connection cannot be turned into a database URL."""


def sqlalchemy_url(conn_id: str) -> sa.URL:
    """The SQLAlchemy URL of Airflow connection ``conn_id`` (env var, secrets backend or DB)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    if extra.get("sqlalchemy_url"):
        return sa.make_url(extra["sqlalchemy_url"])
    if conn.conn_type == "sqlite":
        if not conn.host:
            raise ConnectionConfigError(f"sqlite connection {conn_id!r} needs the database path in host")
        return sa.make_url(f"sqlite:///{conn.host}")
    driver = _DRIVERS.get(conn.conn_type or "")
    if driver is None:
        raise ConnectionConfigError(
            f"connection {conn_id!r} has type {conn.conn_type!r}; expected sqlite, postgres or mysql "
            "(or an extra 'sqlalchemy_url')"
        )
    return sa.URL.create(
        driver, username=conn.login or None, password=conn.password or None,
        host=conn.host or None, port=conn.port or None, database=conn.schema or None,
    )


def engine_for(conn_id: str) -> sa.Engine:
    """An engine for Airflow connection ``conn_id``."""
    return make_engine(sqlalchemy_url(conn_id))
