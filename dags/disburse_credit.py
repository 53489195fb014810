"""Pay approved order loans and supplier credits exactly once: everything payable up to the
interval end without an instruction → payment instructions keyed by business keys (unique in the
database) → double-entry postings, limits checked at posting time under row locks, early-warning
freezes obeyed → an outbox → the payment rail (idempotent by key) → a reconciliation proving
decisions = instructions = postings = outbox, which fails the run on any difference."""

from airflow.sdk import dag, get_current_context, task

from chainlend.dag_defaults import DEFAULT_ARGS, START

HOURLY_AT_HALF_PAST = "30 * * * *"  # after approval (:00) and the supplier micro-batches (*/15)


def _interval_end(context):
    import datetime as dt

    end = context.get("data_interval_end") or context["dag_run"].run_after
    if context["params"].get("interval_end"):
        end = dt.datetime.fromisoformat(context["params"]["interval_end"])
    return end.replace(tzinfo=None)


@task
def post_instructions() -> dict:
    import os
    import socket

    from chainlend.disbursement_ops import post_instructions

    ctx = get_current_context()
    ti = ctx["ti"]
    scope = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}"
    holder = f"{socket.gethostname()}:{os.getpid()}:try{ti.try_number}"
    return post_instructions(_interval_end(ctx), scope=scope, holder=holder, run_id=ti.run_id)


@task
def send_payments(posted: dict) -> dict:
    from chainlend.disbursement_ops import PaymentRail, send_outbox

    return send_outbox(PaymentRail.from_conn())


@task
def reconcile(posted: dict, sent: dict) -> dict:
    import dataclasses
    import datetime as dt

    from chainlend.disbursement_ops import reconcile_ledger

    rec = reconcile_ledger(_interval_end(get_current_context()), dt.datetime.fromisoformat(posted["cutoff"]))
    return {**dataclasses.asdict(rec), "reconciled": rec.reconciled}


@dag(
    schedule=HOURLY_AT_HALF_PAST,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "owner": "credit-operations"},
    params={"interval_end": None},
    tags=["lending", "disbursement"],
    doc_md=__doc__,
)
def disburse_credit():
    posted = post_instructions()
    reconcile(posted, send_payments(posted))


disburse_credit()
