"""The production profile: Airflow on PostgreSQL with CeleryExecutor and a Redis broker, an MLflow
tracking server on PostgreSQL, the warehouse on PostgreSQL and the ERP source on MariaDB.

One file selects it: ``CHAINLEND_PROFILE=prod`` with ``CHAINLEND_ENV_FILE`` (default
``var/prod/prod.env``). :func:`init` writes that file for one machine whose services listen on
127.0.0.1 (generated secrets, mode 0600) and creates the databases; every process of the
deployment (scheduler, dag-processor, API server, Celery workers, MLflow server, the ``chainlend``
CLI) reads the same file, so their configuration is identical, as Airflow requires. On several
machines the same file is distributed with the hosts changed (README, "Production").

:func:`up` migrates the metadata DB, creates the one-slot ``training`` pool and the warehouse
tables, starts each process in its own session with its PID in ``var/prod/run/<name>.pid`` and
its output in ``var/prod/logs/<name>.log``, and waits until the API server reports a healthy
scheduler and dag-processor, the MLflow server answers and the Celery worker replies to a ping.
:func:`down` stops them by PID: each process group gets SIGTERM, then SIGKILL after a grace
period, and the PID files go.

The one-machine profile also starts two stand-ins on loopback, because a bank's are not here:
an SMTP server storing mail in ``var/prod/mail`` (for the bank's mail relay) and the payment
rail of :mod:`sources.payment_rail` (for the bank's payment gateway). ``CHAINLEND_STANDINS``
lists them; set it empty where the real relay and rail exist.

Authentication: Airflow's simple auth manager with one admin user, ``ops``, whose password is in
``var/prod/secrets/passwords.json`` (0600). It is Airflow's development auth manager; a bank
plugs its own (FAB with LDAP, or Keycloak) with ``AIRFLOW__CORE__AUTH_MANAGER``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from chainlend.pseudonym import LOCAL_BACKEND, ensure_key_file
from chainlend.settings import PAYMENT_RAIL_PORT, airflow_basics, var_dir

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
STANDINS = ("smtp", "rail")
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0


class ProdProfileError(RuntimeError):
    """The production profile cannot be set up, started or stopped; the message says why."""


@dataclass(frozen=True)
class ProdConfig:
    """Where the services of the one-machine production profile are (all on 127.0.0.1)."""

    var: Path
    prefix: str = "chainlend"  # database name prefix
    pg: str = "postgres@127.0.0.1:5432"  # user@host:port of PostgreSQL (trust or a .pgpass)
    mariadb: str = "root@127.0.0.1:3306"  # user@host:port of MariaDB
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_port: int = 8080
    mlflow_port: int = 5001
    smtp_port: int = 8025
    rail_port: int = PAYMENT_RAIL_PORT
    log_server_port: int = 8793
    worker_concurrency: int = 2
    queue: str = "default"
    standins: tuple[str, ...] = field(default=STANDINS)

    def __post_init__(self) -> None:
        if not self.prefix.replace("_", "").isalnum() or not self.prefix[0].isalpha():
            raise ProdProfileError(f"database prefix must be letters, digits and '_', starting with a letter; "
                                   f"got {self.prefix!r}")
        unknown = set(self.standins) - set(STANDINS)
        if unknown:
            raise ProdProfileError(f"unknown stand-ins {sorted(unknown)}; known: {list(STANDINS)}")

    @property
    def home(self) -> Path:
        return self.var / "prod"

    def database(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def pg_url(self, name: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.pg}/{self.database(name)}"


SECRETS_NAME = "variables.json"  # the secrets backend's variables file, in var/prod/secrets/
PG_DATABASES = ("airflow", "warehouse", "mlflow", "dealer", "sim")
MARIADB_DATABASES = ("erp",)


def _conn(conn_type: str, where: str, schema: str) -> str:
    user, host_port = where.split("@", 1)
    host, port = host_port.rsplit(":", 1)
    return json.dumps({"conn_type": conn_type, "host": host, "port": int(port), "login": user, "schema": schema})


def render_env(cfg: ProdConfig, generated: dict[str, str]) -> dict[str, str]:
    """The environment of every process of the profile (``generated``: the secrets of :func:`init`)."""
    home, api = cfg.home, f"http://127.0.0.1:{cfg.api_port}"
    return {
        "CHAINLEND_PROFILE": "prod",
        "CHAINLEND_VAR": str(cfg.var),
        **airflow_basics(home / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__FERNET_KEY": generated["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "secrets" / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.pg_url("airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": cfg.pg_url("airflow", "postgresql+psycopg_async"),
        "AIRFLOW__CELERY__BROKER_URL": cfg.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": cfg.pg_url("airflow", "db+postgresql+psycopg"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.worker_concurrency),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": cfg.queue,
        "AIRFLOW__API__PORT": str(cfg.api_port),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": generated["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": generated["jwt_secret"],
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs" / "airflow"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(cfg.log_server_port),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # variables (the personal-data pseudonymisation key of chainlend.pseudonym) from a secrets
        # backend: Airflow's LocalFilesystemBackend on a 0600 file here, Vault or the like in a bank
        "AIRFLOW__SECRETS__BACKEND": LOCAL_BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"variables_file_path": str(home / "secrets" / SECRETS_NAME)}),
        "AIRFLOW_CONN_WAREHOUSE_DEFAULT": _conn("postgres", cfg.pg, cfg.database("warehouse")),
        "AIRFLOW_CONN_DEALER_DEFAULT": _conn("postgres", cfg.pg, cfg.database("dealer")),
        "AIRFLOW_CONN_ERP_DEFAULT": _conn("mysql", cfg.mariadb, cfg.database("erp")),
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": cfg.smtp_port,
            "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "chainlend@localhost"}}),
        "AIRFLOW_CONN_PAYMENT_RAIL_DEFAULT": json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": cfg.rail_port, "extra": {"timeout_s": 30}}),
        "CHAINLEND_SIM_URL": cfg.pg_url("sim"),
        "CHAINLEND_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{cfg.mlflow_port}",
        "CHAINLEND_MLFLOW_ARTIFACT_ROOT": "mlflow-artifacts:/chainlend",
        "CHAINLEND_MLFLOW_BACKEND_URI": cfg.pg_url("mlflow"),
        "CHAINLEND_MLFLOW_ARTIFACTS_DESTINATION": str(home / "mlflow-artifacts"),
        "CHAINLEND_MLFLOW_PORT": str(cfg.mlflow_port),
        "CHAINLEND_CELERY_QUEUES": cfg.queue,
        "CHAINLEND_STANDINS": ",".join(cfg.standins),
        "CHAINLEND_SMTP_PORT": str(cfg.smtp_port),
        "CHAINLEND_RAIL_PORT": str(cfg.rail_port),
    }


REQUIRED = ("AIRFLOW_HOME", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW_CONN_WAREHOUSE_DEFAULT", "CHAINLEND_MLFLOW_TRACKING_URI")


def env_file(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("CHAINLEND_ENV_FILE") or var_dir(env) / "prod" / "prod.env")


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (everything after the first ``=`` is the value; ``#`` starts a comment line)."""
    if not path.is_file():
        raise ProdProfileError(f"production env file {path} does not exist: run `chainlend prod init` "
                               "(or set CHAINLEND_ENV_FILE)")
    values = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().replace("_", "").isalnum():
            raise ProdProfileError(f"{path}:{n}: expected KEY=VALUE, got {line[:40]!r}")
        values[key.strip()] = value
    missing = [k for k in REQUIRED if k not in values]
    if missing:
        raise ProdProfileError(f"{path} lacks {missing}")
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# chainlend production profile (secrets inside: keep it 0600; README, 'Production')\n")
        for key, value in values.items():
            fh.write(f"{key}={value}\n")


