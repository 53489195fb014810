import json

import pytest

from chainlend.connections import ConnectionConfigError, sqlalchemy_url


def _conn(monkeypatch, conn_id, **fields):
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_sqlite_path_in_host(monkeypatch, tmp_path):
    _conn(monkeypatch, "x_sqlite", conn_type="sqlite", host=str(tmp_path / "w.db"))
    assert sqlalchemy_url("x_sqlite").render_as_string() == f"sqlite:///{tmp_path / 'w.db'}"


def test_postgres_and_mysql_use_our_drivers_and_hide_password(monkeypatch):
    _conn(monkeypatch, "x_pg", conn_type="postgres", host="db", login="u", password="s3cret", port=5432,
          schema="wh")
    url = sqlalchemy_url("x_pg")
    assert url.drivername == "postgresql+psycopg" and url.database == "wh" and url.password == "s3cret"
    assert "s3cret" not in str(url)
    _conn(monkeypatch, "x_my", conn_type="mysql", host="db", login="root", schema="erp")
    assert sqlalchemy_url("x_my").drivername == "mysql+pymysql"


def test_explicit_sqlalchemy_url_wins(monkeypatch):
    _conn(monkeypatch, "x_any", conn_type="generic", extra={"sqlalchemy_url": "sqlite:////tmp/a.db"})
    assert sqlalchemy_url("x_any").render_as_string() == "sqlite:////tmp/a.db"


def test_unknown_type_is_a_clear_error(monkeypatch):
    _conn(monkeypatch, "x_http", conn_type="http", host="example")
    with pytest.raises(ConnectionConfigError, match="type 'http'"):
        sqlalchemy_url("x_http")
