"""The production profile's configuration: env file, profile selection, failures that name their cause."""

from __future__ import annotations

import stat

import pytest

from chainlend import prod, settings


def _cfg(tmp_path, **kw):
    return prod.ProdConfig(var=tmp_path, prefix="clunit", **kw)


def test_init_writes_a_private_env_file_that_apply_profile_reads(tmp_path):
    path = prod.init(_cfg(tmp_path, api_port=18080), create_dbs=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "prod" / "secrets").stat().st_mode) == 0o700
    env = {"CHAINLEND_PROFILE": "prod", "CHAINLEND_ENV_FILE": str(path), "AIRFLOW__CORE__PARALLELISM": "3"}
    applied = settings.apply_profile(env)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/clunit_airflow")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"  # a variable already set wins
    assert "AIRFLOW__CORE__PARALLELISM" not in applied
    assert "sqlite" not in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    # the pseudonymisation key is served by a secrets backend from a 0600 file, not the env file
    assert "AIRFLOW_VAR_CHAINLEND_PII_HMAC_SECRET" not in env
    assert "variables.json" in env["AIRFLOW__SECRETS__BACKEND_KWARGS"]


def test_init_refuses_to_replace_secrets_without_force(tmp_path):
    path = prod.init(_cfg(tmp_path), create_dbs=False)
    first = prod.read_env_file(path)["AIRFLOW__API_AUTH__JWT_SECRET"]
    with pytest.raises(prod.ProdProfileError, match="exists; pass --force"):
        prod.init(_cfg(tmp_path), create_dbs=False)
    prod.init(_cfg(tmp_path), create_dbs=False, force=True)
    assert prod.read_env_file(path)["AIRFLOW__API_AUTH__JWT_SECRET"] != first


def test_missing_or_broken_env_file_is_an_error_not_a_fallback(tmp_path):
    env = {"CHAINLEND_PROFILE": "prod", "CHAINLEND_ENV_FILE": str(tmp_path / "nope.env")}
    with pytest.raises(prod.ProdProfileError, match="does not exist: run `chainlend prod init`"):
        settings.apply_profile(env)
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env
    broken = tmp_path / "broken.env"
    broken.write_text("AIRFLOW_HOME=/x\nnot a setting\n")
    with pytest.raises(prod.ProdProfileError, match=r"broken.env:2: expected KEY=VALUE"):
        prod.read_env_file(broken)
    partial = tmp_path / "partial.env"
    partial.write_text("AIRFLOW_HOME=/x\n")
    with pytest.raises(prod.ProdProfileError, match="lacks .*AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        prod.read_env_file(partial)


def test_profile_and_config_values_are_checked(tmp_path):
    with pytest.raises(ValueError, match="CHAINLEND_PROFILE must be one of"):
        settings.profile({"CHAINLEND_PROFILE": "production"})
    assert settings.profile({}) == "embedded"
    with pytest.raises(prod.ProdProfileError, match="database prefix"):
        prod.ProdConfig(var=tmp_path, prefix="1bad-name")
    with pytest.raises(prod.ProdProfileError, match="unknown stand-ins"):
        prod.ProdConfig(var=tmp_path, standins=("smtp", "ftp"))


def test_process_specs_follow_the_env_file(tmp_path):
    env = prod.read_env_file(prod.init(_cfg(tmp_path, standins=("smtp",)), create_dbs=False))
    specs = prod.process_specs(env)
    assert list(specs) == ["mlflow", "api-server", "scheduler", "dag-processor", "celery-worker", "smtp"]
    assert specs["celery-worker"][-4:] == ["--queues", "default", "--concurrency", "2"]
    assert env["CHAINLEND_MLFLOW_BACKEND_URI"] in specs["mlflow"]
    assert prod.running(env) == {}  # nothing started: no PID files
