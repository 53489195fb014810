"""Post-loan early warning (贷后预警): named rules over point-in-time data, warning levels and actions.

Every rule reads only the rows known at ``as_of`` (a ``datetime.date``: midnight at the start of
that day), with the point-in-time rule of :mod:`features`: a transactional row is *known* at
``as_of`` iff its ``updated_at < as_of`` and its business time (the contract's ``event_time``)
``< as_of``. A caller that wants the business day ``B`` included passes ``as_of = B + 1 day``.
Day arithmetic is on day numbers: a row's day is the calendar day its timestamp falls on, and a
window of ``w`` days before ``as_of`` holds the days ``as_of - w .. as_of - 1``.

Dealer loans. Every loan application is a funded floor-plan loan, due on its applied date +
``term_days``, repaid once a ``loan_repayments`` row of it is known. At ``as_of`` an unrepaid loan
is ``max(as_of - due, 0)`` days past due (DPD). Its outstanding amount is ``requested_fen``.

Each rule emits at most one *signal* per borrower: the borrower's worst case, with the measured
``value``, the ``threshold`` it crossed (a value at or above it fires; for the drop rules and
``appraisal_below_outstanding`` a value below it fires) and a short ``detail`` (ids, dates and
amounts; never a name or a phone number). The rules over a borrower's loans or instalments
(``days_past_due``, ``sold_out_of_trust``, ``stock_ageing_past_term``, ``withdrawn_confirmations``,
``overdue``) measure a *share* of the borrower's book in a recent window and fire only at a
material share and a minimum count (see :class:`EarlyWarningConfig`): their ``value`` is that
share, their ``threshold`` the share it reached, and the ``detail`` names the count and the
worst loan, vehicle or instalment.

:func:`combine` turns the signals into one warning level per borrower (green < yellow < orange <
red) with the actions of :class:`EarlyWarningConfig`, and :func:`changes` lists the borrowers new
on the watchlist or escalated since the previous run.

Thresholds live in the versioned, frozen :class:`EarlyWarningConfig` (:data:`EW_CONFIG_V1`);
:data:`RULES` describes every rule with the V1 thresholds (:func:`describe_rules` for another
config). Everything is vectorised (numpy/pandas): no loop over loans, sales or instalments.
Nothing here reads a clock, the environment or a database.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.dealer import APPLICATIONS, AUDITS, INVENTORY, SALES, Loans, dealer_index
from features.frames import FeatureError, Frames, day_of, days_to_dates, require, timing
from features.panel import NEVER, day_numbers, ratio
from features.supplier import BOM, MEMOS, PAYABLES, PRODUCTION, RECEIPTS, SUB_BOM, Instalments, supplier_index
from features.supplier import REPAYMENTS as SUPPLIER_REPAYMENTS

DEALER = "dealer"
SUPPLIER = "supplier"
BORROWER_TYPES = (DEALER, SUPPLIER)

GREEN = "green"
YELLOW = "yellow"
ORANGE = "orange"
RED = "red"
LEVELS = (GREEN, YELLOW, ORANGE, RED)  # from least to most severe
_RANK = {level: i for i, level in enumerate(LEVELS)}

# rule names
DAYS_PAST_DUE = "days_past_due"
SOLD_OUT_OF_TRUST = "sold_out_of_trust"
AUDIT_SKIPS = "audit_skips"
AUDIT_MISSING_VEHICLES = "audit_missing_vehicles"
STOCK_AGEING_PAST_TERM = "stock_ageing_past_term"
SALES_VELOCITY_DROP = "sales_velocity_drop"
APPRAISAL_BELOW_OUTSTANDING = "appraisal_below_outstanding"
DUPLICATE_VIN = "duplicate_vin"
DILUTION_SPIKE = "dilution_spike"
WITHDRAWN_CONFIRMATIONS = "withdrawn_confirmations"
DELIVERY_DROP = "delivery_drop"
OVERDUE = "overdue"
OEM_PRODUCTION_DROP = "oem_production_drop"
BEHAVIOUR_SCORE = "behaviour_score"

SIGNAL_COLUMNS = ("borrower_type", "borrower_id", "rule", "level", "value", "threshold", "detail")
BORROWER_COLUMNS = ("borrower_type", "borrower_id")
SCORE_COLUMNS = ("borrower_type", "borrower_id", "score")
DUPLICATE_VIN_COLUMNS = ("vin", "dealer_id", "detected_at")
WATCHLIST_COLUMNS = ("borrower_type", "borrower_id", "level", "rules", "frozen", "limit_cut", "site_visit",
                     "actions")
CHANGE_COLUMNS = WATCHLIST_COLUMNS + ("previous_level", "change")
NEW = "new"
ESCALATED = "escalated"

LOAN_DPD_COLUMNS = ("application_id", "dealer_id", "outstanding_fen", "due_on", "dpd", "bucket")
DPD_BUCKETS = ("current", "1-29", "30-59", "60-89", "90+")
_BUCKET_FLOORS = np.array([0, 1, 30, 60, 90], dtype=np.int64)  # the smallest DPD of each bucket
REPAID = "repaid"
WITHDRAWN = "withdrawn"


class EarlyWarningError(ValueError):
    """A config or an input of the early-warning rules is invalid; the message says what was
    expected and what was got."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelActions:
    """What the bank does with a borrower at ``level``.

    ``limit_cut`` multiplies the borrower's limit (1.0: no cut, 0.0: no limit left); ``frozen``
    stops new drawdowns; ``site_visit`` sends a credit officer; ``watch`` puts it on the watchlist.
    """

    level: str
    watch: bool = False
    site_visit: bool = False
    limit_cut: float = 1.0
    frozen: bool = False

    def describe(self) -> str:
        """The actions in words, most severe first (``"none"`` for no action)."""
        words = []
        if self.frozen:
            words.append("freeze new drawdowns")
        if self.limit_cut < 1.0:
            words.append(f"cut limit to x{self.limit_cut:g}")
        if self.site_visit:
            words.append("site visit")
        if self.watch:
            words.append("watch")
        return "; ".join(words) or "none"


DEFAULT_ACTIONS = (
    LevelActions(GREEN),
    LevelActions(YELLOW, watch=True),
    LevelActions(ORANGE, watch=True, site_visit=True, limit_cut=0.5),
    LevelActions(RED, watch=True, site_visit=True, limit_cut=0.0, frozen=True),
)

# integer field -> its smallest allowed value
_INT_FIELDS: dict[str, int] = {
    "recent_window_days": 1, "baseline_window_days": 1,
    "dpd_yellow_days": 1, "dpd_orange_days": 1, "dpd_red_days": 1, "dpd_lookback_days": 1, "dpd_min_loans": 1,
    "sold_out_of_trust_days": 0, "sold_out_of_trust_window_days": 1, "sold_out_of_trust_min": 1,
    "audit_window_days": 1, "audit_skips_min": 1, "stock_age_over_term_days": 0, "stock_ageing_min_vehicles": 1,
    "duplicate_vin_window_days": 1,
    "withdrawn_min": 1, "overdue_orange_days": 1, "overdue_red_days": 1, "overdue_lookback_days": 1,
    "overdue_min_instalments": 1, "orange_to_red_count": 2,
}
# number field -> (low, high, low allowed, what is expected): a finite number in (low, high] or [low, high]
_FLOAT_FIELDS: dict[str, tuple[float, float, bool, str]] = {
    "dpd_yellow_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "dpd_orange_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "dpd_red_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "sold_out_of_trust_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "audit_missing_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "stock_ageing_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "withdrawn_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "overdue_share": (0.0, 1.0, False, "a share in (0, 1]"),
    "velocity_drop_ratio": (0.0, 1.0, False, "a ratio in (0, 1]"),
    "velocity_min_baseline": (0.0, math.inf, False, "a number of sales > 0"),
    "appraisal_cover_ratio": (0.0, math.inf, False, "a ratio > 0"),
    "dilution_spike_factor": (1.0, math.inf, True, "a factor >= 1"),
    "dilution_spike_floor": (0.0, 1.0, False, "a ratio in (0, 1]"),
    "delivery_drop_ratio": (0.0, 1.0, False, "a ratio in (0, 1]"),
    "oem_drop_ratio": (0.0, 1.0, False, "a ratio in (0, 1]"),
    "score_yellow": (0.0, 1.0, False, "a score in (0, 1]"),
    "score_orange": (0.0, 1.0, False, "a score in (0, 1]"),
}


