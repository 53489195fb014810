"""A deterministic simulator of the two source systems: the OEM's ERP/MES and the used-car
dealer platform, written into real databases through SQLAlchemy.

Every borrower (dealer, tier-1 or tier-2 supplier) carries a latent log-odds of default: a
persistent part (from its tenure, size, city tier or tier, and noise), a slow AR(1) component
and its loading on a common macro factor. Its true PD is the sigmoid of that latent; the rows the
sources write are noisy functions of it (see :mod:`sources.sim_days`), and defaults are drawn from
it. The simulator records, in its own database (never read by the pipeline):

- ``oracle_pd``: the true PD of every borrower on every played day. For a dealer it is the PD of
  a standard order loan applied for that day (bad = 30+ days past due); for a supplier it is the
  12-month PD (bad = 60+ days overdue on a credit), matching the labels of the domain;
- ``oracle_loans``: per loan application, its own true PD (dealer latent + loan-to-value, term
  and vehicle age) and whether it will default. Every application is treated as a funded loan:
  a loan that will default is never repaid (70 %) or repaid 31-80 days after its due date. It
  also keeps what the loan's repayment law depends on (the car's acquisition and sale days and
  days-to-sale mean, the dealer's repayment view) and the repayment day;
- ``oracle_macro`` (the common latent factor per played day) and ``oracle_instalments`` (every
  supplier instalment: created, due and pay day, late-payment view): with ``oracle_pd`` and the
  suppliers' default days, the state the *conditional oracle* needs (:mod:`sources.sim_oracle`,
  :meth:`Simulator.conditional_oracle_loans`, :meth:`Simulator.conditional_oracle_suppliers`):
  the probability of a snapshot's label given the simulator's state at the snapshot. Recording
  it draws nothing: the source rows are the same with or without it;
- ``fault_manifest``: every fault injected (see :mod:`sources.sim_faults`);
- ``sim_state`` and the ``sim_*`` tables: what is needed to continue deterministically: the
  latent states, id counters and the future events already decided (``sim_pending_*``).

Rows follow :mod:`sources.contract`. Master data is written once by :meth:`Simulator.init`;
transactional tables are append-only and every row of a played day has ``updated_at`` between
08:00 and 20:00 that day (the only in-place update: a dealer's ``status`` set to ``blocked``,
with ``updated_at`` bumped). A supplier instalment (``supplier_repayments``) is written when
paid, for the tier-1 supplier of a confirmed payable and for each tier-2 supplier whose
components the part contains (its share by the sub-BOM); both reference that payable.

Schema drift (``FaultRates.schema_drift``) happens after a day is written: one transactional
table gets a column renamed (``ALTER TABLE ... RENAME COLUMN``) or dropped. A dropped column
is simulated by renaming the original table to ``sim_drift_<table>`` in the same database and
putting a copy without the column in its place; the next :meth:`Simulator.advance` (or
:meth:`Simulator.restore_schema`) swaps the original back before writing, exactly and
instantly. Both work on SQLite (>= 3.25), PostgreSQL and MariaDB.

The same seed, scale, fault rates and number of played days give identical rows in every table,
whether the days are played in one call or many, in one process or several.

Usage::

    sim = Simulator(erp_url, dealer_url, sim_url)
    sim.init(seed=7, scale="demo", faults=FaultRates.demo(), start=dt.date(2026, 3, 2))
    sim.advance(30)  # the next 30 business days
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import sqlalchemy as sa

from sources import sim_faults, sim_oracle, sim_store
from sources import sim_world as w
from sources.contract import DEALER, DEALER_TABLES, ERP, ERP_TABLES, TABLES, WATERMARK, Table, table
from sources.sim_days import DayOutput, State, initial_rows, initial_state, play_day
from sources.sim_store import Batch
from sources.sql import make_engine, sa_table

FORMAT_VERSION = 2  # 2: oracle_loans' repayment state, oracle_macro, oracle_instalments
SQLITE_CACHE_KIB = 262_144
MASTER_TABLES: dict[str, tuple[str, ...]] = {
    ERP: ("suppliers", "supplier_links", "parts", "vehicle_models", "bom", "sub_bom"),
    DEALER: ("dealers",),
}
TRANSACTIONAL_TABLES: tuple[Table, ...] = tuple(
    t for t in (*ERP_TABLES, *DEALER_TABLES) if t.name not in MASTER_TABLES[t.source])


def _day_numbers(values) -> np.ndarray:
    """Days since 1970-01-01 of dates (None/NaT: -1)."""
    ts = pd.to_datetime(pd.Series(values).reset_index(drop=True))
    days = ts.to_numpy().astype("datetime64[D]").astype(np.int64)
    return np.where(ts.isna().to_numpy(), -1, days)


class SimulatorError(RuntimeError):
    """The simulator cannot do what was asked; the message says why and what to do."""


class OracleUnavailable(SimulatorError):
    """The conditional oracle is not defined for what was asked (e.g. a supplier label horizon
    longer than it covers); the message says why."""


@dataclass(frozen=True)
class Scale:
    """Size knobs of a simulation."""

    dealers: int
    tier1_suppliers: int
    tier2_suppliers: int
    vehicle_models: int
    bom_lines_per_model: int
    vehicles_per_day: int
    applications_per_day: int
    cities: int = 640  # dealers' cities (tiers 1-4); at least 60
    parts_sharing: float = 0.6  # size of the parts pool / all BOM lines (parts shared by models)
    sub_bom_fraction: float = 0.5  # share of tier-1 parts with tier-2 components
    initial_stock_days: float = 8.0  # dealers' stock at the start, in days of buying
    audit_interval_days: int = 20  # a dealer's floor audit comes every ~N business days
    supplier_target_pd: float = w.SUPPLIER_TARGET_PD  # mean 12-month PD of the supplier base

    def __post_init__(self) -> None:
        for f in ("dealers", "tier1_suppliers", "tier2_suppliers", "vehicle_models", "bom_lines_per_model",
                  "vehicles_per_day", "applications_per_day", "audit_interval_days"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"Scale.{f} must be >= 1, got {getattr(self, f)!r}")
        if not 0.0 < self.supplier_target_pd < 0.5:
            raise ValueError(f"Scale.supplier_target_pd must be in (0, 0.5), got {self.supplier_target_pd}")
        if self.cities < 60:
            raise ValueError(f"Scale.cities must be >= 60, got {self.cities}")
        if not 0.0 < self.parts_sharing <= 1.0 or not 0.0 <= self.sub_bom_fraction <= 1.0:
            raise ValueError(f"Scale.parts_sharing must be in (0, 1] and sub_bom_fraction in [0, 1], got "
                             f"{self.parts_sharing} and {self.sub_bom_fraction}")


SCALES: dict[str, Scale] = {
    "tiny": Scale(dealers=20, tier1_suppliers=10, tier2_suppliers=20, vehicle_models=3, bom_lines_per_model=30,
                  vehicles_per_day=20, applications_per_day=100),
    "small": Scale(dealers=80, tier1_suppliers=15, tier2_suppliers=35, vehicle_models=4, bom_lines_per_model=80,
                   vehicles_per_day=60, applications_per_day=600),
    # demo: a stressed supplier base (12-month PD ~15 %, DOMAIN's is a few percent) so that the
    # demo's 7-month history holds enough supplier defaults to train and test supplier_pd on
    "demo": Scale(dealers=300, tier1_suppliers=200, tier2_suppliers=500, vehicle_models=6, bom_lines_per_model=200,
                  supplier_target_pd=0.15,
                  vehicles_per_day=300, applications_per_day=3_000),
    "reference": Scale(dealers=2_500, tier1_suppliers=200, tier2_suppliers=500, vehicle_models=20,
                       bom_lines_per_model=2_000, vehicles_per_day=3_000, applications_per_day=100_000),
}


@dataclass(frozen=True)
class FaultRates:
    """Fault probabilities: per written row, except ``schema_drift`` (per played day: the
    probability that one transactional table gets a renamed or a missing column that day)."""

    null: float = 0.0
    duplicate_key: float = 0.0
    duplicate_vin: float = 0.0
    negative_amount: float = 0.0
    orphan_fk: float = 0.0
    future_timestamp: float = 0.0
    late_arrival: float = 0.0
    schema_drift: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"FaultRates.{f.name} must be a probability in [0, 1], got {v!r}")

    @classmethod
    def none(cls) -> FaultRates:
        return cls()

    @classmethod
    def demo(cls) -> FaultRates:
        """Modest rates: a few faulty rows of each kind a day, and a schema drift on ~1-2 of 30 days."""
        return cls(null=0.002, duplicate_key=0.002, duplicate_vin=0.002, negative_amount=0.002, orphan_fk=0.002,
                   future_timestamp=0.002, late_arrival=0.002, schema_drift=0.05)


@dataclass(frozen=True)
class _Config:
    seed: int
    scale: Scale
    faults: FaultRates
    start: dt.date


def _sqlite_cache(dbapi_conn, _record) -> None:
    """A 256 MB page cache for the simulator's own SQLite connections: inserting a day into
    tables with millions of rows keyed by VIN is ~40 % faster when the key index stays cached."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cur.close()