def generate_secrets() -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {"fernet_key": Fernet.generate_key().decode(), "jwt_secret": secrets.token_urlsafe(48),
            "api_secret_key": secrets.token_urlsafe(32)}


def create_databases(cfg: ProdConfig, *, pg_admin: str = PG_ADMIN_URL, mariadb_admin: str = MARIADB_ADMIN_URL) -> list[str]:
    """Create the profile's databases that do not exist yet; returns the ones created."""
    import sqlalchemy as sa

    created = []
    for admin_url, names, exists_sql in (
            (pg_admin, PG_DATABASES, "SELECT 1 FROM pg_database WHERE datname = :n"),
            (mariadb_admin, MARIADB_DATABASES, "SELECT 1 FROM information_schema.schemata WHERE schema_name = :n")):
        engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in names:
                    db = cfg.database(name)
                    if conn.execute(sa.text(exists_sql), {"n": db}).first() is None:
                        conn.execute(sa.text(f"CREATE DATABASE {db}"))
                        created.append(db)
        except sa.exc.OperationalError as exc:
            raise ProdProfileError(f"cannot create databases at {sa.make_url(admin_url).render_as_string()}: "
                                   f"{str(exc.orig or exc).strip().splitlines()[0]}") from exc
        finally:
            engine.dispose()
    return created


