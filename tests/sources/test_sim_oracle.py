"""The conditional oracle (sources.sim_oracle): its laws against the simulator's own draw
functions, crafted cases with known answers, a brute-force simulation of the supplier label, and
the simulator's records of the latent state it needs (which change no source row)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from features import definitions as fd
from features.panel import NEVER
from features.post_loan import post_loan_dataset
from features.supplier import Instalments, supplier_pd_dataset
from models.metrics import auc
from sources import sim_days as sd
from sources import sim_oracle as so
from sources import sim_world as w
from sources.contract import DEALER, ERP, TABLES, table
from sources.simulator import SCALES, FaultRates, OracleUnavailable, Simulator

MONDAY = w.day_num(dt.date(2026, 3, 2))
LABEL_90 = so.SupplierLabel(90, fd.SUPPLIER_BAD_DPD, fd.SUPPLIER_BAD_WINDOW, fd.SUPPLIER_BAD_SHARE,
                            fd.SUPPLIER_BAD_MIN_COUNT)


def _bdays(first: int, n: int) -> np.ndarray:
    return w.bday_add(np.full(n, first), np.arange(n))


# --------------------------------------------------------------------------------------------
# the laws the oracle integrates are those of the simulator's draw functions


@pytest.mark.parametrize("view", [-1.5, 0.0, 0.7, 2.5])
def test_instalment_offset_pmf_matches_the_simulators_draws(view):
    n = 400_000
    offsets = sd.instalment_pay_offsets(np.random.default_rng(1), np.full(n, view))
    pmf = so.instalment_offset_pmf(np.array([view]))[0]
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    freq = np.bincount(offsets - so.INSTALMENT_OFFSETS[0], minlength=len(pmf)) / n
    assert np.abs(freq - pmf).max() < 4 * np.sqrt(0.25 / n)


def _simulated_unpaid(*, t, acquired, lag, term, dts_mean, view, sale_on=None, n=300_000, seed=2):
    """P(a good loan is not repaid before t) by drawing with the simulator's own functions."""
    rng = np.random.default_rng(seed)
    applied = int(w.bday_add(acquired, lag))
    due = applied + term
    if sale_on is None:  # the car's sale and the application lag it allowed, as play_day draws them
        dts = sd.days_to_sale(rng, np.full(n, dts_mean))
        lags = np.minimum(rng.choice(list(sd.APP_LAGS), n, p=list(sd.APP_LAG_P)), dts - 1)
        sale = w.bday_add(np.full(n, acquired), dts)
        keep = (lags == lag) & (sale >= t)  # the application happened at this lag; unsold at t
        sale = sale[keep]
    else:
        sale = np.full(n, sale_on)
    pay = sd.good_loan_pay_days(rng, np.full(len(sale), view), sale, np.full(len(sale), due))
    pay = np.maximum(pay, w.bday_add(applied, 1))
    return float((pay >= t).mean()), len(sale), applied, due


@pytest.mark.parametrize(("t_offset", "lag", "term", "dts_mean", "view", "sold_after"), [
    (5, 0, 30, 10.0, 0.0, None),  # unsold a week after drawdown, may still sell before due
    (25, 1, 30, 25.0, 1.2, None),  # unsold near the due date, a slow-selling dealer
    (33, 0, 30, 8.0, -0.5, None),  # unsold after due: only the at-due branch is left
    (50, 2, 60, 40.0, 0.4, None),
    (12, 0, 30, 10.0, 1.5, 6),  # sold six days after application, still unpaid
    (40, 0, 30, 10.0, 0.3, 34),  # sold after due
    (9, 1, 90, 20.0, -1.0, 3),
])
def test_good_loan_unpaid_p_matches_the_simulators_draws(t_offset, lag, term, dts_mean, view, sold_after):
    acquired = MONDAY
    applied = int(w.bday_add(acquired, lag))
    t = applied + t_offset
    sale_on = None if sold_after is None else int(w.bday_roll(applied + sold_after))
    expected, n, applied, due = _simulated_unpaid(t=t, acquired=acquired, lag=lag, term=term, dts_mean=dts_mean,
                                                  view=view, sale_on=sale_on)
    got = so.good_loan_unpaid_p(np.array([t]), acquired_on=np.array([acquired]), applied_on=np.array([applied]),
                                due_on=np.array([due]), sale_on=np.array([sale_on if sale_on else 10**6]),
                                dts_mean=np.array([dts_mean]), repay_view=np.array([view]))[0]
    assert got == pytest.approx(expected, abs=4 * np.sqrt(0.25 / n) + 1e-9)