def _resolve_scale(scale: Scale | str) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if isinstance(scale, str) and scale in SCALES:
        return SCALES[scale]
    raise SimulatorError(f"unknown scale {scale!r}; expected a Scale or one of {sorted(SCALES)}")


class Simulator:
    """The simulated ERP and dealer databases, and the simulator's own database.

    ``erp_url``, ``dealer_url`` and ``sim_url`` are SQLAlchemy URLs (SQLite, PostgreSQL, MariaDB);
    they may be the same database: the simulator's tables are named ``sim_*``, ``oracle_*`` and
    ``fault_manifest``.
    """

    def __init__(self, erp_url: str, dealer_url: str, sim_url: str):
        self._urls = {ERP: str(erp_url), DEALER: str(dealer_url), "sim": str(sim_url)}
        self._engines: dict[str, sa.Engine] = {}
        self._src_md = {ERP: sa.MetaData(), DEALER: sa.MetaData()}
        self._src: dict[tuple[str, str], sa.Table] = {}
        for source, tables in TABLES.items():
            for t in tables:
                self._src[(source, t.name)] = sa_table(t, self._src_md[source], indexes=(t.key, WATERMARK))
        self._sim_md, self._sim, self._sim_kinds = sim_store.sim_metadata()
        self._world_key: tuple | None = None
        self._world: w.World | None = None
        self.last_day_rows: dict[str, int] = {}

    # ---------------------------------------------------------------- engines
    def _engine(self, which: str) -> sa.Engine:
        url = self._urls[which]
        if url not in self._engines:
            engine = make_engine(url)
            if engine.dialect.name == "sqlite":
                sa.event.listen(engine, "connect", _sqlite_cache)
            self._engines[url] = engine
        return self._engines[url]

    def dispose(self) -> None:
        """Close the connection pools."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    # ---------------------------------------------------------------- public API
    def init(self, *, seed: int, scale: Scale | str, faults: FaultRates, start: dt.date, reset: bool = False) -> None:
        """Create the source tables and the simulator's tables, and write the master data.

        Master data (suppliers, links, parts, models, BOM, sub-BOM, dealers) and the dealers'
        starting stock and the OEM's order backlog carry ``updated_at`` = 06:00 on ``start``.
        The first business day on or after ``start`` is the first day :meth:`advance` plays.

        Raises:
            SimulatorError: if the simulation is already initialised and ``reset`` is false, or
                an argument is invalid.
        """
        scale = _resolve_scale(scale)
        if not isinstance(faults, FaultRates):
            raise SimulatorError(f"faults must be a FaultRates, got {type(faults).__name__}")
        if not isinstance(start, dt.date) or isinstance(start, dt.datetime):
            raise SimulatorError(f"start must be a datetime.date, got {start!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SimulatorError(f"seed must be a non-negative int, got {seed!r}")
        seed = int(seed)
        if self._initialised() and not reset:
            raise SimulatorError(f"the simulation in {self._safe_url('sim')} is already initialised "
                                 f"(played through {self.current_date}); pass reset=True to start again")
        cfg = _Config(seed, scale, faults, start)
        world = self._build_world(cfg)
        for kind, n in (("dealer", scale.dealers), ("supplier", world.n_suppliers), ("part", len(world.part_ids)),
                        ("model", scale.vehicle_models)):
            if n >= w.id_limit(kind):
                raise SimulatorError(f"scale too large: {n} {kind}s, the id format allows < {w.id_limit(kind)}")

        sim = self._engine("sim")
        self._sim_md.drop_all(sim, checkfirst=True)
        self._sim_md.create_all(sim)
        for source in (ERP, DEALER):
            engine = self._engine(source)
            hidden = sa.MetaData()
            for t in TABLES[source]:
                sa.Table(sim_faults.hidden_name(t.name), hidden)
            hidden.drop_all(engine, checkfirst=True)  # originals of a drifted table, if any
            self._src_md[source].drop_all(engine, checkfirst=True)
            self._src_md[source].create_all(engine)

        st = initial_state(world, seed)
        rows, pending = initial_rows(world, st, seed, scale)
        master_ts = world.start_day * w.DAY_S + w.MASTER_HOUR * w.HOUR_S
        for source in (ERP, DEALER):
            with self._engine(source).begin() as conn:
                for name in MASTER_TABLES[source]:
                    cols = dict(world.master[name])
                    cols[WATERMARK] = np.full(len(next(iter(cols.values()))), master_ts, dtype=np.int64)
                    sim_store.insert_batch(conn, self._src[(source, name)], Batch(table(source, name), cols))
                for name, batch in rows.items():
                    if batch.table.source == source:
                        sim_store.insert_batch(conn, self._src[(source, name)], batch)
        with sim.begin() as conn:
            self._insert_pending(conn, st, pending)
            self._save_state(conn, cfg, st)

    def advance(self, days: int = 1) -> list[dt.date]:
        """Play the next ``days`` business days (Mon-Fri); returns the dates played."""
        if int(days) < 0:
            raise SimulatorError(f"days must be >= 0, got {days}")
        cfg, st = self._load()
        world = self._build_world(cfg)
        played = []
        for _ in range(int(days)):
            day = int(w.bday_roll(world.start_day)) if st.played_through is None \
                else int(w.bday_add(st.played_through, 1))
            self._play(cfg, world, st, day)
            played.append(w.to_date(day))
        return played

    @property
    def current_date(self) -> dt.date | None:
        """The last business day played (None before the first :meth:`advance`, or before init)."""
        if not self._initialised():
            return None
        with self._engine("sim").connect() as conn:
            value = conn.execute(sa.select(self._sim[sim_store.STATE].c.played_through)).scalar()
        return value

    def restore_schema(self) -> None:
        """Undo a pending schema drift now (``advance`` does it before writing the next day)."""
        cfg, st = self._load()
        if st.drift:
            self._restore_drift(st)
            with self._engine("sim").begin() as conn:
                self._save_state(conn, cfg, st)

    def fault_manifest(self) -> pd.DataFrame:
        """Every injected fault: fault_id, sim_date, source, table_name, key_value, column_name, kind."""
        return self._read(sim_store.MANIFEST, "fault_id")

    def oracle_pd(self) -> pd.DataFrame:
        """The true PD of every borrower on every played day: borrower_type, borrower_id, as_of, true_pd."""
        return self._read(sim_store.ORACLE_PD, "as_of", "borrower_type", "borrower_id")

    def oracle_loans(self) -> pd.DataFrame:
        """Per loan application: application_id, dealer_id, true_pd, will_default, and its repayment
        state: acquired_on, applied_on, loan_due_on, sale_on, dts_mean, repay_view, repaid_on (None:
        never repaid)."""
        return self._read(sim_store.ORACLE_LOANS, "application_id")

    def oracle_instalments(self) -> pd.DataFrame:
        """Every supplier instalment: supplier_id, payable_id, created_on, due_on, pay_on (paid that
        day unless the supplier has defaulted by then), late_view."""
        return self._read(sim_store.ORACLE_INSTALMENTS, "created_on", "supplier_id", "payable_id")

    def oracle_loan_repayments(self) -> pd.DataFrame:
        """The key of every loan repayment row written and its application: repayment_id, application_id."""
        return self._read(sim_store.ORACLE_LOAN_REPAYMENTS, "repayment_id")

    def supplier_default_days(self) -> pd.Series:
        """The day each supplier defaulted (NaT: not defaulted), indexed by supplier_id."""
        _, st = self._load()
        days = pd.Series(st.supplier_defaulted_on, index=pd.Index(self._world.supplier_ids, name="supplier_id"))
        return pd.to_datetime(days.where(days >= 0).astype("float64"), unit="D").rename("defaulted_on")

    def conditional_oracle_loans(self, snapshots: pd.DataFrame) -> np.ndarray:
        """P(the loan goes bad | the simulator's state at the snapshot), per row of ``snapshots``
        (columns ``application_id`` and ``obs_date``, a date: midnight at its start).

        See :func:`sources.sim_oracle.loan_snapshot_pd`.

        Raises:
            SimulatorError: if an application is unknown or a snapshot is outside its loan's life.
        """
        cols = ("application_id", "true_pd", "acquired_on", "applied_on", "loan_due_on", "sale_on", "dts_mean",
                "repay_view", "repaid_on")
        loans = self._read_columns(sim_store.ORACLE_LOANS, cols)
        rows = snapshots[["application_id"]].merge(loans, on="application_id", how="left")
        if rows["true_pd"].isna().any():
            unknown = rows.loc[rows["true_pd"].isna(), "application_id"].head(5).tolist()
            raise SimulatorError(f"{int(rows['true_pd'].isna().sum())} snapshot(s) of applications the simulator "
                                 f"never created, e.g. {unknown}")
        day = {c: _day_numbers(rows[c]) for c in ("acquired_on", "applied_on", "sale_on", "repaid_on")}
        day["due_on"] = _day_numbers(rows["loan_due_on"])
        reps = self._read_columns(sim_store.ORACLE_LOAN_REPAYMENTS, ("repayment_id", "application_id"))
        lost = reps.loc[reps["repayment_id"].isin(self._lost_rows(DEALER, "loan_repayments")), "application_id"]
        try:
            return sim_oracle.loan_snapshot_pd(
                _day_numbers(snapshots["obs_date"]), true_pd=rows["true_pd"].to_numpy(np.float64),
                repayment_lost=rows["application_id"].isin(set(lost)).to_numpy(),
                dts_mean=rows["dts_mean"].to_numpy(np.float64), repay_view=rows["repay_view"].to_numpy(np.float64),
                **day)
        except sim_oracle.OracleError as exc:
            raise SimulatorError(f"conditional oracle of loan snapshots: {exc}") from None

    def conditional_oracle_suppliers(self, snapshots: pd.DataFrame, label: sim_oracle.SupplierLabel, *,
                                     paths: int = sim_oracle.LATENT_PATHS,
                                     pay_draws: int = sim_oracle.PAY_DRAWS) -> np.ndarray:
        """P(the supplier goes bad within the label horizon | the simulator's state at the
        snapshot), per row of ``snapshots`` (columns ``supplier_id`` and ``obs_date``).

        The state at a snapshot is that at the end of the last business day played before it.
        See :func:`sources.sim_oracle.supplier_snapshot_pd` (a Monte Carlo with a fixed seed: the
        simulation's seed and the snapshot day).

        Raises:
            OracleUnavailable: if the horizon is longer than the oracle covers.
            SimulatorError: if a supplier is unknown or a snapshot is outside the played days.
        """
        cfg, st = self._load()
        world = self._build_world(cfg)
        sup = pd.Index(world.supplier_ids).get_indexer(snapshots["supplier_id"])
        if (sup < 0).any():
            raise SimulatorError(f"unknown supplier id(s) {snapshots['supplier_id'][sup < 0].head(5).tolist()}")
        t_all = _day_numbers(snapshots["obs_date"])
        last = sim_oracle.bday_backward(t_all - 1)
        first_played = int(w.bday_roll(world.start_day))
        if st.played_through is None or (last < first_played).any() or (last > st.played_through).any():
            raise SimulatorError(f"snapshots must fall after the first played day {w.to_date(first_played)} and "
                                 f"at most one day after the last ({st.played_through and w.to_date(st.played_through)})")
        inst = self._read_columns(sim_store.ORACLE_INSTALMENTS,
                                  ("supplier_id", "payable_id", "created_on", "due_on", "pay_on", "late_view"))
        inst_sup = pd.Index(world.supplier_ids).get_indexer(inst["supplier_id"])
        reps = self._read_columns(sim_store.ORACLE_SUPPLIER_REPAYMENTS, ("repayment_id", "payable_id", "supplier_id"))
        lost = reps[reps["repayment_id"].isin(self._lost_rows(ERP, "supplier_repayments"))]
        inst_lost = pd.MultiIndex.from_frame(inst[["payable_id", "supplier_id"]]).isin(
            pd.MultiIndex.from_frame(lost[["payable_id", "supplier_id"]]))
        macro = self._read_columns(sim_store.ORACLE_MACRO, ("as_of", "macro"))
        macro = pd.Series(macro["macro"].to_numpy(np.float64), index=_day_numbers(macro["as_of"]))
        t1 = world.supplier_tier == 1
        min_term = int(world.supplier_terms[t1].min())
        if label.horizon_days > min_term + label.bad_dpd:
            raise OracleUnavailable(
                f"the conditional supplier oracle covers label horizons up to {min_term + label.bad_dpd} days "
                f"(the shortest payment term, {min_term} days, + {label.bad_dpd} days past due), got "
                f"{label.horizon_days}: over a longer horizon instalments created after the snapshot could go bad, "
                "a future it does not integrate")
        out = np.full(len(snapshots), np.nan)
        for t in np.unique(t_all):
            day = int(sim_oracle.bday_backward(t - 1))
            z = self._supplier_logits(day, world)
            m = float(macro.loc[day])
            state = sim_oracle.SupplierState(
                a=world.supplier_a, b=world.supplier_b, u=z - world.supplier_a - world.supplier_b * m, macro=m,
                defaulted_on=st.supplier_defaulted_on, inst_supplier=inst_sup,
                inst_created=_day_numbers(inst["created_on"]), inst_due=_day_numbers(inst["due_on"]),
                inst_pay_on=_day_numbers(inst["pay_on"]), inst_view=inst["late_view"].to_numpy(np.float64),
                inst_lost=inst_lost, min_term=min_term)
            here = t_all == t
            try:  # every supplier, so that a supplier's value does not depend on which rows are asked
                p = sim_oracle.supplier_snapshot_pd(int(t), np.arange(world.n_suppliers), state, label,
                                                    seed=cfg.seed, paths=paths, pay_draws=pay_draws)
            except sim_oracle.OracleError as exc:
                raise SimulatorError(f"conditional oracle of supplier snapshots: {exc}") from None
            out[here] = p[sup[here]]
        return out

    # ---------------------------------------------------------------- internals
    def _read_columns(self, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
        t = self._sim[name]
        if not self._initialised():
            raise SimulatorError(f"no simulation in {self._safe_url('sim')}; call init() first")
        with self._engine("sim").connect() as conn:
            result = conn.execute(sa.select(*[t.c[c] for c in columns]))
            return pd.DataFrame(result.fetchall(), columns=list(columns))

    def _lost_rows(self, source: str, table_name: str) -> set:
        """Keys of the rows of a source table the quality gate quarantines for good: those with a
        fault of :data:`sources.sim_oracle.LOST_ROW_FAULTS` in the fault manifest."""
        t = self._sim[sim_store.MANIFEST]
        with self._engine("sim").connect() as conn:
            rows = conn.execute(sa.select(t.c.key_value).where(
                (t.c.source == source) & (t.c.table_name == table_name)
                & t.c.kind.in_(sim_oracle.LOST_ROW_FAULTS))).fetchall()
        return {r[0] for r in rows}

    def _supplier_logits(self, day: int, world: w.World) -> np.ndarray:
        """The suppliers' latent log-odds on played ``day`` (from their true PD in ``oracle_pd``)."""
        t = self._sim[sim_store.ORACLE_PD]
        with self._engine("sim").connect() as conn:
            rows = conn.execute(sa.select(t.c.borrower_id, t.c.true_pd).where(
                (t.c.borrower_type == "supplier") & (t.c.as_of == w.to_date(day)))).fetchall()
        pd_s = pd.Series([r[1] for r in rows], index=[r[0] for r in rows], dtype=np.float64)
        pd_s = pd_s.reindex(world.supplier_ids)
        if pd_s.isna().any():
            raise SimulatorError(f"oracle_pd has no true PD of {int(pd_s.isna().sum())} supplier(s) on {w.to_date(day)}")
        p = pd_s.to_numpy()
        return np.log(p) - np.log1p(-p)

    def _safe_url(self, which: str) -> str:
        return sa.make_url(self._urls[which]).render_as_string(hide_password=True)

    def _read(self, name: str, *order: str) -> pd.DataFrame:
        t = self._sim[name]
        if not self._initialised():
            raise SimulatorError(f"no simulation in {self._safe_url('sim')}; call init() first")
        with self._engine("sim").connect() as conn:
            result = conn.execute(sa.select(t).order_by(*[t.c[c] for c in order]))
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def _initialised(self) -> bool:
        sim = self._engine("sim")
        if not sa.inspect(sim).has_table(sim_store.STATE):
            return False
        with sim.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self._sim[sim_store.STATE])).scalar() > 0

    @staticmethod
    def _cfg_key(cfg: _Config) -> tuple:
        return cfg.seed, cfg.scale, cfg.start

    def _build_world(self, cfg: _Config) -> w.World:
        key = self._cfg_key(cfg)
        if self._world_key != key:
            self._world = w.build_world(cfg.seed, cfg.scale, cfg.start)
            self._world_key = key
        return self._world

    def _save_state(self, conn: sa.Connection, cfg: _Config, st: State, in_progress: int | None = None) -> None:
        state_t = self._sim[sim_store.STATE]
        conn.execute(state_t.delete())
        row = {
            "id": np.array([1]), "seed": np.array([cfg.seed]),
            "scale_json": np.array([json.dumps(dataclasses.asdict(cfg.scale), sort_keys=True)], dtype=object),
            "faults_json": np.array([json.dumps(dataclasses.asdict(cfg.faults), sort_keys=True)], dtype=object),
            "start_on": np.array([w.day_num(cfg.start)]),
            "played_through": np.array([st.played_through if st.played_through is not None else 0]),
            "day_index": np.array([st.day_index]),
            "counters_json": np.array([json.dumps(st.counters, sort_keys=True)], dtype=object),
            "macro": np.array([st.macro], dtype=np.float64),
            "drift_json": np.array([json.dumps(st.drift, sort_keys=True) if st.drift else None], dtype=object),
            "in_progress_on": np.array([in_progress or 0]),
            "format_version": np.array([FORMAT_VERSION]),
        }
        nulls = {"played_through": np.array([st.played_through is None]),
                 "in_progress_on": np.array([in_progress is None]),
                 "drift_json": np.array([not st.drift])}
        sim_store.insert(conn, state_t, self._sim_kinds[sim_store.STATE], row, nulls)
        dealers_t, suppliers_t = self._sim[sim_store.DEALER_STATE], self._sim[sim_store.SUPPLIER_STATE]
        conn.execute(dealers_t.delete())
        conn.execute(suppliers_t.delete())
        world = self._world
        sim_store.insert(conn, dealers_t, self._sim_kinds[sim_store.DEALER_STATE], {
            "idx": np.arange(world.n_dealers), "dealer_id": world.dealer_ids, "u": st.dealer_u,
            "stock": st.dealer_stock, "blocked": st.dealer_blocked})
        sim_store.insert(conn, suppliers_t, self._sim_kinds[sim_store.SUPPLIER_STATE], {
            "idx": np.arange(world.n_suppliers), "supplier_id": world.supplier_ids, "u": st.supplier_u,
            "defaulted_on": st.supplier_defaulted_on})

    def _load(self) -> tuple[_Config, State]:
        if not self._initialised():
            raise SimulatorError(f"no simulation in {self._safe_url('sim')}; call init() first")
        sim = self._engine("sim")
        with sim.connect() as conn:
            row = conn.execute(sa.select(self._sim[sim_store.STATE])).mappings().one()
            if row["format_version"] != FORMAT_VERSION:
                raise SimulatorError(f"the simulation state has format {row['format_version']}, this simulator "
                                     f"reads {FORMAT_VERSION}; re-run init(reset=True)")
            if row["in_progress_on"] is not None:
                raise SimulatorError(f"playing {row['in_progress_on']} was interrupted, so the sources may hold a "
                                     f"partial day; re-run init(reset=True)")
            cfg = _Config(int(row["seed"]), Scale(**json.loads(row["scale_json"])),
                          FaultRates(**json.loads(row["faults_json"])), row["start_on"])
            world = self._build_world(cfg)
            d = conn.execute(sa.select(self._sim[sim_store.DEALER_STATE])
                             .order_by(self._sim[sim_store.DEALER_STATE].c.idx)).mappings().all()
            s = conn.execute(sa.select(self._sim[sim_store.SUPPLIER_STATE])
                             .order_by(self._sim[sim_store.SUPPLIER_STATE].c.idx)).mappings().all()
        if len(d) != world.n_dealers or len(s) != world.n_suppliers:
            raise SimulatorError(f"the simulation state holds {len(d)} dealers and {len(s)} suppliers, the scale "
                                 f"{world.n_dealers} and {world.n_suppliers}; re-run init(reset=True)")
        played = row["played_through"]
        st = State(
            day_index=int(row["day_index"]),
            played_through=w.day_num(played) if played is not None else None,
            counters={k: int(v) for k, v in json.loads(row["counters_json"]).items()},
            macro=float(row["macro"]),
            dealer_u=np.array([r["u"] for r in d], dtype=np.float64),
            dealer_stock=np.array([r["stock"] for r in d], dtype=np.int64),
            dealer_blocked=np.array([bool(r["blocked"]) for r in d], dtype=bool),
            supplier_u=np.array([r["u"] for r in s], dtype=np.float64),
            supplier_defaulted_on=np.array([r["defaulted_on"] for r in s], dtype=np.int64),
            drift=json.loads(row["drift_json"]) if row["drift_json"] else None,
        )
        return cfg, st

    def _insert_pending(self, conn: sa.Connection, st: State, pending: dict[str, dict[str, np.ndarray]]) -> None:
        for kind, cols in pending.items():
            name = sim_store.pending_name(kind)
            n = len(cols["write_on"])
            if n == 0:
                continue
            data = {"seq": st.take("seq", n), **cols}
            sim_store.insert(conn, self._sim[name], self._sim_kinds[name], data)

    def _play(self, cfg: _Config, world: w.World, st: State, day: int) -> None:
        k = st.day_index + 1
        sim = self._engine("sim")
        state_t = self._sim[sim_store.STATE]
        with sim.begin() as conn:
            conn.execute(state_t.update().values(in_progress_on=w.to_date(day)))
        self._restore_drift(st)

        with sim.connect() as conn:
            due = {kind: sim_store.read_pending(conn, self._sim[sim_store.pending_name(kind)], kind, day)
                   for kind in sim_store.PENDING}
        out: DayOutput = play_day(world, st, cfg.scale, cfg.seed, day, k, due)

        def fresh_keys(name: str, n: int) -> np.ndarray:
            kind = sim_faults.KEY_ID_KIND[name]
            return w.ids(kind, st.take(kind, n))

        manifest: list[dict] = []
        written: dict[str, dict[str, Batch]] = {ERP: {}, DEALER: {}}
        for source, batches in ((ERP, out.erp), (DEALER, out.dealer)):
            for name, batch in batches.items():
                rng = w.stream(cfg.seed, k, f"faults:{source}.{name}")
                faulty, rows = sim_faults.inject(batch, cfg.faults, rng, day, fresh_keys)
                written[source][name] = faulty
                manifest.extend(rows)

        counts: dict[str, int] = {}
        for source in (ERP, DEALER):
            with self._engine(source).begin() as conn:
                if source == DEALER and len(out.dealer_status["dealer_id"]):
                    dealers_t = self._src[(DEALER, "dealers")]
                    stmt = (dealers_t.update().where(dealers_t.c.dealer_id == sa.bindparam("b_id"))
                            .values(status=sa.bindparam("b_status"), updated_at=sa.bindparam("b_upd")))
                    conn.execute(stmt, [{"b_id": i, "b_status": s, "b_upd": u} for i, s, u in zip(
                        out.dealer_status["dealer_id"].tolist(), out.dealer_status["status"].tolist(),
                        out.dealer_status["updated_at"].astype("datetime64[s]").tolist())])
                for name, batch in written[source].items():
                    counts[f"{source}.{name}"] = sim_store.insert_batch(conn, self._src[(source, name)], batch)

        with sim.begin() as conn:
            self._insert_pending(conn, st, out.pending)
            for kind in sim_store.PENDING:
                t = self._sim[sim_store.pending_name(kind)]
                conn.execute(t.delete().where(t.c.write_on <= day))
            sim_store.insert(conn, self._sim[sim_store.ORACLE_PD], self._sim_kinds[sim_store.ORACLE_PD], out.oracle_pd)
            sim_store.insert(conn, self._sim[sim_store.ORACLE_LOANS], self._sim_kinds[sim_store.ORACLE_LOANS],
                             out.oracle_loans, {"repaid_on": out.oracle_loans["repaid_on"] < 0})
            sim_store.insert(conn, self._sim[sim_store.ORACLE_MACRO], self._sim_kinds[sim_store.ORACLE_MACRO],
                             out.oracle_macro)
            sim_store.insert(conn, self._sim[sim_store.ORACLE_INSTALMENTS],
                             self._sim_kinds[sim_store.ORACLE_INSTALMENTS], out.oracle_instalments)
            for name, rows in ((sim_store.ORACLE_LOAN_REPAYMENTS, out.oracle_loan_repayments),
                               (sim_store.ORACLE_SUPPLIER_REPAYMENTS, out.oracle_supplier_repayments)):
                sim_store.insert(conn, self._sim[name], self._sim_kinds[name], rows)
            self._insert_manifest(conn, st, manifest)
            st.played_through, st.day_index = day, k
            self._save_state(conn, cfg, st)
        self.last_day_rows = counts

        rng = w.stream(cfg.seed, k, "drift")
        if cfg.faults.schema_drift > 0 and rng.random() < cfg.faults.schema_drift:
            self._drift(cfg, st, day, rng)

    def _insert_manifest(self, conn: sa.Connection, st: State, rows: list[dict]) -> None:
        if not rows:
            return
        n = len(rows)
        cols = {c: np.array([r[c] for r in rows], dtype=object) for c in
                ("source", "table_name", "key_value", "column_name", "kind")}
        cols = {"fault_id": st.take("fault", n), "sim_date": np.array([r["sim_date"] for r in rows], dtype=np.int64),
                **cols}
        nulls = {c: np.array([r[c] is None for r in rows]) for c in ("key_value", "column_name")}
        sim_store.insert(conn, self._sim[sim_store.MANIFEST], self._sim_kinds[sim_store.MANIFEST], cols, nulls)

    def _drift(self, cfg: _Config, st: State, day: int, rng: np.random.Generator) -> None:
        t = TRANSACTIONAL_TABLES[int(rng.integers(len(TRANSACTIONAL_TABLES)))]
        candidates = sim_faults.drift_candidates(t)
        column = candidates[int(rng.integers(len(candidates)))]
        kind = sim_faults.DRIFT_KINDS[int(rng.integers(2))]
        st.drift = {"source": t.source, "table": t.name, "column": column, "kind": kind,
                    "renamed_to": sim_faults.renamed(column) if kind == "renamed_column" else None}
        with self._engine("sim").begin() as conn:
            self._insert_manifest(conn, st, [{"sim_date": day, "source": t.source, "table_name": t.name,
                                              "key_value": None, "column_name": column, "kind": kind}])
            self._save_state(conn, cfg, st)
        src = self._engine(t.source)
        if kind == "renamed_column":
            sim_faults.rename_column(src, t.name, column, st.drift["renamed_to"])
        else:
            sim_faults.drop_column(src, t, column)

    def _restore_drift(self, st: State) -> None:
        d = st.drift
        if not d:
            return
        t = table(d["source"], d["table"])
        src = self._engine(t.source)
        present = sim_faults.columns_of(src, t.name)
        if d["kind"] == "renamed_column":
            if d["column"] not in present and d["renamed_to"] in present:
                sim_faults.rename_column(src, t.name, d["renamed_to"], d["column"])
        else:
            sim_faults.restore_column(src, t)
        st.drift = None
