"""Dealer order-loan PD: point-in-time features of a dealer and of the financed car, and labels.

Point-in-time rule. An as-of date ``D`` (a ``datetime.date``) means midnight at the start of
``D``. A transactional row is *known* at ``D`` iff its ``updated_at < D`` and its event time (the
contract's ``event_time``, e.g. ``sold_at``) ``< D``; a feature at ``D`` uses only rows known at
``D``. Reference tables are used only for immutable attributes (a dealer's ``city_tier`` and
``onboarded_on``), never for ``dealers.status``, which is updated in place. A label uses only
rows known at the as-of date of the dataset.

Loans. Every application is a loan drawn on its applied date; it is due on
``applied date + term_days`` and *bad* if it is not repaid (a ``loan_repayments`` row, written
when paid) before ``due + DEALER_GRACE_DAYS`` (30+ days past due). Its label window closes on
that day: a loan is *matured* at ``D`` iff ``due + 30 <= D``.

Features are computed on a dealer × day panel (:mod:`features.panel`) once per call, then read
at each (dealer, day) an observation needs.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.definitions import (
    DEALER_GRACE_DAYS,
    DEALER_PD,
    LONG_WINDOW,
    MID_TERM_DAYS,
    MID_WINDOW,
    OLD_STOCK_DAYS,
    OVERDUE_NOW_MAX_DPD,
    SHORT_WINDOW,
    SOLD_OUT_OF_TRUST_DAYS,
    YEAR_WINDOW,
    feature_names,
)
from features.frames import (
    FeatureError,
    Frames,
    day_of,
    days_to_dates,
    earliest_row,
    first_known,
    positions,
    require,
    timing,
)
from features.panel import NEVER, Grid, day_numbers, ratio

DEALERS = "dealer.dealers"
INVENTORY = "dealer.inventory"
SALES = "dealer.sales"
AUDITS = "dealer.floor_audits"
APPLICATIONS = "dealer.loan_applications"
REPAYMENTS = "dealer.loan_repayments"

APPLICATION_COLUMNS = ("application_id", "dealer_id", "vin", "purchase_price_fen", "appraised_value_fen",
                       "requested_fen", "term_days", "applied_at")
# the source columns the dealer builders (this module, :mod:`features.post_loan`) and the dealer
# rules of :mod:`lending.early_warning` read: a caller may read only these
# (``Warehouse.read_frames(columns=DEALER_COLUMNS)``); ``require`` names a missing one
DEALER_COLUMNS: dict[str, tuple[str, ...]] = {
    DEALERS: ("dealer_id", "city_tier", "onboarded_on"),
    INVENTORY: ("vin", "dealer_id", "model_year", "mileage_km", "purchase_price_fen", "appraised_value_fen",
                "acquired_at", "updated_at"),
    SALES: ("vin", "dealer_id", "sale_price_fen", "sold_at", "updated_at"),
    AUDITS: ("dealer_id", "audited_at", "vehicles_expected", "vehicles_found", "skipped", "updated_at"),
    APPLICATIONS: APPLICATION_COLUMNS + ("updated_at",),
    REPAYMENTS: ("application_id", "dealer_id", "due_on", "paid_at", "updated_at"),
}
VEHICLE_LEVEL = ("vehicle_age_years", "mileage_km", "price_to_appraisal", "ltv", "term_days", "appraised_value_cny")
DEALER_LEVEL = tuple(n for n in feature_names(DEALER_PD) if n not in VEHICLE_LEVEL)


@dataclass(frozen=True)
class Loans:
    """Every application as a loan: arrays aligned to ``ids``."""

    ids: pd.Index
    dealer: np.ndarray  # position in the dealers index (-1: unknown dealer)
    vin: np.ndarray
    applied: np.ndarray  # applied day (drawdown)
    known: np.ndarray  # first day the application is known
    due: np.ndarray
    bad_day: np.ndarray  # due + grace: bad from this day on unless repaid before it
    repaid_known: np.ndarray  # first day any repayment of the loan is known (NEVER if none)
    good_known: np.ndarray  # first day a repayment made before bad_day is known (NEVER if none)
    term: np.ndarray
    ltv: np.ndarray

    @classmethod
    def build(cls, frames: Frames, dealers: pd.Index) -> Loans:
        """The book of ``frames``; inside :func:`shared_loans`, built once per (applications
        frame, repayments frame, dealers) and shared by every builder and rule called on them."""
        built = _SHARED.get()
        if built is None:
            return cls._build(frames, dealers)
        apps, reps = frames.get(APPLICATIONS), frames.get(REPAYMENTS)
        hit = built.get(id(apps))
        if hit is not None and hit[0] is apps and hit[1] is reps and hit[2].equals(dealers):
            return hit[3]
        loans = cls._build(frames, dealers)
        built[id(apps)] = (apps, reps, dealers, loans)
        return loans

    @classmethod
    def _build(cls, frames: Frames, dealers: pd.Index) -> Loans:
        apps = require(frames, APPLICATIONS, APPLICATION_COLUMNS + ("updated_at",))
        reps = require(frames, REPAYMENTS, ("application_id", "paid_at", "updated_at"))
        applied, known = timing(apps, APPLICATIONS)
        ids = pd.Index(apps["application_id"].to_numpy())
        if ids.has_duplicates:
            raise FeatureError(f"{APPLICATIONS} holds duplicate application_id(s), e.g. "
                               f"{ids[ids.duplicated()][:3].tolist()}; the quality gate must remove them")
        term = apps["term_days"].to_numpy(dtype=np.int64)
        due = applied + term
        bad_day = due + DEALER_GRACE_DAYS
        paid, rep_known = timing(reps, REPAYMENTS)
        pos = positions(ids, reps["application_id"])
        repaid_known = first_known(pos, len(ids), rep_known)
        before_bad = (pos >= 0) & (paid < np.append(bad_day, 0)[pos])
        good_known = first_known(np.where(before_bad, pos, -1), len(ids), rep_known)
        ltv = ratio(apps["requested_fen"].to_numpy(), apps["appraised_value_fen"].to_numpy())
        return cls(ids, positions(dealers, apps["dealer_id"]), apps["vin"].to_numpy(), applied, known, due,
                   bad_day, repaid_known, good_known, term, ltv)


# inside shared_loans(): applications frame id -> (that frame, the repayments frame, dealers, Loans)
_SHARED: contextvars.ContextVar[dict[int, tuple] | None] = contextvars.ContextVar("shared_loans", default=None)


@contextlib.contextmanager
def shared_loans() -> Iterator[None]:
    """Within the block, :meth:`Loans.build` builds the book of the same frames once (the dealer
    and post-loan features and the early-warning rules of one task each build it otherwise).
    For callers whose frames are read-only inputs: a frame changed in place inside the block
    would be served the book of its earlier content."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def sales_of_loans(frames: Frames, loans: Loans) -> tuple[np.ndarray, np.ndarray]:
    """(day the sale is known, sale day) of each loan's car (NEVER where no sale row exists)."""
    sales = require(frames, SALES, ("vin", "sold_at", "updated_at"))
    sold, known = timing(sales, SALES)
    row = earliest_row(positions(loans.vin, sales["vin"]), len(loans.ids), known)
    return np.append(known, NEVER)[row], np.append(sold, NEVER)[row]