def _loan(**change):
    base = dict(true_pd=np.array([0.07]), acquired_on=np.array([MONDAY]), applied_on=np.array([MONDAY]),
                due_on=np.array([MONDAY + 30]), sale_on=np.array([MONDAY + 40]), dts_mean=np.array([15.0]),
                repay_view=np.array([0.2]), repaid_on=np.array([-1]), repayment_lost=np.array([False]))
    base.update({k: np.array([v]) for k, v in change.items()})
    return base


def test_loan_snapshot_pd_crafted_cases():
    # the day after drawdown nothing has happened yet: the true PD at application
    assert so.loan_snapshot_pd(np.array([MONDAY + 1]), **_loan())[0] == pytest.approx(0.07)
    # repaid before the snapshot: a good loan, unless its repayment row was lost to a fault
    assert so.loan_snapshot_pd(np.array([MONDAY + 20]), **_loan(repaid_on=MONDAY + 12))[0] == 0.0
    lost = _loan(repaid_on=MONDAY + 12, repayment_lost=True)
    assert so.loan_snapshot_pd(np.array([MONDAY + 20]), **lost)[0] == 1.0
    # a row to be written after the snapshot is a future draw: its fault is not known yet
    assert so.loan_snapshot_pd(np.array([MONDAY + 1]), **{**lost, "repaid_on": np.array([MONDAY + 12])})[0] \
        == pytest.approx(0.07)
    # unpaid after the last business day <= due + 25: no good loan is, so it is bad
    late = int(so.bday_backward(MONDAY + 30 + sd.GOOD_MAX_DAYS_LATE)) + 1
    assert so.loan_snapshot_pd(np.array([late]), **_loan())[0] == 1.0
    # sold a month ago by a dealer who repays within 2 business days of a sale unless slow:
    # almost surely bad
    sold = so.loan_snapshot_pd(np.array([MONDAY + 29]), **_loan(sale_on=MONDAY + 1, repay_view=-3.0))[0]
    assert 0.99 < sold < 1.0
    # Bayes: p / (p + (1 - p) · P(unpaid | good))
    t = np.array([MONDAY + 10])
    unpaid = so.good_loan_unpaid_p(t, **{k: v for k, v in _loan().items() if k not in ("true_pd", "repaid_on", "repayment_lost")})
    assert so.loan_snapshot_pd(t, **_loan())[0] == pytest.approx(0.07 / (0.07 + 0.93 * unpaid[0]))
    with pytest.raises(so.OracleError, match="after its application"):
        so.loan_snapshot_pd(np.array([MONDAY]), **_loan())


# --------------------------------------------------------------------------------------------
# suppliers


def _flow(first: int, last: int, term: int, supplier: int = 0) -> dict[str, np.ndarray]:
    """One instalment a business day from ``first`` to ``last`` (inclusive), due ``term`` days later."""
    created = _bdays(first, int(so.busday_count(first, last + 1)))
    due = created + term
    return {"inst_supplier": np.full(len(created), supplier), "inst_created": created, "inst_due": due,
            "inst_pay_on": w.bday_roll(due), "inst_view": np.full(len(created), -1.0)}


def _state(n: int, inst: dict, *, defaulted_on, a=-2.0, u=0.0, b=0.0, macro=0.0, min_term=30):
    inst = {"inst_lost": np.zeros(len(inst["inst_due"]), dtype=bool), **inst}
    return so.SupplierState(a=np.full(n, a), b=np.full(n, b), u=np.full(n, u), macro=macro,
                            defaulted_on=np.asarray(defaulted_on, dtype=np.int64), min_term=min_term, **inst)


