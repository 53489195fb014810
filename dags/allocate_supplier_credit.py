"""IoT-triggered supplier credit in micro-batches: the published, IoT-verified line-off events
not yet taken by an earlier micro-batch → the vehicle's financeable value → split among tier-1
suppliers by BOM cost share and on to tier-2 by the sub-BOM (exact in fen) → capped by each
supplier's limit (``supplier_pd`` champion and an expected-loss budget), current exposure,
OEM-confirmed payables and a dilution reserve → one credit per (VIN, supplier) naming its split:
its BOM lines as lineage, stored once per model × BOM structure × supplier
(``supplier_credit_splits``) and read per credit through the view ``supplier_credit_lines``.
Unverified events go to ``line_off_exceptions`` with the reason. A re-run of a micro-batch
recomputes the same events and upserts the same credits."""

from airflow.sdk import dag, get_current_context, task

from chainlend.dag_defaults import DEFAULT_ARGS, START

EVERY_15_MIN = "*/15 * * * *"


@task
def allocate_credit() -> dict:
    import datetime as dt

    from chainlend.lending_ops import allocate_batch

    context = get_current_context()
    end = context.get("data_interval_end") or context["dag_run"].run_after
    if context["params"].get("interval_end"):
        end = dt.datetime.fromisoformat(context["params"]["interval_end"])
    return allocate_batch(end.replace(tzinfo=None))


@dag(
    schedule=EVERY_15_MIN,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "owner": "credit-operations"},
    params={"interval_end": None},
    tags=["lending", "supplier"],
    doc_md=__doc__,
)
def allocate_supplier_credit():
    allocate_credit()


allocate_supplier_credit()