def dealer_index(frames: Frames) -> tuple[pd.Index, pd.DataFrame]:
    """The dealers (reference data) and their immutable attributes, indexed by dealer_id."""
    dealers = require(frames, DEALERS, ("dealer_id", "city_tier", "onboarded_on"))
    attrs = pd.DataFrame({"city_tier": dealers["city_tier"].to_numpy(dtype=np.float64),
                          "onboarded": day_numbers(dealers["onboarded_on"])},
                         index=pd.Index(dealers["dealer_id"].to_numpy(), name="dealer_id"))
    if attrs.index.has_duplicates:
        raise FeatureError(f"{DEALERS} holds duplicate dealer_id(s)")
    return attrs.index, attrs


class DealerPanel:
    """Dealer-level point-in-time features on every day ``day_lo .. day_hi`` (dealers × days)."""

    def __init__(self, frames: Frames, day_lo: int, day_hi: int, *, loans: Loans | None = None):
        self.index, self.attrs = dealer_index(frames)
        self.loans = loans if loans is not None else Loans.build(frames, self.index)
        g = self.grid = Grid.spanning(len(self.index), day_lo, day_hi)
        p: dict[str, np.ndarray] = {}

        # sales
        sales = require(frames, SALES, ("vin", "dealer_id", "sale_price_fen", "sold_at", "updated_at"))
        sold, sale_known = timing(sales, SALES)
        s_dealer = positions(self.index, sales["dealer_id"])
        p["sales_30d"] = g.window_sum(s_dealer, sold, sale_known, SHORT_WINDOW)
        p["sales_90d"] = g.window_sum(s_dealer, sold, sale_known, MID_WINDOW)
        sales_180d = g.window_sum(s_dealer, sold, sale_known, LONG_WINDOW)
        p["sales_known"] = g.cumulative_sum(s_dealer, sale_known)
        # the observed history: from the first known sale in the data or the dealer's onboarding
        data_start = -Grid.spanning(1, day_lo, day_hi).interval_max(
            np.zeros(len(sold)), sale_known, np.full(len(sold), NEVER), -sold.astype(np.float64))[0]
        onboarded = self.attrs["onboarded"].to_numpy()[:, None]
        days = g.day_axis()[None, :]
        history = np.clip(days - np.fmax(data_start[None, :], onboarded), 1, None)
        p["history_days"] = history
        rate_30 = p["sales_30d"] / np.minimum(history, SHORT_WINDOW)
        rate_180 = sales_180d / np.minimum(history, LONG_WINDOW)
        p["sales_trend"] = ratio(rate_30, rate_180)

        # stock: a car is on the lot from its inventory row until its sale is known
        inv = require(frames, INVENTORY, ("vin", "dealer_id", "model_year", "mileage_km", "purchase_price_fen",
                                          "appraised_value_fen", "acquired_at", "updated_at"))
        acquired, inv_known = timing(inv, INVENTORY)
        i_dealer = positions(self.index, inv["dealer_id"])
        car_of_sale = positions(inv["vin"], sales["vin"])
        gone = first_known(car_of_sale, len(inv), sale_known)
        stock = g.interval_sum(i_dealer, inv_known, gone)
        p["stock_count"] = stock
        acquired_sum = g.interval_sum(i_dealer, inv_known, gone, acquired.astype(np.float64))
        p["stock_age_mean_days"] = ratio(stock * days - acquired_sum, stock)
        old = g.interval_sum(i_dealer, np.maximum(inv_known, acquired + OLD_STOCK_DAYS + 1), gone)
        p["stock_over_60d_share"] = ratio(old, stock)
        p["turnover_90d"] = ratio(p["sales_90d"], stock)
        appraisal = ratio(inv["appraised_value_fen"].to_numpy(), inv["purchase_price_fen"].to_numpy())
        p["appraisal_ratio_90d"] = ratio(g.window_sum(i_dealer, acquired, inv_known, MID_WINDOW, appraisal),
                                         g.window_sum(i_dealer, acquired, inv_known, MID_WINDOW,
                                                      np.where(np.isnan(appraisal), np.nan, 1.0)))

        acq_year = pd.DatetimeIndex(days_to_dates(acquired)).year.to_numpy()
        bought = g.window_sum(i_dealer, acquired, inv_known, MID_WINDOW)
        p["acquired_age_mean_90d"] = ratio(g.window_sum(i_dealer, acquired, inv_known, MID_WINDOW,
                                                        acq_year - inv["model_year"].to_numpy(np.float64)), bought)
        p["acquired_mileage_mean_90d"] = ratio(g.window_sum(i_dealer, acquired, inv_known, MID_WINDOW,
                                                            inv["mileage_km"].to_numpy(np.float64)), bought)
        # a sale's price against its car's appraisal: counted once both rows are known
        appraised = np.append(inv["appraised_value_fen"].to_numpy(np.float64), np.nan)[car_of_sale]
        sale_ratio = ratio(sales["sale_price_fen"].to_numpy(), appraised)
        both = np.maximum(sale_known, np.append(inv_known, NEVER)[car_of_sale])
        p["sale_to_appraisal_90d"] = ratio(
            g.window_sum(s_dealer, sold, both, MID_WINDOW, sale_ratio),
            g.window_sum(s_dealer, sold, both, MID_WINDOW, np.where(np.isnan(sale_ratio), np.nan, 1.0)))

        # loans and repayments
        ln = self.loans
        matured_from = np.maximum(ln.bad_day, ln.known)
        matured = g.interval_sum(ln.dealer, matured_from, ln.bad_day + YEAR_WINDOW)
        bad = g.interval_sum(ln.dealer, matured_from, np.minimum(ln.bad_day + YEAR_WINDOW, ln.good_known))
        p["loans_matured_365d"] = matured
        p["bad_loan_share_365d"] = ratio(bad, matured)
        # overdue *now*: from the day after the due date until repaid, for at most
        # OVERDUE_NOW_MAX_DPD days (a loan that long unpaid is non-performing and counted in
        # bad_loan_share_365d; counting it forever made the feature grow with the book's age)
        written_off = ln.due + 1 + OVERDUE_NOW_MAX_DPD
        p["overdue_loans_now"] = g.interval_sum(ln.dealer, np.maximum(ln.known, ln.due + 1),
                                                np.minimum(ln.repaid_known, written_off))
        p["overdue_30_now"] = g.interval_sum(ln.dealer, np.maximum(ln.known, ln.bad_day),
                                             np.minimum(ln.repaid_known, written_off))
        reps = require(frames, REPAYMENTS, ("application_id", "dealer_id", "due_on", "paid_at", "updated_at"))
        paid, rep_known = timing(reps, REPAYMENTS)
        r_dealer = positions(self.index, reps["dealer_id"])
        late = (paid > day_numbers(reps["due_on"])).astype(np.float64)
        p["late_repay_share_180d"] = ratio(g.window_sum(r_dealer, paid, rep_known, LONG_WINDOW, late),
                                           g.window_sum(r_dealer, paid, rep_known, LONG_WINDOW))
        p["late_repays_known"] = g.cumulative_sum(r_dealer, rep_known, late)
        # sold out of trust: a floor-plan loan is to be repaid when its car is sold; days from the
        # sale to the repayment, for the repayments of the last 180 days whose car's sale is known
        # (counted from the day both rows are known; a car repaid before its sale counts 0 days)
        rep_loan = positions(ln.ids, reps["application_id"])
        loan_sale_known, loan_sold = sales_of_loans(frames, ln)
        sold_of_rep = np.append(loan_sold, NEVER)[rep_loan]
        has_sale = sold_of_rep < NEVER
        after_sale = np.where(has_sale, np.clip(paid - sold_of_rep, 0, None), np.nan).astype(np.float64)
        sot_known = np.maximum(rep_known, np.append(loan_sale_known, NEVER)[rep_loan])
        sot_n = g.window_sum(r_dealer, paid, sot_known, LONG_WINDOW, np.where(has_sale, 1.0, np.nan))
        p["sale_to_repay_days_180d"] = ratio(g.window_sum(r_dealer, paid, sot_known, LONG_WINDOW, after_sale),
                                             sot_n)
        p["repaid_late_after_sale_share_180d"] = ratio(
            g.window_sum(r_dealer, paid, sot_known, LONG_WINDOW,
                         np.where(has_sale, (after_sale > SOLD_OUT_OF_TRUST_DAYS).astype(np.float64), np.nan)),
            sot_n)
        # the loan terms the dealer asks for: its applications of the last 90 days
        p["applications_90d"] = g.window_sum(ln.dealer, ln.applied, ln.known, MID_WINDOW)
        p["ltv_mean_90d"] = ratio(g.window_sum(ln.dealer, ln.applied, ln.known, MID_WINDOW, ln.ltv),
                                  g.window_sum(ln.dealer, ln.applied, ln.known, MID_WINDOW,
                                               np.where(np.isnan(ln.ltv), np.nan, 1.0)))
        p["long_term_share_90d"] = ratio(
            g.window_sum(ln.dealer, ln.applied, ln.known, MID_WINDOW, (ln.term > MID_TERM_DAYS).astype(np.float64)),
            p["applications_90d"])

        # floor audits
        aud = require(frames, AUDITS, ("dealer_id", "audited_at", "vehicles_expected", "vehicles_found",
                                       "skipped", "updated_at"))
        audited, aud_known = timing(aud, AUDITS)
        a_dealer = positions(self.index, aud["dealer_id"])
        skipped = aud["skipped"].astype(bool).to_numpy()
        expected = np.where(skipped, 0.0, aud["vehicles_expected"].to_numpy(dtype=np.float64))
        missing = np.where(skipped, 0.0, expected - aud["vehicles_found"].to_numpy(dtype=np.float64))
        p["audits_180d"] = g.window_sum(a_dealer, audited, aud_known, LONG_WINDOW)
        p["audit_skips_180d"] = g.window_sum(a_dealer, audited, aud_known, LONG_WINDOW, skipped.astype(float))
        p["audit_missing_share_180d"] = ratio(g.window_sum(a_dealer, audited, aud_known, LONG_WINDOW, missing),
                                              g.window_sum(a_dealer, audited, aud_known, LONG_WINDOW, expected))
        self.panels = p

    def value(self, name: str, dealer: np.ndarray, day: np.ndarray) -> np.ndarray:
        """One panel read at (dealer position, day) pairs."""
        return self.grid.at(self.panels[name], dealer, day)

    def features(self, dealer: np.ndarray, day: np.ndarray) -> pd.DataFrame:
        """The dealer-level features (``DEALER_LEVEL``) of (dealer position, day) pairs."""
        out = {}
        for name in DEALER_LEVEL:
            if name == "tenure_days":
                onboarded = self.attrs["onboarded"].to_numpy(dtype=np.float64)
                out[name] = np.where(dealer >= 0, day - onboarded[np.clip(dealer, 0, None)], np.nan)
            elif name == "city_tier":
                tier = self.attrs["city_tier"].to_numpy(dtype=np.float64)
                out[name] = np.where(dealer >= 0, tier[np.clip(dealer, 0, None)], np.nan)
            else:
                out[name] = self.value(name, dealer, day)
        return pd.DataFrame(out)