def _features_first_bad(inst: dict, unpaid: np.ndarray, n: int, as_of: int, bad_min_count: int) -> np.ndarray:
    """first_bad_day of features.supplier on these instalments: the label's own rule.

    The rule evaluates days up to the latest bad day of any supplier known at ``as_of``; in a
    dataset other suppliers' instalments reach theirs up to ``as_of``, so one paid instalment of
    an extra supplier (position ``n``) stands for them here."""
    known = np.append(inst["inst_created"] + 1, 0)
    due = np.append(inst["inst_due"], as_of - fd.SUPPLIER_BAD_DPD)
    paid_known = np.append(np.where(unpaid, NEVER, inst["inst_pay_on"] + 1), 1)
    supplier = np.append(inst["inst_supplier"], n)
    on_time_known = np.where(np.append(inst["inst_pay_on"], 0) <= due, paid_known, NEVER)
    return Instalments(supplier, known, due, due + fd.SUPPLIER_BAD_DPD, paid_known, paid_known,
                       on_time_known).first_bad_day(
        n + 1, as_of, bad_min_count)[:n]


def test_supplier_that_stopped_paying_is_bad_when_the_horizon_covers_its_default():
    t = MONDAY + 70
    d0 = t - 21  # stopped paying three weeks before the snapshot
    inst = _flow(MONDAY - 60, t - 1, 30)
    state = _state(1, inst, defaulted_on=[d0])
    unpaid = inst["inst_pay_on"] >= d0
    first_bad = _features_first_bad(inst, unpaid, 1, t + 400, fd.SUPPLIER_BAD_MIN_COUNT)[0]
    assert t <= first_bad < t + 90  # the label's rule: bad within a 90-day horizon, not within 30
    assert first_bad >= t + 30
    assert so.supplier_snapshot_pd(t, np.array([0]), state, LABEL_90, seed=1)[0] == 1.0
    short = dataclasses.replace(LABEL_90, horizon_days=30)
    assert so.supplier_snapshot_pd(t, np.array([0]), state, short, seed=1)[0] == 0.0


def test_repayment_rows_lost_to_faults_count_as_unpaid():
    t = MONDAY + 70
    inst = _flow(MONDAY - 60, MONDAY, 30)  # every instalment paid before the snapshot
    bad_day = inst["inst_due"] + fd.SUPPLIER_BAD_DPD
    in_horizon = np.flatnonzero((bad_day >= t) & (bad_day < t + 90))
    state = _state(1, {**inst, "inst_lost": np.isin(np.arange(len(bad_day)), in_horizon[-3:])}, defaulted_on=[-1])
    assert so.supplier_snapshot_pd(t, np.array([0]), state, LABEL_90, seed=1)[0] == 1.0  # 3 of the last 30 days
    state = _state(1, {**inst, "inst_lost": np.isin(np.arange(len(bad_day)), in_horizon[-1:])}, defaulted_on=[-1])
    assert so.supplier_snapshot_pd(t, np.array([0]), state, LABEL_90, seed=1)[0] == 0.0  # one is not material


