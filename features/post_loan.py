"""Post-loan behaviour (early warning): features of an outstanding order loan on a date, and labels.

Point-in-time rule. An as-of date ``D`` (a ``datetime.date``) means midnight at the start of
``D``. A transactional row is *known* at ``D`` iff its ``updated_at < D`` and its event time (the
contract's ``event_time``) ``< D``; a feature at ``D`` uses only rows known at ``D``, and "at
drawdown" means as of the loan's applied date. A label uses only rows known at the as-of date of
the dataset.

Observations are the loans still outstanding on weekly snapshot dates: drawn and known, no
repayment known, not yet ``DEALER_GRACE_DAYS`` past due. The label is the dealer PD label of the
loan (1 if not repaid before ``due + DEALER_GRACE_DAYS``), so only matured loans are kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pandas as pd

from features.dealer import DealerPanel, Loans, dealer_index, sales_of_loans
from features.definitions import MID_WINDOW, POST_LOAN, feature_names
from features.frames import (
    FeatureError,
    Frames,
    day_of,
    days_to_dates,
    positions,
)
from features.panel import day_numbers, ratio

SNAPSHOT_ANCHOR_DAY = 4  # 1970-01-05, a Monday: weekly snapshots fall on Mondays


def _features(frames: Frames, loans: Loans, panel: DealerPanel, loan: np.ndarray, day: np.ndarray) -> pd.DataFrame:
    dealer, drawn = loans.dealer[loan], loans.applied[loan]
    sale_known, sold = (x[loan] for x in sales_of_loans(frames, loans))
    is_sold = sale_known <= day
    unpaid = loans.repaid_known[loan] > day

    def change(name: str) -> np.ndarray:
        return panel.value(name, dealer, day) - panel.value(name, dealer, drawn)

    history = np.minimum(panel.value("history_days", dealer, drawn), MID_WINDOW)
    expected = panel.value("sales_90d", dealer, drawn) / history * (day - drawn)
    out = pd.DataFrame({
        "days_since_drawdown": (day - drawn).astype(np.float64),
        "days_to_due": (loans.due[loan] - day).astype(np.float64),
        "vehicle_sold": is_sold.astype(np.float64),
        "days_sold_unpaid": np.where(is_sold & unpaid, day - sold, 0).astype(np.float64),
        "dealer_overdue_loans_now": panel.value("overdue_loans_now", dealer, day),
        "dealer_late_repays_since_drawdown": change("late_repays_known"),
        "stock_change_since_drawdown": change("stock_count"),
        "sales_since_drawdown_vs_expected": ratio(change("sales_known"), expected),
        "appraisal_drift": change("appraisal_ratio_90d"),
        "ltv": loans.ltv[loan],
        "term_days": loans.term[loan].astype(np.float64),
    })
    return out[feature_names(POST_LOAN)]


def post_loan_features(frames: Frames, loans: pd.DataFrame, *, indexed: bool = True,
                       make_panel: Callable[[int, int], DealerPanel] | None = None) -> pd.DataFrame:
    """Features of loans on dates: ``loans`` has columns ``application_id`` and ``as_of`` (dates).

    Returns a frame indexed by (application_id, as_of) with ``feature_names("post_loan_behaviour")``.
    The caller asks for loans drawn before their as-of date. ``indexed=False``: the rows in the
    order of ``loans`` with a plain 0..n-1 index instead (building the index of a book of ~1 M
    loans costs more than half a second, wasted on a caller that aligns by position).

    ``make_panel(lo, hi)``: the :class:`DealerPanel` of ``frames`` to read, for the days ``lo``
    (the earliest drawdown or as-of date) .. ``hi`` (the latest as-of date); default
    ``DealerPanel(frames, lo, hi)``. A caller that needs dealer features of other days too may
    return a panel reaching further (it then reads the same panel). The panel must start on
    ``lo``: it sums weights along the days from its first day, so a panel starting on another day
    can differ in the last bits of a float feature from this function's own.

    Raises:
        FeatureError: if a table or column is missing or an application id is unknown, or the
            panel of ``make_panel`` does not start on ``lo``, ends before ``hi`` or is not over
            the dealers of ``frames``.
    """
    missing = [c for c in ("application_id", "as_of") if c not in loans.columns]
    if missing:
        raise FeatureError(f"loans miss column(s) {missing} (they have {list(loans.columns)})")
    dealers, _ = dealer_index(frames)
    book = Loans.build(frames, dealers)
    loan = positions(book.ids, loans["application_id"])
    if (loan < 0).any():
        raise FeatureError(f"application id(s) not in dealer.loan_applications: "
                           f"{loans['application_id'].to_numpy()[loan < 0][:5].tolist()}")
    day = day_numbers(loans["as_of"])
    if not len(day):
        raise FeatureError("post_loan_features needs at least one loan")
    lo, hi = int(min(day.min(), book.applied[loan].min())), int(day.max())
    if make_panel is None:
        panel = DealerPanel(frames, lo, hi, loans=book)
    else:
        panel = make_panel(lo, hi)
        if panel.grid.first != lo or panel.grid.last < hi or not panel.index.equals(dealers):
            raise FeatureError(f"the dealer panel must start on day {lo}, reach day {hi} and be over the "
                               f"{len(dealers)} dealers of the frames; it spans {panel.grid.first}.."
                               f"{panel.grid.last} over {len(panel.index)} dealers")
    out = _features(frames, book, panel, loan, day)
    if not indexed:
        return out
    out.index = pd.MultiIndex.from_arrays([book.ids[loan], days_to_dates(day)], names=["application_id", "as_of"])
    return out


def post_loan_dataset(frames: Frames, as_of: dt.date, *, snapshot_every_days: int = 7) -> pd.DataFrame:
    """The training set of the post-loan behaviour model as known at ``as_of``.

    Every loan matured by ``as_of`` (``due + DEALER_GRACE_DAYS <= as_of``) is observed on each
    snapshot date (every ``snapshot_every_days`` days, anchored on Mondays) on which it was
    known, had no known repayment and was not yet bad. Columns: application_id, dealer_id,
    obs_date, the ``post_loan_behaviour`` features, label (1 if not repaid before
    ``due + DEALER_GRACE_DAYS`` as known at ``as_of``).
    """
    if snapshot_every_days < 1:
        raise FeatureError(f"snapshot_every_days must be >= 1, got {snapshot_every_days}")
    d = day_of(as_of)
    dealers, _ = dealer_index(frames)
    book = Loans.build(frames, dealers)
    n = snapshot_every_days
    first = book.known + (SNAPSHOT_ANCHOR_DAY - book.known) % n
    end = np.minimum(np.minimum(book.repaid_known, book.bad_day), d + 1)
    count = np.where(book.bad_day <= d, np.maximum(0, -((first - end) // n)), 0)
    loan = np.repeat(np.arange(len(book.ids)), count)
    step = np.arange(len(loan)) - np.repeat(np.cumsum(count) - count, count)
    day = first[loan] + step * n
    columns = ["application_id", "dealer_id", "obs_date", *feature_names(POST_LOAN), "label"]
    if not len(loan):
        return pd.DataFrame(columns=columns)
    panel = DealerPanel(frames, int(book.applied[loan].min()), int(day.max()), loans=book)
    out = pd.concat([pd.DataFrame({"application_id": book.ids[loan].to_numpy(),
                                   "dealer_id": dealers.to_numpy()[book.dealer[loan]],
                                   "obs_date": days_to_dates(day)}),
                     _features(frames, book, panel, loan, day)], axis=1)
    out["label"] = (book.good_known[loan] > d).astype(np.int64)
    return out.sort_values(["obs_date", "application_id"], kind="stable").reset_index(drop=True)[columns]