def _vehicle_features(frames: Frames, apps: pd.DataFrame, applied: np.ndarray) -> pd.DataFrame:
    """The financed car's features: from the application row and its VIN's inventory row (the car
    is part of the application, so its inventory row is used whatever its timestamps)."""
    inv = require(frames, INVENTORY, ("vin", "model_year", "mileage_km"))
    car = positions(inv["vin"], apps["vin"])
    model_year = np.append(inv["model_year"].to_numpy(np.float64), np.nan)[car]
    mileage = np.append(inv["mileage_km"].to_numpy(np.float64), np.nan)[car]
    year = pd.DatetimeIndex(days_to_dates(applied)).year.to_numpy()
    appraised = apps["appraised_value_fen"].to_numpy(dtype=np.float64)
    return pd.DataFrame({
        "vehicle_age_years": year - model_year,
        "mileage_km": mileage,
        "price_to_appraisal": ratio(apps["purchase_price_fen"].to_numpy(), appraised),
        "ltv": ratio(apps["requested_fen"].to_numpy(), appraised),
        "term_days": apps["term_days"].to_numpy(dtype=np.float64),
        "appraised_value_cny": appraised / 100.0,
    })


def _check_applications(applications: pd.DataFrame) -> None:
    missing = [c for c in APPLICATION_COLUMNS if c not in applications.columns]
    if missing:
        raise FeatureError(f"applications miss column(s) {missing} (they have {list(applications.columns)})")
    if applications["application_id"].duplicated().any():
        raise FeatureError("applications hold duplicate application_id(s)")