def _fail(name: str, expected: str, got: Any) -> EarlyWarningError:
    return EarlyWarningError(f"EarlyWarningConfig.{name}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class EarlyWarningConfig:
    """The versioned thresholds of the early-warning rules and the actions of each level.

    Windows: ``recent_window_days`` is the "last 30 days" of the velocity, dilution, withdrawal,
    delivery and OEM rules; ``baseline_window_days`` the "previous 180 days" before it that a
    recent value is compared with (as an average per recent window).

    Materiality. A bank's floor-plan book always holds a few bad loans: a dealer with hundreds
    of loans has a defaulted one somewhere, a slow payoff after a sale, an unsold car past its
    term; a supplier with hundreds of instalments has one paid late. So the loan-level rules
    fire on a borrower only when the problem is *material* and *recent*, with an absolute and
    a relative threshold (as the EBA's materiality thresholds of past-due exposures):

    - ``days_past_due``: over the loans due in the last ``dpd_lookback_days`` (an older unpaid
      loan is written off or in collections, no longer an early warning), the share of the
      dealer's outstanding amount at ``dpd_red_days``+ DPD reaching ``dpd_red_share`` is red
      (``dpd_orange_*``: orange, ``dpd_yellow_*``: yellow), each with at least
      ``dpd_min_loans`` loans in that bucket or worse;
    - ``sold_out_of_trust``: of the financed vehicles sold in the last
      ``sold_out_of_trust_window_days`` more than ``sold_out_of_trust_days`` days ago, at least
      ``sold_out_of_trust_min`` and a share ``sold_out_of_trust_share`` still unpaid;
    - ``stock_ageing_past_term``: at least ``stock_ageing_min_vehicles`` and a share
      ``stock_ageing_share`` of the dealer's financed vehicles in stock are past their term;
    - ``duplicate_vin``: a quarantined duplicate counts for ``duplicate_vin_window_days`` after
      its detection; a VIN in two applications only while the earlier loan is unpaid;
    - ``withdrawn_confirmations``: ``withdrawn_min`` and a share ``withdrawn_share`` of the
      payables of the recent window;
    - ``overdue``: of the instalments due in the last ``overdue_lookback_days`` that reached
      ``overdue_orange_days`` (``overdue_red_days``) past due, at least
      ``overdue_min_instalments`` and a share ``overdue_share`` unpaid.

    The V1 values are calibrated on the simulator (``small`` and ``demo`` scales, two seeds each,
    fault-free, as-of dates 200-240 business days in). Dealers, demo scale: 74 % green, 15 %
    yellow, 8 % orange, 4 % red, with a mean true PD of 3.6 %, 10 %, 12 % and 21 % (Spearman of
    the level and the true PD 0.6). Suppliers: the red ones are those that stopped paying (all of
    them defaulted in the simulator).

    Raises:
        EarlyWarningError: if a field has the wrong type, is out of range, or thresholds that
            must increase do not (``dpd_*_days``, ``overdue_*_days``, ``score_*``; a lookback or
            window must reach past the days it looks for: ``dpd_lookback_days >= dpd_red_days``,
            ``overdue_lookback_days >= overdue_red_days``, ``sold_out_of_trust_window_days >
            sold_out_of_trust_days``), or ``actions`` is not one :class:`LevelActions` per level,
            in order, never milder as the level rises.
    """

    version: str
    recent_window_days: int = 30
    baseline_window_days: int = 180
    # dealers
    dpd_yellow_days: int = 1
    dpd_orange_days: int = 30
    dpd_red_days: int = 60
    dpd_lookback_days: int = 120  # loans due in the last 120 days (DPD <= 120)
    dpd_min_loans: int = 2  # loans in the bucket or worse
    dpd_yellow_share: float = 0.22  # of the outstanding amount at 1+ DPD
    dpd_orange_share: float = 0.22  # ... at 30+ DPD
    dpd_red_share: float = 0.20  # ... at 60+ DPD
    sold_out_of_trust_days: int = 5
    sold_out_of_trust_window_days: int = 30
    sold_out_of_trust_min: int = 2  # vehicles
    sold_out_of_trust_share: float = 0.50  # of the financed vehicles sold in the window
    audit_window_days: int = 90
    audit_skips_min: int = 2
    audit_missing_share: float = 0.05
    stock_age_over_term_days: int = 0
    stock_ageing_min_vehicles: int = 3
    stock_ageing_share: float = 0.03  # of the dealer's financed vehicles in stock
    velocity_drop_ratio: float = 0.5
    velocity_min_baseline: float = 3.0  # sales per recent window
    appraisal_cover_ratio: float = 1.0  # fire when appraisal < ratio x outstanding
    duplicate_vin_window_days: int = 30
    # suppliers
    dilution_spike_factor: float = 2.0
    dilution_spike_floor: float = 0.05
    withdrawn_min: int = 2
    withdrawn_share: float = 0.02  # of the payables of the recent window
    delivery_drop_ratio: float = 0.7
    overdue_orange_days: int = 30
    overdue_red_days: int = 60
    overdue_lookback_days: int = 120  # instalments due in the last 120 days
    overdue_min_instalments: int = 2
    overdue_share: float = 0.10  # of the instalments that reached the DPD in the lookback
    oem_drop_ratio: float = 0.6
    # behaviour score
    # on the PD scale of the behaviour model: calibrated on the simulator, where the performing
    # book's exposure-weighted PD averages 0.16-0.23, so yellow is roughly the riskiest 15 % of
    # dealers and orange the riskiest 5 %
    score_yellow: float = 0.25
    score_orange: float = 0.35
    # levels and actions
    orange_to_red_count: int = 2
    actions: tuple[LevelActions, ...] = field(default=DEFAULT_ACTIONS)

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version.strip():
            raise _fail("version", "a non-empty string", self.version)
        for name, minimum in _INT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
                raise _fail(name, f"an integer >= {minimum}", value)
        for name, (low, high, closed, expected) in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float | np.number)
                    or not math.isfinite(value) or not value <= high or not (value >= low if closed else value > low)):
                raise _fail(name, expected, value)
        for low, high in (("dpd_yellow_days", "dpd_orange_days"), ("dpd_orange_days", "dpd_red_days"),
                          ("overdue_orange_days", "overdue_red_days"), ("score_yellow", "score_orange"),
                          ("sold_out_of_trust_days", "sold_out_of_trust_window_days")):
            if not getattr(self, low) < getattr(self, high):
                raise _fail(high, f"a value > {low} ({getattr(self, low)!r})", getattr(self, high))
        for low, high in (("dpd_red_days", "dpd_lookback_days"), ("overdue_red_days", "overdue_lookback_days")):
            if not getattr(self, low) <= getattr(self, high):
                raise _fail(high, f"a value >= {low} ({getattr(self, low)!r})", getattr(self, high))
        self._check_actions()

    def _check_actions(self) -> None:
        acts = self.actions
        if (not isinstance(acts, tuple) or len(acts) != len(LEVELS)
                or not all(isinstance(a, LevelActions) for a in acts)):
            raise _fail("actions", f"a tuple of {len(LEVELS)} LevelActions, one per level {LEVELS}", acts)
        levels = tuple(a.level for a in acts)
        if levels != LEVELS:
            raise _fail("actions", f"levels in the order {LEVELS}", levels)
        for a in acts:
            cut = a.limit_cut
            if isinstance(cut, bool) or not isinstance(cut, int | float) or not 0.0 <= cut <= 1.0:
                raise _fail("actions", f"limit_cut in [0, 1] for level {a.level!r}", cut)
            for flag in ("watch", "site_visit", "frozen"):
                if not isinstance(getattr(a, flag), bool):
                    raise _fail("actions", f"a bool {flag} for level {a.level!r}", getattr(a, flag))
        for milder, worse in zip(acts, acts[1:]):
            if (worse.limit_cut > milder.limit_cut or worse.frozen < milder.frozen
                    or worse.site_visit < milder.site_visit or worse.watch < milder.watch):
                raise _fail("actions", f"actions of {worse.level!r} at least as severe as those of "
                                       f"{milder.level!r} ({milder})", worse)

    def action(self, level: str) -> LevelActions:
        """The actions of ``level``."""
        if level not in _RANK:
            raise EarlyWarningError(f"a warning level must be one of {LEVELS}, got {level!r}")
        return self.actions[_RANK[level]]


EW_CONFIG_V1 = EarlyWarningConfig(version="ew-v1")


@dataclass(frozen=True)
class Rule:
    """One early-warning rule: who it watches (``dealer``, ``supplier`` or ``dealer|supplier``), what
    it checks and the most severe level it emits."""

    name: str
    borrower_type: str
    description: str
    level: str


