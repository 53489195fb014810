"""The ingestion DAG of one source: land every table, gate it, then mark the source's Asset.

Kept out of the DAG files so ``ingest_erp`` and ``ingest_dealer`` are the same wiring; heavy
work happens in :mod:`chainlend.ingest`, imported inside the task bodies.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from chainlend.assets import SOURCE_ASSETS
from chainlend.dag_defaults import BUSINESS_DATE_PARAMS, BUSINESS_DAYS_2300, DEFAULT_ARGS, START
from sources.contract import TABLES


def build_ingest_dag(source: str, *, doc_md: str | None = None):
    """Build ``ingest_<source>``: ``land_<table>`` >> ``gate_<table>`` per table, then ``publish``.

    The tasks return dicts as one XCom each (``multiple_outputs=False``): Airflow would otherwise
    infer multiple outputs from the ``dict`` return type and push every key as an XCom of its
    own, an API round trip each (~150 a day) that no task reads."""

    @task(task_id="land", multiple_outputs=False)
    def land(table: str) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from chainlend.alerts import alert_once, data_owners, gx_paths
        from chainlend.dates import business_date_from_context
        from chainlend.ingest import IngestError, SchemaDriftError, extract_load
        from chainlend.mail import Mailer
        from chainlend.pseudonym import Pseudonymiser, pii_columns
        from chainlend.quality import gate_schema_drift, validator_for
        from chainlend.systems import SOURCE_CLASSES, Warehouse
        from sources.contract import table as contract_table

        context = get_current_context()
        as_of = business_date_from_context(context)
        src, warehouse, contract = SOURCE_CLASSES[source].from_conn(), Warehouse.from_conn(), contract_table(source, table)
        # personal columns become keyed tokens before anything is written (key: secrets backend)
        pseudonymiser = Pseudonymiser.from_secrets() if pii_columns(contract) else None
        try:
            result = extract_load(src, warehouse, contract, as_of, context["run_id"], pseudonymiser=pseudonymiser)
        except SchemaDriftError as exc:  # the schema expectation blocks the batch; rows stay in the source
            summary = gate_schema_drift(warehouse, validator_for(*gx_paths()), contract, as_of,
                                        context["run_id"], src.columns(table))
            alert_once(warehouse, Mailer(), summary, as_of, data_owners(source))
            raise AirflowFailException(f"blocked: {exc}") from exc
        except IngestError as exc:  # a broken contract: retrying cannot help
            raise AirflowFailException(str(exc)) from exc
        return {"batch_id": result.batch_id, "rows": result.rows, "business_date": as_of.isoformat()}

    @task(task_id="gate", multiple_outputs=False)
    def gate(landed: dict, table: str) -> dict:
        """Validate the batch with its GX suite, publish accepted rows, quarantine the rest."""
        import datetime as dt

        from airflow.sdk.exceptions import AirflowFailException

        from chainlend.alerts import data_owners, gx_paths
        from chainlend.mail import Mailer
        from chainlend.quality import gate_day, validator_for
        from chainlend.systems import Warehouse
        from sources.contract import table as contract_table

        context = get_current_context()
        summary, replayed = gate_day(
            Warehouse.from_conn(), validator_for(*gx_paths()), Mailer(), data_owners(source),
            contract_table(source, table), dt.date.fromisoformat(landed["business_date"]), context["run_id"])
        if summary.blocked:
            failing = "; ".join(f"{f['check']}: {f['detail']}" for f in summary.failures if f["severity"] == "batch")
            raise AirflowFailException(f"batch {summary.batch_id} blocked by {failing}")
        return {"batch_id": summary.batch_id, "rows": summary.rows_in, "published": summary.published,
                "quarantined": summary.quarantined, "replayed": replayed}

    @task(task_id="publish", outlets=[SOURCE_ASSETS[source]], multiple_outputs=False)
    def publish(batches: list[dict]) -> dict:
        """Every table passed its gate: record the day's batches on the source's Asset event."""
        from chainlend.alerts import gx_paths
        from chainlend.quality import validator_for

        context = get_current_context()
        validator_for(*gx_paths()).build_index()
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
        landed = {t.name: land.override(task_id=f"land_{t.name}")(t.name) for t in TABLES[source]}
        gated = []
        for t in TABLES[source]:
            checked = gate.override(task_id=f"gate_{t.name}")(landed[t.name], t.name)
            # referential checks look up the parents' landed keys: gate after they land
            parents = {fk.table for fk in t.foreign_keys if fk.table != t.name}
            [landed[p] for p in sorted(parents)] >> checked
            gated.append(checked)
        publish(gated)

    return ingest()
