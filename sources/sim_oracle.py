"""The conditional oracle: the probability of a snapshot's label given the simulator's state then.

The unconditional true PD of a borrower (``oracle_pd``) is the right ceiling for a model that
scores at origination (``dealer_pd``: one row per application, the loan's default is drawn from
its true PD that day). It is not for a model that scores a borrower or a loan *later*, after
some of what decides its label has already happened: a supplier that has stopped paying, a loan
whose car was sold weeks ago and is still not repaid. For those the ceiling is

    P(label = 1 | the simulator's state at the snapshot)

where the *state at a snapshot* (midnight at the start of day ``t``, so after the last business
day played before ``t``) is the latent risk path up to that day and every event of the process
dated before ``t``, and nothing else. An outcome the simulator draws ahead of time for an event
dated on or after ``t`` (a loan's default flag and repayment day, drawn at its application; an
instalment's pay day, drawn when its payable is created; a car's sale day, drawn when it is
bought) is a *future draw*: the oracle integrates over its law, conditioned on what it implies
for the events before ``t`` (the loan has not been repaid yet, the car has or has not been sold).
The oracle is therefore the same whichever day the code happens to draw an outcome on; it is
the best any model could do from everything that has happened, knowing the risk exactly.

Data faults are part of the state too. A repayment row written before ``t`` with a fault that
gets it quarantined (:data:`LOST_ROW_FAULTS`: every row fault but a late arrival) never reaches
the published tables: its loan or instalment stays unpaid in the data, which decides the label
(a loan repaid but lost is labelled bad). A fault on a row written on or after ``t`` is a future
draw the oracle leaves out: for a loan it turns a good label bad with the same small probability
(~1 %) for every row, a monotone transform that leaves the AUC unchanged; for a supplier one lost
instalment rarely matters (the label needs two and half of a window unpaid).

Loan snapshots (``post_loan_behaviour``) have a closed form, :func:`loan_snapshot_pd`. Supplier
snapshots (``supplier_pd``) need the future latent path, integrated by Monte Carlo with a fixed
seed, :func:`supplier_snapshot_pd`. Both use the laws of :mod:`sources.sim_days`, the functions
the simulator draws with (a test compares them with those functions' draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sources import sim_days as sd
from sources import sim_world as w

# fault kinds (sources.sim_faults) after which a row is quarantined for good by the quality gate:
# a null in a required column, a duplicated key (every copy), a negative amount, an orphan foreign
# key, a future timestamp. A late arrival is published, later.
LOST_ROW_FAULTS = ("null", "duplicate_key", "negative_amount", "orphan_fk", "future_timestamp")
LATENT_PATHS = 2_000  # Monte Carlo paths of the future latent risk per snapshot date
PAY_DRAWS = 200  # Monte Carlo draws of the pending instalments' pay days per snapshot date
PATH_CHUNK = 250


class OracleError(ValueError):
    """The conditional oracle cannot be computed for what was asked; the message says why."""


def _d64(days) -> np.ndarray:
    return np.asarray(days, dtype=np.int64).astype("datetime64[D]")


def busday_count(begin, end) -> np.ndarray:
    """Business days in ``[begin, end)`` (day numbers)."""
    return np.busday_count(_d64(begin), _d64(end)).astype(np.int64)


def bday_backward(days) -> np.ndarray:
    """The last business day on or before each day."""
    return np.busday_offset(_d64(days), 0, roll="backward").astype(np.int64)


def _exp_tail(x, mean) -> np.ndarray:
    """P(X >= x) for X ~ Exp(mean), x >= 0 (1 for x <= 0)."""
    return np.exp(-np.maximum(np.asarray(x, dtype=np.float64), 0.0) / mean)


# --------------------------------------------------------------------------------------------
# loans: post-loan snapshots


def _p_after_sale_at_least(k, slow_p, mean1) -> np.ndarray:
    """P(after_sale >= k): slow 1 + round(Exp(mean1)); otherwise uniform on 0..FAST_AFTER_SALE-1."""
    k = np.asarray(k, dtype=np.float64)
    slow = np.where(k <= 1, 1.0, _exp_tail(k - 1.5, mean1))
    fast = np.clip((sd.FAST_AFTER_SALE - k) / sd.FAST_AFTER_SALE, 0.0, 1.0)
    return slow_p * slow + (1.0 - slow_p) * fast


def _p_at_due_at_least(j, slow_p, mean2) -> np.ndarray:
    """P(at_due >= j): slow round(Exp(mean2)); otherwise minus uniform on 0..FAST_EARLY-1."""
    j = np.asarray(j, dtype=np.float64)
    slow = np.where(j <= 0, 1.0, _exp_tail(j - 0.5, mean2))
    fast = np.clip((1.0 - j) / sd.FAST_EARLY, 0.0, 1.0)
    return slow_p * slow + (1.0 - slow_p) * fast


def _gamma2_survival(x, theta) -> np.ndarray:
    """P(G >= x) for G ~ Gamma(shape 2, scale theta)."""
    y = np.maximum(np.asarray(x, dtype=np.float64), 0.0) / theta
    return np.exp(-y) * (1.0 + y)


def _dts_tail(k, theta) -> np.ndarray:
    """P(days_to_sale >= k) for days_to_sale = max(1, round(Gamma(2, theta)))."""
    k = np.asarray(k, dtype=np.float64)
    return np.where(k <= 1, 1.0, _gamma2_survival(k - 0.5, theta))


def _sale_weight_tail(a, lag, theta) -> np.ndarray:
    """Σ_{k >= a} P(days_to_sale = k) · P(application lag = lag | days_to_sale = k).

    The lag is ``min(choice, days_to_sale - 1)`` with ``choice`` drawn from APP_LAG_P: P(lag |
    k) is P(choice = lag) for k >= lag + 2, P(choice >= lag) for k = lag + 1, 0 below.
    """
    p_lag = np.asarray(sd.APP_LAG_P)
    p_eq = p_lag[lag]
    p_ge = np.cumsum(p_lag[::-1])[::-1][lag]
    a = np.asarray(a, dtype=np.int64)
    k1 = lag + 1
    at_k1 = _dts_tail(k1, theta) - _dts_tail(k1 + 1, theta)
    return p_eq * _dts_tail(np.maximum(a, k1 + 1), theta) + np.where(a <= k1, p_ge * at_k1, 0.0)


def good_loan_unpaid_p(t, *, acquired_on, applied_on, due_on, sale_on, dts_mean, repay_view) -> np.ndarray:
    """P(a loan that will not default is not repaid before day ``t`` | the state at ``t``).

    The state: the application (its day, the car's acquisition day and days-to-sale mean, the
    dealer's repayment view that day) and whether the car was sold before ``t`` (then its sale
    day). Follows :func:`sources.sim_days.good_loan_pay_days` and
    :func:`sources.sim_days.days_to_sale`: an unsold car's sale day is integrated over its law
    given that it is on or after ``t`` and given the application lag it allowed.
    """
    t = np.asarray(t, dtype=np.int64)
    view = np.asarray(repay_view, dtype=np.float64)
    slow_p = w.sigmoid(w.logit(sd.SLOW_REPAYER_P) + view)
    mean1 = sd.SLOW_AFTER_SALE_MEAN[0] + sd.SLOW_AFTER_SALE_MEAN[1] * np.maximum(view, 0.0)
    mean2 = sd.SLOW_AT_DUE_MEAN[0] + sd.SLOW_AT_DUE_MEAN[1] * np.maximum(view, 0.0)
    last_before = bday_backward(t - 1)
    at_due = _p_at_due_at_least(last_before - due_on + 1, slow_p, mean2)
    sold = sale_on < t
    after_sale = _p_after_sale_at_least(busday_count(np.minimum(sale_on, t), t), slow_p, mean1)
    # unsold at t: days_to_sale >= k_t; sold before due iff days_to_sale <= k_due
    theta = np.asarray(dts_mean, dtype=np.float64) / 2.0
    lag = busday_count(acquired_on, applied_on)
    if (lag < 0).any() or (lag >= len(sd.APP_LAGS)).any():
        raise OracleError(f"application lags outside {sd.APP_LAGS}: {np.unique(lag).tolist()}")
    k_t = busday_count(acquired_on, t)
    k_due = busday_count(acquired_on, due_on + 1) - 1
    den = _sale_weight_tail(k_t, lag, theta)
    num = _sale_weight_tail(np.maximum(k_t, k_due + 1), lag, theta)
    after_due = np.divide(num, den, out=np.ones_like(den), where=den > 0)
    unsold = (1.0 - after_due) + after_due * at_due
    p = np.where(sold, np.where(sale_on <= due_on, after_sale, at_due), np.where(t > due_on, at_due, unsold))
    p = np.where(bday_backward(due_on + sd.GOOD_MAX_DAYS_LATE) < t, 0.0, p)  # every good loan repaid by then
    floor = w.bday_add(applied_on, 1)
    return np.where(floor >= t, 1.0, p)


def loan_snapshot_pd(t, *, true_pd, acquired_on, applied_on, due_on, sale_on, dts_mean, repay_view,
                     repaid_on, repayment_lost) -> np.ndarray:
    """P(the loan goes bad | the simulator's state at snapshot day ``t``), per loan snapshot.

    A loan is bad iff it will default (drawn at application with its ``true_pd``); a defaulting
    loan is repaid 31+ days after due or never, so it is never repaid before a snapshot (which
    precedes due + 30). Bayes on the state at ``t``:

        repaid before t              -> 0 (a repayment before due + 30 is a good loan's), or 1 if
                                        its row was lost to a fault (it never shows as paid)
        otherwise                    -> true_pd / (true_pd + (1 - true_pd) · P(unpaid at t | good))

    with :func:`good_loan_unpaid_p`; 1 once no good loan could still be unpaid (after the last
    business day <= due + 25). ``repaid_on`` is the repayment day, negative if never repaid;
    ``repayment_lost`` whether that row was quarantined (:data:`LOST_ROW_FAULTS`).
    All arguments are day numbers (arrays aligned with ``t``) except ``true_pd``, ``dts_mean``
    and ``repay_view``.
    """
    t = np.asarray(t, dtype=np.int64)
    if (t <= np.asarray(applied_on)).any():
        raise OracleError("a loan snapshot must be after its application day")
    if (t > np.asarray(due_on) + 31).any():
        raise OracleError("a loan snapshot must be on or before its due date + 31 days: a defaulting loan is "
                          "repaid 31 days after due at the earliest")
    p = np.asarray(true_pd, dtype=np.float64)
    unpaid_good = good_loan_unpaid_p(t, acquired_on=acquired_on, applied_on=applied_on, due_on=due_on,
                                     sale_on=sale_on, dts_mean=dts_mean, repay_view=repay_view)
    posterior = p / (p + (1.0 - p) * unpaid_good)
    repaid = (np.asarray(repaid_on) >= 0) & (np.asarray(repaid_on) < t)
    return np.where(repaid, np.where(np.asarray(repayment_lost, dtype=bool), 1.0, 0.0), posterior)


# --------------------------------------------------------------------------------------------
# suppliers: supplier_pd snapshots

INSTALMENT_OFFSETS = np.arange(-sd.INSTALMENT_EARLY_MAX, sd.INSTALMENT_MAX_LATE + 1, dtype=np.int64)


def instalment_offset_pmf(view) -> np.ndarray:
    """P(offset = o) for o in ``INSTALMENT_OFFSETS``, per instalment (rows): the law of
    :func:`sources.sim_days.instalment_pay_offsets`."""
    view = np.asarray(view, dtype=np.float64)
    late = w.sigmoid(w.logit(sd.INSTALMENT_LATE_P) + view)[:, None]
    mean = (sd.INSTALMENT_LATE_MEAN[0] + sd.INSTALMENT_LATE_MEAN[1] * np.maximum(view, 0.0))[:, None]
    out = np.zeros((len(view), len(INSTALMENT_OFFSETS)))
    col = {int(o): i for i, o in enumerate(INSTALMENT_OFFSETS)}
    early = sd.INSTALMENT_EARLY_P / sd.INSTALMENT_EARLY_MAX
    out[:, col[0]] = (1.0 - late[:, 0]) * (1.0 - sd.INSTALMENT_EARLY_P)
    for e in range(1, sd.INSTALMENT_EARLY_MAX + 1):
        out[:, col[-e]] = (1.0 - late[:, 0]) * early
    days = np.arange(1, sd.INSTALMENT_MAX_LATE + 1)
    lo = np.where(days == 1, 0.0, days - 1.5)[None, :]
    hi = np.where(days == sd.INSTALMENT_MAX_LATE, np.inf, days - 0.5)[None, :]
    out[:, col[1]:] = late * (_exp_tail(lo, mean) - np.exp(-hi / mean))
    return out


@dataclass(frozen=True)
class SupplierLabel:
    """The supplier label the oracle predicts (``features.supplier``): bad on day D when, of the
    instalments whose ``due + bad_dpd`` falls in ``(D - window, D]``, at least ``min_count`` and
    at least ``share`` of them are unpaid by then; the label is 1 if that happens on a day in
    ``[t, t + horizon_days)``."""

    horizon_days: int
    bad_dpd: int
    window: int
    share: float
    min_count: int


@dataclass(frozen=True)
class SupplierState:
    """What the simulator knows of the suppliers at the end of the last business day before a
    snapshot, and every instalment it ever created (arrays aligned with ``inst_*``)."""

    a: np.ndarray  # persistent log-odds per supplier
    b: np.ndarray  # macro loading
    u: np.ndarray  # AR(1) component on that day
    macro: float
    defaulted_on: np.ndarray  # default day (-1: never, as of the end of the simulation)
    inst_supplier: np.ndarray
    inst_created: np.ndarray
    inst_due: np.ndarray
    inst_pay_on: np.ndarray  # the day it is paid unless the supplier has defaulted by then
    inst_view: np.ndarray  # the late-payment view on the created day
    inst_lost: np.ndarray  # its repayment row was quarantined (LOST_ROW_FAULTS): unpaid in the data
    min_term: int  # the shortest payment term: instalments created later are due later than this


def _fires(unpaid_grid: np.ndarray, total_roll: np.ndarray, label: SupplierLabel) -> np.ndarray:
    """Per row: does the rule fire on a day of the horizon? ``unpaid_grid`` counts unpaid
    instalments per bad day from ``t - window + 1``; ``total_roll`` the window totals per day."""
    c = np.cumsum(unpaid_grid, axis=1)
    roll = c[:, label.window - 1:].copy()
    roll[:, 1:] -= c[:, : -label.window]
    return ((roll >= label.min_count) & (roll >= label.share * total_roll)).any(axis=1)


def supplier_snapshot_pd(t: int, suppliers: np.ndarray, state: SupplierState, label: SupplierLabel, *,
                         seed: int, paths: int = LATENT_PATHS, pay_draws: int = PAY_DRAWS) -> np.ndarray:
    """P(supplier goes bad in ``[t, t + horizon)`` | the simulator's state at ``t``), per supplier
    position in ``suppliers``.

    Only instalments that exist at ``t`` can reach their bad day within the horizon (a later one
    is due at least ``min_term`` days after it is created), so the label depends on the future
    only through the supplier's default day ``D0`` (if it has not defaulted yet) and the pay days
    of its instalments not yet paid. An instalment is unpaid iff its pay day is on or after
    ``D0`` (:func:`sources.sim_days.play_day`: a defaulted supplier pays nothing more).

    An instalment paid before ``t`` whose repayment row was lost to a fault stays unpaid in the
    data whatever happens.

    - Defaulted before ``t``: every instalment not paid before the default day stays unpaid; the
      label is known: 1 if the rule fires on a day of the horizon, else 0. So is it for a supplier
      whose lost rows alone make the rule fire.
    - Not defaulted: the rule fires iff ``D0`` is on or before a last default day ``d*`` that
      depends on the pending instalments' pay days (the later the default, the fewer unpaid).
      ``P = E[F(d*)]``, ``F(d) = P(D0 <= d)`` estimated on ``paths`` latent paths stepped by the
      simulator's own :func:`~sources.sim_days.latent_step` and
      :func:`~sources.sim_days.supplier_hazard` (the default day integrated exactly on each path),
      ``d*`` on ``pay_draws`` draws of the pending pay days from their exact law given that they
      are on or after ``t`` (:func:`instalment_offset_pmf`). Fixed seed: ``(seed, t)``.

    Raises:
        OracleError: if the horizon is longer than ``min_term + bad_dpd`` (instalments created
            after ``t`` could then go bad within it, a future this oracle does not integrate).
    """
    h = int(label.horizon_days)
    if h > state.min_term + label.bad_dpd:
        raise OracleError(f"the conditional supplier oracle needs a label horizon <= {state.min_term + label.bad_dpd} "
                          f"days (shortest payment term {state.min_term} + {label.bad_dpd} days past due): "
                          f"instalments created after the snapshot could go bad within a {h}-day horizon")
    suppliers = np.asarray(suppliers, dtype=np.int64)
    n = len(suppliers)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(t), 0x0C0FFEE]))
    day_axis = np.arange(t, t + h, dtype=np.int64)
    bdays = day_axis[np.is_busday(_d64(day_axis))]  # candidate default days in the horizon
    nb = len(bdays)
    first_bad = t - label.window + 1  # the earliest bad day any window of the horizon sees
    nbad = label.window + h - 1

    # instalments of these suppliers that count in some window of the horizon
    pos = np.full(len(state.a), -1, dtype=np.int64)
    pos[suppliers] = np.arange(n)
    bad_day = state.inst_due + label.bad_dpd
    keep = ((pos[state.inst_supplier] >= 0) & (state.inst_created < t) & (bad_day >= first_bad)
            & (bad_day < t + h))
    row = pos[state.inst_supplier[keep]]
    cell = row * nbad + (bad_day[keep] - first_bad)
    pay_on = state.inst_pay_on[keep]
    lost = state.inst_lost[keep] & (pay_on < t)  # written before t and quarantined
    total = np.bincount(cell, minlength=n * nbad).reshape(n, nbad)
    c = np.cumsum(total, axis=1)
    total_roll = c[:, label.window - 1:].copy()
    total_roll[:, 1:] -= c[:, : -label.window]

    d0 = state.defaulted_on[suppliers]
    gone = (d0 >= 0) & (d0 < t)
    out = np.zeros(n)
    # defaulted before t: unpaid iff not paid before the default day (or paid on a lost row)
    unpaid = (pay_on >= d0[row]) | lost
    grid = np.bincount(cell[unpaid & gone[row]], minlength=n * nbad).reshape(n, nbad)
    out[gone] = _fires(grid, total_roll, label)[gone].astype(np.float64)
    # not defaulted: the lost rows are unpaid whatever happens; if they alone fire, the label is 1
    lost_grid = np.bincount(cell[lost & ~gone[row]], minlength=n * nbad).reshape(n, nbad)
    sure = ~gone & _fires(lost_grid, total_roll, label)
    out[sure] = 1.0
    alive = ~gone & ~sure
    if not alive.any() or nb == 0:
        return out

    # F(d) = P(D0 <= bdays[j]) per supplier, averaged over latent paths
    a, b = state.a[suppliers], state.b[suppliers]
    never = np.zeros((n, nb))
    for lo in range(0, paths, PATH_CHUNK):
        k = min(PATH_CHUNK, paths - lo)
        macro = np.full(k, float(state.macro))
        u = np.broadcast_to(state.u[suppliers], (k, n)).copy()
        alive_p = np.ones((k, n))
        for j in range(nb):
            macro = sd.latent_step(macro, w.MACRO_PHI, w.MACRO_SIGMA, rng.normal(size=k))
            u = sd.latent_step(u, w.AR_PHI, w.AR_SIGMA, rng.normal(size=(k, n)))
            alive_p *= 1.0 - sd.supplier_hazard(w.sigmoid(a + u + b * macro[:, None]))
            never[:, j] += alive_p.sum(axis=0)
    cdf = 1.0 - never / paths  # P(D0 <= bdays[j])

    # pending instalments of live suppliers: pay day not yet reached, drawn from its law given >= t
    pend = alive[row] & (pay_on >= t)
    if not pend.any():
        return out  # nothing can go unpaid within the horizon: out stays 0 for live suppliers
    p_row, p_cell = row[pend], cell[pend]
    idx = np.flatnonzero(keep)[pend]
    days = w.bday_roll(state.inst_due[idx][:, None] + INSTALMENT_OFFSETS[None, :])
    days = np.maximum(days, w.bday_add(state.inst_created[idx], 1)[:, None])
    pmf = instalment_offset_pmf(state.inst_view[idx]) * (days >= t)
    mass = pmf.sum(axis=1)
    if (mass <= 0).any():
        raise OracleError(f"{int((mass <= 0).sum())} pending instalment(s) have no pay day on or after the snapshot "
                          "under their law: the recorded state is inconsistent")
    cum = np.cumsum(pmf / mass[:, None], axis=1)
    cum[:, -1] = 1.0
    # slot of each possible pay day: unpaid for a default on bdays[j] iff j <= slot
    slots = np.searchsorted(bdays, days, side="right") - 1
    live_rows = np.flatnonzero(alive)
    acc = np.zeros(n)
    for _ in range(pay_draws):
        pick = (cum < rng.random(len(idx))[:, None]).sum(axis=1)
        slot = slots[np.arange(len(idx)), pick]
        lo_j = np.full(n, -1, dtype=np.int64)  # the rule fires for a default on bdays[lo_j] (-1: never)
        hi_j = np.full(n, nb, dtype=np.int64)
        while (open_ := hi_j - lo_j > 1).any():  # the rule fires for a default on bdays[j] iff j <= d*
            mid = (lo_j + hi_j) // 2
            unpaid = slot >= mid[p_row]
            grid = lost_grid + np.bincount(p_cell[unpaid], minlength=n * nbad).reshape(n, nbad)
            fire = _fires(grid, total_roll, label)
            lo_j = np.where(open_ & fire, mid, lo_j)
            hi_j = np.where(open_ & ~fire, mid, hi_j)
        acc += np.where(lo_j >= 0, cdf[np.arange(n), np.maximum(lo_j, 0)], 0.0)
    out[live_rows] = acc[live_rows] / pay_draws
    return out