def test_healthy_supplier_with_one_pending_instalment_has_the_closed_form(monkeypatch):
    """A frozen latent path (no shocks): P(D0 <= d) = 1 - prod(1 - hazard) over the business days
    up to d, and the only instalment that can go unpaid does iff D0 <= its pay day."""
    monkeypatch.setattr(w, "AR_SIGMA", 0.0)
    monkeypatch.setattr(w, "MACRO_SIGMA", 0.0)
    t = MONDAY + 14
    created, due, view = t - 3, t + 9, 0.8  # due on a Wednesday, a late payer
    inst = {"inst_supplier": np.array([0]), "inst_created": np.array([created]), "inst_due": np.array([due]),
            "inst_pay_on": np.array([int(w.bday_roll(due))]), "inst_view": np.array([view])}
    a, u0, b, m0 = w.logit(0.4), 0.3, 1.2, -0.2
    state = _state(1, inst, defaulted_on=[-1], a=a, u=u0, b=b, macro=m0)
    label = so.SupplierLabel(90, fd.SUPPLIER_BAD_DPD, fd.SUPPLIER_BAD_WINDOW, 0.5, 1)
    got = so.supplier_snapshot_pd(t, np.array([0]), state, label, seed=3, paths=10, pay_draws=40_000)[0]

    bdays = _bdays(t, 200)
    j = np.arange(1, 201)
    pd_path = w.sigmoid(a + w.AR_PHI ** j * u0 + b * w.MACRO_PHI ** j * m0)
    alive = np.cumprod(1.0 - sd.supplier_hazard(pd_path))
    pay = np.maximum(w.bday_roll(due + so.INSTALMENT_OFFSETS), w.bday_add(created, 1))
    pmf = so.instalment_offset_pmf(np.array([view]))[0] * (pay >= t)
    pmf = pmf / pmf.sum()
    cdf_at_pay = 1.0 - alive[np.searchsorted(bdays, pay, side="right") - 1]
    expected = float(pmf @ cdf_at_pay)
    assert 0.01 < expected < 0.2
    assert got == pytest.approx(expected, rel=0.01)


def test_supplier_with_nothing_left_to_pay_is_good_and_a_long_horizon_is_refused():
    t = MONDAY + 70
    inst = _flow(MONDAY - 60, MONDAY, 30)  # every instalment paid before the snapshot
    state = _state(2, inst, defaulted_on=[-1, -1], a=1.0)
    assert so.supplier_snapshot_pd(t, np.array([0, 1]), state, LABEL_90, seed=1).tolist() == [0.0, 0.0]
    with pytest.raises(so.OracleError, match="horizon <= 90"):
        so.supplier_snapshot_pd(t, np.array([0]), state, dataclasses.replace(LABEL_90, horizon_days=120), seed=1)


def test_supplier_oracle_matches_a_brute_force_simulation_of_the_label():
    """Simulate the supplier's future with the simulator's own functions (latent steps, daily
    default draws, pay days) and label it with features.supplier's rule: the oracle is the
    frequency of bad labels."""
    t = MONDAY + 84
    rng = np.random.default_rng(7)
    created = _bdays(MONDAY, int(so.busday_count(MONDAY, t)))
    due = created + 30
    view = rng.normal(0.3, 0.8, len(created))
    pay = np.maximum(w.bday_roll(due + sd.instalment_pay_offsets(rng, view)), w.bday_add(created, 1))
    pay = np.where((pay >= t) & (due < t - 3), t - 1, pay)  # the realised past: everything due before t - 3 paid
    inst = {"inst_supplier": np.zeros(len(created), dtype=np.int64), "inst_created": created, "inst_due": due,
            "inst_pay_on": pay, "inst_view": view}
    a, u0, b, m0 = w.logit(0.95), 0.2, 1.0, 0.1
    state = _state(1, inst, defaulted_on=[-1], a=a, u=u0, b=b, macro=m0)
    oracle = so.supplier_snapshot_pd(t, np.array([0]), state, LABEL_90, seed=5, paths=4_000, pay_draws=400)[0]

    n = 20_000
    pending = pay >= t
    bdays = _bdays(t, int(so.busday_count(t, t + 90)))
    macro, u = np.full(n, m0), np.full(n, u0)
    d0 = np.full(n, NEVER)
    for day in bdays:
        macro = sd.latent_step(macro, w.MACRO_PHI, w.MACRO_SIGMA, rng.normal(size=n))
        u = sd.latent_step(u, w.AR_PHI, w.AR_SIGMA, rng.normal(size=n))
        falls = (d0 == NEVER) & (rng.random(n) < sd.supplier_hazard(w.sigmoid(a + u + b * macro)))
        d0[falls] = day
    pays = np.broadcast_to(pay, (n, len(pay))).copy()
    redraw = np.broadcast_to(pending, pays.shape).copy()
    while redraw.any():  # the pending pay days from their law, given that they are on or after t
        rows, cols = np.nonzero(redraw)
        new = np.maximum(w.bday_roll(due[cols] + sd.instalment_pay_offsets(rng, view[cols])),
                         w.bday_add(created[cols], 1))
        pays[rows, cols] = new
        redraw[rows, cols] = new < t
    unpaid = pays >= d0[:, None]
    rep = np.repeat(np.arange(n), len(pay))
    flat = {k: np.tile(v, n) for k, v in inst.items()}
    flat["inst_supplier"] = rep
    flat["inst_pay_on"] = pays.ravel()
    first_bad = _features_first_bad(flat, unpaid.ravel(), n, t + 400, fd.SUPPLIER_BAD_MIN_COUNT)
    assert (first_bad >= t).all()
    frequency = float(((first_bad >= t) & (first_bad < t + 90)).mean())
    assert 0.05 < frequency < 0.5
    assert oracle == pytest.approx(frequency, abs=4 * np.sqrt(frequency * (1 - frequency) / n) + 0.005)


