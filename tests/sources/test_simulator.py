"""The source simulator against real databases: determinism, the fault manifest, schema drift,
the oracle and the realism that the pipeline relies on."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sources import sim_faults
from sources import sim_world as w
from sources.contract import DEALER, ERP, TABLES, WATERMARK, Table, table
from sources.sim_days import initial_rows, initial_state, play_day
from sources.sim_store import PENDING
from sources.simulator import SCALES, TRANSACTIONAL_TABLES, FaultRates, Scale, Simulator, SimulatorError

START = dt.date(2026, 3, 2)  # a Monday
MASTER_TS = pd.Timestamp(START) + pd.Timedelta(hours=6)
HIGH = FaultRates(null=0.03, duplicate_key=0.03, duplicate_vin=0.03, negative_amount=0.03, orphan_fk=0.03,
                  future_timestamp=0.03, late_arrival=0.05)
ROW_KINDS = ("null", "duplicate_key", "duplicate_vin", "negative_amount", "orphan_fk", "future_timestamp",
             "late_arrival")


def _urls(tmp_path, name: str) -> dict[str, str]:
    return {k: f"sqlite:///{tmp_path / f'{name}-{k}.db'}" for k in (ERP, DEALER, "sim")}


def _sim(urls: dict[str, str]) -> Simulator:
    return Simulator(urls[ERP], urls[DEALER], urls["sim"])


def _run(urls, *, seed=11, faults=None, days=4, scale="tiny") -> Simulator:
    sim = _sim(urls)
    sim.init(seed=seed, scale=scale, faults=faults or FaultRates.none(), start=START)
    sim.advance(days)
    return sim


def _source(urls, contract: Table) -> pd.DataFrame:
    """A source table with parsed timestamps (SQLAlchemy-typed read)."""
    engine = sa.create_engine(urls[contract.source])
    try:
        with engine.connect() as conn:
            df = pd.read_sql(sa.text(f"SELECT * FROM {contract.name}"), conn)
    finally:
        engine.dispose()
    for c in contract.columns:
        if c.name in df and c.type in ("ts", "date"):
            df[c.name] = pd.to_datetime(df[c.name])
    return df


def _all_tables(url: str, exclude: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    engine = sa.create_engine(url)
    out = {}
    try:
        with engine.connect() as conn:
            for name in sorted(sa.inspect(engine).get_table_names()):
                if name in exclude:
                    continue
                df = pd.read_sql(sa.text(f'SELECT * FROM "{name}"'), conn)
                df = df[sorted(df.columns)]
                out[name] = df.sort_values(list(df.columns), key=lambda s: s.astype(str)).reset_index(drop=True)
    finally:
        engine.dispose()
    return out


def _assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], obj=name)


# --------------------------------------------------------------------------------------------
# determinism


def test_same_seed_gives_identical_rows_in_every_table_and_another_seed_does_not(tmp_path):
    faults = FaultRates.demo()
    one = _urls(tmp_path, "one")
    _run(one, faults=faults, days=5)
    # the same days played in three calls by fresh Simulator objects (as separate processes would)
    two = _urls(tmp_path, "two")
    _run(two, faults=faults, days=2)
    _sim(two).advance(1)
    _sim(two).advance(2)
    other = _urls(tmp_path, "other")
    _run(other, seed=12, faults=faults, days=5)
    for key in (ERP, DEALER, "sim"):
        _assert_same(_all_tables(one[key]), _all_tables(two[key]))
    differs = [name for name, df in _all_tables(one[DEALER]).items()
               if not df.equals(_all_tables(other[DEALER])[name])]
    assert "inventory" in differs and "loan_applications" in differs


def test_rows_do_not_depend_on_the_fault_rates_streams(tmp_path):
    """Changing only the schema-drift rate leaves every row as it was (separate random streams)."""
    a, b = _urls(tmp_path, "a"), _urls(tmp_path, "b")
    sim_a = _run(a, faults=FaultRates(schema_drift=1.0), days=3)
    _run(b, days=3)
    sim_a.restore_schema()
    for key in (ERP, DEALER):
        ta, tb = _all_tables(a[key]), _all_tables(b[key])
        _assert_same(ta, tb)


# --------------------------------------------------------------------------------------------
# lifecycle


def test_init_refuses_an_initialised_simulation_unless_reset(tmp_path):
    urls = _urls(tmp_path, "x")
    sim = _run(urls, days=1)
    assert sim.current_date == START
    with pytest.raises(SimulatorError, match="already initialised"):
        _sim(urls).init(seed=1, scale="tiny", faults=FaultRates.none(), start=START)
    sim.init(seed=1, scale="tiny", faults=FaultRates.none(), start=START, reset=True)
    assert sim.current_date is None
    assert len(sim.oracle_pd()) == 0


def test_advance_plays_business_days_only(tmp_path):
    sim = _sim(_urls(tmp_path, "x"))
    sim.init(seed=3, scale="tiny", faults=FaultRates.none(), start=dt.date(2026, 3, 7))  # a Saturday
    assert sim.current_date is None
    played = sim.advance(6)
    assert played == [dt.date(2026, 3, d) for d in (9, 10, 11, 12, 13, 16)]
    assert sim.current_date == dt.date(2026, 3, 16)
    assert sim.advance(0) == []


def test_bad_arguments_fail_with_clear_errors(tmp_path):
    sim = _sim(_urls(tmp_path, "x"))
    with pytest.raises(SimulatorError, match="call init"):
        sim.advance(1)
    with pytest.raises(SimulatorError, match="unknown scale 'huge'"):
        sim.init(seed=1, scale="huge", faults=FaultRates.none(), start=START)
    with pytest.raises(ValueError, match=r"FaultRates\.null must be a probability"):
        FaultRates(null=1.5)
    with pytest.raises(ValueError, match=r"Scale\.dealers must be >= 1"):
        Scale(dealers=0, tier1_suppliers=1, tier2_suppliers=1, vehicle_models=1, bom_lines_per_model=1,
              vehicles_per_day=1, applications_per_day=1)


def test_scales_and_demo_rates():
    assert {"tiny", "small", "demo", "reference"} <= set(SCALES)
    ref = SCALES["reference"]
    assert (ref.dealers, ref.tier1_suppliers, ref.tier2_suppliers, ref.applications_per_day) == (2_500, 200, 500,
                                                                                                  100_000)
    demo = FaultRates.demo()
    assert 0 < demo.null < 0.01 and 1 / 30 <= demo.schema_drift <= 2 / 30
    assert FaultRates.none() == FaultRates()


# --------------------------------------------------------------------------------------------
# clean sources and the fault manifest


def _defects(urls) -> dict[str, set[tuple]]:
    """Every defect of each kind found in the sources: kind -> {(table, key, column)}."""
    frames = {(t.source, t.name): _source(urls, t) for tables in TABLES.values() for t in tables}
    found: dict[str, set[tuple]] = {k: set() for k in ROW_KINDS}
    for tables in TABLES.values():
        for t in tables:
            df = frames[(t.source, t.name)]
            key = df[t.key].astype(str)
            for c in t.columns:
                if not c.nullable:
                    for k in key[df[c.name].isna()]:
                        found["null"].add((t.name, k, c.name))
                if c.name.endswith("_fen"):
                    for k in key[df[c.name] < 0]:
                        found["negative_amount"].add((t.name, k, c.name))
            for k in key[key.duplicated()].unique():
                found["duplicate_key"].add((t.name, k, t.key))
            if t.unique_vin and t.key != "vin":
                one_per_key = df.drop_duplicates(subset=[t.key]).dropna(subset=["vin"])
                dup_vins = one_per_key.vin[one_per_key.vin.duplicated()]
                later = one_per_key[one_per_key.vin.isin(dup_vins) & one_per_key.duplicated("vin", keep="first")]
                for k in later[t.key]:
                    found["duplicate_vin"].add((t.name, k, "vin"))
            for fk in t.foreign_keys:
                parent = set(frames[(t.source, fk.table)][fk.ref_column].dropna())
                vals = df[fk.column]
                for k in key[vals.notna() & ~vals.isin(parent)]:
                    found["orphan_fk"].add((t.name, k, fk.column))
            if t.event_time:
                ev, upd = df[t.event_time], df[WATERMARK]
                future = ev > upd.dt.normalize() + pd.Timedelta(days=365)
                for k in key[future]:
                    found["future_timestamp"].add((t.name, k, t.event_time))
                late = ev.notna() & ~future & (ev.dt.normalize() < upd.dt.normalize()) & (upd != MASTER_TS)
                for k in key[late]:
                    found["late_arrival"].add((t.name, k, t.event_time))
    return found


def test_clean_sources_have_no_defects_and_consistent_references(tmp_path):
    urls = _urls(tmp_path, "clean")
    sim = _run(urls, days=8)
    assert sim.fault_manifest().empty
    assert {k: v for k, v in _defects(urls).items() if v} == {}
    inv, apps = _source(urls, table(DEALER, "inventory")), _source(urls, table(DEALER, "loan_applications"))
    sales = _source(urls, table(DEALER, "sales"))
    assert len(apps) > 300 and len(sales) > 100
    merged = apps.merge(inv[["vin", "acquired_at", "dealer_id"]], on="vin", suffixes=("", "_inv"), how="left")
    assert merged.acquired_at.notna().all(), "every application's VIN is in the inventory"
    assert (merged.dealer_id == merged.dealer_id_inv).all()
    assert (merged.acquired_at <= merged.applied_at).all()
    sold = sales.merge(inv[["vin", "acquired_at", "dealer_id"]], on="vin", suffixes=("", "_inv"))
    assert (sold.acquired_at < sold.sold_at).all() and (sold.dealer_id == sold.dealer_id_inv).all()
    assert (apps.requested_fen <= 0.9 * apps.appraised_value_fen).all() and set(apps.term_days) <= {30, 60, 90}
    # every transactional row of a played day is written within that day's business hours
    played = set(pd.to_datetime(sim.oracle_pd().as_of).dt.normalize())
    for t in TRANSACTIONAL_TABLES:
        df = _source(urls, t)
        days = df[WATERMARK][df[WATERMARK] != MASTER_TS]
        assert set(days.dt.normalize()) <= played, t.name
        assert days.dt.hour.between(8, 19).all(), t.name
        if t.event_time:
            ev = df.loc[days.index, t.event_time].dropna()
            assert (ev <= df.loc[ev.index, WATERMARK]).all(), t.name
    line_off = _source(urls, table(ERP, "line_off_events"))
    assert 0.9 < line_off.iot_verified.mean() < 1.0
    assert (line_off.verification_note.isna() == line_off.iot_verified.astype(bool)).all()
    assert set(line_off.verification_note.dropna()) <= {"vin_unknown", "no_order", "parts_mismatch"}
    vins = pd.concat([line_off.vin, inv.vin])
    assert vins.str.len().eq(17).all() and not vins.duplicated().any()


def test_fault_manifest_records_exactly_the_faults_in_the_sources(tmp_path):
    urls = _urls(tmp_path, "faulty")
    sim = _run(urls, faults=HIGH, days=4)
    manifest = sim.fault_manifest()
    assert set(manifest.kind) == set(ROW_KINDS), "every kind of row fault is exercised"
    assert manifest.fault_id.is_unique
    assert not manifest.duplicated(["table_name", "key_value", "kind"]).any()
    recorded = {k: {(r.table_name, r.key_value, r.column_name) for r in manifest[manifest.kind == k].itertuples()}
                for k in ROW_KINDS}
    found = _defects(urls)
    for kind in ROW_KINDS:
        assert found[kind] == recorded[kind], kind
    # the manifest's sim_date is the day the faulty row was written; keys find single rows
    for r in manifest.itertuples():
        df = _source(urls, table(r.source, r.table_name))
        hit = df[df[table(r.source, r.table_name).key] == r.key_value]
        assert len(hit) == (2 if r.kind == "duplicate_key" else 1), r
        assert set(hit[WATERMARK].dt.date) == {r.sim_date}, r
        if r.kind == "late_arrival":
            lag = np.busday_count(hit[r.column_name].dt.date.iloc[0], r.sim_date)
            assert 1 <= lag <= 3, r
        if r.kind == "duplicate_vin":
            assert (df.vin == hit.vin.iloc[0]).sum() >= 2


def test_faults_never_touch_master_data_keys_or_watermarks(tmp_path):
    urls = _urls(tmp_path, "faulty")
    sim = _run(urls, faults=HIGH, days=3)
    manifest = sim.fault_manifest()
    masters = {t.name for tables in TABLES.values() for t in tables} - {t.name for t in TRANSACTIONAL_TABLES}
    assert not set(manifest.table_name) & masters
    assert WATERMARK not in set(manifest.column_name)
    for t in TRANSACTIONAL_TABLES:
        df = _source(urls, t)
        assert df[t.key].notna().all() and df[WATERMARK].notna().all()


# --------------------------------------------------------------------------------------------
# schema drift


def test_schema_drift_is_applied_after_a_day_and_restored_before_the_next(tmp_path):
    drifting, steady = _urls(tmp_path, "drift"), _urls(tmp_path, "steady")
    sim = _sim(drifting)
    sim.init(seed=4, scale="tiny", faults=FaultRates(schema_drift=1.0), start=START)
    reference = _run(steady, seed=4, days=0)
    kinds = set()
    for _ in range(5):
        (day,) = sim.advance(1)
        reference.advance(1)
        drift = sim.fault_manifest().iloc[-1]
        assert (drift.sim_date, drift.key_value) == (day, None)
        assert drift.kind in ("renamed_column", "missing_column")
        kinds.add(drift.kind)
        contract = table(drift.source, drift.table_name)
        assert drift.column_name not in (contract.key, WATERMARK)
        engine = sa.create_engine(drifting[drift.source])
        columns = [c["name"] for c in sa.inspect(engine).get_columns(contract.name)]
        engine.dispose()
        assert drift.column_name not in columns
        extra = set(columns) - set(contract.column_names)
        assert len(extra) == (1 if drift.kind == "renamed_column" else 0)
        assert len(columns) == len(contract.columns) - (drift.kind == "missing_column")
    assert kinds == {"renamed_column", "missing_column"}
    # the next day's advance restored each drift before writing (else the insert would fail);
    # after restoring the last one, the sources equal those of a run without drift
    sim.restore_schema()
    for key in (ERP, DEALER):
        _assert_same(_all_tables(drifting[key]), _all_tables(steady[key]))


def test_reset_during_a_drift_leaves_contract_tables_only(tmp_path):
    urls = _urls(tmp_path, "x")
    sim = _sim(urls)
    for seed in range(1, 30):  # find a seed whose first drift drops a column
        sim.init(seed=seed, scale="tiny", faults=FaultRates(schema_drift=1.0), start=START, reset=True)
        sim.advance(1)
        if sim.fault_manifest().kind.iloc[-1] == "missing_column":
            break
    drift = sim.fault_manifest().iloc[-1]
    assert drift.kind == "missing_column"
    engine = sa.create_engine(urls[drift.source])
    assert sim_faults.hidden_name(drift.table_name) in sa.inspect(engine).get_table_names()
    sim.init(seed=1, scale="tiny", faults=FaultRates.none(), start=START, reset=True)
    for source in (ERP, DEALER):
        engine = sa.create_engine(urls[source])
        inspector = sa.inspect(engine)
        assert sorted(inspector.get_table_names()) == sorted(t.name for t in TABLES[source])
        for t in TABLES[source]:
            assert [c["name"] for c in inspector.get_columns(t.name)] == list(t.column_names)
        engine.dispose()


# --------------------------------------------------------------------------------------------
# oracle and latent risk


def test_oracle_has_every_borrower_every_day_and_every_application(tmp_path):
    urls = _urls(tmp_path, "oracle")
    sim = _run(urls, days=5)
    opd = sim.oracle_pd()
    scale = SCALES["tiny"]
    n_borrowers = scale.dealers + scale.tier1_suppliers + scale.tier2_suppliers
    assert len(opd) == 5 * n_borrowers
    assert (opd.groupby("as_of").size() == n_borrowers).all()
    assert not opd.duplicated(["borrower_id", "as_of"]).any()
    assert ((opd.true_pd > 0) & (opd.true_pd < 1)).all()
    dealers = _source(urls, table(DEALER, "dealers"))
    suppliers = _source(urls, table(ERP, "suppliers"))
    assert set(opd[opd.borrower_type == "dealer"].borrower_id) == set(dealers.dealer_id)
    assert set(opd[opd.borrower_type == "supplier"].borrower_id) == set(suppliers.supplier_id)
    loans = sim.oracle_loans()
    apps = _source(urls, table(DEALER, "loan_applications"))
    assert sorted(loans.application_id) == sorted(apps.application_id)
    assert ((loans.true_pd > 0) & (loans.true_pd < 1)).all()


def test_riskier_borrowers_default_more_and_repay_later(tmp_path):
    urls = _urls(tmp_path, "risk")
    sim = _run(urls, scale="small", days=12, seed=5)
    loans = sim.oracle_loans()
    assert 0.02 < loans.will_default.mean() < 0.10
    top = loans.true_pd >= loans.true_pd.quantile(0.8)
    bottom = loans.true_pd <= loans.true_pd.quantile(0.2)
    assert loans.will_default[top].mean() > 3 * loans.will_default[bottom].mean()
    # a loan that will default is never repaid within 30 days past due; a good one always is
    repaid = _source(urls, table(DEALER, "loan_repayments")).merge(loans, on="application_id")
    dpd = (repaid.paid_at.dt.normalize() - repaid.due_on).dt.days
    assert (dpd[~repaid.will_default] < 30).all() and (dpd[repaid.will_default] > 30).all()
    # dealers with a higher true PD keep older stock and get appraisals lower against the price
    opd = sim.oracle_pd()
    dealer_pd = opd[opd.borrower_type == "dealer"].groupby("borrower_id").true_pd.mean()
    inv = _source(urls, table(DEALER, "inventory"))
    inv["ratio"] = inv.appraised_value_fen / inv.purchase_price_fen
    per_dealer = inv.groupby("dealer_id").agg(ratio=("ratio", "mean"), year=("model_year", "mean"))
    per_dealer["pd"] = dealer_pd
    corr = per_dealer.corr(method="spearman")["pd"]
    assert corr["ratio"] < -0.3 and corr["year"] < -0.3
    # suppliers: mean 12-month PD in a realistic range
    assert 0.01 < opd[opd.borrower_type == "supplier"].true_pd.mean() < 0.06


# --------------------------------------------------------------------------------------------
# PostgreSQL and MariaDB


def _typed(url: str, contract: Table) -> pd.DataFrame:
    from sources.sql import SA_TYPES

    engine = sa.create_engine(url)
    cols = [sa.column(c.name, SA_TYPES[c.type]) for c in contract.columns]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).select_from(sa.table(contract.name))).fetchall()
    engine.dispose()
    df = pd.DataFrame(rows, columns=list(contract.column_names)).astype(object)
    return df.sort_values(list(df.columns), key=lambda s: s.astype(str)).reset_index(drop=True)


def test_servers_get_the_same_rows_as_sqlite_and_drift_round_trips(tmp_path, mariadb_url, postgres_url):
    """ERP and dealer tables on MariaDB and PostgreSQL, then swapped: the same rows as on SQLite,
    and renamed and missing columns restored on both servers."""
    faults = FaultRates(null=0.02, duplicate_key=0.02, orphan_fk=0.02, late_arrival=0.02, schema_drift=1.0)
    lite = _urls(tmp_path, "lite")
    _run(lite, faults=faults, days=3).restore_schema()
    drifted = set()
    for i, (erp_url, dealer_url) in enumerate(((mariadb_url, postgres_url), (postgres_url, mariadb_url))):
        servers = {ERP: erp_url, DEALER: dealer_url, "sim": f"sqlite:///{tmp_path / f'sim{i}.db'}"}
        sim = _run(servers, faults=faults, days=3)
        sim.restore_schema()
        manifest = sim.fault_manifest()
        sim.dispose()
        for r in manifest[manifest.key_value.isna()].itertuples():
            drifted.add((sa.make_url(servers[r.source]).get_backend_name(), r.kind))
        for tables in TABLES.values():
            for t in tables:
                pd.testing.assert_frame_equal(_typed(servers[t.source], t), _typed(lite[t.source], t), obj=t.name)
    assert drifted == {(db, kind) for db in ("mysql", "postgresql") for kind in ("renamed_column", "missing_column")}


# --------------------------------------------------------------------------------------------
# properties of the building blocks


@given(serials=st.lists(st.integers(0, w.DEALER_SERIAL_MOD - 1), min_size=1, max_size=50, unique=True),
       year=st.integers(2001, 2030))
def test_vins_are_valid_and_distinct_serials_give_distinct_vins(serials, year):
    n = len(serials)
    cat = np.arange(n) % len(w.CATALOGUE)
    vins = w.vins(w.CATALOGUE_WMI[cat], w.CATALOGUE_VDS[cat], np.full(n, year), np.array(serials), oem=False)
    assert len(set(vins)) == n
    values = {c: v for c, v in zip("0123456789", range(10))}
    values.update(dict(zip("ABCDEFGH", range(1, 9))) | dict(zip("JKLMN", range(1, 6))) | {"P": 7, "R": 9}
                  | dict(zip("STUVWXYZ", range(2, 10))))
    weights = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2]
    for vin in vins:
        assert len(vin) == 17 and not set(vin) & set("IOQ")
        check = sum(values[c] * wt for c, wt in zip(vin, weights)) % 11
        assert vin[8] == ("X" if check == 10 else str(check))


@pytest.fixture(scope="module")
def day_batches():
    world = w.build_world(3, SCALES["tiny"], START)
    state = initial_state(world, 3)
    _, pending = initial_rows(world, state, 3, SCALES["tiny"])
    due = {kind: {c: np.array([], dtype=np.int64 if k == "int" else object) for c, k in cols}
           for kind, cols in PENDING.items()}
    first = w.day_num(START)
    for kind, cols in pending.items():
        today = cols["write_on"] == first
        due[kind] = {c: v[today] for c, v in cols.items() if c != "write_on"}
    out = play_day(world, state, SCALES["tiny"], 3, first, 1, due)
    return first, [b for b in (*out.erp.values(), *out.dealer.values()) if b.n > 0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rates=st.fixed_dictionaries({k: st.floats(0.0, 0.4) for k in ROW_KINDS}), seed=st.integers(0, 2**32))
def test_injected_faults_change_one_cell_of_distinct_rows_or_add_rows(day_batches, rates, seed):
    day, batches = day_batches
    counter = iter(range(1, 10**6))

    def fresh(name, n):
        return w.ids(sim_faults.KEY_ID_KIND[name], [next(counter) for _ in range(n)])

    for batch in batches:
        out, manifest = sim_faults.inject(batch, FaultRates(**rates), np.random.default_rng(seed), day, fresh)
        kinds = pd.Series([m["kind"] for m in manifest], dtype=object)
        added = int(kinds.isin(["duplicate_key", "duplicate_vin"]).sum())
        assert out.n == batch.n + added
        changed_cells = np.zeros(batch.n, dtype=int)
        for c in batch.table.column_names:
            before, after = batch.cols[c], out.cols[c][:batch.n]
            was, now = batch.null_mask(c), out.null_mask(c)[:batch.n]
            changed_cells += ((before != after) & ~was & ~now) | (was != now)
        assert changed_cells.max() <= 1
        assert changed_cells.sum() == len(manifest) - added
        for c in (batch.table.key, WATERMARK):  # never changed on the rows the batch had
            assert (out.cols[c][:batch.n] == batch.cols[c]).all() and not out.null_mask(c).any()
