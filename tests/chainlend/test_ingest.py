"""Ingestion end to end: the simulator writes real databases, the DAGs run under Airflow
(``dag.test()``), and the warehouse landing tables are compared with the sources."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from chainlend.ingest import (
    LANDED,
    SCHEMA_DRIFT,
    SchemaDriftError,
    WindowConflictError,
    extract_load,
    window_end_for,
)
from chainlend.pseudonym import Pseudonymiser
from chainlend.systems import BATCH_ID, RUN_ID, SEQ, DealerSource, ErpSource, Warehouse
from sources.contract import DEALER, ERP, TABLES, table
from sources.simulator import FaultRates, Simulator

START = dt.date(2026, 3, 2)


def _sim(urls: dict[str, str], faults: FaultRates | None = None, days: int = 2, seed: int = 3) -> Simulator:
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=seed, scale="tiny", faults=faults or FaultRates.none(), start=START)
    sim.advance(days)
    return sim


def _source_rows(url: str, contract, end: dt.datetime) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text(f"SELECT COUNT(*) FROM {contract.name} WHERE updated_at < :e"),
                         {"e": end}).scalar()
    engine.dispose()
    return n


def _run(dag_id: str, day: dt.date):
    from chainlend.runtime import load_dag, run_dag, task_states

    dag_run = run_dag(load_dag(dag_id), day)
    return dag_run, task_states(dag_run)


def _landing_snapshot(warehouse: Warehouse) -> dict[str, pd.DataFrame]:
    """Landing and published tables and the quarantine, without run ids and wall-clock times."""
    out = {}
    for tables in TABLES.values():
        for contract in tables:
            df = warehouse.read_landing(contract).drop(columns=[RUN_ID])
            out[contract.name] = df.sort_values([BATCH_ID, SEQ]).reset_index(drop=True)
            pub = warehouse.read_published(contract)
            out[f"published {contract.name}"] = pub.sort_values(contract.key).reset_index(drop=True)
    q = warehouse.read_table(warehouse.quarantine).drop(
        columns=["quarantine_id", "run_id", "quarantined_at", "resolved_at"])
    out["quarantine"] = q.sort_values(["batch_id", "seq"]).reset_index(drop=True)
    return out


@pytest.fixture
def ingest_env(airflow_db, sqlite_urls, use_connections):
    use_connections(erp_default=sqlite_urls["erp"], dealer_default=sqlite_urls["dealer"],
                    warehouse_default=sqlite_urls["warehouse"])
    return sqlite_urls


def test_dags_land_every_source_row(ingest_env):
    sim = _sim(ingest_env, days=2)
    days = sorted({d for d in [START, sim.current_date]})
    for day in days:
        for dag_id in ("ingest_erp", "ingest_dealer"):
            dag_run, states = _run(dag_id, day)
            assert str(dag_run.state) == "success", states
            assert states["publish"] == "success"
    warehouse = Warehouse.from_url(ingest_env["warehouse"])
    end = window_end_for(days[-1])
    total = 0
    for source, tables in TABLES.items():
        for contract in tables:
            landed = warehouse.read_landing(contract)
            expected = _source_rows(ingest_env[source], contract, end)
            assert len(landed) == expected, f"{source}.{contract.name}"
            total += expected
            assert set(landed[BATCH_ID]) <= {f"{source}.{contract.name}.{d:%Y%m%d}" for d in days}
    assert total > 500
    batches = warehouse.read_batches()
    assert set(batches.status) == {LANDED} and len(batches) == len(days) * sum(map(len, TABLES.values()))
    # the Asset of each source got an event per run
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        uris = [uri for (uri,) in session.query(AssetModel.uri).join(
            AssetEvent, AssetEvent.asset_id == AssetModel.id).all()]
    assert uris.count("chainlend://warehouse/erp") >= len(days)
    assert uris.count("chainlend://warehouse/dealer") >= len(days)


def test_rerunning_an_interval_is_idempotent(ingest_env):
    sim = _sim(ingest_env, faults=FaultRates(duplicate_key=0.02, late_arrival=0.05), days=2)
    day2 = sim.current_date
    for day in (START, day2):
        for dag_id in ("ingest_erp", "ingest_dealer"):
            assert str(_run(dag_id, day)[0].state) == "success"
    warehouse = Warehouse.from_url(ingest_env["warehouse"])
    before = _landing_snapshot(warehouse)
    # re-run the first day after the second has landed, and the second again
    for day in (START, day2):
        for dag_id in ("ingest_erp", "ingest_dealer"):
            assert str(_run(dag_id, day)[0].state) == "success"
    after = _landing_snapshot(warehouse)
    assert len(before["quarantine"]) > 0, "the scenario must quarantine rows"
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name], check_dtype=False, obj=name)


def test_late_arriving_rows_land_in_the_next_batch(ingest_env):
    sim = _sim(ingest_env, faults=FaultRates(late_arrival=0.1), days=3)
    manifest = sim.fault_manifest()
    late = manifest[manifest.kind == "late_arrival"]
    assert len(late) > 0
    wh_url = ingest_env["warehouse"]
    warehouse = Warehouse.from_url(wh_url)
    sources = {ERP: ErpSource.from_url(ingest_env["erp"]), DEALER: DealerSource.from_url(ingest_env["dealer"])}
    played = sorted(pd.to_datetime(sim.oracle_pd().as_of).dt.date.unique())
    for day in played:
        for source, tables in TABLES.items():
            for contract in tables:
                extract_load(sources[source], warehouse, contract, day, f"run-{day}",
                             pseudonymiser=Pseudonymiser.from_secrets())
    for row in late.itertuples():
        contract = table(row.source, row.table_name)
        landed = warehouse.read_landing(contract)
        hit = landed[landed[contract.key] == row.key_value]
        assert len(hit) == 1, row
        written_on = pd.Timestamp(row.sim_date).date()
        assert hit[BATCH_ID].iloc[0] == f"{row.source}.{row.table_name}.{written_on:%Y%m%d}"
        assert pd.Timestamp(hit[contract.event_time].iloc[0]).date() < written_on


def test_schema_drift_blocks_the_table_and_loses_nothing(ingest_env):
    sim = _sim(ingest_env, days=1)
    day1 = sim.current_date
    src = sa.create_engine(ingest_env["dealer"])
    with src.begin() as conn:
        conn.execute(sa.text("ALTER TABLE sales RENAME COLUMN sale_price_fen TO sale_price"))
    dag_run, states = _run("ingest_dealer", day1)
    assert str(dag_run.state) == "failed"
    assert states["land_sales"] == "failed" and states["land_inventory"] == "success"
    assert states["publish"] == "upstream_failed"
    warehouse = Warehouse.from_url(ingest_env["warehouse"])
    batches = warehouse.read_batches(DEALER).set_index("table_name")
    assert batches.loc["sales", "status"] == SCHEMA_DRIFT
    assert "missing column(s) ['sale_price_fen']" in batches.loc["sales", "detail"]
    assert "['sale_price']" in batches.loc["sales", "detail"]
    with pytest.raises(SchemaDriftError, match="sale_price_fen"):
        extract_load(DealerSource.from_url(ingest_env["dealer"]), warehouse, table(DEALER, "sales"), day1, "x")
    # the source fixes the column; the next day's run catches up on both days
    with src.begin() as conn:
        conn.execute(sa.text("ALTER TABLE sales RENAME COLUMN sale_price TO sale_price_fen"))
    src.dispose()
    (day2,) = sim.advance(1)
    dag_run, states = _run("ingest_dealer", day2)
    assert str(dag_run.state) == "success", states
    sales = warehouse.read_landing(table(DEALER, "sales"))
    assert len(sales) == _source_rows(ingest_env["dealer"], table(DEALER, "sales"), window_end_for(day2))
    assert len(sales) > 0


def test_backfilling_inside_a_later_window_is_refused(sqlite_urls):
    sim = _sim(sqlite_urls, days=2)
    warehouse = Warehouse.from_url(sqlite_urls["warehouse"])
    erp = ErpSource.from_url(sqlite_urls["erp"])
    contract = table(ERP, "orders")
    extract_load(erp, warehouse, contract, sim.current_date, "r2")  # initial load covers day 1 too
    with pytest.raises(WindowConflictError, match="already covers"):
        extract_load(erp, warehouse, contract, START, "r1")


@pytest.mark.postgres
@pytest.mark.mariadb
def test_erp_from_mariadb_dealer_from_postgres_into_postgres_warehouse(
    airflow_db, sqlite_urls, mariadb_url, postgres_url, use_connections, request
):
    """Real servers on 127.0.0.1: ERP on MariaDB, dealer platform and warehouse on PostgreSQL."""
    import uuid

    # dealer and warehouse share the PostgreSQL server but not the database
    admin = sa.create_engine(postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    wh_db = f"chainlend_wh_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {wh_db}"))
    wh_url = postgres_url.rsplit("/", 1)[0] + f"/{wh_db}"

    def _drop():
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {wh_db} WITH (FORCE)"))
        admin.dispose()

    request.addfinalizer(_drop)
    urls = {"erp": mariadb_url, "dealer": postgres_url, "sim": sqlite_urls["sim"]}
    sim = _sim(urls, faults=FaultRates(duplicate_key=0.01, null=0.01), days=2)
    use_connections(erp_default=mariadb_url, dealer_default=postgres_url, warehouse_default=wh_url)
    for day in (START, sim.current_date):
        for dag_id in ("ingest_erp", "ingest_dealer"):
            dag_run, states = _run(dag_id, day)
            assert str(dag_run.state) == "success", states
    warehouse = Warehouse.from_url(wh_url)
    end = window_end_for(sim.current_date)
    for source, tables in TABLES.items():
        for contract in tables:
            assert len(warehouse.read_landing(contract)) == _source_rows(urls[source], contract, end), contract.name
    warehouse.engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_publish_replaces_earlier_batches_keeps_later_ones(dialect, request, tmp_path):
    """A batch's accepted rows replace the rows of their keys from earlier batches and leave a
    later batch's rows alone, on every warehouse dialect; on SQLite the table holds the rows in
    arrival order."""
    from types import SimpleNamespace

    from chainlend.quality import _publish

    url = {"sqlite": lambda: f"sqlite:///{tmp_path / 'w.db'}",
           "postgresql": lambda: request.getfixturevalue("postgres_url"),
           "mariadb": lambda: request.getfixturevalue("mariadb_url")}[dialect]()
    warehouse = Warehouse.from_url(url)
    contract = table(ERP, "vehicle_models")
    pub = warehouse.published(contract)
    warehouse.metadata.create_all(warehouse.engine, tables=[pub])
    at = dt.datetime(2026, 3, 2, 12)

    def publish(batch_id: str, keys: list[str]) -> None:
        accepted = pd.DataFrame({"model_id": keys, "model_name": [f"{batch_id} {k}" for k in keys],
                                 "segment": "suv", "list_price_fen": range(len(keys)), "updated_at": at})
        with warehouse.engine.begin() as conn:
            _publish(conn, warehouse, contract, batch_id, SimpleNamespace(accepted=accepted),
                     pd.Series(range(len(keys)), index=accepted.index))

    publish("erp.vehicle_models.20260302", ["M9", "M1", "M5", "M3"])
    publish("erp.vehicle_models.20260304", ["M5", "M7"])
    publish("erp.vehicle_models.20260303", ["M8", "M3", "M5", "M2"])  # a re-run of an older date
    rows = warehouse.read_published(contract)
    got = dict(zip(rows.model_id, rows[BATCH_ID].str[-2:]))
    assert got == {"M1": "02", "M9": "02", "M3": "03", "M8": "03", "M2": "03", "M5": "04", "M7": "04"}
    if dialect == "sqlite":
        with warehouse.engine.connect() as conn:
            order = [k for (k,) in conn.exec_driver_sql(f"SELECT model_id FROM {pub.name} ORDER BY rowid")]
        assert order == ["M9", "M1", "M5", "M7", "M8", "M3", "M2"]  # replaced rows go, new ones follow
    warehouse.engine.dispose()