# --------------------------------------------------------------------------------------------
# the simulator's records and its conditional oracle on a simulated world


def test_recording_the_oracle_state_leaves_the_source_rows_unchanged(tmp_path):
    """The rows of every source table of this world are those the simulator wrote before it
    recorded the conditional oracle's state (digest taken with the simulator of commit 41a9ccf)."""
    urls = {k: f"sqlite:///{tmp_path / f'{k}.db'}" for k in ("erp", "dealer", "sim")}
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=5, scale="tiny", faults=FaultRates.demo(), start=dt.date(2025, 9, 1))
    sim.advance(25)
    sim.restore_schema()
    sim.dispose()
    digest = hashlib.sha256()
    for source, tables in TABLES.items():
        engine = sa.create_engine(urls[source])
        with engine.connect() as conn:
            for t in tables:
                df = pd.read_sql(sa.text(f'SELECT * FROM "{t.name}"'), conn)
                digest.update(t.name.encode())
                digest.update(df.to_csv(index=False).encode())
        engine.dispose()
    assert digest.hexdigest() == "1cc1aa57583ed93808fdc72caaa5002f7c53a45d74ab408e1d438a2861e45746"


FAULTS = FaultRates(null=0.004, duplicate_key=0.004, duplicate_vin=0.004, negative_amount=0.004, orphan_fk=0.004,
                    future_timestamp=0.004, late_arrival=0.004)