def drop_databases(cfg: ProdConfig, *, pg_admin: str = PG_ADMIN_URL, mariadb_admin: str = MARIADB_ADMIN_URL) -> None:
    import sqlalchemy as sa

    for admin_url, names, force in ((pg_admin, PG_DATABASES, " WITH (FORCE)"), (mariadb_admin, MARIADB_DATABASES, "")):
        engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in names:
                    conn.execute(sa.text(f"DROP DATABASE IF EXISTS {cfg.database(name)}{force}"))
        finally:
            engine.dispose()


def init(cfg: ProdConfig, *, path: Path | None = None, force: bool = False, create_dbs: bool = True) -> Path:
    """Write the profile's env file (new secrets) and create its databases. An existing file is
    kept unless ``force`` (its secrets encrypt connections and sign tokens: replacing them
    invalidates both)."""
    path = path or cfg.home / "prod.env"
    if path.exists() and not force:
        raise ProdProfileError(f"{path} exists; pass --force to replace it (new secrets)")
    for sub in ("airflow", "logs", "run", "secrets", "mlflow-artifacts", "mail"):
        (cfg.home / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.home / "secrets", 0o700)
    ensure_key_file(cfg.home / "secrets" / SECRETS_NAME)  # kept if present: tokens must stay stable
    write_env_file(path, render_env(cfg, generate_secrets()))
    if create_dbs:
        create_databases(cfg)
    return path


# -- processes -----------------------------------------------------------------------------------

def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def process_specs(env: dict[str, str]) -> dict[str, list[str]]:
    """``{name: argv}`` of every long-running process, in start order."""
    home = Path(env["AIRFLOW_HOME"]).parent
    specs = {
        "mlflow": [_bin("mlflow"), "server", "--backend-store-uri", env["CHAINLEND_MLFLOW_BACKEND_URI"],
                   "--serve-artifacts", "--artifacts-destination", env["CHAINLEND_MLFLOW_ARTIFACTS_DESTINATION"],
                   "--host", "127.0.0.1", "--port", env["CHAINLEND_MLFLOW_PORT"], "--workers", "1"],
        "api-server": [_bin("airflow"), "api-server"],
        "scheduler": [_bin("airflow"), "scheduler"],
        "dag-processor": [_bin("airflow"), "dag-processor"],
        "celery-worker": [_bin("airflow"), "celery", "worker", "--queues", env["CHAINLEND_CELERY_QUEUES"],
                          "--concurrency", env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]],
    }
    standins = [s for s in env.get("CHAINLEND_STANDINS", "").split(",") if s]
    if "smtp" in standins:
        specs["smtp"] = [_bin("chainlend"), "serve", "smtp", "--maildir", str(home / "mail"),
                         "--port", env["CHAINLEND_SMTP_PORT"]]
    if "rail" in standins:
        specs["rail"] = [_bin("chainlend"), "serve", "rail", "--db", str(home / "rail.db"),
                         "--port", env["CHAINLEND_RAIL_PORT"]]
    return specs


def _pid_file(env: dict[str, str], name: str) -> Path:
    return Path(env["AIRFLOW_HOME"]).parent / "run" / f"{name}.pid"


def running(env: dict[str, str]) -> dict[str, int]:
    """``{name: pid}`` of the profile's processes whose PID file points at a live process."""
    import psutil

    alive = {}
    for name in process_specs(env):
        path = _pid_file(env, name)
        if path.exists():
            pid = int(path.read_text().split()[0])
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive[name] = pid
    return alive


def prepare(env: dict[str, str]) -> None:
    """Migrate the Airflow metadata DB, set the pools, create the warehouse tables (idempotent)."""
    from chainlend.runtime import ensure_pools

    subprocess.run([_bin("airflow"), "db", "migrate"], check=True, env=env, stdout=subprocess.DEVNULL)
    ensure_pools(env)
    subprocess.run([_bin("python"), "-c", "from chainlend.systems import Warehouse; Warehouse.from_conn().create_all()"],
                   check=True, env=env)


def up(env: dict[str, str], *, timeout: float = START_TIMEOUT_S) -> dict[str, int]:
    """Start every process that is not running yet and wait until the profile is healthy."""
    already = running(env)
    home = Path(env["AIRFLOW_HOME"]).parent
    (home / "logs").mkdir(parents=True, exist_ok=True)
    (home / "run").mkdir(parents=True, exist_ok=True)
    prepare(env)
    pids = dict(already)
    for name, argv in process_specs(env).items():
        if name in already:
            continue
        with open(home / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=home)
        _pid_file(env, name).write_text(f"{proc.pid}\n")
        pids[name] = proc.pid
    try:
        wait_healthy(env, timeout=timeout)
    except ProdProfileError:
        down(env)
        raise
    return pids


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL built here)
        return json.loads(resp.read() or b"null")


