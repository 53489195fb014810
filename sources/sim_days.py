"""One business day of the simulated source systems, generated from the latent risk process.

:func:`play_day` advances every borrower's latent log-odds, draws the day's events (supplier
defaults, dealer blocks) and produces the rows the OEM's ERP/MES and the dealer platform write
that day, plus the future events it decides (a sale in 12 business days, a repayment at the due
date, ...), which the simulator keeps in its pending tables until their day comes.

Observable behaviour is a noisy function of the borrower's centred latent ``r`` on the day it
happens, so a model can learn the risk from the data but never exactly:

- dealers with higher ``r`` keep older, higher-mileage stock, sell more slowly, get appraisals
  that drift below the price paid, ask for higher loan-to-value and longer terms, skip more floor
  audits and have more cars missing, repay later after a sale (sold out of trust), and default
  more (the default of each loan is drawn from its true PD);
- suppliers with higher ``r`` deliver short more often, get more disputes, withdrawals and credit
  memos (dilution), pay their instalments later and, once defaulted, stop paying.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sources import sim_world as w
from sources.contract import DEALER, ERP, WATERMARK, table
from sources.sim_store import Batch

ADVANCE_RATE = 0.8  # share of a confirmed payable the supplier's instalment carries
LOAN_RATE = 0.085  # simple annual interest of the order loan
WEEKDAY_FACTOR = np.array([0.95, 1.0, 1.0, 1.0, 1.05, 1.0, 1.0])  # Mon..Sun
TERMS = np.array([30, 60, 90])
TERM_EFFECT = {30: -0.25, 60: 0.0, 90: 0.25}
GOOD_MAX_DAYS_LATE = 25  # a loan that is not going to default is repaid < 30 days past due

# The laws of the future events a day decides (drawn by the functions below, in play_day's
# order): the conditional oracle (sources.sim_oracle) integrates over the same laws.
APP_LAGS = (0, 1, 2)  # business days from buying a financed car to its loan application ...
APP_LAG_P = (0.75, 0.2, 0.05)  # ... capped at the days to its sale minus one
SLOW_REPAYER_P = 0.1  # P(slow) = sigmoid(logit(0.1) + repayment view) for a loan that will not default
SLOW_AFTER_SALE_MEAN = (3.0, 5.0)  # slow: 1 + round(Exp(3 + 5 max(view, 0))) business days after the sale
SLOW_AT_DUE_MEAN = (3.0, 6.0)  # slow, car unsold at due: round(Exp(3 + 6 max(view, 0))) days after due
FAST_AFTER_SALE = 3  # otherwise 0, 1 or 2 business days after the sale ...
FAST_EARLY = 4  # ... or 0-3 days before due
INSTALMENT_LATE_P = 0.08  # a supplier instalment is late with P = sigmoid(logit(0.08) + view) ...
INSTALMENT_LATE_MEAN = (2.0, 5.0)  # ... by 1 + round(Exp(2 + 5 max(view, 0))) days ...
INSTALMENT_MAX_LATE = 45  # ... at most 45 ...
INSTALMENT_EARLY_P = 0.3  # ... otherwise paid on the due date or, with P 0.3, 1-3 days early
INSTALMENT_EARLY_MAX = 3


@dataclass
class State:
    """Everything that changes from day to day; saved after every played day."""

    day_index: int
    played_through: int | None  # epoch day of the last played day
    counters: dict[str, int]
    macro: float
    dealer_u: np.ndarray
    dealer_stock: np.ndarray
    dealer_blocked: np.ndarray
    supplier_u: np.ndarray
    supplier_defaulted_on: np.ndarray  # epoch day, -1 while paying
    drift: dict | None = None

    def take(self, counter: str, n: int) -> np.ndarray:
        start = self.counters.get(counter, 1)
        self.counters[counter] = start + int(n)
        return np.arange(start, start + int(n), dtype=np.int64)


@dataclass
class DayOutput:
    erp: dict[str, Batch]
    dealer: dict[str, Batch]
    dealer_status: dict[str, np.ndarray]  # dealer_id, status, updated_at of rows updated in place
    pending: dict[str, dict[str, np.ndarray]]  # new future events (write_on > day)
    oracle_pd: dict[str, np.ndarray]
    oracle_loans: dict[str, np.ndarray]
    # latent state the conditional oracle needs (sources.sim_oracle), never read by the pipeline
    oracle_macro: dict[str, np.ndarray]  # as_of, macro: the common factor after the day's step
    oracle_instalments: dict[str, np.ndarray]  # every supplier instalment the day created
    # the key of every repayment row the day wrote and what it repays (a fault can change the
    # row's references, never its key): which loans and instalments a lost row leaves unpaid
    oracle_loan_repayments: dict[str, np.ndarray]
    oracle_supplier_repayments: dict[str, np.ndarray]
    counts: dict[str, int] = field(default_factory=dict)


def _batch(source: str, name: str, cols: dict[str, np.ndarray], rng: np.random.Generator, day: int,
           event: np.ndarray, min_event: np.ndarray | None = None, nulls: dict | None = None,
           updated_at: np.ndarray | None = None) -> Batch:
    contract = table(source, name)
    cols = dict(cols)
    cols[WATERMARK] = updated_at if updated_at is not None else w.write_times(rng, day, event)
    ordered = {c: cols[c] for c in contract.column_names}
    return Batch(contract, ordered, nulls or {}, min_event)


def _bday_backward(days: np.ndarray) -> np.ndarray:
    d = np.asarray(days, dtype=np.int64).astype("datetime64[D]")
    return np.busday_offset(d, 0, roll="backward").astype(np.int64)


def _round_to(x: np.ndarray, unit: int, minimum: int) -> np.ndarray:
    return np.maximum(minimum, (np.round(x / unit) * unit)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# initial state


def initial_state(world: w.World, seed: int) -> State:
    rng = w.stream(seed, 0, "init_state")
    return State(
        day_index=0, played_through=None, counters={}, macro=0.0,
        dealer_u=rng.normal(0.0, w.AR_SD, world.n_dealers),
        dealer_stock=np.zeros(world.n_dealers, dtype=np.int64),
        dealer_blocked=world.dealer_blocked0.copy(),
        supplier_u=rng.normal(0.0, w.AR_SD, world.n_suppliers),
        supplier_defaulted_on=np.full(world.n_suppliers, -1, dtype=np.int64),
    )


def latent_step(x, phi: float, sigma: float, shock):
    """One business day of an AR(1) latent component: ``phi * x + sigma * shock``."""
    return phi * x + sigma * shock


def supplier_hazard(pd_s: np.ndarray) -> np.ndarray:
    """The daily default probability of a supplier whose 12-month (250 business days) PD is ``pd_s``."""
    return 1.0 - (1.0 - pd_s) ** (1.0 / w.SUPPLIER_PD_HORIZON_BDAYS)


def days_to_sale(rng: np.random.Generator, dts_mean: np.ndarray) -> np.ndarray:
    """Business days from buying each car to selling it: ``max(1, round(Gamma(2, dts_mean / 2)))``."""
    return np.maximum(1, np.round(rng.gamma(2.0, dts_mean / 2.0))).astype(np.int64)


def instalment_pay_offsets(rng: np.random.Generator, view: np.ndarray) -> np.ndarray:
    """Days after (> 0) or before (<= 0) its due date that a paying supplier pays each instalment.

    ``view`` is the supplier's risk as its late-payment habit shows it (:func:`seen_s`) on the
    day the instalment is created. The pay day is ``bday_roll(due + offset)``, at the earliest
    the next business day.
    """
    n = len(view)
    is_late = rng.random(n) < w.sigmoid(w.logit(INSTALMENT_LATE_P) + 1.0 * view)
    late_days = np.minimum(INSTALMENT_MAX_LATE, 1 + np.round(rng.exponential(
        INSTALMENT_LATE_MEAN[0] + INSTALMENT_LATE_MEAN[1] * np.maximum(view, 0.0)))).astype(np.int64)
    early_days = np.where(rng.random(n) < INSTALMENT_EARLY_P, rng.integers(1, INSTALMENT_EARLY_MAX + 1, n), 0)
    return np.where(is_late, late_days, -early_days)


def good_loan_pay_days(rng: np.random.Generator, view: np.ndarray, sale_on: np.ndarray,
                       due_day: np.ndarray) -> np.ndarray:
    """The day each loan that will not default is repaid (before the floor at the next business day).

    ``view`` is the dealer's risk as its repayment habit shows it (:func:`seen_d`) on the
    application day. A slow payer (P = sigmoid(logit(0.1) + view)) repays 1 + round(Exp(3 + 5
    max(view, 0))) business days after the sale, or, when the car is unsold at the due date,
    round(Exp(3 + 6 max(view, 0))) days after it; the others 0-2 business days after the sale or
    0-3 days before the due date. Never later than the last business day <= due + 25.
    """
    n = len(view)
    sold_first = sale_on <= due_day
    slow = rng.random(n) < w.sigmoid(w.logit(SLOW_REPAYER_P) + 1.0 * view)
    after_sale = np.where(slow, 1 + np.round(rng.exponential(
        SLOW_AFTER_SALE_MEAN[0] + SLOW_AFTER_SALE_MEAN[1] * np.maximum(view, 0.0), n)),
        rng.integers(0, FAST_AFTER_SALE, n)).astype(np.int64)
    at_due = np.where(slow, np.round(rng.exponential(
        SLOW_AT_DUE_MEAN[0] + SLOW_AT_DUE_MEAN[1] * np.maximum(view, 0.0), n)),
        -rng.integers(0, FAST_EARLY, n)).astype(np.int64)
    pay_good = np.where(sold_first, w.bday_add(sale_on, after_sale), w.bday_roll(due_day + at_due))
    return np.minimum(pay_good, _bday_backward(due_day + GOOD_MAX_DAYS_LATE))


def seen_d(world: w.World, r: np.ndarray, who: np.ndarray, behaviour: str) -> np.ndarray:
    """The dealers' risk ``r`` as one behaviour shows it: plus the dealer's own habit, clipped."""
    j = w.DEALER_STYLES.index(behaviour)
    return np.clip(r[who] + world.dealer_style[who, j], -3.0, 4.0)


def seen_s(world: w.World, r: np.ndarray, who: np.ndarray, behaviour: str) -> np.ndarray:
    j = w.SUPPLIER_STYLES.index(behaviour)
    return np.clip(r[who] + world.supplier_style[who, j], -3.0, 4.0)


def _cars(world: w.World, rng: np.random.Generator, dealer: np.ndarray, r: np.ndarray, year: int,
          st: State) -> dict[str, np.ndarray]:
    """Used cars acquired by ``dealer`` (``r``: centred latent of every dealer): vehicle, prices, VIN."""
    n = len(dealer)
    cat = rng.choice(len(w.CATALOGUE), n, p=w.CATALOGUE_P)
    r_age = seen_d(world, r, dealer, "age")
    age = np.clip(np.round(rng.gamma(2.0, np.clip(3.5 + 0.6 * r_age, 1.0, 9.0) / 2.0)), 0, 18).astype(np.int64)
    mileage = _round_to((age + rng.uniform(0.1, 1.0, n)) * 15_000 * rng.lognormal(0.0, 0.35, n)
                        * np.exp(0.08 * seen_d(world, r, dealer, "mileage")), 100, 100)
    purchase = _round_to(w.CATALOGUE_PRICE_FEN[cat] * 0.86 ** age * np.exp(-mileage / 800_000)
                         * rng.lognormal(0.0, 0.1, n), 10_000, 1_000_000)
    ratio = np.clip(rng.normal(1.04 - 0.03 * seen_d(world, r, dealer, "appraisal"), 0.05), 0.6, 1.4)
    appraised = _round_to(purchase * ratio, 10_000, 10_000)
    serial = st.take("dealer_vin", n)
    vin = w.vins(w.CATALOGUE_WMI[cat], w.CATALOGUE_VDS[cat], year - age, serial, oem=False)
    dts_mean = np.clip(12.0 * np.exp(0.25 * seen_d(world, r, dealer, "days_to_sale")) * (1 + 0.04 * age), 2.0, 120.0)
    return {"vin": vin, "cat": cat, "age": age, "model_year": year - age, "mileage": mileage,
            "purchase": purchase, "appraised": appraised, "dts_mean": dts_mean}


def _inventory_cols(world: w.World, dealer: np.ndarray, cars: dict, acquired_at: np.ndarray) -> dict:
    return {
        "vin": cars["vin"], "dealer_id": world.dealer_ids[dealer], "make_model": w.CATALOGUE_NAMES[cars["cat"]],
        "model_year": cars["model_year"], "mileage_km": cars["mileage"], "purchase_price_fen": cars["purchase"],
        "appraised_value_fen": cars["appraised"], "acquired_at": acquired_at,
    }


def initial_rows(world: w.World, st: State, seed: int, scale) -> tuple[dict[str, Batch], dict[str, dict]]:
    """Stock on the dealers' lots and the OEM's order backlog before the first played day.

    Both are written by ``init`` with the master-data timestamp; their cars and orders are sold
    and built on the following days like any other.
    """
    rng = w.stream(seed, 0, "init_rows")
    first = int(w.bday_roll(world.start_day))
    master_ts = world.start_day * w.DAY_S + w.MASTER_HOUR * w.HOUR_S
    z = world.dealer_a + st.dealer_u
    r = z - world.dealer_mu

    # dealers' stock: bought on the business days before the start, not financed here
    n_i = rng.poisson(world.dealer_rate * scale.initial_stock_days)
    dealer = np.repeat(np.arange(world.n_dealers), n_i)
    n = len(dealer)
    cars = _cars(world, rng, dealer, r, w.year_of(world.start_day), st)
    held = rng.integers(1, 41, n)
    acq_day = w.bday_add(np.full(n, first), -held)
    acquired_at = w.event_times(rng, 0, n) + acq_day * w.DAY_S
    acquired_at = np.minimum(acquired_at, master_ts - 3_600)
    remaining = np.round(rng.exponential(cars["dts_mean"])).astype(np.int64)
    sale_on = w.bday_add(np.full(n, first), remaining)
    st.dealer_stock += np.bincount(dealer, minlength=world.n_dealers)
    inventory = Batch(table(DEALER, "inventory"),
                      {**_inventory_cols(world, dealer, cars, acquired_at), WATERMARK: np.full(n, master_ts)})
    pend_sales = {"vin": cars["vin"], "dealer_idx": dealer, "acquired_at": acquired_at,
                  "appraised_fen": cars["appraised"], "write_on": sale_on}

    # orders placed on the days before the start and built from the first day on
    o_model, o_at, o_lag_day = [], [], []
    for j in range(1, 6):
        k = rng.poisson(scale.vehicles_per_day)
        lag = rng.choice([1, 2, 3, 4, 5], k, p=[0.15, 0.3, 0.3, 0.15, 0.1])
        keep = lag >= j
        placed = int(w.bday_add(first, -j))
        o_model.append(rng.choice(len(world.model_ids), k, p=world.model_p)[keep])
        o_at.append(w.event_times(rng, placed, k)[keep])
        o_lag_day.append(w.bday_add(np.full(k, placed), lag)[keep])
    o_model = np.concatenate(o_model)
    o_at = np.concatenate(o_at)
    o_write = np.concatenate(o_lag_day)
    order = np.argsort(o_at, kind="stable")
    o_model, o_at, o_write = o_model[order], o_at[order], o_write[order]
    no = len(o_model)
    o_ids = w.ids("order", st.take("order", no))
    orders = Batch(table(ERP, "orders"), {
        "order_id": o_ids, "model_id": world.model_ids[o_model],
        "channel": np.where(rng.random(no) < 0.6, "consumer", "dealer").astype(object),
        "ordered_at": o_at, WATERMARK: np.full(no, master_ts)})
    pend_prod = {"order_id": o_ids, "model_idx": o_model, "ordered_at": o_at, "write_on": o_write}
    return {"inventory": inventory, "orders": orders}, {"sales": pend_sales, "production": pend_prod}


# --------------------------------------------------------------------------------------------
# a day


def play_day(world: w.World, st: State, scale, seed: int, day: int, k: int,
             due: dict[str, dict[str, np.ndarray]]) -> DayOutput:
    """Play business day ``day`` (the ``k``-th): mutates ``st`` and returns the day's rows."""
    erp, dealer = ERP, DEALER
    nd, ns = world.n_dealers, world.n_suppliers
    dow = float(WEEKDAY_FACTOR[(day + 3) % 7])  # 1970-01-01 was a Thursday
    year = w.year_of(day)

    # ---- latent risk
    rl = w.stream(seed, k, "latent")
    st.macro = latent_step(st.macro, w.MACRO_PHI, w.MACRO_SIGMA, float(rl.normal()))
    st.dealer_u = latent_step(st.dealer_u, w.AR_PHI, w.AR_SIGMA, rl.normal(size=nd))
    st.supplier_u = latent_step(st.supplier_u, w.AR_PHI, w.AR_SIGMA, rl.normal(size=ns))
    z_d = world.dealer_a + st.dealer_u + world.dealer_b * st.macro
    z_s = world.supplier_a + st.supplier_u + world.supplier_b * st.macro
    r_d = z_d - world.dealer_mu
    r_s = z_s - world.supplier_mu
    pd_d, pd_s = w.sigmoid(z_d), w.sigmoid(z_s)

    # ---- events: supplier defaults, dealer blocks
    re = w.stream(seed, k, "events")
    hazard = supplier_hazard(pd_s)
    newly_defaulted = (st.supplier_defaulted_on < 0) & (re.random(ns) < hazard)
    st.supplier_defaulted_on[newly_defaulted] = day
    defaulted = st.supplier_defaulted_on >= 0
    p_block = np.minimum(0.0001 * np.exp(1.0 * r_d), 0.005)
    newly_blocked = ~st.dealer_blocked & (re.random(nd) < p_block)
    st.dealer_blocked |= newly_blocked
    nb = int(newly_blocked.sum())
    dealer_status = {"dealer_id": world.dealer_ids[newly_blocked],
                     "status": np.full(nb, "blocked", dtype=object),
                     "updated_at": w.event_times(re, day, nb, 9, 19)}

    pending: dict[str, dict[str, np.ndarray]] = {}
    out_erp: dict[str, Batch] = {}
    out_dealer: dict[str, Batch] = {}

    # ================================================================ ERP / MES
    rng = w.stream(seed, k, "erp")
    nm = len(world.model_ids)

    # orders → production 1-5 business days later
    n_o = int(rng.poisson(scale.vehicles_per_day * dow))
    o_model = rng.choice(nm, n_o, p=world.model_p)
    o_at = np.sort(w.event_times(rng, day, n_o))
    o_ids = w.ids("order", st.take("order", n_o))
    out_erp["orders"] = _batch(erp, "orders", {
        "order_id": o_ids, "model_id": world.model_ids[o_model],
        "channel": np.where(rng.random(n_o) < 0.6, "consumer", "dealer").astype(object),
        "ordered_at": o_at}, rng, day, o_at)
    lag = rng.choice([1, 2, 3, 4, 5], n_o, p=[0.15, 0.3, 0.3, 0.15, 0.1])
    pending["production"] = {"order_id": o_ids, "model_idx": o_model, "ordered_at": o_at,
                             "write_on": w.bday_add(np.full(n_o, day), lag)}

    # production and line-off of the orders due today
    prod = due["production"]
    n_p = len(prod["order_id"])
    p_model = prod["model_idx"]
    vin = w.vins(np.full(n_p, w.OEM_WMI, dtype=object), world.model_vds[p_model], np.full(n_p, year),
                 st.take("oem_vin", n_p), oem=True)
    produced_at = w.event_times(rng, day, n_p, 8, 15)
    out_erp["production"] = _batch(erp, "production", {
        "vin": vin, "order_id": prod["order_id"], "model_id": world.model_ids[p_model],
        "plant": world.model_plant[p_model], "produced_at": produced_at}, rng, day, produced_at,
        min_event=prod["ordered_at"])

    # short deliveries today (by supplier), visible as receipts below consumption and as
    # parts mismatches at line-off
    all_s = np.arange(ns)
    p_short = np.clip(w.sigmoid(w.logit(0.02) + 0.8 * seen_s(world, r_s, all_s, "short_delivery")) + 0.3 * defaulted,
                      0.0, 0.9)
    short = rng.random(ns) < p_short
    short_factor = rng.uniform(0.6, 0.95, ns)
    cost = world.usage * world.part_price[None, :]
    bom_cost = np.maximum(cost.sum(axis=1), 1)
    model_short = (cost * short[world.part_supplier][None, :]).sum(axis=1) / bom_cost
    line_off_at = produced_at + rng.integers(3_600, 3 * 3_600, n_p)
    u = rng.random(n_p)
    p_mismatch = 0.008 + 0.15 * model_short[p_model]
    note = np.full(n_p, None, dtype=object)
    note[u < 0.008 + p_mismatch] = "parts_mismatch"
    note[u < 0.008] = "no_order"
    note[u < 0.004] = "vin_unknown"
    verified = np.array([x is None for x in note], dtype=bool)
    out_erp["line_off_events"] = _batch(erp, "line_off_events", {
        "event_id": w.ids("event", st.take("event", n_p)), "vin": vin, "line_off_at": line_off_at,
        "iot_verified": verified, "verification_note": note}, rng, day, line_off_at,
        min_event=produced_at, nulls={"verification_note": verified.copy()})

    # goods receipts: today's consumption per part, from its tier-1 supplier
    consumption = np.bincount(p_model, minlength=nm) @ world.usage
    part = np.flatnonzero(consumption > 0)
    sup = world.part_supplier[part]
    qty = np.where(short[sup], np.floor(consumption[part] * short_factor[sup]), consumption[part]).astype(np.int64)
    keep = qty > 0
    part, sup, qty = part[keep], sup[keep], qty[keep]
    n_r = len(part)
    amount = qty * world.part_price[part]
    received_at = w.event_times(rng, day, n_r, 8, 12)
    receipt_ids = w.ids("receipt", st.take("receipt", n_r))
    out_erp["goods_receipts"] = _batch(erp, "goods_receipts", {
        "receipt_id": receipt_ids, "supplier_id": world.supplier_ids[sup], "part_id": world.part_ids[part],
        "quantity": qty, "amount_fen": amount, "received_at": received_at}, rng, day, received_at)

    # payables: one per receipt, confirmed by the OEM (确权) or not
    rs = seen_s(world, r_s, sup, "disputes")
    p_wd = np.minimum(0.002 * np.exp(0.7 * rs), 0.05)
    p_disp = w.sigmoid(w.logit(0.015) + 0.8 * rs)
    u = rng.random(n_r)
    status = np.full(n_r, "confirmed", dtype=object)
    status[u < p_wd + p_disp + 0.05] = "pending"
    status[u < p_wd + p_disp] = "disputed"
    status[u < p_wd] = "withdrawn"
    confirmed_at = received_at + rng.integers(3_600, 5 * 3_600, n_r)
    no_confirm = (status == "pending") | (status == "disputed")
    due_on = day + world.supplier_terms[sup]
    payable_ids = w.ids("payable", st.take("payable", n_r))
    out_erp["payables"] = _batch(erp, "payables", {
        "payable_id": payable_ids, "receipt_id": receipt_ids, "supplier_id": world.supplier_ids[sup],
        "amount_fen": amount, "due_on": due_on, "confirmation_status": status,
        "confirmed_at": confirmed_at}, rng, day, np.where(no_confirm, received_at, confirmed_at),
        min_event=received_at, nulls={"confirmed_at": no_confirm})

    # credit memos decided now, issued 1-15 business days later (dilution)
    disputed = status == "disputed"
    p_memo = np.clip(w.sigmoid(w.logit(0.012) + 0.8 * seen_s(world, r_s, sup, "memos")) + 0.5 * disputed, 0.0, 0.95)
    has_memo = rng.random(n_r) < p_memo
    memo_amount = np.maximum(1, np.round(amount * rng.uniform(0.02, 0.25, n_r))).astype(np.int64)
    reason = rng.choice(np.array(["return", "quality_dispute", "price_adjustment"], dtype=object), n_r,
                        p=[0.45, 0.35, 0.2])
    reason[disputed & (rng.random(n_r) < 0.8)] = "quality_dispute"
    memo_lag = rng.integers(1, 16, n_r)
    pending["memos"] = {"payable_id": payable_ids[has_memo], "supplier_idx": sup[has_memo],
                        "amount_fen": memo_amount[has_memo], "reason": reason[has_memo],
                        "received_at": received_at[has_memo],
                        "write_on": w.bday_add(np.full(int(has_memo.sum()), day), memo_lag[has_memo])}

    # instalments financed on confirmed payables: the tier-1 share and each tier-2 share
    conf = np.flatnonzero(status == "confirmed")
    net = (amount - np.where(has_memo, memo_amount, 0))[conf].astype(np.float64)
    c_part = part[conf]
    lo = np.searchsorted(world.sub_parent, c_part, "left")
    hi = np.searchsorted(world.sub_parent, c_part, "right")
    cnt = hi - lo
    row = np.repeat(np.arange(len(conf)), cnt)
    line = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    t2_share = np.bincount(row, weights=world.sub_share[line], minlength=len(conf))
    t2_key = row * ns + world.sub_supplier[line]
    uk, inv = np.unique(t2_key, return_inverse=True)
    t2_amt = np.bincount(inv, weights=ADVANCE_RATE * net[row] * world.sub_share[line], minlength=len(uk))
    rep_row = np.concatenate([np.arange(len(conf)), uk // ns])
    rep_sup = np.concatenate([sup[conf], uk % ns])
    rep_amt = np.round(np.concatenate([ADVANCE_RATE * net * (1.0 - t2_share), t2_amt])).astype(np.int64)
    order = np.lexsort((rep_sup, rep_row))
    rep_row, rep_sup, rep_amt = rep_row[order], rep_sup[order], rep_amt[order]
    ok = rep_amt > 0
    rep_row, rep_sup, rep_amt = rep_row[ok], rep_sup[ok], rep_amt[ok]
    n_i = len(rep_row)
    rr = seen_s(world, r_s, rep_sup, "late_payment")
    offsets = instalment_pay_offsets(rng, rr)
    i_due = due_on[conf][rep_row]
    pay_on = w.bday_roll(i_due + offsets)
    pay_on = np.maximum(pay_on, w.bday_add(np.full(n_i, day), 1))
    pending["supplier_repayments"] = {
        "supplier_idx": rep_sup, "payable_id": payable_ids[conf][rep_row], "amount_fen": rep_amt,
        "due_on": i_due, "confirmed_at": confirmed_at[conf][rep_row], "write_on": pay_on}
    oracle_instalments = {"supplier_id": world.supplier_ids[rep_sup], "payable_id": payable_ids[conf][rep_row],
                          "created_on": np.full(n_i, day, dtype=np.int64), "due_on": i_due, "pay_on": pay_on,
                          "late_view": rr}

    # credit memos and instalments due today
    memos = due["memos"]
    n_m = len(memos["payable_id"])
    issued_at = w.event_times(rng, day, n_m, 9, 18)
    out_erp["credit_memos"] = _batch(erp, "credit_memos", {
        "memo_id": w.ids("memo", st.take("memo", n_m)), "payable_id": memos["payable_id"],
        "supplier_id": world.supplier_ids[memos["supplier_idx"]], "amount_fen": memos["amount_fen"],
        "reason": memos["reason"], "issued_at": issued_at}, rng, day, issued_at, min_event=memos["received_at"])

    srep = due["supplier_repayments"]
    d_on = st.supplier_defaulted_on[srep["supplier_idx"]]
    paying = (d_on < 0) | (d_on > day)
    srep = {c: v[paying] for c, v in srep.items()}
    n_sr = len(srep["payable_id"])
    paid_at = w.event_times(rng, day, n_sr, 9, 18)
    out_erp["supplier_repayments"] = _batch(erp, "supplier_repayments", {
        "repayment_id": w.ids("supplier_repayment", st.take("supplier_repayment", n_sr)),
        "supplier_id": world.supplier_ids[srep["supplier_idx"]], "payable_id": srep["payable_id"],
        "amount_fen": srep["amount_fen"], "due_on": srep["due_on"], "paid_at": paid_at}, rng, day, paid_at,
        min_event=srep["confirmed_at"])
    oracle_supplier_repayments = {"repayment_id": out_erp["supplier_repayments"].cols["repayment_id"],
                                  "payable_id": srep["payable_id"],
                                  "supplier_id": world.supplier_ids[srep["supplier_idx"]]}

    # ================================================================ dealer platform
    rng = w.stream(seed, k, "dealer")

    # cars bought today
    lam = world.dealer_rate * dow * np.where(st.dealer_blocked, 0.3, 1.0)
    n_i = rng.poisson(lam)
    buyer = np.repeat(np.arange(nd), n_i)
    n_c = len(buyer)
    cars = _cars(world, rng, buyer, r_d, year, st)
    acquired_at = w.event_times(rng, day, n_c, 8, 17)
    inv_batch = _batch(dealer, "inventory", _inventory_cols(world, buyer, cars, acquired_at), rng, day, acquired_at)
    dts = days_to_sale(rng, cars["dts_mean"])
    sale_on = w.bday_add(np.full(n_c, day), dts)
    financed = rng.random(n_c) < w.FINANCED_SHARE
    app_lag = np.minimum(rng.choice(list(APP_LAGS), n_c, p=list(APP_LAG_P)), dts - 1)
    st.dealer_stock += np.bincount(buyer, minlength=nd)
    pending["sales"] = {"vin": cars["vin"], "dealer_idx": buyer, "acquired_at": acquired_at,
                        "appraised_fen": cars["appraised"], "write_on": sale_on}
    later = financed & (app_lag > 0)
    pending["apps"] = {"vin": cars["vin"][later], "dealer_idx": buyer[later], "acquired_at": acquired_at[later],
                       "purchase_fen": cars["purchase"][later], "appraised_fen": cars["appraised"][later],
                       "sale_on": sale_on[later], "age": cars["age"][later],
                       "dts_mean": cars["dts_mean"][later],
                       "write_on": w.bday_add(np.full(int(later.sum()), day), app_lag[later])}

    # sales due today
    sales = due["sales"]
    n_s = len(sales["vin"])
    s_dealer = sales["dealer_idx"]
    sale_ratio = np.clip(rng.normal(1.03 - 0.02 * seen_d(world, r_d, s_dealer, "sale_price"), 0.04), 0.7, 1.3)
    sale_price = _round_to(sales["appraised_fen"] * sale_ratio, 10_000, 10_000)
    sold_at = w.event_times(rng, day, n_s, 9, 18)
    sales_batch = _batch(dealer, "sales", {
        "sale_id": w.ids("sale", st.take("sale", n_s)), "vin": sales["vin"], "dealer_id": world.dealer_ids[s_dealer],
        "sale_price_fen": sale_price, "sold_at": sold_at}, rng, day, sold_at, min_event=sales["acquired_at"])
    st.dealer_stock -= np.bincount(s_dealer, minlength=nd)

    # loan applications: today's financed cars without a lag, then the lagged ones due today
    now = financed & (app_lag == 0)
    pa = due["apps"]
    a_vin = np.concatenate([cars["vin"][now], pa["vin"]])
    a_dealer = np.concatenate([buyer[now], pa["dealer_idx"]])
    a_acq = np.concatenate([acquired_at[now], pa["acquired_at"]])
    a_purchase = np.concatenate([cars["purchase"][now], pa["purchase_fen"]])
    a_appraised = np.concatenate([cars["appraised"][now], pa["appraised_fen"]])
    a_sale_on = np.concatenate([sale_on[now], pa["sale_on"]])
    a_age = np.concatenate([cars["age"][now], pa["age"]])
    a_dts_mean = np.concatenate([cars["dts_mean"][now], np.asarray(pa["dts_mean"], dtype=np.float64)])
    n_a = len(a_vin)
    n_now = int(now.sum())
    day_end = day * w.DAY_S + w.EVENT_HOURS[1] * w.HOUR_S - 1
    applied_at = np.concatenate([np.minimum(a_acq[:n_now] + rng.integers(900, 3 * 3_600, n_now), day_end),
                                 w.event_times(rng, day, n_a - n_now)])
    ra = seen_d(world, r_d, a_dealer, "loan_terms")
    ltv_target = np.clip(rng.uniform(0.55, 0.80, n_a) + 0.03 * ra, 0.4, 0.88)
    requested = np.maximum(10_000, np.floor(np.minimum(a_appraised * ltv_target, a_purchase) / 10_000) * 10_000
                           ).astype(np.int64)
    ltv = requested / a_appraised
    p30 = np.clip(0.30 - 0.05 * ra, 0.1, 0.5)
    p90 = np.clip(0.25 + 0.06 * ra, 0.1, 0.5)
    u = rng.random(n_a)
    term = np.where(u < p30, 30, np.where(u < 1 - p90, 60, 90)).astype(np.int64)
    loan_logit = (z_d[a_dealer] + 1.5 * (ltv - 0.68) + np.select([term == 30, term == 90], [-0.25, 0.25], 0.0)
                  + 0.05 * (a_age - 4))
    true_pd = w.sigmoid(loan_logit)
    will_default = rng.random(n_a) < true_pd
    app_ids = w.ids("application", st.take("application", n_a))
    apps_batch = _batch(dealer, "loan_applications", {
        "application_id": app_ids, "dealer_id": world.dealer_ids[a_dealer], "vin": a_vin,
        "purchase_price_fen": a_purchase, "appraised_value_fen": a_appraised, "requested_fen": requested,
        "term_days": term, "applied_at": applied_at}, rng, day, applied_at, min_event=a_acq)

    # how each loan will be repaid (or not)
    due_day = day + term
    ra = seen_d(world, r_d, a_dealer, "repayment")
    pay_good = good_loan_pay_days(rng, ra, a_sale_on, due_day)
    pay_bad = w.bday_roll(due_day + rng.integers(31, 81, n_a))
    never = will_default & (rng.random(n_a) < 0.7)
    pay_on = np.maximum(np.where(will_default, pay_bad, pay_good), w.bday_add(np.full(n_a, day), 1))
    repay_amt = (requested + np.round(requested * LOAN_RATE * (pay_on - day) / 365.0)).astype(np.int64)
    pays = ~never
    pending["loan_repayments"] = {"application_id": app_ids[pays], "dealer_idx": a_dealer[pays],
                                  "amount_fen": repay_amt[pays], "due_on": due_day[pays],
                                  "applied_at": applied_at[pays], "write_on": pay_on[pays]}
    oracle_loans = {"application_id": app_ids, "dealer_id": world.dealer_ids[a_dealer], "true_pd": true_pd,
                    "will_default": will_default,
                    "acquired_on": np.asarray(a_acq, dtype=np.int64) // w.DAY_S,
                    "applied_on": np.full(n_a, day, dtype=np.int64), "loan_due_on": due_day, "sale_on": a_sale_on,
                    "dts_mean": a_dts_mean, "repay_view": ra,
                    "repaid_on": np.where(pays, pay_on, -1).astype(np.int64)}

    # repayments due today
    lr = due["loan_repayments"]
    n_lr = len(lr["application_id"])
    lr_paid_at = w.event_times(rng, day, n_lr, 9, 18)
    repay_batch = _batch(dealer, "loan_repayments", {
        "repayment_id": w.ids("loan_repayment", st.take("loan_repayment", n_lr)),
        "application_id": lr["application_id"], "dealer_id": world.dealer_ids[lr["dealer_idx"]],
        "amount_fen": lr["amount_fen"], "due_on": lr["due_on"], "paid_at": lr_paid_at}, rng, day, lr_paid_at,
        min_event=lr["applied_at"])
    oracle_loan_repayments = {"repayment_id": repay_batch.cols["repayment_id"], "application_id": lr["application_id"]}

    # floor audits
    audited = np.flatnonzero((rng.random(nd) < 1.0 / scale.audit_interval_days) & ~st.dealer_blocked)
    n_au = len(audited)
    rau = seen_d(world, r_d, audited, "audits")
    skipped = rng.random(n_au) < w.sigmoid(w.logit(0.04) + 0.9 * rau)
    expected = st.dealer_stock[audited]
    missing = rng.binomial(expected, np.clip(0.003 * np.exp(1.0 * rau), 0.0, 0.3))
    audited_at = w.event_times(rng, day, n_au, 9, 17)
    audit_batch = _batch(dealer, "floor_audits", {
        "audit_id": w.ids("audit", st.take("audit", n_au)), "dealer_id": world.dealer_ids[audited],
        "audited_at": audited_at, "vehicles_expected": expected,
        "vehicles_found": np.where(skipped, 0, expected - missing).astype(np.int64), "skipped": skipped},
        rng, day, audited_at)

    out_dealer.update({"inventory": inv_batch, "sales": sales_batch, "loan_applications": apps_batch,
                       "loan_repayments": repay_batch, "floor_audits": audit_batch})

    oracle_pd = {
        "borrower_type": np.array(["dealer"] * nd + ["supplier"] * ns, dtype=object),
        "borrower_id": np.concatenate([world.dealer_ids, world.supplier_ids]),
        "as_of": np.full(nd + ns, day, dtype=np.int64),
        "true_pd": np.concatenate([pd_d, pd_s]),
    }
    oracle_macro = {"as_of": np.array([day], dtype=np.int64), "macro": np.array([st.macro], dtype=np.float64)}
    return DayOutput(out_erp, out_dealer, dealer_status, pending, oracle_pd, oracle_loans, oracle_macro,
                     oracle_instalments, oracle_loan_repayments, oracle_supplier_repayments,
                     counts={"supplier_defaults": int(newly_defaulted.sum()), "dealer_blocks": nb})