def _published(frames: dict, manifest: pd.DataFrame) -> dict:
    """What the quality gate publishes: every row but those a fault gets quarantined (the
    duplicated keys' every copy, and a duplicated VIN's new row)."""
    lost = manifest[manifest.kind.isin((*so.LOST_ROW_FAULTS, "duplicate_vin"))]
    out = {}
    for name, df in frames.items():
        source, _, tname = name.partition(".")
        keys = set(lost.key_value[(lost.source == source) & (lost.table_name == tname)])
        out[name] = df[~df[table(source, tname).key].isin(keys)].reset_index(drop=True) if keys else df
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world with a stressed supplier base (suppliers default within its 200 days) and row
    faults, read back as the quality gate would publish it."""
    folder = tmp_path_factory.mktemp("oracle_world")
    urls = {k: f"sqlite:///{folder / f'{k}.db'}" for k in ("erp", "dealer", "sim")}
    scale = dataclasses.replace(SCALES["tiny"], tier1_suppliers=30, tier2_suppliers=60, supplier_target_pd=0.35)
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=3, scale=scale, faults=FAULTS, start=dt.date(2025, 1, 6))
    sim.advance(200)
    frames = {}
    for source, tables in TABLES.items():
        engine = sa.create_engine(urls[source])
        with engine.connect() as conn:
            for t in tables:
                ts = [c.name for c in t.columns if c.type in ("ts", "date")]
                frames[f"{source}.{t.name}"] = pd.read_sql_table(t.name, conn, parse_dates=ts)
        engine.dispose()
    yield sim, _published(frames, sim.fault_manifest()), sim.current_date + dt.timedelta(days=1)
    sim.dispose()


def test_recorded_repayments_are_the_source_rows(world):
    sim, frames, _ = world
    loans = sim.oracle_loans().set_index("application_id")
    written = frames[f"{DEALER}.loan_repayments"].groupby("application_id")["updated_at"].min().dt.normalize()
    repaid_on = pd.to_datetime(loans["repaid_on"])
    assert (repaid_on.reindex(written.index) == written).all()
    # the others: never repaid, repaid after the last played day, or their row lost to a fault
    rest = repaid_on.drop(written.index)
    unseen = rest[rest.notna() & (rest <= pd.Timestamp(sim.current_date))].index
    manifest = sim.fault_manifest()
    lost = manifest[(manifest.table_name == "loan_repayments") & manifest.kind.isin(so.LOST_ROW_FAULTS)]
    keys = sim.oracle_loan_repayments()
    assert len(unseen) > 10 and set(unseen) == set(keys.application_id[keys.repayment_id.isin(lost.key_value)])
    inst = sim.oracle_instalments()
    merged = frames[f"{ERP}.supplier_repayments"].merge(inst, on=["payable_id", "supplier_id"], how="left")
    assert merged["pay_on"].notna().all()
    assert (pd.to_datetime(merged["pay_on"]) == merged["updated_at"].dt.normalize()).all()


def test_conditional_oracle_of_supplier_snapshots_in_a_simulated_world(world):
    sim, frames, as_of = world
    ds = supplier_pd_dataset(frames, as_of, snapshot_every_days=7, horizon_days=90)
    obs = pd.to_datetime(ds.obs_date)
    # matured labels, and a played day before each snapshot (the first snapshot is the first
    # receipt day, the world's first day: no state to condition on yet)
    ds = ds[(obs + pd.Timedelta(days=90) <= pd.Timestamp(as_of)) & (obs > pd.Timestamp(2025, 1, 6))]
    ds = ds.reset_index(drop=True)
    oracle = sim.conditional_oracle_suppliers(ds[["supplier_id", "obs_date"]], LABEL_90, paths=400, pay_draws=40)
    assert ((oracle >= 0) & (oracle <= 1)).all()
    gone = (ds.supplier_id.map(sim.supplier_default_days()) < pd.to_datetime(ds.obs_date)).to_numpy()
    assert gone.sum() > 20 and ds.label[gone].sum() > 10
    # a supplier that has stopped paying: the oracle knows its label
    assert ((oracle == 0) | (oracle == 1))[gone].all()
    assert (oracle[gone] == ds.label[gone]).mean() > 0.97
    assert auc(ds.label, oracle) > 0.9
    again = sim.conditional_oracle_suppliers(ds[["supplier_id", "obs_date"]].head(200), LABEL_90, paths=400,
                                             pay_draws=40)
    np.testing.assert_array_equal(again, oracle[:200])  # fixed seed: the same numbers
    with pytest.raises(OracleUnavailable, match="horizons up to 90 days"):
        sim.conditional_oracle_suppliers(ds[["supplier_id", "obs_date"]].head(5),
                                         dataclasses.replace(LABEL_90, horizon_days=365))


def test_conditional_oracle_of_loan_snapshots_is_exact_where_the_state_decides(world):
    sim, frames, as_of = world
    ds = post_loan_dataset(frames, as_of)
    oracle = sim.conditional_oracle_loans(ds[["application_id", "obs_date"]])
    truth = sim.oracle_loans().set_index("application_id")
    # decided by the state: repaid (0, or 1 when the repayment row was lost to a fault), or past
    # the last day a good loan is repaid (1)
    decided = (oracle == 0) | (oracle == 1)
    assert (oracle[decided] == ds.label[decided]).all() and (ds.label[decided] == 1).sum() > 50
    at_origination = ds.application_id.map(truth.true_pd).to_numpy()
    assert auc(ds.label, oracle) > auc(ds.label, at_origination) + 0.05
    # calibrated, but for the repayment rows a fault will lose after the snapshot (~2.4 % here)
    bins = pd.qcut(pd.Series(oracle).rank(method="first"), 5, labels=False)
    by_bin = pd.DataFrame({"oracle": oracle, "label": ds.label}).groupby(bins.to_numpy()).mean()
    assert np.abs(by_bin.oracle - by_bin.label).max() < 0.04
