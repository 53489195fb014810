"""The ingestion DAG of one source: land every contract table, then mark the source's Asset.

Kept out of the DAG files so ``ingest_erp`` and ``ingest_dealer`` are the same wiring; heavy
work happens in :mod:`chainlend.ingest`, imported inside the task bodies.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from chainlend.assets import SOURCE_ASSETS
from chainlend.dag_defaults import BUSINESS_DATE_PARAMS, BUSINESS_DAYS_2300, DEFAULT_ARGS, START
from sources.contract import TABLES


def build_ingest_dag(source: str, *, doc_md: str | None = None):
    """Build ``ingest_<source>``: one ``land_<table>`` task per table, then ``publish``."""

    @task(task_id="land")
    def land(table: str) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from chainlend.dates import business_date_from_context
        from chainlend.ingest import IngestError, extract_load
        from chainlend.systems import SOURCE_CLASSES, Warehouse
        from sources.contract import table as contract_table

        context = get_current_context()
        as_of = business_date_from_context(context)
        try:
            result = extract_load(
                SOURCE_CLASSES[source].from_conn(), Warehouse.from_conn(),
                contract_table(source, table), as_of, context["run_id"],
            )
        except IngestError as exc:  # a broken contract: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        return {"batch_id": result.batch_id, "rows": result.rows, "business_date": as_of.isoformat()}

    @task(task_id="publish", outlets=[SOURCE_ASSETS[source]])
    def publish(batches: list[dict]) -> dict:
        """Every table landed: record the day's batches on the source's Asset event."""
        context = get_current_context()
        summary = {b["batch_id"]: b["rows"] for b in batches}
        context["outlet_events"][SOURCE_ASSETS[source]].extra = {"batches": summary}
        return {"batches": summary}

    @dag(
        dag_id=f"ingest_{source}",
        schedule=BUSINESS_DAYS_2300,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        params=BUSINESS_DATE_PARAMS,
        tags=["ingestion", source],
        doc_md=doc_md,
    )
    def ingest():
        landed = [land.override(task_id=f"land_{t.name}")(t.name) for t in TABLES[source]]
        publish(landed)

    return ingest()