def describe_rules(cfg: EarlyWarningConfig = EW_CONFIG_V1) -> tuple[Rule, ...]:
    """Every rule, described with the thresholds of ``cfg`` (for the README and the digest e-mail)."""
    c = cfg
    r, b = c.recent_window_days, c.baseline_window_days
    margin = f" + {c.stock_age_over_term_days} days" if c.stock_age_over_term_days else ""
    cover = "" if c.appraisal_cover_ratio == 1.0 else f"{c.appraisal_cover_ratio:g} x "
    return (
        Rule(DAYS_PAST_DUE, DEALER, "Of the dealer's outstanding (unpaid loans not yet due or due in the last "
             f"{c.dpd_lookback_days} days), {c.dpd_yellow_share:.0%}+ is {c.dpd_yellow_days}+ days past due "
             f"(yellow), {c.dpd_orange_share:.0%}+ is {c.dpd_orange_days}+ (orange) or {c.dpd_red_share:.0%}+ is "
             f"{c.dpd_red_days}+ (red), in {c.dpd_min_loans}+ loans.", RED),
        Rule(SOLD_OUT_OF_TRUST, DEALER, f"Of the financed vehicles sold in the last {c.sold_out_of_trust_window_days}"
             f" days, {c.sold_out_of_trust_min}+ and {c.sold_out_of_trust_share:.0%}+ are still unpaid more than "
             f"{c.sold_out_of_trust_days} days after the sale (sold out of trust).", RED),
        Rule(AUDIT_SKIPS, DEALER, f"The dealer skipped {c.audit_skips_min}+ floor audits in the last "
             f"{c.audit_window_days} days.", ORANGE),
        Rule(AUDIT_MISSING_VEHICLES, DEALER, "Vehicles missing at the completed floor audits of the last "
             f"{c.audit_window_days} days are {c.audit_missing_share:.0%}+ of the vehicles expected.", ORANGE),
        Rule(STOCK_AGEING_PAST_TERM, DEALER, f"{c.stock_ageing_min_vehicles}+ and {c.stock_ageing_share:.0%}+ of "
             "the dealer's financed vehicles in stock (unsold, loan unpaid) have been in stock longer than their "
             f"loan term{margin}.", YELLOW),
        Rule(SALES_VELOCITY_DROP, DEALER, f"Sales of the last {r} days fell below {c.velocity_drop_ratio:g} x "
             f"the dealer's average per {r} days over the previous {b} days (if that average is "
             f"{c.velocity_min_baseline:g}+).", YELLOW),
        Rule(APPRAISAL_BELOW_OUTSTANDING, DEALER, "The latest known appraisal of a financed vehicle is below "
             f"{cover}its unpaid loan.", ORANGE),
        Rule(DUPLICATE_VIN, DEALER, "A VIN of the dealer was quarantined as a duplicate in the last "
             f"{c.duplicate_vin_window_days} days, or is in a later loan application while its earlier loan is "
             "still unpaid (financed twice).", RED),
        Rule(DILUTION_SPIKE, SUPPLIER, f"Credit memos / payables of the last {r} days reached "
             f"{c.dilution_spike_factor:g} x the ratio of the previous {b} days (and at least "
             f"{c.dilution_spike_floor:.0%}).", ORANGE),
        Rule(WITHDRAWN_CONFIRMATIONS, SUPPLIER, f"The OEM withdrew {c.withdrawn_min}+ payable confirmations, "
             f"{c.withdrawn_share:.0%}+ of the supplier's payables, in the last {r} days.", ORANGE),
        Rule(DELIVERY_DROP, SUPPLIER, f"A tier-1 supplier delivered less than {c.delivery_drop_ratio:.0%} of the "
             f"parts the OEM's production of the last {r} days consumed.", YELLOW),
        Rule(OVERDUE, SUPPLIER, f"Of the instalments due in the last {c.overdue_lookback_days} days that reached "
             f"{c.overdue_orange_days} days past due, {c.overdue_min_instalments}+ and {c.overdue_share:.0%}+ are "
             f"unpaid (orange; at {c.overdue_red_days} days past due: red).", RED),
        Rule(OEM_PRODUCTION_DROP, SUPPLIER, f"The OEM built less than {c.oem_drop_ratio:g} x its average per {r} "
             f"days of the previous {b} days: stress for every supplier.", YELLOW),
        Rule(BEHAVIOUR_SCORE, "dealer|supplier", f"The post-loan behaviour score (PD) is {c.score_yellow:g}+ "
             f"(yellow) or {c.score_orange:g}+ (orange).", ORANGE),
    )


RULES: tuple[Rule, ...] = describe_rules(EW_CONFIG_V1)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _as_of_day(as_of: dt.date, name: str = "as_of") -> int:
    try:
        return day_of(as_of)
    except FeatureError:
        raise EarlyWarningError(f"{name} must be a datetime.date (midnight starting the day), "
                                f"got {as_of!r}") from None


def _check_config(cfg: EarlyWarningConfig) -> None:
    if not isinstance(cfg, EarlyWarningConfig):
        raise EarlyWarningError(f"cfg must be an EarlyWarningConfig, got {type(cfg).__name__}")


