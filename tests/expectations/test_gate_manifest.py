"""The gate against the simulator's fault manifest: every injected bad row is quarantined with
the right reason, no clean row is quarantined, and rows in = published + quarantined."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
import sqlalchemy as sa

from chainlend.ingest import extract_load
from chainlend.pseudonym import Pseudonymiser
from chainlend.quality import gate_batch
from chainlend.systems import DealerSource, ErpSource, Warehouse
from expectations.gx_runner import GxValidator
from sources.contract import DEALER, ERP, table
from sources.simulator import FaultRates, Simulator

START = dt.date(2026, 3, 2)
FAULTS = FaultRates(null=0.02, duplicate_key=0.02, duplicate_vin=0.02, negative_amount=0.02,
                    orphan_fk=0.02, future_timestamp=0.02, late_arrival=0.02)
REASON = {"null": "not_null:{col}", "negative_amount": "range:{col}", "orphan_fk": "fk:{col}",
          "future_timestamp": "not_future:{col}"}


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gate")
    urls = {n: f"sqlite:///{tmp / f'{n}.db'}" for n in ("erp", "dealer", "sim", "wh")}
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=5, scale="tiny", faults=FAULTS, start=START)
    days = sim.advance(3)
    warehouse = Warehouse.from_url(urls["wh"])
    validator = GxValidator(tmp / "gx", tmp / "docs")
    sources = {ERP: ErpSource.from_url(urls["erp"]), DEALER: DealerSource.from_url(urls["dealer"])}
    pseudonymiser = Pseudonymiser.from_secrets()
    for day in days:
        for src in sources.values():
            for contract in src.tables:
                extract_load(src, warehouse, contract, day, f"run-{day}", pseudonymiser=pseudonymiser)
                gate_batch(warehouse, validator, contract, day, f"run-{day}")
    return sim, warehouse, validator


def _quarantine(warehouse: Warehouse) -> pd.DataFrame:
    return warehouse.read_table(warehouse.quarantine)


def test_every_injected_bad_row_is_quarantined_with_its_reason(gated):
    sim, warehouse, _ = gated
    manifest = sim.fault_manifest()
    q = _quarantine(warehouse)
    row_faults = manifest[manifest.kind != "late_arrival"]
    assert set(row_faults.kind) >= {"null", "duplicate_key", "duplicate_vin", "negative_amount", "orphan_fk",
                                    "future_timestamp"}, "the scenario must exercise every fault kind"
    for f in row_faults.itertuples():
        hits = q[(q.source == f.source) & (q.table_name == f.table_name) & (q.key_value == f.key_value)]
        assert len(hits) >= 1, f"not quarantined: {f}"
        reasons = ";".join(hits.reasons)
        contract = table(f.source, f.table_name)
        if f.kind in REASON:
            assert REASON[f.kind].format(col=f.column_name) in reasons, (f, reasons)
        elif f.kind == "duplicate_key":
            assert f"unique:{contract.key}" in reasons, (f, reasons)
            landed = warehouse.read_landing(contract)
            assert len(hits) == (landed[contract.key] == f.key_value).sum(), "every copy is quarantined"
        elif f.kind == "duplicate_vin":
            assert "unique_vin" in reasons or "unique:vin" in reasons, (f, reasons)


def test_no_clean_row_is_quarantined_and_late_rows_publish(gated):
    sim, warehouse, _ = gated
    manifest = sim.fault_manifest()
    bad = {(f.source, f.table_name, f.key_value) for f in manifest.itertuples() if f.kind != "late_arrival"}
    q = _quarantine(warehouse)
    clean_quarantined = [r for r in q.itertuples() if (r.source, r.table_name, r.key_value) not in bad]
    assert clean_quarantined == [], clean_quarantined[:5]
    for f in manifest[manifest.kind == "late_arrival"].itertuples():
        pub = warehouse.read_published(table(f.source, f.table_name))
        assert (pub[table(f.source, f.table_name).key] == f.key_value).sum() == 1, f


def test_rows_in_equal_published_plus_quarantined_for_every_batch(gated):
    _, warehouse, _ = gated
    results = warehouse.read_table(warehouse.gate_results)
    assert len(results) == 3 * 19
    assert (results.rows_in == results.published + results.quarantined).all()
    batches = warehouse.read_batches().set_index("batch_id")
    for r in results.itertuples():
        assert r.rows_in == batches.loc[r.batch_id, "rows_extracted"]
    q = _quarantine(warehouse)
    assert q.groupby("batch_id").size().to_dict() == {
        r.batch_id: r.quarantined for r in results.itertuples() if r.quarantined}


def test_quarantined_rows_keep_the_row_and_data_docs_exist(gated):
    _, warehouse, validator = gated
    q = _quarantine(warehouse)
    row = json.loads(q.row_json.iloc[0])
    contract = table(q.source.iloc[0], q.table_name.iloc[0])
    assert set(contract.column_names) <= set(row)
    results = warehouse.read_table(warehouse.gate_results)
    for url in results.docs_url:
        assert url.startswith("file://") and pd.io.common.file_exists(url[len("file://"):]), url
    index = validator.build_index()
    assert index.exists() and "erp.payables" in index.read_text()


def _inventory_day(tmp_path):
    """One simulated day with negative amounts; dealers and inventory landed, inventory gated."""
    urls = {n: f"sqlite:///{tmp_path / f'{n}.db'}" for n in ("erp", "dealer", "sim", "wh")}
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=9, scale="tiny", faults=FaultRates(negative_amount=0.05), start=START)
    (day1,) = sim.advance(1)
    warehouse, validator = Warehouse.from_url(urls["wh"]), GxValidator()
    dealer = DealerSource.from_url(urls["dealer"])
    inventory = table(DEALER, "inventory")
    for contract in (table(DEALER, "dealers"), inventory):
        extract_load(dealer, warehouse, contract, day1, "r1", pseudonymiser=Pseudonymiser.from_secrets())
    summary = gate_batch(warehouse, validator, inventory, day1, "r1")
    return sim, urls, warehouse, validator, dealer, inventory, day1, summary


def test_a_corrected_source_row_is_replayed_and_its_record_closed(tmp_path):
    sim, urls, warehouse, validator, dealer, inventory, day1, _ = _inventory_day(tmp_path)
    q = _quarantine(warehouse)
    assert len(q) > 0 and (q.status == "open").all()
    vin = q.key_value.iloc[0]
    # the source corrects the row: amounts made positive, change timestamp moves to day 2
    (day2,) = sim.advance(1)
    src = sa.create_engine(urls["dealer"])
    with src.begin() as conn:
        conn.execute(sa.text(
            "UPDATE inventory SET purchase_price_fen = ABS(purchase_price_fen), "
            "appraised_value_fen = ABS(appraised_value_fen), updated_at = :ts WHERE vin = :vin"),
            {"ts": dt.datetime.combine(day2, dt.time(9)), "vin": vin})
    src.dispose()
    extract_load(dealer, warehouse, inventory, day2, "r2")
    gate_batch(warehouse, validator, inventory, day2, "r2")
    q = _quarantine(warehouse).set_index("key_value")
    assert q.loc[vin, "status"] == "resolved" and q.loc[vin, "resolved_batch_id"].endswith(f"{day2:%Y%m%d}")
    pub = warehouse.read_published(inventory).set_index("vin")
    assert pub.loc[vin, "purchase_price_fen"] >= 0


def test_releasing_a_blocked_batch_publishes_rows_that_pass_row_checks(tmp_path):
    """A volume-blocked batch waits for a named release; its rows with row-level faults stay."""
    from chainlend.quality import replay_quarantine

    _, _, warehouse, validator, _, inventory, day1, summary = _inventory_day(tmp_path)
    # turn the outcome into what a volume block leaves behind: nothing published, all quarantined
    landed = warehouse.read_landing(inventory)
    pub, q = warehouse.published(inventory), warehouse.quarantine
    with warehouse.engine.begin() as conn:
        conn.execute(sa.delete(pub))
        conn.execute(sa.update(q).values(reasons="blocked:volume;" + q.c.reasons))
        bad_keys = {k for (k,) in conn.execute(sa.select(q.c.key_value))}
        conn.execute(q.insert(), [{
            "batch_id": summary.batch_id, "run_id": "r1", "source": DEALER, "table_name": "inventory",
            "seq": int(r.seq_), "key_value": r.vin, "reasons": "blocked:volume",
            "row_json": json.dumps({c: getattr(r, c) for c in inventory.column_names}, default=str),
            "quarantined_at": dt.datetime(2026, 3, 3), "status": "open",
            "resolved_batch_id": None, "resolved_at": None} for r in landed.rename(columns={"_seq": "seq_"}).itertuples() if r.vin not in bad_keys])
    assert replay_quarantine(warehouse, validator, inventory, day1, "r2") == 0, "no automatic replay of a block"
    released = replay_quarantine(warehouse, validator, inventory, day1, "release", release_batch=summary.batch_id,
                                 released_by="Li Na")
    assert released == len(landed) - len(bad_keys) > 0
    published = warehouse.read_published(inventory)
    assert len(published) == released and not set(published.vin) & bad_keys
    records = warehouse.read_table(q).set_index("key_value")
    assert (records.loc[list(bad_keys), "status"] == "open").all()
    assert set(records[records.status == "resolved"].resolved_batch_id) == {"release:Li Na"}