def application_features(frames: Frames, applications: pd.DataFrame, *,
                         panel: DealerPanel | None = None) -> pd.DataFrame:
    """Features of loan applications, indexed by ``application_id`` (columns: ``feature_names("dealer_pd")``).

    Dealer-level features are as of each application's applied date (midnight: only data known
    before that day); the vehicle features come from the application and its VIN's inventory row.

    Needs ``dealer.dealers``, ``dealer.inventory``, ``dealer.sales``, ``dealer.floor_audits``,
    ``dealer.loan_applications`` and ``dealer.loan_repayments`` in ``frames``.

    Raises:
        FeatureError: if a table or column is missing, or application ids repeat.
    """
    _check_applications(applications)
    applied = day_numbers(applications["applied_at"])
    if panel is None:
        lo, hi = (int(applied.min()), int(applied.max())) if len(applied) else (0, 0)
        panel = DealerPanel(frames, lo, hi)
    dealer = positions(panel.index, applications["dealer_id"])
    out = pd.concat([panel.features(dealer, applied), _vehicle_features(frames, applications, applied)], axis=1)
    out.index = pd.Index(applications["application_id"].to_numpy(), name="application_id")
    return out[feature_names(DEALER_PD)]


def dealer_pd_dataset(frames: Frames, as_of: dt.date, *, start: dt.date | None = None) -> pd.DataFrame:
    """The training set of the dealer PD model as known at ``as_of``.

    One row per application known at ``as_of`` whose label window has closed
    (``applied date + term_days + DEALER_GRACE_DAYS <= as_of``) and, if ``start`` is given, applied
    on or after ``start``. Columns: application_id, dealer_id, obs_date (the applied date), the
    ``dealer_pd`` features as of obs_date, and ``label``: 1 if no repayment made before
    ``due + DEALER_GRACE_DAYS`` is known at ``as_of``, else 0. Sorted by obs_date, application_id.
    """
    d = day_of(as_of)
    apps = require(frames, APPLICATIONS, APPLICATION_COLUMNS)
    dealers, _ = dealer_index(frames)
    loans = Loans.build(frames, dealers)
    keep = (loans.known <= d) & (loans.bad_day <= d)
    if start is not None:
        keep &= loans.applied >= day_of(start)
    chosen = apps[keep]
    label = (loans.good_known[keep] > d).astype(np.int64)
    applied = loans.applied[keep]
    lo, hi = (int(applied.min()), int(applied.max())) if len(applied) else (d, d)
    panel = DealerPanel(frames, lo, hi, loans=loans)
    feats = application_features(frames, chosen, panel=panel)
    out = pd.DataFrame({"application_id": chosen["application_id"].to_numpy(),
                        "dealer_id": chosen["dealer_id"].to_numpy(),
                        "obs_date": days_to_dates(applied)})
    out = pd.concat([out, feats.reset_index(drop=True)], axis=1)
    out["label"] = label
    return out.sort_values(["obs_date", "application_id"], kind="stable").reset_index(drop=True)