def _check_columns(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise EarlyWarningError(f"{name} must be a DataFrame with columns {list(columns)}, "
                                f"got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EarlyWarningError(f"{name} must have columns {list(columns)}; it misses {missing} "
                                f"(it has {list(frame.columns)})")


def _objects(values) -> np.ndarray:
    if isinstance(values, pd.Series | pd.Index):
        return values.to_numpy(dtype=object)
    return np.asarray(values, dtype=object)


def _dates(days: np.ndarray) -> np.ndarray:
    """Day numbers as ISO date strings."""
    return np.asarray(days, dtype=np.int64).astype("datetime64[D]").astype(str).astype(object)


def _stamps(values: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds (for ordering versions of a row)."""
    return pd.to_datetime(values).to_numpy().astype("datetime64[ns]").astype(np.int64)


def _cny(fen: np.ndarray) -> np.ndarray:
    return np.array([f"{v / 100:,.0f} CNY" for v in np.asarray(fen, dtype=np.float64)], dtype=object)


def _pct(values: np.ndarray) -> np.ndarray:
    return np.array([f"{v:.1%}" for v in values], dtype=object)


def _text(*parts) -> np.ndarray:
    """Element-wise concatenation of strings and arrays (the detail column)."""
    out = None
    for p in parts:
        p = p if isinstance(p, str) else np.asarray(p).astype(str).astype(object)
        out = p if out is None else out + p
    return np.asarray(out, dtype=object)


def _key_codes(*columns) -> tuple[list[np.ndarray], int]:
    """One factorisation of the keys of several columns: (an int64 code per value of each column,
    the number of distinct keys). Equal keys get equal codes across the columns; a missing key -1.

    String keys are hashed once, by Arrow when every column holds strings (the warehouse reader's
    Arrow-backed ``str`` columns, or objects that pandas infers as strings): several times faster
    than hashing Python strings. Other columns are compared as objects, as ``pd.factorize`` does.
    """
    parts = [pd.Series(c.array if isinstance(c, pd.Series | pd.Index) else c, copy=False) for c in columns]
    codes, uniques = pd.factorize(pd.concat(parts, ignore_index=True))
    return np.split(codes.astype(np.int64), np.cumsum([len(c) for c in parts])[:-1]), len(uniques)


def _positions(index: pd.Index, ids) -> np.ndarray:
    """Positions of ``ids`` in ``index`` (unique keys), -1 for an id not in it; the same as
    :func:`features.frames.positions`, keys hashed by :func:`_key_codes`."""
    (keys, values), n = _key_codes(index, ids)
    lookup = np.full(n + 1, -1, dtype=np.int64)
    lookup[keys] = np.arange(len(keys))
    return lookup[values]  # a missing id has code -1: the extra last slot (as features.frames.positions)


def _row_per_key(keys: pd.Series, order: np.ndarray, mask: np.ndarray, query, *,
                 last: bool) -> tuple[np.ndarray, np.ndarray]:
    """For each ``query`` key, the row (index into ``keys``) among the ``mask`` rows with that key
    whose ``order`` is smallest (``last=False``) or largest (``last=True``), -1 where none; and a
    code per query key (:func:`_key_codes`: equal keys, equal codes)."""
    rows = np.flatnonzero(mask)
    q = query if isinstance(query, pd.Series) else _objects(query)
    if not len(rows) or not len(q):
        (c_query,), _ = _key_codes(q)
        return np.full(len(q), -1, dtype=np.int64), c_query
    (c_rows, c_query), n = _key_codes(keys.iloc[rows], q)
    o = np.asarray(order, dtype=np.int64)[rows]
    srt = np.lexsort((-o if last else o, c_rows))  # stable: ties keep the earlier row
    c_sorted = c_rows[srt]
    head = np.ones(len(srt), dtype=bool)
    head[1:] = c_sorted[1:] != c_sorted[:-1]
    best = np.full(n + 1, -1, dtype=np.int64)  # the extra last slot answers code -1
    best[c_sorted[head]] = rows[srt][head]
    return best[c_query], c_query


def _window(event_day: np.ndarray, known: np.ndarray, d: int, back_from: int, back_to: int = 0) -> np.ndarray:
    """Rows known at ``d`` whose event day is in ``[d - back_from, d - back_to)``."""
    return (known <= d) & (event_day >= d - back_from) & (event_day < d - back_to)


def _empty_signals() -> pd.DataFrame:
    """No signal, with the dtypes of a non-empty signal frame (pandas' default string dtype)."""
    text = pd.Series(["x"]).dtype
    return pd.DataFrame({c: pd.Series(dtype=np.float64 if c in ("value", "threshold") else text)
                         for c in SIGNAL_COLUMNS})


def _signals(borrower_type: str, ids, rule: str, level, value, threshold, detail) -> pd.DataFrame:
    ids = _objects(ids)
    n = len(ids)
    if not n:
        return _empty_signals()
    return pd.DataFrame({
        "borrower_type": np.full(n, borrower_type, dtype=object),
        "borrower_id": ids,
        "rule": np.full(n, rule, dtype=object),
        "level": np.broadcast_to(np.asarray(level, dtype=object), (n,)).copy(),
        "value": np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy(),
        "threshold": np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,)).copy(),
        "detail": np.broadcast_to(np.asarray(detail, dtype=object), (n,)).copy(),
    })


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_signals()
    out = pd.concat(parts, ignore_index=True)
    return out.sort_values(["borrower_type", "borrower_id", "rule"], kind="stable").reset_index(drop=True)


def _worst(table: pd.DataFrame, key: str, by: list[str], ascending: list[bool]) -> pd.DataFrame:
    """The first row per ``key`` when sorted by ``by`` (the worst case), with ``n``: the key's rows."""
    table = table.sort_values([key, *by], ascending=[True, *ascending], kind="stable")
    first = table.drop_duplicates(key).copy()
    first["n"] = table.groupby(key, sort=False).size().reindex(first[key]).to_numpy()
    return first.reset_index(drop=True)


def _level_by_floors(value: np.ndarray, floors: tuple[float, ...], levels: tuple[str, ...]) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """(level, the floor reached) of values at or above ``floors[0]``; floors increase."""
    i = np.searchsorted(np.asarray(floors, dtype=np.float64), np.asarray(value, dtype=np.float64),
                        side="right") - 1
    return np.asarray(levels, dtype=object)[i], np.asarray(floors, dtype=np.float64)[i]


# --------------------------------------------------------------------------------------------
# Dealer loans
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Book:
    """Every application as a loan (:class:`features.dealer.Loans`) with its amounts."""

    loans: Loans
    dealer_ids: pd.Series  # the application's dealer_id (as in the frame)
    vins: pd.Series  # the application's vin (as in the frame)
    requested: np.ndarray
    appraised: np.ndarray  # the appraisal on the application
    app_stamp: np.ndarray  # the application's updated_at (ns)

    @classmethod
    def build(cls, frames: Frames) -> _Book:
        dealers, _ = dealer_index(frames)
        loans = Loans.build(frames, dealers)
        apps = require(frames, APPLICATIONS, ("dealer_id", "vin", "requested_fen", "appraised_value_fen",
                                              "updated_at"))
        return cls(loans, apps["dealer_id"].reset_index(drop=True), apps["vin"].reset_index(drop=True),
                   apps["requested_fen"].to_numpy(dtype=np.float64),
                   apps["appraised_value_fen"].to_numpy(dtype=np.float64), _stamps(apps["updated_at"]))

    def live(self, d: int) -> np.ndarray:
        """Loans known and not repaid at ``d``."""
        return (self.loans.known <= d) & (self.loans.repaid_known > d)

    def dpd(self, d: int) -> np.ndarray:
        return np.maximum(d - self.loans.due, 0)

    def dealer_id(self, rows: np.ndarray) -> np.ndarray:
        return self.dealer_ids.take(rows).to_numpy(dtype=object)

    def application_id(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.loans.ids[rows], dtype=object)


def _bucket_index(dpd: np.ndarray) -> np.ndarray:
    return np.searchsorted(_BUCKET_FLOORS, dpd, side="right") - 1


def _loan_dpd(book: _Book, d: int) -> pd.DataFrame:
    live = np.flatnonzero(book.live(d))
    dpd = book.dpd(d)[live]
    return pd.DataFrame({
        "application_id": book.application_id(live),
        "dealer_id": book.dealer_id(live),
        "outstanding_fen": book.requested[live].astype(np.int64),
        "due_on": days_to_dates(book.loans.due[live]),
        "dpd": dpd.astype(np.int64),
        "bucket": np.asarray(DPD_BUCKETS, dtype=object)[_bucket_index(dpd)],
    })


def loan_dpd(frames: Frames, as_of: dt.date) -> pd.DataFrame:
    """Every dealer loan known and not repaid at ``as_of``, with its days past due.

    Columns: application_id, dealer_id, outstanding_fen (the requested amount), due_on
    (datetime64, midnight), dpd (``max(as_of - due_on, 0)`` in days), bucket (one of
    :data:`DPD_BUCKETS`: ``current`` (0), ``1-29``, ``30-59``, ``60-89``, ``90+``). Rows are in the
    order of ``dealer.loan_applications``.

    Raises:
        EarlyWarningError: if ``as_of`` is not a date.
        FeatureError: if a table or column is missing or application ids repeat.
    """
    return _loan_dpd(_Book.build(frames), _as_of_day(as_of))


def roll_rates(frames: Frames, as_of: dt.date, *, prior: dt.date) -> pd.DataFrame:
    """Where the loans unpaid at ``prior`` stand at ``as_of``: bucket-to-bucket transition shares.

    The loans are those of :func:`loan_dpd` at ``prior`` (as known then), in their bucket at
    ``prior``; at ``as_of`` each is ``repaid`` (a repayment known at ``as_of``) or in its bucket
    then. Rows: the ``from`` buckets holding at least one loan, in :data:`DPD_BUCKETS` order;
    columns: :data:`DPD_BUCKETS` and ``repaid``. Every row sums to 1.

    Raises:
        EarlyWarningError: if the dates are not dates or ``prior`` is not before ``as_of``.
    """
    d, p = _as_of_day(as_of), _as_of_day(prior, "prior")
    if not p < d:
        raise EarlyWarningError(f"prior must be before as_of, got prior={prior} and as_of={as_of}")
    book = _Book.build(frames)
    was = np.flatnonzero(book.live(p))
    src = _bucket_index(book.dpd(p)[was])
    dst = np.where(book.loans.repaid_known[was] <= d, len(DPD_BUCKETS), _bucket_index(book.dpd(d)[was]))
    width = len(DPD_BUCKETS) + 1
    counts = np.bincount(src * width + dst, minlength=len(DPD_BUCKETS) * width).reshape(len(DPD_BUCKETS), width)
    total = counts.sum(axis=1)
    keep = total > 0
    shares = counts[keep] / total[keep, None]
    return pd.DataFrame(shares, index=pd.Index(np.asarray(DPD_BUCKETS, dtype=object)[keep], name="from_bucket"),
                        columns=pd.Index([*DPD_BUCKETS, REPAID], name="to_bucket"))


# --------------------------------------------------------------------------------------------
# Dealer rules
# --------------------------------------------------------------------------------------------


def _sale_days(frames: Frames, vins: pd.Series, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(the day of the first sale known at ``d`` of each VIN (NEVER: no sale known), a code per
    VIN: equal VINs get equal codes, a missing one -1)."""
    sales = require(frames, SALES, ("vin", "sold_at", "updated_at"))
    sold, sale_known = timing(sales, SALES)
    s_row, codes = _row_per_key(sales["vin"], sold, sale_known <= d, vins, last=False)
    return np.append(sold, NEVER)[s_row], codes


@dataclass(frozen=True)
class _LiveLoans:
    """The loans known and unpaid at ``d``, with their vehicle's sale and inventory row as known."""

    idx: np.ndarray  # positions in the book
    dealer_id: np.ndarray
    app_id: np.ndarray
    vin: np.ndarray
    dpd: np.ndarray
    due: np.ndarray
    term: np.ndarray
    requested: np.ndarray
    sold: np.ndarray  # sale day of the car (NEVER: no sale known)
    acquired: np.ndarray  # acquisition day from its known inventory row (NEVER: none known)
    appraisal: np.ndarray  # latest known appraisal (fen)

    @classmethod
    def build(cls, frames: Frames, book: _Book, d: int, sold: np.ndarray) -> _LiveLoans:
        """``sold``: the sale day of every loan of the book (:func:`_sale_days`)."""
        idx = np.flatnonzero(book.live(d))
        vin = _objects(book.loans.vin)[idx]
        inv = require(frames, INVENTORY, ("vin", "appraised_value_fen", "acquired_at", "updated_at"))
        acquired, inv_known = timing(inv, INVENTORY)
        inv_stamp = _stamps(inv["updated_at"])
        i_row, _ = _row_per_key(inv["vin"], inv_stamp, inv_known <= d, vin, last=True)
        has_inv = i_row >= 0
        inv_appraisal = np.append(inv["appraised_value_fen"].to_numpy(dtype=np.float64), np.nan)[i_row]
        newer = has_inv & (np.append(inv_stamp, 0)[i_row] >= book.app_stamp[idx])
        return cls(idx, book.dealer_id(idx), book.application_id(idx), vin, book.dpd(d)[idx],
                   book.loans.due[idx], book.loans.term[idx], book.requested[idx], sold[idx],
                   np.append(acquired, NEVER)[i_row], np.where(newer, inv_appraisal, book.appraised[idx]))


def _per(codes: np.ndarray, n: int, mask: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ ``weights`` (or the count) of the ``mask`` rows per code ``0 .. n-1`` (code -1: no key, left out)."""
    keep = codes >= 0 if mask is None else mask & (codes >= 0)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    return np.bincount(codes[keep], weights=w, minlength=n).astype(np.float64 if w is not None else np.int64)


def _factorize(ids: np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, sorted distinct ids) of borrower ids (code -1 for a missing id). A Series is
    factorised as it is (an Arrow-backed one without making Python strings)."""
    codes, uniques = pd.factorize(ids if isinstance(ids, pd.Series) else _objects(ids), sort=True)
    return codes.astype(np.int64), _objects(uniques)


def _worst_per(codes: np.ndarray, n: int, mask: np.ndarray, table: dict[str, np.ndarray], by: list[str],
               ascending: list[bool]) -> pd.DataFrame:
    """The worst ``mask`` row per code (first when sorted by ``by``), reindexed to ``0 .. n-1``."""
    t = pd.DataFrame({"code": codes, **table})[mask & (codes >= 0)]
    return _worst(t, "code", by, ascending).set_index("code").reindex(np.arange(n))


def _days_past_due(live: _LiveLoans, cfg: EarlyWarningConfig) -> pd.DataFrame:
    """Share of the dealer's outstanding past due, over the loans due in the lookback (or not yet due)."""
    scope = live.dpd <= cfg.dpd_lookback_days
    codes, dealers = _factorize(live.dealer_id[scope])
    n = len(dealers)
    amount, dpd = live.requested[scope], live.dpd[scope]
    outstanding = _per(codes, n, weights=amount)
    rank = np.full(n, -1, dtype=np.int64)
    share = np.full(n, np.nan)
    count = np.zeros(n, dtype=np.int64)
    steps = ((YELLOW, cfg.dpd_yellow_days, cfg.dpd_yellow_share), (ORANGE, cfg.dpd_orange_days, cfg.dpd_orange_share),
             (RED, cfg.dpd_red_days, cfg.dpd_red_share))
    for i, (_, days, min_share) in enumerate(steps):  # three buckets, each vectorised over the dealers
        past = dpd >= days
        k = _per(codes, n, past)
        s_k = ratio(_per(codes, n, past, amount), outstanding)
        fire = (k >= cfg.dpd_min_loans) & (np.nan_to_num(s_k, nan=-1.0) >= min_share)
        rank[fire], share[fire], count[fire] = i, s_k[fire], k[fire]
    hit = rank >= 0
    worst = _worst_per(codes, n, dpd >= cfg.dpd_yellow_days,
                       {"dpd": dpd, "app": live.app_id[scope], "due": live.due[scope]}, ["dpd", "app"],
                       [False, True])[hit]
    level = np.asarray([s[0] for s in steps], dtype=object)[rank[hit]]
    floor_days = np.asarray([s[1] for s in steps], dtype=np.int64)[rank[hit]]
    floor_share = np.asarray([s[2] for s in steps], dtype=np.float64)[rank[hit]]
    detail = _text(count[hit], " loan(s) ", floor_days, "+ d past due = ", _pct(share[hit]), " of the ",
                   _cny(outstanding[hit]), " outstanding (loans not yet due or due in the last "
                   f"{cfg.dpd_lookback_days} d); worst loan ", worst["app"], ": due ", _dates(worst["due"]), ", ",
                   worst["dpd"].astype(np.int64), " d past due")
    return _signals(DEALER, dealers[hit], DAYS_PAST_DUE, level, share[hit], floor_share, detail)


def _sold_out_of_trust(book: _Book, sold: np.ndarray, d: int, cfg: EarlyWarningConfig) -> pd.DataFrame:
    """Of the financed vehicles sold in the window more than ``sold_out_of_trust_days`` ago, those unpaid."""
    n_days, window = cfg.sold_out_of_trust_days, cfg.sold_out_of_trust_window_days
    has_sale = sold != NEVER
    since = np.where(has_sale, d - np.where(has_sale, sold, 0), -1)
    judged = ((book.loans.known <= d) & has_sale & (book.loans.applied <= sold) & (since > n_days)
              & (since <= window))
    unpaid = judged & (book.loans.repaid_known > d)
    codes, dealers = _factorize(book.dealer_ids)
    n = len(dealers)
    sales, count = _per(codes, n, judged), _per(codes, n, unpaid)
    share = ratio(count, sales)
    hit = (count >= cfg.sold_out_of_trust_min) & (np.nan_to_num(share, nan=-1.0) >= cfg.sold_out_of_trust_share)
    worst = _worst_per(codes, n, unpaid, {"days": since, "vin": _objects(book.loans.vin), "sold": sold},
                       ["days", "vin"], [False, True])[hit]
    detail = _text(count[hit], " of ", sales[hit], f" financed vehicles sold {n_days + 1}-{window} d ago unpaid "
                   f"more than {n_days} d after the sale; worst VIN ", worst["vin"], ": sold ", _dates(worst["sold"]),
                   ", unpaid ", worst["days"].astype(np.int64), " d")
    return _signals(DEALER, dealers[hit], SOLD_OUT_OF_TRUST, RED, share[hit], cfg.sold_out_of_trust_share, detail)


def _stock_ageing(live: _LiveLoans, d: int, cfg: EarlyWarningConfig) -> pd.DataFrame:
    """Financed vehicles (loan unpaid) in stock longer than their term, as a share of those in stock."""
    on_lot = (live.sold == NEVER) & (live.acquired != NEVER)
    age = np.where(on_lot, d - np.where(on_lot, live.acquired, 0), -1)
    limit = live.term + cfg.stock_age_over_term_days
    aged = on_lot & (age > limit)
    codes, dealers = _factorize(live.dealer_id)
    n = len(dealers)
    stock, count = _per(codes, n, on_lot), _per(codes, n, aged)
    share = ratio(count, stock)
    hit = (count >= cfg.stock_ageing_min_vehicles) & (np.nan_to_num(share, nan=-1.0) >= cfg.stock_ageing_share)
    worst = _worst_per(codes, n, aged, {"excess": age - limit, "age": age, "term": live.term, "vin": live.vin},
                       ["excess", "vin"], [False, True])[hit]
    detail = _text(count[hit], " of ", stock[hit], " financed vehicles in stock past their loan term; oldest VIN ",
                   worst["vin"], ": ", worst["age"].astype(np.int64), " d in stock, loan term ",
                   worst["term"].astype(np.int64), " d")
    return _signals(DEALER, dealers[hit], STOCK_AGEING_PAST_TERM, YELLOW, share[hit], cfg.stock_ageing_share, detail)


def _appraisal(live: _LiveLoans, cfg: EarlyWarningConfig) -> pd.DataFrame:
    cover = ratio(live.appraisal, live.requested)
    hit = ~np.isnan(cover) & (cover < cfg.appraisal_cover_ratio)
    t = _worst(pd.DataFrame({"dealer_id": live.dealer_id[hit], "cover": cover[hit], "vin": live.vin[hit],
                             "appraisal": live.appraisal[hit], "requested": live.requested[hit]}),
               "dealer_id", ["cover", "vin"], [True, True])
    detail = _text("VIN ", t["vin"], ": appraised ", _cny(t["appraisal"]), " < outstanding ",
                   _cny(t["requested"]), "; ", t["n"], " loan(s) under water")
    return _signals(DEALER, t["dealer_id"], APPRAISAL_BELOW_OUTSTANDING, ORANGE, t["cover"],
                    cfg.appraisal_cover_ratio, detail)


def _audits(frames: Frames, d: int, cfg: EarlyWarningConfig) -> list[pd.DataFrame]:
    aud = require(frames, AUDITS, ("dealer_id", "audited_at", "vehicles_expected", "vehicles_found", "skipped",
                                   "updated_at"))
    audited, known = timing(aud, AUDITS)
    w = _window(audited, known, d, cfg.audit_window_days)
    skipped = aud["skipped"].to_numpy()[w].astype(bool)
    expected = aud["vehicles_expected"].to_numpy(dtype=np.float64)[w]
    found = aud["vehicles_found"].to_numpy(dtype=np.float64)[w]
    t = pd.DataFrame({"dealer_id": _objects(aud["dealer_id"])[w], "audits": 1, "skips": skipped.astype(np.int64),
                      "expected": np.where(skipped, 0.0, expected),
                      "missing": np.where(skipped, 0.0, np.clip(expected - found, 0.0, None)),  # surplus offsets none
                      "done": (~skipped).astype(np.int64)})
    g = t.groupby("dealer_id", sort=True).sum().reset_index()
    window = cfg.audit_window_days
    s = g[g["skips"] >= cfg.audit_skips_min]
    skips = _signals(DEALER, s["dealer_id"], AUDIT_SKIPS, ORANGE, s["skips"], cfg.audit_skips_min,
                     _text(s["skips"], " of ", s["audits"], f" floor audits skipped in the last {window} d"))
    share = ratio(g["missing"].to_numpy(), g["expected"].to_numpy())
    hit = ~np.isnan(share) & (share >= cfg.audit_missing_share)
    m = g[hit]
    missing = _signals(DEALER, m["dealer_id"], AUDIT_MISSING_VEHICLES, ORANGE, share[hit], cfg.audit_missing_share,
                       _text(m["missing"].astype(np.int64), " of ", m["expected"].astype(np.int64),
                             " vehicles missing at ", m["done"], f" audits in the last {window} d"))
    return [skips, missing]


def _velocity(frames: Frames, d: int, cfg: EarlyWarningConfig) -> pd.DataFrame:
    sales = require(frames, SALES, ("dealer_id", "sold_at", "updated_at"))
    sold, known = timing(sales, SALES)
    r, b = cfg.recent_window_days, cfg.baseline_window_days
    recent = _window(sold, known, d, r)
    base = _window(sold, known, d, r + b, r)
    dealer = sales["dealer_id"]
    base_rate = dealer[base].value_counts() * (r / b)
    base_rate = base_rate[base_rate >= cfg.velocity_min_baseline]
    now = dealer[recent].value_counts().reindex(base_rate.index, fill_value=0)
    limit = cfg.velocity_drop_ratio * base_rate
    hit = (now < limit).to_numpy()
    ids = np.sort(_objects(base_rate.index[hit]))
    now, base_rate, limit = now.reindex(ids), base_rate.reindex(ids), limit.reindex(ids)
    detail = _text(now.to_numpy(), f" sales in the last {r} d vs ",
                   np.array([f"{v:.1f}" for v in base_rate.to_numpy()], dtype=object),
                   f" per {r} d over the previous {b} d")
    return _signals(DEALER, ids, SALES_VELOCITY_DROP, YELLOW, now.to_numpy(), limit.to_numpy(), detail)


def _duplicate_vins(book: _Book, vin_codes: np.ndarray, d: int, duplicate_vins: pd.DataFrame | None,
                    cfg: EarlyWarningConfig) -> pd.DataFrame:
    """``vin_codes``: a code per loan of the book, equal for equal VINs (compared as codes)."""
    known = np.flatnonzero(book.loans.known <= d)
    vins = _objects(book.loans.vin)
    # a VIN financed twice: a later application while an earlier loan of the VIN is still unpaid
    # (a car refinanced after its loan was repaid is not a duplicate)
    apps = pd.DataFrame({"vin": vin_codes[known], "applied": book.loans.applied[known], "row": known,
                         "live": book.loans.repaid_known[known] > d})
    apps = apps[apps["vin"].duplicated(keep=False)].sort_values(["vin", "applied", "row"], kind="stable")
    earlier = apps["vin"].duplicated(keep="last")  # not the VIN's latest application
    twice = apps[apps["vin"].isin(apps.loc[earlier & apps["live"], "vin"])]["row"].to_numpy(dtype=np.int64)
    parts = [pd.DataFrame({"dealer_id": book.dealer_id(twice), "vin": vins[twice],
                           "why": "financed again while an earlier loan is unpaid"})]
    if duplicate_vins is not None:
        _check_columns(duplicate_vins, DUPLICATE_VIN_COLUMNS, "duplicate_vins")
        try:
            detected = day_numbers(duplicate_vins["detected_at"])
        except ValueError as exc:
            raise EarlyWarningError(f"duplicate_vins.detected_at must be dates or timestamps: {exc}") from None
        seen = (detected < d) & (detected >= d - cfg.duplicate_vin_window_days)
        parts.append(pd.DataFrame({"dealer_id": _objects(duplicate_vins["dealer_id"])[seen],
                                   "vin": _objects(duplicate_vins["vin"])[seen],
                                   "why": _text("quarantined as a duplicate on ", _dates(detected[seen]))}))
    t = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    t = t.drop_duplicates(["dealer_id", "vin"])  # one VIN counts once per dealer
    t = _worst(t, "dealer_id", ["vin", "why"], [True, True])
    detail = _text("VIN ", t["vin"], " ", t["why"], "; ", t["n"], " duplicate VIN(s)")
    return _signals(DEALER, t["dealer_id"], DUPLICATE_VIN, RED, t["n"], 1.0, detail)


def dealer_signals(frames: Frames, as_of: dt.date, cfg: EarlyWarningConfig = EW_CONFIG_V1,
                   duplicate_vins: pd.DataFrame | None = None) -> pd.DataFrame:
    """The dealer rules' signals at ``as_of``: at most one row per (dealer, rule).

    Rules: ``days_past_due``, ``sold_out_of_trust``, ``audit_skips``, ``audit_missing_vehicles``,
    ``stock_ageing_past_term``, ``sales_velocity_drop``, ``appraisal_below_outstanding``,
    ``duplicate_vin`` (see :data:`RULES`). ``duplicate_vins`` (vin, dealer_id, detected_at) are
    the VINs the quality gate quarantined as duplicates; those detected before ``as_of`` count.
    Columns: :data:`SIGNAL_COLUMNS`, sorted by borrower and rule.

    Needs ``dealer.dealers``, ``inventory``, ``sales``, ``floor_audits``, ``loan_applications`` and
    ``loan_repayments`` in ``frames``.

    Raises:
        EarlyWarningError: if ``as_of`` is not a date, ``cfg`` not a config or ``duplicate_vins``
            lacks a column.
        FeatureError: if a table or column is missing or application ids repeat.
    """
    _check_config(cfg)
    d = _as_of_day(as_of)
    book = _Book.build(frames)
    sold, vin_codes = _sale_days(frames, book.vins, d)
    live = _LiveLoans.build(frames, book, d, sold)
    return _concat([
        _days_past_due(live, cfg),
        _sold_out_of_trust(book, sold, d, cfg),
        *_audits(frames, d, cfg),
        _stock_ageing(live, d, cfg),
        _velocity(frames, d, cfg),
        _appraisal(live, cfg),
        _duplicate_vins(book, vin_codes, d, duplicate_vins, cfg),
    ])


# --------------------------------------------------------------------------------------------
# Supplier rules
# --------------------------------------------------------------------------------------------


def _sums(pos: np.ndarray, n: int, mask: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ weights (or the count) of the ``mask`` rows per supplier position (``pos``: each row's
    position among the ``n`` suppliers, -1: none)."""
    pos = pos[mask]
    ok = pos >= 0
    w = np.ones(int(mask.sum())) if weights is None else np.asarray(weights, dtype=np.float64)[mask]
    return np.bincount(pos[ok], weights=w[ok], minlength=n)


def _dilution(frames: Frames, index: pd.Index, d: int, cfg: EarlyWarningConfig) -> list[pd.DataFrame]:
    r, b = cfg.recent_window_days, cfg.baseline_window_days
    pay = require(frames, PAYABLES, ("payable_id", "supplier_id", "amount_fen", "confirmation_status",
                                     "confirmed_at", "updated_at"))
    # a payable never confirmed has no confirmed_at: its time is when it was written (as the features)
    pay_day, pay_known = timing(pay, PAYABLES, pay["confirmed_at"].fillna(pay["updated_at"]))
    amount = pay["amount_fen"].to_numpy(dtype=np.float64)
    memo = require(frames, MEMOS, ("supplier_id", "amount_fen", "issued_at", "updated_at"))
    issued, memo_known = timing(memo, MEMOS)
    m_amount = memo["amount_fen"].to_numpy(dtype=np.float64)
    n = len(index)
    pay_pos, memo_pos = _positions(index, pay["supplier_id"]), _positions(index, memo["supplier_id"])
    now = ratio(_sums(memo_pos, n, _window(issued, memo_known, d, r), m_amount),
                _sums(pay_pos, n, _window(pay_day, pay_known, d, r), amount))
    before = ratio(_sums(memo_pos, n, _window(issued, memo_known, d, r + b, r), m_amount),
                   _sums(pay_pos, n, _window(pay_day, pay_known, d, r + b, r), amount))
    before = np.nan_to_num(before, nan=0.0)  # no payables before: no history, the floor applies
    limit = np.maximum(cfg.dilution_spike_factor * before, cfg.dilution_spike_floor)
    hit = ~np.isnan(now) & (now >= limit)
    dilution = _signals(SUPPLIER, index[hit], DILUTION_SPIKE, ORANGE, now[hit], limit[hit],
                        _text("credit memos ", _pct(now[hit]), f" of payables in the last {r} d vs ",
                              _pct(before[hit]), f" over the previous {b} d"))

    # withdrawn confirmations: counted when the withdrawal became known (the row's write day), as
    # a share of the supplier's payables of the window
    written = pay_known - 1
    w = (pay["confirmation_status"].to_numpy() == WITHDRAWN) & (pay_known <= d) & (written >= d - r)
    count = _sums(pay_pos, n, w)
    # the payables of the window, and an older payable whose withdrawal was written in it
    payables = _sums(pay_pos, n, _window(pay_day, pay_known, d, r) | w)
    share = ratio(count, payables)
    hit = (count >= cfg.withdrawn_min) & (np.nan_to_num(share, nan=-1.0) >= cfg.withdrawn_share)
    rows = np.flatnonzero(w)  # only the withdrawn rows' payable ids as Python strings
    latest = _worst_per(pay_pos[rows], n, np.ones(len(rows), dtype=bool),
                        {"day": written[rows], "payable": _objects(pay["payable_id"].iloc[rows])},
                        ["day", "payable"], [False, True])[hit]
    withdrawn = _signals(SUPPLIER, index[hit], WITHDRAWN_CONFIRMATIONS, ORANGE, share[hit], cfg.withdrawn_share,
                         _text(count[hit].astype(np.int64), " of ", payables[hit].astype(np.int64),
                               f" payable confirmations withdrawn in the last {r} d, latest payable ",
                               latest["payable"], " on ", _dates(latest["day"])))
    return [dilution, withdrawn]


def _production(frames: Frames, d: int, cfg: EarlyWarningConfig) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(vehicles built per model in the recent window, recent mask, baseline mask) of production."""
    prod = require(frames, PRODUCTION, ("model_id", "produced_at", "updated_at"))
    produced, known = timing(prod, PRODUCTION)
    r, b = cfg.recent_window_days, cfg.baseline_window_days
    recent, base = _window(produced, known, d, r), _window(produced, known, d, r + b, r)
    return pd.Series(_objects(prod["model_id"])[recent]).value_counts(), recent, base


def _delivery(frames: Frames, index: pd.Index, attrs: pd.DataFrame, built: pd.Series, d: int,
              cfg: EarlyWarningConfig) -> pd.DataFrame:
    """Parts received from each tier-1 supplier vs the parts the recent production consumed
    (Σ over models of vehicles built x the BOM quantity of the supplier's lines)."""
    r = cfg.recent_window_days
    bom = require(frames, BOM, ("model_id", "supplier_id", "quantity"))
    per_vehicle = bom["quantity"].to_numpy(dtype=np.float64)
    vehicles = built.reindex(_objects(bom["model_id"])).fillna(0).to_numpy(dtype=np.float64)
    n = len(index)
    implied = _sums(_positions(index, bom["supplier_id"]), n, np.ones(len(bom), dtype=bool), per_vehicle * vehicles)
    rec = require(frames, RECEIPTS, ("supplier_id", "quantity", "received_at", "updated_at"))
    received, known = timing(rec, RECEIPTS)
    got = _sums(_positions(index, rec["supplier_id"]), n, _window(received, known, d, r),
                rec["quantity"].to_numpy(np.float64))
    share = ratio(got, implied)
    hit = (attrs["tier"].to_numpy() == 1) & (implied > 0) & (share < cfg.delivery_drop_ratio)
    return _signals(SUPPLIER, index[hit], DELIVERY_DROP, YELLOW, share[hit], cfg.delivery_drop_ratio,
                    _text("received ", got[hit].astype(np.int64), " parts in the last ", str(r), " d vs ",
                          np.round(implied[hit]).astype(np.int64), " consumed by production"))


# the key columns Instalments.build joins on: the supplier ids (and the suppliers index), then the
# other key domains; (table, column) pairs
_SUPPLIER_KEYS = ((PAYABLES, "supplier_id"), (SUB_BOM, "supplier_id"), (SUPPLIER_REPAYMENTS, "supplier_id"))
_ID_KEYS = (
    ((PAYABLES, "payable_id"), (SUPPLIER_REPAYMENTS, "payable_id")),
    ((PAYABLES, "receipt_id"), (RECEIPTS, "receipt_id")),
    ((RECEIPTS, "part_id"), (SUB_BOM, "parent_part_id")),
)


def _instalments(frames: Frames, index: pd.Index) -> Instalments:
    """:meth:`Instalments.build` on the suppliers of ``index``, with integer codes for its keys.

    The build joins payables, receipts, sub-BOM lines and repayments on string ids (merges and
    group-bys over millions of strings at reference scale) and only ever compares those keys. So
    each key domain (supplier, payable, receipt and part ids) is factorised once here and the same
    build runs on the codes: its instalments (supplier positions and days) are identical.
    """
    keys = _SUPPLIER_KEYS + tuple(k for domain in _ID_KEYS for k in domain)
    if any(t not in frames or c not in frames[t].columns for t, c in keys):
        return Instalments.build(frames, index)  # raises the FeatureError that names what is missing

    def codes_of(*columns) -> list[np.ndarray]:
        codes, _ = _key_codes(*columns)
        if any((k < 0).any() for k in codes):  # a missing key: NaN codes merge and group as missing strings
            return [np.where(k < 0, np.nan, k.astype(np.float64)) for k in codes]
        return codes

    supplier_codes, *codes = codes_of(index, *(frames[t][c] for t, c in _SUPPLIER_KEYS))
    pairs = list(zip(_SUPPLIER_KEYS, codes, strict=True))
    for domain in _ID_KEYS:
        pairs += zip(domain, codes_of(*(frames[t][c] for t, c in domain)), strict=True)
    coded: dict[str, pd.DataFrame] = {}
    for (t, c), k in pairs:
        coded[t] = coded.get(t, frames[t]).assign(**{c: k})
    return Instalments.build({**frames, **coded}, pd.Index(supplier_codes))


def _overdue(frames: Frames, index: pd.Index, d: int, cfg: EarlyWarningConfig) -> pd.DataFrame:
    """Of the instalments due in the lookback that reached a DPD floor, the share still unpaid."""
    inst = _instalments(frames, index)
    late = d - inst.due
    scope = (inst.supplier >= 0) & (inst.known <= d) & (late <= cfg.overdue_lookback_days)
    unpaid = scope & (inst.settled_known > d)
    n = len(index)
    rank = np.full(n, -1, dtype=np.int64)
    share = np.full(n, np.nan)
    count = np.zeros(n, dtype=np.int64)
    total = np.zeros(n, dtype=np.int64)
    steps = ((ORANGE, cfg.overdue_orange_days), (RED, cfg.overdue_red_days))
    for i, (_, days) in enumerate(steps):  # two floors, each vectorised over the suppliers
        reached = scope & (late >= days)
        t_k, k = _per(inst.supplier, n, reached), _per(inst.supplier, n, reached & unpaid)
        s_k = ratio(k, t_k)
        fire = (k >= cfg.overdue_min_instalments) & (np.nan_to_num(s_k, nan=-1.0) >= cfg.overdue_share)
        rank[fire], share[fire], count[fire], total[fire] = i, s_k[fire], k[fire], t_k[fire]
    hit = rank >= 0
    worst = _worst_per(inst.supplier, n, unpaid & (late >= cfg.overdue_orange_days), {"late": late, "due": inst.due},
                       ["late"], [False])[hit]
    level = np.asarray([s[0] for s in steps], dtype=object)[rank[hit]]
    floor_days = np.asarray([s[1] for s in steps], dtype=np.int64)[rank[hit]]
    return _signals(SUPPLIER, index[hit], OVERDUE, level, share[hit], cfg.overdue_share,
                    _text(count[hit], " of ", total[hit], " instalment(s) due in the last ",
                          str(cfg.overdue_lookback_days), " d unpaid ", floor_days, "+ d after the due date; "
                          "oldest due ", _dates(worst["due"]), ", unpaid ", worst["late"].astype(np.int64), " d"))


def _oem(index: pd.Index, recent: np.ndarray, base: np.ndarray, cfg: EarlyWarningConfig) -> pd.DataFrame:
    r, b = cfg.recent_window_days, cfg.baseline_window_days
    now, before = int(recent.sum()), base.sum() * r / b
    limit = cfg.oem_drop_ratio * before
    if not (before > 0 and now < limit):
        return _empty_signals()
    return _signals(SUPPLIER, index, OEM_PRODUCTION_DROP, YELLOW, now, limit,
                    f"OEM built {now} vehicles in the last {r} d vs {before:.1f} per {r} d over the previous {b} d")


def supplier_signals(frames: Frames, as_of: dt.date, cfg: EarlyWarningConfig = EW_CONFIG_V1) -> pd.DataFrame:
    """The supplier rules' signals at ``as_of``: at most one row per (supplier, rule).

    Rules: ``dilution_spike``, ``withdrawn_confirmations``, ``delivery_drop`` (tier-1),
    ``overdue`` (instalments inferred as in :class:`features.supplier.Instalments`),
    ``oem_production_drop`` (every supplier of ``erp.suppliers``). Columns: :data:`SIGNAL_COLUMNS`,
    sorted by borrower and rule.

    Needs ``erp.suppliers``, ``bom``, ``sub_bom``, ``production``, ``goods_receipts``, ``payables``,
    ``credit_memos`` and ``supplier_repayments`` in ``frames``.

    Raises:
        EarlyWarningError: if ``as_of`` is not a date or ``cfg`` not a config.
        FeatureError: if a table or column is missing or supplier ids repeat.
    """
    _check_config(cfg)
    d = _as_of_day(as_of)
    index, attrs = supplier_index(frames)
    built, recent, base = _production(frames, d, cfg)
    return _concat([
        *_dilution(frames, index, d, cfg),
        _delivery(frames, index, attrs, built, d, cfg),
        _overdue(frames, index, d, cfg),
        _oem(index, recent, base, cfg),
    ])


# --------------------------------------------------------------------------------------------
# Behaviour score
# --------------------------------------------------------------------------------------------


def _check_borrower_types(values: pd.Series, name: str) -> None:
    bad = ~values.isin(BORROWER_TYPES)
    if bad.any():
        raise EarlyWarningError(f"{name}.borrower_type must be one of {BORROWER_TYPES}, got "
                                f"{sorted(map(str, values[bad].unique()))[:5]}")


def score_signals(scores: pd.DataFrame, cfg: EarlyWarningConfig = EW_CONFIG_V1) -> pd.DataFrame:
    """``behaviour_score`` signals from model scores (borrower_type, borrower_id, score in [0, 1]).

    For a dealer the caller passes the exposure-weighted mean post-loan behaviour PD of its
    performing loans (the expected bad share of its book); a borrower listed more than once
    counts with its largest score.

    Raises:
        EarlyWarningError: if a column is missing, a borrower type is unknown or a score is not a
            number in [0, 1].
    """
    _check_config(cfg)
    _check_columns(scores, SCORE_COLUMNS, "scores")
    _check_borrower_types(scores["borrower_type"], "scores")
    value = pd.to_numeric(scores["score"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(value) | (value < 0.0) | (value > 1.0)
    if bad.any():
        raise EarlyWarningError(f"scores.score must be numbers in [0, 1], got "
                                f"{scores['score'].to_numpy()[bad][:5].tolist()}")
    t = pd.DataFrame({"borrower_type": _objects(scores["borrower_type"]),
                      "borrower_id": _objects(scores["borrower_id"]), "score": value})
    t = t.groupby(["borrower_type", "borrower_id"], sort=True, as_index=False)["score"].max()
    t = t[t["score"] >= cfg.score_yellow]
    level, floor = _level_by_floors(t["score"].to_numpy(), (cfg.score_yellow, cfg.score_orange), (YELLOW, ORANGE))
    out = _signals(DEALER, t["borrower_id"], BEHAVIOUR_SCORE, level, t["score"], floor,
                   _text("behaviour score ", np.array([f"{v:.3f}" for v in t["score"]], dtype=object)))
    out["borrower_type"] = t["borrower_type"].to_numpy()
    return _concat([out])


# --------------------------------------------------------------------------------------------
# Levels, actions and the watchlist
# --------------------------------------------------------------------------------------------


def _levels_of(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    bad = ~frame[column].isin(LEVELS)
    if bad.any():
        raise EarlyWarningError(f"{name}.{column} must be one of {LEVELS}, got "
                                f"{sorted(map(str, frame[column][bad].unique()))[:5]}")
    return frame[column].map(_RANK).to_numpy(dtype=np.int64)


def combine(signals: pd.DataFrame, borrowers: pd.DataFrame, cfg: EarlyWarningConfig = EW_CONFIG_V1) -> pd.DataFrame:
    """One warning level and its actions per borrower.

    The borrowers are those of ``borrowers`` (borrower_type, borrower_id) and any borrower with a
    signal. A borrower's level is the most severe level of its signals (green without one),
    raised to red when ``cfg.orange_to_red_count`` or more distinct rules signal orange or worse.
    Columns (:data:`WATCHLIST_COLUMNS`): borrower_type, borrower_id, level, rules (the distinct
    rules that fired, sorted, comma-joined; "" if none), frozen, limit_cut, site_visit, actions
    (from ``cfg.actions``). Sorted from the most severe level, then by borrower.

    Raises:
        EarlyWarningError: if a column is missing or a level or borrower type is unknown.
    """
    _check_config(cfg)
    _check_columns(signals, SIGNAL_COLUMNS, "signals")
    _check_columns(borrowers, BORROWER_COLUMNS, "borrowers")
    _check_borrower_types(signals["borrower_type"], "signals")
    _check_borrower_types(borrowers["borrower_type"], "borrowers")
    keys = list(BORROWER_COLUMNS)
    sig = pd.DataFrame({"borrower_type": _objects(signals["borrower_type"]),
                        "borrower_id": _objects(signals["borrower_id"]),
                        "rule": _objects(signals["rule"]), "rank": _levels_of(signals, "level", "signals")})
    who = pd.concat([pd.DataFrame({k: _objects(borrowers[k]) for k in keys}), sig[keys]], ignore_index=True)
    who = who.drop_duplicates(keys).set_index(keys)
    rank = sig.groupby(keys)["rank"].max()
    severe = sig[sig["rank"] >= _RANK[ORANGE]].groupby(keys)["rule"].nunique()
    fired = sig[keys + ["rule"]].drop_duplicates().sort_values("rule", kind="stable")
    rules = fired.groupby(keys)["rule"].agg(",".join)
    rank = rank.reindex(who.index, fill_value=_RANK[GREEN]).to_numpy(dtype=np.int64)
    severe = severe.reindex(who.index, fill_value=0).to_numpy(dtype=np.int64)
    rank = np.where(severe >= cfg.orange_to_red_count, _RANK[RED], rank)
    acts = cfg.actions
    out = who.reset_index()
    out["level"] = np.asarray(LEVELS, dtype=object)[rank]
    out["rules"] = rules.reindex(who.index, fill_value="").to_numpy(dtype=object)
    out["frozen"] = np.array([a.frozen for a in acts], dtype=bool)[rank]
    out["limit_cut"] = np.array([float(a.limit_cut) for a in acts], dtype=np.float64)[rank]
    out["site_visit"] = np.array([a.site_visit for a in acts], dtype=bool)[rank]
    out["actions"] = np.array([a.describe() for a in acts], dtype=object)[rank]
    out["_rank"] = rank
    out = out.sort_values(["_rank", "borrower_type", "borrower_id"], ascending=[False, True, True], kind="stable")
    return out[list(WATCHLIST_COLUMNS)].reset_index(drop=True)


def changes(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """The borrowers of ``current`` (a :func:`combine` result) that are new on the watchlist or escalated.

    ``change`` is ``new`` when the borrower was green or absent in ``previous`` and is not green
    now, ``escalated`` when it was on the watchlist and its level rose. Unchanged and improved
    borrowers are left out. Columns: those of ``current`` (:data:`WATCHLIST_COLUMNS` if present),
    then ``previous_level`` and ``change``; sorted from the most severe level, then by borrower.

    Raises:
        EarlyWarningError: if a frame lacks borrower_type, borrower_id or level, a level is
            unknown, or ``previous`` lists a borrower twice.
    """
    need = BORROWER_COLUMNS + ("level",)
    _check_columns(previous, need, "previous")
    _check_columns(current, need, "current")
    keys = list(BORROWER_COLUMNS)
    if previous.duplicated(keys).any():
        raise EarlyWarningError(f"previous lists borrower(s) twice: "
                                f"{previous.loc[previous.duplicated(keys), keys].head(3).values.tolist()}")
    before = pd.Series(_levels_of(previous, "level", "previous"),
                       index=pd.MultiIndex.from_frame(previous[keys].astype(object)))
    now = _levels_of(current, "level", "current")
    was = before.reindex(pd.MultiIndex.from_frame(current[keys].astype(object))).fillna(_RANK[GREEN])
    was = was.to_numpy(dtype=np.int64)
    change = np.where((was == _RANK[GREEN]) & (now > _RANK[GREEN]), NEW,
                      np.where((was > _RANK[GREEN]) & (now > was), ESCALATED, ""))
    out = current.copy()
    out["previous_level"] = np.asarray(LEVELS, dtype=object)[was]
    out["change"] = change.astype(object)
    out["_rank"] = now
    out = out[change != ""].sort_values(["_rank", "borrower_type", "borrower_id"], ascending=[False, True, True],
                                        kind="stable")
    return out.drop(columns="_rank").reset_index(drop=True)


def rules_by_name(rules: tuple[Rule, ...] = RULES) -> Mapping[str, Rule]:
    """The rules keyed by name."""
    return {rule.name: rule for rule in rules}
