"""The ``chainlend`` command: setup, simulate, demo, quarantine, models, review, airflow, prod, serve.

Every subcommand applies the selected profile first (``CHAINLEND_PROFILE``: the embedded defaults,
or the production env file of :mod:`chainlend.prod`); an environment variable that is already set
wins, so the same command works against production connections.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys

from chainlend import settings


def _sim(args):
    from chainlend.connections import sqlalchemy_url
    from sources.simulator import Simulator

    return Simulator(
        args.erp_url or sqlalchemy_url(settings.ERP_CONN_ID).render_as_string(hide_password=False),
        args.dealer_url or sqlalchemy_url(settings.DEALER_CONN_ID).render_as_string(hide_password=False),
        args.sim_url or os.environ["CHAINLEND_SIM_URL"],
    )


def cmd_setup(args) -> int:
    from chainlend.runtime import migrate_metadata_db
    from chainlend.systems import Warehouse

    migrate_metadata_db()
    Warehouse.from_conn().create_all()
    print(f"Airflow home: {os.environ['AIRFLOW_HOME']}; warehouse tables created")
    return 0


def cmd_simulate(args) -> int:
    from sources.simulator import FaultRates

    sim = _sim(args)
    if args.action == "init":
        rates = FaultRates.demo() if args.faults == "demo" else FaultRates.none()
        sim.init(seed=args.seed, scale=args.scale, faults=rates, start=dt.date.fromisoformat(args.start),
                 reset=args.reset)
        print(f"initialised: scale={args.scale} seed={args.seed} faults={args.faults} start={args.start}")
    else:
        for day in sim.advance(args.days):
            print(f"played {day}")
    return 0


def cmd_demo(args) -> int:
    from chainlend.demo import run_demo

    report = run_demo(days=args.days, scale=args.scale, seed=args.seed, faults=args.faults, history=args.history)
    failed = [r for r in report["dag_runs"] if r["failed_tasks"]]
    print(f"\nDemo finished in {report['run']['wall_s']} s: {len(report['dag_runs'])} DAG runs, "
          f"{len(failed)} with failed tasks (see the report).")
    for source, tables in report["ingest"].items():
        total = sum(t["extracted"] for t in tables.values())
        blocked = sum(len(t["blocked"]) for t in tables.values())
        print(f"  {source}: {total:,} rows landed, {blocked} batch(es) blocked")
        for name, t in tables.items():
            for b in t["blocked"]:
                print(f"    blocked {source}.{name} on {b['business_date']}: {b['detail']}")
    q = report["quality"]
    print(f"  quality: {q['batches_validated']} batches validated, {q['batches_blocked']} blocked, "
          f"{q['rows_quarantined']:,} rows quarantined, {q['alerts_sent']} alert mails in {report['run']['mailbox']}")
    print(f"  Data Docs: {q['data_docs_index']}")
    print(f"Report: {report['run']['report_json']} and {report['run']['report_md']}")
    return 0


def cmd_quarantine(args) -> int:
    """List open quarantine, or release a blocked batch after review (named, recorded)."""
    from chainlend.alerts import gx_paths
    from chainlend.quality import open_quarantine, replay_quarantine, validator_for
    from chainlend.systems import Warehouse
    from sources.contract import table as contract_table

    warehouse = Warehouse.from_conn()
    if args.action == "list":
        q = open_quarantine(warehouse, args.source, args.table)
        if q.empty:
            print("no open quarantine records")
            return 0
        print(q.groupby(["source", "table_name", "batch_id", "reasons"]).size().to_string())
        return 0
    if not args.batch or not args.by:
        print("release needs --batch BATCH_ID and --by NAME", file=sys.stderr)
        return 2
    source, table, day = args.batch.split(".")
    n = replay_quarantine(warehouse, validator_for(*gx_paths()), contract_table(source, table),
                          dt.datetime.strptime(day, "%Y%m%d").date(), run_id=f"release by {args.by}",
                          release_batch=args.batch, released_by=args.by)
    print(f"released {n} row(s) of {args.batch} (by {args.by}); rows failing a row-level check stay quarantined")
    return 0


def cmd_airflow(args) -> int:
    """``airflow standalone`` on 127.0.0.1; Ctrl-C stops its children by PID, then the parent."""
    from chainlend.runtime import airflow_bin, migrate_metadata_db, subprocess_env

    migrate_metadata_db()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    proc = subprocess.Popen([airflow_bin(), "standalone"], env=subprocess_env(), start_new_session=True)
    print(f"Airflow UI: http://127.0.0.1:{os.environ['AIRFLOW__API__PORT']} "
          f"(login: admin, password in {os.environ['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated)")
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return stop_process_tree(proc.pid)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def stop_process_tree(pid: int, timeout: float = 20.0) -> int:
    """SIGTERM the children of ``pid`` first (SIGTERM to the parent orphans them), then ``pid``.

    A child that is a zombie has exited (its parent reaps it later) and counts as stopped.
    """
    import time

    import psutil

    def running(procs):
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    parent = psutil.Process(pid)
    children = parent.children(recursive=True)
    for child in running(children):
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    for child in running(children):
        child.kill()
    parent.send_signal(signal.SIGTERM)
    try:
        return parent.wait(timeout) or 0
    except psutil.TimeoutExpired:
        parent.kill()
        return 1


def cmd_models(args) -> int:
    """List versions and aliases, show the audit, or approve a version (maker/checker)."""
    from chainlend import model_ops
    from models.governance import GovernanceError

    if args.action == "approve":
        if not (args.family and args.version):
            print("usage: chainlend models approve FAMILY VERSION --by NAME", file=sys.stderr)
            return 2
        try:
            done = model_ops.approve(args.family, args.version, by=args.by or "")
        except GovernanceError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        print(f"{done['family']} v{done['version']} is champion (was v{done['previous']}), "
              f"approved by {done['approved_by']}")
        return 0
    if args.action == "audit":
        rows = model_ops.audit_rows(args.family)
        for r in rows.itertuples():
            print(f"{r.at}  {r.family:<20} {r.alias:<10} {r.action:<8} v{r.version:<4} "
                  f"(was {r.previous_version or '-'}) by {r.actor}: {r.reason}")
        return 0
    from mlflow.exceptions import MlflowException

    mlf = model_ops.client()
    for fam in [args.family] if args.family else model_ops.FAMILY_NAMES:
        try:
            aliases = mlf.get_registered_model(fam).aliases or {}
        except MlflowException:
            print(f"{fam}: no registered versions yet")
            continue
        by_version = {}
        for alias, v in aliases.items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in sorted(mlf.search_model_versions(f"name = '{fam}'"), key=lambda v: int(v.version)):
            t = mv.tags
            print(f"{fam:<20} v{mv.version:<4} {','.join(by_version.get(str(mv.version), [])):<20} "
                  f"{t.get('algorithm', '?'):<9} as_of={t.get('as_of', '?')} gate={t.get('gate.outcome', '-')} "
                  f"oot={t.get('oot_metrics', '')[:60]}")
    return 0


def cmd_mlflow_ui(args) -> int:
    """The MLflow UI on the configured tracking store, bound to 127.0.0.1."""
    from chainlend.runtime import subprocess_env

    uri = settings.mlflow_tracking_uri()
    cmd = [str(os.path.join(os.path.dirname(sys.executable), "mlflow")), "ui", "--backend-store-uri", uri,
           "--default-artifact-root", settings.mlflow_artifact_root(), "--host", "127.0.0.1",
           "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} ({uri}); Ctrl-C stops it")
    try:
        return subprocess.call(cmd, env=subprocess_env())
    except KeyboardInterrupt:
        return 0


def cmd_review(args) -> int:
    """The manual review queue of order-loan applications."""
    import sqlalchemy as sa

    from chainlend.lending_ops import LendingOpsError, review
    from chainlend.systems import Warehouse

    if args.action == "list":
        w = Warehouse.from_conn()
        q, d = w.lending["review_queue"], w.lending["loan_decisions"]
        query = sa.select(q, d.c.pd, d.c.band, d.c.reason_text_en).join(
            d, d.c.application_id == q.c.application_id).order_by(q.c.queued_at, q.c.application_id)
        if not args.all:
            query = query.where(q.c.status == "pending")
        with w.engine.connect() as conn:
            for r in conn.execute(query).mappings():
                print(f"{r['application_id']}  {r['dealer_id']}  {r['status']:<8} proposed "
                      f"{r['proposed_amount_fen'] / 100:,.2f} CNY  PD {r['pd']:.4f} band {r['band']}  "
                      f"{r['officer'] or ''}  {r['reason_text_en']}")
        return 0
    if not args.application_id:
        print("usage: chainlend review approve|decline APPLICATION_ID --by NAME [--amount-fen N | --reason TEXT]",
              file=sys.stderr)
        return 2
    try:
        done = review(args.application_id, action=args.action, by=args.by or "", amount_fen=args.amount_fen,
                      note=args.reason)
    except LendingOpsError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"{done['application_id']}: {done['status']} by {done['officer']} ({done['amount_fen']} fen)")
    return 0


def cmd_serve(args) -> int:
    """Run a loopback stand-in server until SIGTERM: the SMTP sink or the payment rail."""
    import threading
    from pathlib import Path

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.what == "smtp":
        from chainlend.mail import SmtpSink

        server = SmtpSink(Path(args.maildir), port=args.port)
    else:
        from sources.payment_rail import PaymentRailServer

        server = PaymentRailServer(Path(args.db), port=args.port)
    with server:
        print(f"{args.what} stand-in on 127.0.0.1:{server.port}", flush=True)
        stop.wait()
    return 0


def _prod_init(args) -> None:
    from chainlend import prod

    cfg = prod.ProdConfig(var=settings.var_dir(), prefix=args.prefix)
    path = prod.init(cfg, path=prod.env_file(), force=args.force)
    print(f"wrote {path} (0600, new secrets); databases {cfg.prefix}_* ready on PostgreSQL and MariaDB")


def cmd_prod(args) -> int:
    """The production profile on this machine: init, up, down, status (:mod:`chainlend.prod`)."""
    from pathlib import Path

    from chainlend import prod

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if args.action == "up":
        pids = prod.up(env)
        print("\n".join(f"{name:<14} pid {pid}" for name, pid in pids.items()))
        print(f"Airflow UI {env['AIRFLOW__API__BASE_URL']} (user ops, password in "
              f"{env['AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE']}); MLflow "
              f"{env['CHAINLEND_MLFLOW_TRACKING_URI']}")
        return 0
    if args.action == "down":
        stopped = prod.down(env)
        print(f"stopped {len(stopped)} process group(s)")
        return 0
    alive = prod.running(env)
    for name in prod.process_specs(env):
        print(f"{name:<14} {'pid ' + str(alive[name]) if name in alive else 'not running'}")
    if alive:
        for part, status in prod.health(env).items():
            print(f"  {part:<14} {status}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chainlend", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("setup", help="migrate the Airflow metadata DB and create warehouse tables").set_defaults(
        func=cmd_setup)

    s = sub.add_parser("simulate", help="the source-system simulator")
    s.add_argument("action", choices=["init", "advance"])
    s.add_argument("--seed", type=int, default=7)
    s.add_argument("--scale", default="demo", help="tiny | small | demo | reference")
    s.add_argument("--faults", default="demo", choices=["demo", "none"])
    s.add_argument("--start", default="2026-03-02", help="first business day (init)")
    s.add_argument("--days", type=int, default=1, help="business days to play (advance)")
    s.add_argument("--reset", action="store_true", help="re-initialise existing sources (init)")
    s.add_argument("--erp-url"), s.add_argument("--dealer-url"), s.add_argument("--sim-url")
    s.set_defaults(func=cmd_simulate)

    d = sub.add_parser("demo", help="simulate N days and run the daily DAGs for each")
    d.add_argument("--days", type=int, default=30)
    d.add_argument("--history", type=int, default=150, help="business days the sources ran before the demo")
    d.add_argument("--scale", default="demo")
    d.add_argument("--seed", type=int, default=7)
    d.add_argument("--faults", default="demo", choices=["demo", "none"])
    d.set_defaults(func=cmd_demo)

    q = sub.add_parser("quarantine", help="list open quarantine records, or release a blocked batch")
    q.add_argument("action", choices=["list", "release"])
    q.add_argument("--source"), q.add_argument("--table")
    q.add_argument("--batch", help="batch id to release, e.g. dealer.inventory.20260305")
    q.add_argument("--by", help="who releases it (recorded as resolved_batch_id 'release:<by>')")
    q.set_defaults(func=cmd_quarantine)

    m = sub.add_parser("models", help="model registry: list versions, audit, approve (maker/checker)")
    m.add_argument("action", choices=["list", "audit", "approve"])
    m.add_argument("family", nargs="?", help="dealer_pd | supplier_pd | post_loan_behaviour")
    m.add_argument("version", nargs="?", help="version number to approve")
    m.add_argument("--by", help="the approver's name (must differ from who trained it)")
    m.set_defaults(func=cmd_models)

    r = sub.add_parser("review", help="manual review queue of order loans: list, approve, decline")
    r.add_argument("action", choices=["list", "approve", "decline"])
    r.add_argument("application_id", nargs="?")
    r.add_argument("--by", help="the credit officer's name")
    r.add_argument("--amount-fen", type=int, help="approved amount in fen (default: the proposed amount)")
    r.add_argument("--reason", help="why (required to decline)")
    r.add_argument("--all", action="store_true", help="list decided items too")
    r.set_defaults(func=cmd_review)

    ui = sub.add_parser("mlflow-ui", help="the MLflow UI on the embedded registry (127.0.0.1)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_mlflow_ui)

    sub.add_parser("airflow", help="serve the DAGs in airflow standalone on 127.0.0.1").set_defaults(
        func=cmd_airflow)

    pr = sub.add_parser("prod", help="the production profile on this machine: init, up, down, status")
    pr.add_argument("action", choices=["init", "up", "down", "status"])
    pr.add_argument("--prefix", default="chainlend", help="database name prefix (init)")
    pr.add_argument("--force", action="store_true", help="replace an existing env file: new secrets (init)")
    pr.add_argument("--init", action="store_true", help="run init first when there is no env file yet (up)")
    pr.set_defaults(func=cmd_prod)

    sv = sub.add_parser("serve", help="a loopback stand-in: the SMTP sink or the payment rail")
    sv.add_argument("what", choices=["smtp", "rail"])
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--maildir", help="Maildir folder (smtp)")
    sv.add_argument("--db", help="SQLite file of the rail's payments (rail)")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "prod":
        from chainlend.prod import env_file

        os.environ["CHAINLEND_PROFILE"] = "prod"
        if args.action == "init" or (args.action == "up" and args.init and not env_file().exists()):
            _prod_init(args)  # writes the profile that apply_profile reads
            if args.action == "init":
                return 0
    settings.apply_profile()
    if args.command == "demo":  # task logs stay in Airflow's log folder, the console shows progress
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "CRITICAL")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