def health(env: dict[str, str]) -> dict[str, str]:
    """``{component: status}``: the API server's view of the metadata DB, scheduler and
    dag-processor, the MLflow server and the Celery workers (a ping through the broker)."""
    out: dict[str, str] = {}
    try:
        h = _get_json(f"{env['AIRFLOW__API__BASE_URL']}/api/v2/monitor/health")
        for part in ("metadatabase", "scheduler", "dag_processor"):
            out[part] = str((h.get(part) or {}).get("status"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        out["api-server"] = f"unreachable: {exc}"
    try:
        with urllib.request.urlopen(f"{env['CHAINLEND_MLFLOW_TRACKING_URI']}/health", timeout=5) as resp:  # noqa: S310
            out["mlflow"] = "healthy" if resp.status == 200 else f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        out["mlflow"] = f"unreachable: {exc}"
    ping = subprocess.run([_bin("celery"), "--broker", env["AIRFLOW__CELERY__BROKER_URL"], "inspect", "ping",
                           "--timeout", "2", "--json"], env=env, capture_output=True, text=True)
    out["celery-worker"] = "healthy" if ping.returncode == 0 and "pong" in ping.stdout else "no reply"
    return out


def wait_healthy(env: dict[str, str], *, timeout: float = START_TIMEOUT_S) -> dict[str, str]:
    deadline, last = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        dead = [n for n in process_specs(env) if n not in running(env)]
        if dead:
            raise ProdProfileError(f"{dead} exited during start-up; see {Path(env['AIRFLOW_HOME']).parent}/logs/")
        last = health(env)
        if all(v == "healthy" for v in last.values()):
            return last
        time.sleep(2)
    raise ProdProfileError(f"not healthy after {timeout:.0f} s: {last}")


def down(env: dict[str, str], *, grace: float = STOP_GRACE_S) -> list[int]:
    """Stop every process of the profile by PID (its whole process group), newest first.

    Returns the PIDs that were signalled. Raises if any member of a group survives SIGKILL."""
    import psutil

    signalled = []
    for name in reversed(list(process_specs(env))):
        path = _pid_file(env, name)
        if not path.exists():
            continue
        pid = int(path.read_text().split()[0])
        members = _group(pid)
        for p in members:
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(members, timeout=grace)
        for p in alive:
            _signal(p, signal.SIGKILL)
        _, alive = psutil.wait_procs(alive, timeout=5)
        if alive:
            raise ProdProfileError(f"{name}: processes {[p.pid for p in alive]} survived SIGKILL")
        path.unlink()
        signalled.append(pid)
    return signalled


def _group(pid: int) -> list:
    """The process ``pid`` and every process in its session/group (children that re-parented
    after their parent died included)."""
    import psutil

    try:
        leader = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    members = {leader.pid: leader}
    for p in leader.children(recursive=True):
        members[p.pid] = p
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pid:
                members[p.pid] = p
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return list(members.values())


def _signal(p, sig) -> None:
    import psutil

    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        return


# -- the REST API (Airflow 3 public API, v2) ---------------------------------------------------------

class AirflowApi:
    """A small client of Airflow's public REST API (``/api/v2``) with a JWT from ``/auth/token``."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0):
        self.base_url, self.timeout = base_url.rstrip("/"), timeout
        body = self._call("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        self._token = body["access_token"]

    @classmethod
    def from_env(cls, env: dict[str, str]) -> AirflowApi:
        """As the profile's admin user (password from the simple auth manager's passwords file)."""
        users = json.loads(Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).read_text())
        return cls(env["AIRFLOW__API__BASE_URL"], "ops", users["ops"])

    def _call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310 (configured URL)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ProdProfileError(f"{method} {path}: HTTP {exc.code} {exc.read()[:500].decode(errors='replace')}") \
                from exc

    def get(self, path: str):
        return self._call("GET", "/api/v2" + path)

    def dag_ids(self) -> list[str]:
        return sorted(d["dag_id"] for d in self.get("/dags?limit=100")["dags"])

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, logical_date: str, *, run_id: str, conf: dict | None = None) -> str:
        body = {"logical_date": logical_date, "dag_run_id": run_id, "conf": conf or {}}
        return self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]

    def wait(self, runs: list[tuple[str, str]], *, timeout: float, poll: float = 2.0) -> dict[tuple[str, str], str]:
        """Wait until every ``(dag_id, run_id)`` has finished; returns their states."""
        deadline, states = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            states = {run: self.run_state(*run) for run in runs}
            if all(s in ("success", "failed") for s in states.values()):
                return states
            time.sleep(poll)
        raise ProdProfileError(f"runs not finished after {timeout:.0f} s: {states}")
