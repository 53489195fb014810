"""Supplier PD: point-in-time features of tier-1 and tier-2 suppliers, and 12-month labels.

Point-in-time rule. An as-of date ``D`` (a ``datetime.date``) means midnight at the start of
``D``. A transactional row is *known* at ``D`` iff its ``updated_at < D`` and its event time (the
contract's ``event_time``; for a payable never confirmed, which has no ``confirmed_at``, the
time it was written) ``< D``; a feature at ``D`` uses only rows known at ``D``. Reference tables
(suppliers, BOM, sub-BOM) are used only for immutable attributes: tier, onboarding date, BOM
structure and prices. A label uses only rows known at the as-of date of the dataset.

Instalments. A *confirmed* payable creates an expected instalment, due on the payable's
``due_on``, for its tier-1 supplier and for every tier-2 supplier with sub-BOM lines under the
received part (``goods_receipts.part_id`` → ``sub_bom.parent_part_id``); the instalment is known
once both the payable and its receipt are. A ``supplier_repayments`` row (written when paid) with
the same payable and supplier settles it. An instalment not paid before
``due_on + SUPPLIER_BAD_DPD`` makes its supplier *bad* on that day.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.definitions import (
    LONG_WINDOW,
    MID_WINDOW,
    SHORT_WINDOW,
    SUPPLIER_BAD_DPD,
    SUPPLIER_BAD_MIN_COUNT,
    SUPPLIER_BAD_SHARE,
    SUPPLIER_BAD_WINDOW,
    SUPPLIER_HORIZON_DAYS,
    SUPPLIER_PD,
    feature_names,
)
from features.frames import FeatureError, Frames, day_of, days_to_dates, positions, require, timing
from features.panel import NEVER, Grid, day_numbers, ratio

SUPPLIERS = "erp.suppliers"
BOM = "erp.bom"
SUB_BOM = "erp.sub_bom"
PRODUCTION = "erp.production"
RECEIPTS = "erp.goods_receipts"
PAYABLES = "erp.payables"
MEMOS = "erp.credit_memos"
REPAYMENTS = "erp.supplier_repayments"
# snapshots start on the first goods-receipt day; the model factory leaves out the first 60 days of any
# history as burn-in (chainlend.model_ops.WARMUP_DAYS), so an extra offset here only lost snapshot dates
FIRST_SNAPSHOT_AFTER_DAYS = 0


def supplier_index(frames: Frames) -> tuple[pd.Index, pd.DataFrame]:
    """The suppliers (reference data) with tier and onboarding day, indexed by supplier_id."""
    sup = require(frames, SUPPLIERS, ("supplier_id", "tier", "onboarded_on"))
    attrs = pd.DataFrame({"tier": sup["tier"].to_numpy(dtype=np.float64),
                          "onboarded": day_numbers(sup["onboarded_on"])},
                         index=pd.Index(sup["supplier_id"].to_numpy(), name="supplier_id"))
    if attrs.index.has_duplicates:
        raise FeatureError(f"{SUPPLIERS} holds duplicate supplier_id(s)")
    return attrs.index, attrs


def bom_shares(frames: Frames, suppliers: pd.Index) -> np.ndarray:
    """Each supplier's share of the OEM's BOM cost (all vehicle models, one vehicle each).

    Tier-1: the cost of its BOM lines. Tier-2: the cost of its sub-BOM components, times the
    number of parent parts the BOM uses.
    """
    bom = require(frames, BOM, ("part_id", "supplier_id", "quantity", "unit_price_fen"))
    sub = require(frames, SUB_BOM, ("parent_part_id", "supplier_id", "quantity", "unit_price_fen"))
    line_cost = bom["quantity"].to_numpy(dtype=np.float64) * bom["unit_price_fen"].to_numpy(dtype=np.float64)
    total = line_cost.sum()
    usage = bom.groupby("part_id")["quantity"].sum()
    sub_cost = (sub["quantity"].to_numpy(dtype=np.float64) * sub["unit_price_fen"].to_numpy(dtype=np.float64)
                * usage.reindex(sub["parent_part_id"].to_numpy()).fillna(0.0).to_numpy(dtype=np.float64))
    cost = np.zeros(len(suppliers))
    for who, amount in ((bom["supplier_id"], line_cost), (sub["supplier_id"], sub_cost)):
        pos = positions(suppliers, who)
        np.add.at(cost, pos[pos >= 0], amount[pos >= 0])
    return ratio(cost, np.full(len(suppliers), total))


@dataclass(frozen=True)
class Instalments:
    """Expected instalments of confirmed payables (one per payable × supplier)."""

    supplier: np.ndarray  # position in the suppliers index
    known: np.ndarray
    due: np.ndarray
    bad_day: np.ndarray  # due + SUPPLIER_BAD_DPD
    settled_known: np.ndarray  # first day a repayment is known (NEVER if none)
    good_known: np.ndarray  # first day a repayment made before bad_day is known (NEVER if none)
    on_time_known: np.ndarray  # first day a repayment made on or before the due date is known (NEVER if none)

    @classmethod
    def build(cls, frames: Frames, suppliers: pd.Index) -> Instalments:
        pay = require(frames, PAYABLES, ("payable_id", "receipt_id", "supplier_id", "due_on",
                                         "confirmation_status", "confirmed_at", "updated_at"))
        rec = require(frames, RECEIPTS, ("receipt_id", "part_id", "received_at", "updated_at"))
        sub = require(frames, SUB_BOM, ("parent_part_id", "supplier_id"))
        reps = require(frames, REPAYMENTS, ("payable_id", "supplier_id", "paid_at", "updated_at"))
        pay = pay[(pay["confirmation_status"] == "confirmed") & pay["confirmed_at"].notna()]
        _, pay_known = timing(pay, PAYABLES)
        _, rec_known = timing(rec, RECEIPTS)
        tier1 = pd.DataFrame({"payable_id": pay["payable_id"].to_numpy(), "supplier_id": pay["supplier_id"].to_numpy(),
                              "known": pay_known, "due": day_numbers(pay["due_on"])})
        receipts = pd.DataFrame({"receipt_id": rec["receipt_id"].to_numpy(), "part_id": rec["part_id"].to_numpy(),
                                 "rec_known": rec_known}).drop_duplicates("receipt_id")
        components = (pd.DataFrame({"part_id": sub["parent_part_id"].to_numpy(),
                                    "t2": sub["supplier_id"].to_numpy()}).drop_duplicates())
        tier2 = (tier1.assign(receipt_id=pay["receipt_id"].to_numpy())
                 .merge(receipts, on="receipt_id").merge(components, on="part_id"))
        tier2 = pd.DataFrame({"payable_id": tier2["payable_id"], "supplier_id": tier2["t2"],
                              "known": np.maximum(tier2["known"], tier2["rec_known"]), "due": tier2["due"]})
        inst = pd.concat([tier1, tier2], ignore_index=True)
        inst = inst.groupby(["payable_id", "supplier_id"], as_index=False, sort=False).agg(
            known=("known", "min"), due=("due", "min"))
        inst["bad_day"] = inst["due"] + SUPPLIER_BAD_DPD

        paid, rep_known = timing(reps, REPAYMENTS)
        rp = pd.DataFrame({"payable_id": reps["payable_id"].to_numpy(), "supplier_id": reps["supplier_id"].to_numpy(),
                           "paid": paid, "rep_known": rep_known})
        rp = rp.merge(inst[["payable_id", "supplier_id", "bad_day"]], on=["payable_id", "supplier_id"])
        keys = ["payable_id", "supplier_id"]
        settled = rp.groupby(keys)["rep_known"].min().rename("settled_known")
        good = rp[rp["paid"] < rp["bad_day"]].groupby(keys)["rep_known"].min().rename("good_known")
        on_time = (rp[rp["paid"] <= rp["bad_day"] - SUPPLIER_BAD_DPD].groupby(keys)["rep_known"].min()
                   .rename("on_time_known"))
        inst = inst.join(settled, on=keys).join(good, on=keys).join(on_time, on=keys)
        return cls(positions(suppliers, inst["supplier_id"]), inst["known"].to_numpy(np.int64),
                   inst["due"].to_numpy(np.int64), inst["bad_day"].to_numpy(np.int64),
                   inst["settled_known"].fillna(NEVER).to_numpy(np.int64),
                   inst["good_known"].fillna(NEVER).to_numpy(np.int64),
                   inst["on_time_known"].fillna(NEVER).to_numpy(np.int64))

    def first_bad_day(self, n: int, as_of: int, min_count: int = SUPPLIER_BAD_MIN_COUNT) -> np.ndarray:
        """Per supplier position: the first day it was bad as known at ``as_of`` (NEVER if not).

        Materiality (as the Basel past-due counting does): a supplier is bad on day D when, of
        its instalments that reached ``due + SUPPLIER_BAD_DPD`` within the ``SUPPLIER_BAD_WINDOW``
        days up to D, at least ``SUPPLIER_BAD_SHARE`` (and ``SUPPLIER_BAD_MIN_COUNT``) are not
        known to be paid in time - a supplier that stopped paying. A single instalment without a repayment row among hundreds
        paid (a row the quality gate quarantined, a rounding gap) does not make it bad.
        """
        ok = (self.known <= as_of) & (self.bad_day <= as_of) & (self.supplier >= 0)
        out = np.full(n, NEVER, dtype=np.int64)
        if not ok.any():
            return out
        sup, day = self.supplier[ok], self.bad_day[ok]
        unpaid = (self.good_known[ok] > as_of).astype(np.int64)
        lo, hi = int(day.min()), int(day.max())
        width = hi - lo + 1 + SUPPLIER_BAD_WINDOW
        total = np.zeros((n, width), dtype=np.int64)
        late = np.zeros((n, width), dtype=np.int64)
        np.add.at(total, (sup, day - lo), 1)
        np.add.at(late, (sup, day - lo), unpaid)

        def rolling(a: np.ndarray) -> np.ndarray:
            c = np.cumsum(a, axis=1)
            shifted = np.zeros_like(c)
            shifted[:, SUPPLIER_BAD_WINDOW:] = c[:, :-SUPPLIER_BAD_WINDOW]
            return c - shifted

        t, u = rolling(total), rolling(late)
        bad = (u >= min_count) & (u >= SUPPLIER_BAD_SHARE * t)
        bad[:, hi - lo + 1:] = False  # beyond the last known bad day nothing new is observed
        has = bad.any(axis=1)
        out[has] = lo + bad[has].argmax(axis=1)
        return out


class SupplierPanel:
    """Supplier features on every day ``day_lo .. day_hi`` (suppliers × days)."""

    def __init__(self, frames: Frames, day_lo: int, day_hi: int, *, instalments: Instalments | None = None):
        self.index, self.attrs = supplier_index(frames)
        n = len(self.index)
        g = self.grid = Grid.spanning(n, day_lo, day_hi)
        p: dict[str, np.ndarray] = {}
        self.bom_share = bom_shares(frames, self.index)

        # deliveries against production × BOM (tier-1)
        bom = require(frames, BOM, ("model_id", "supplier_id", "quantity", "unit_price_fen"))
        prod = require(frames, PRODUCTION, ("model_id", "produced_at", "updated_at"))
        models = pd.Index(pd.unique(bom["model_id"].to_numpy()))
        cost = np.zeros((n, len(models)))
        b_sup, b_model = positions(self.index, bom["supplier_id"]), positions(models, bom["model_id"])
        ok = b_sup >= 0
        np.add.at(cost, (b_sup[ok], b_model[ok]),
                  (bom["quantity"].to_numpy(dtype=np.float64) * bom["unit_price_fen"].to_numpy(dtype=np.float64))[ok])
        produced, prod_known = timing(prod, PRODUCTION)
        built = Grid(len(models), g.first, g.days).window_sum(positions(models, prod["model_id"]), produced,
                                                              prod_known, SHORT_WINDOW)
        implied = cost @ built
        rec = require(frames, RECEIPTS, ("supplier_id", "amount_fen", "received_at", "updated_at"))
        received, rec_known = timing(rec, RECEIPTS)
        got = g.window_sum(positions(self.index, rec["supplier_id"]), received, rec_known, SHORT_WINDOW,
                           rec["amount_fen"].to_numpy(dtype=np.float64))
        tier1 = (self.attrs["tier"].to_numpy() == 1)[:, None]
        p["delivery_ratio_30d"] = np.where(tier1, ratio(got, implied), np.nan)

        # payables and dilution
        pay = require(frames, PAYABLES, ("supplier_id", "amount_fen", "confirmation_status", "confirmed_at",
                                         "updated_at"))
        pay_day, pay_known = timing(pay, PAYABLES, pay["confirmed_at"].fillna(pay["updated_at"]))
        p_sup = positions(self.index, pay["supplier_id"])
        amount = pay["amount_fen"].to_numpy(dtype=np.float64)
        status = pay["confirmation_status"].to_numpy()
        payables = g.window_sum(p_sup, pay_day, pay_known, MID_WINDOW, amount)
        p["payables_90d_fen"] = payables
        p["disputed_share_90d"] = ratio(g.window_sum(p_sup, pay_day, pay_known, MID_WINDOW,
                                                     np.where(status == "disputed", amount, 0.0)), payables)
        p["withdrawn_90d"] = g.window_sum(p_sup, pay_day, pay_known, MID_WINDOW,
                                          (status == "withdrawn").astype(np.float64))
        memo = require(frames, MEMOS, ("supplier_id", "amount_fen", "issued_at", "updated_at"))
        issued, memo_known = timing(memo, MEMOS)
        m_sup, m_amount = positions(self.index, memo["supplier_id"]), memo["amount_fen"].to_numpy(dtype=np.float64)
        p["dilution_ratio_90d"] = ratio(g.window_sum(m_sup, issued, memo_known, MID_WINDOW, m_amount), payables)
        payables_30 = g.window_sum(p_sup, pay_day, pay_known, SHORT_WINDOW, amount)
        p["disputed_share_30d"] = ratio(g.window_sum(p_sup, pay_day, pay_known, SHORT_WINDOW,
                                                     np.where(status == "disputed", amount, 0.0)), payables_30)
        p["dilution_ratio_30d"] = ratio(g.window_sum(m_sup, issued, memo_known, SHORT_WINDOW, m_amount), payables_30)

        # repayment behaviour
        reps = require(frames, REPAYMENTS, ("supplier_id", "due_on", "paid_at", "updated_at"))
        paid, rep_known = timing(reps, REPAYMENTS)
        r_sup = positions(self.index, reps["supplier_id"])
        days_late = np.maximum(paid - day_numbers(reps["due_on"]), 0).astype(np.float64)
        count = g.window_sum(r_sup, paid, rep_known, LONG_WINDOW)
        p["late_instalment_share_180d"] = ratio(g.window_sum(r_sup, paid, rep_known, LONG_WINDOW,
                                                             (days_late > 0).astype(np.float64)), count)
        p["mean_days_late_180d"] = ratio(g.window_sum(r_sup, paid, rep_known, LONG_WINDOW, days_late), count)
        count_30 = g.window_sum(r_sup, paid, rep_known, SHORT_WINDOW)
        p["late_instalment_share_30d"] = ratio(g.window_sum(r_sup, paid, rep_known, SHORT_WINDOW,
                                                            (days_late > 0).astype(np.float64)), count_30)
        p["mean_days_late_30d"] = ratio(g.window_sum(r_sup, paid, rep_known, SHORT_WINDOW, days_late), count_30)
        p["max_days_late_180d"] = g.interval_max(r_sup, np.maximum(rep_known, paid + 1), paid + LONG_WINDOW + 1,
                                                 days_late)
        last_paid = g.interval_max(r_sup, rep_known, np.full(len(paid), NEVER), paid.astype(np.float64))
        p["days_since_last_payment"] = g.day_axis()[None, :] - last_paid

        inst = instalments if instalments is not None else Instalments.build(frames, self.index)
        past_due = np.maximum(inst.known, inst.due + 1)  # from the day after its due date, once known
        p["overdue_instalments_now"] = g.interval_sum(inst.supplier, past_due, inst.settled_known)
        p.update(_default_panels(g, inst, past_due, r_sup, paid, rep_known))
        self.panels = p

    def features(self, supplier: np.ndarray, day: np.ndarray) -> pd.DataFrame:
        """The ``supplier_pd`` features of (supplier position, day) pairs."""
        tier = self.attrs["tier"].to_numpy(dtype=np.float64)[supplier]
        out = {"tier": tier,
               "tenure_days": (day - self.attrs["onboarded"].to_numpy()[supplier]).astype(np.float64),
               "bom_share": self.bom_share[supplier]}
        for name in feature_names(SUPPLIER_PD)[3:]:
            out[name] = self.grid.at(self.panels[name], supplier, day)
        return pd.DataFrame(out)[feature_names(SUPPLIER_PD)]


def _default_panels(g: Grid, inst: Instalments, past_due: np.ndarray, r_sup: np.ndarray, paid: np.ndarray,
                    rep_known: np.ndarray) -> dict[str, np.ndarray]:
    """Has the supplier already stopped paying? Panels of its expected instalments that fell due
    and were not paid (:data:`features.definitions.FEATURES`, ``oldest_overdue_dpd`` ..
    ``due_since_last_payment``).

    Every one is an interval per instalment: it counts from the day after its due date (once the
    instalment is known) until its window ends, or until the repayment that settles it (any, or an
    on-time one for *missed*) is known. ``r_sup``, ``paid`` and ``rep_known`` are the supplier
    position, payment day and known day of every repayment row.
    """
    p: dict[str, np.ndarray] = {}
    sup, due, settled = inst.supplier, inst.due, inst.settled_known
    oldest = g.interval_max(sup, past_due, settled, -due.astype(np.float64))  # -(earliest due)
    p["oldest_overdue_dpd"] = np.nan_to_num(g.day_axis()[None, :] + oldest, nan=0.0)
    due_30 = g.interval_sum(sup, past_due, due + SHORT_WINDOW + 1)
    unpaid_30 = g.interval_sum(sup, past_due, np.minimum(due + SHORT_WINDOW + 1, settled))
    p["unpaid_due_30d"] = unpaid_30
    p["repaid_due_ratio_30d"] = ratio(due_30 - unpaid_30, due_30)
    due_90 = g.interval_sum(sup, past_due, due + MID_WINDOW + 1)
    p["repaid_due_ratio_90d"] = ratio(due_90 - g.interval_sum(sup, past_due, np.minimum(due + MID_WINDOW + 1,
                                                                                          settled)), due_90)
    for window in (SHORT_WINDOW, 60, MID_WINDOW):
        p[f"missed_due_{window}d"] = g.interval_sum(sup, past_due, np.minimum(due + window + 1, inst.on_time_known))
    streak_end = np.minimum(settled, _paid_after_known(sup, due, r_sup, paid, rep_known))
    p["due_since_last_payment"] = g.interval_sum(sup, past_due, streak_end)
    streak = g.interval_max(sup, past_due, streak_end, -due.astype(np.float64))
    p["unpaid_streak_dpd"] = np.nan_to_num(g.day_axis()[None, :] + streak, nan=0.0)
    return p


def _paid_after_known(sup: np.ndarray, due: np.ndarray, r_sup: np.ndarray, paid: np.ndarray,
                      rep_known: np.ndarray) -> np.ndarray:
    """Per instalment: the first day a repayment of its supplier paid on or after its due date is
    known (NEVER if none): from then on the supplier's last known payment no longer precedes it."""
    out = np.full(len(sup), NEVER, dtype=np.int64)
    ok = r_sup >= 0
    if not ok.any():
        return out
    r_sup, paid, known = r_sup[ok].astype(np.int64), paid[ok].astype(np.int64), rep_known[ok].astype(np.int64)
    lo = int(min(paid.min(), due.min() if len(due) else paid.min()))
    span = int(max(paid.max(), due.max() if len(due) else paid.max())) - lo + 2
    key = r_sup * span + (paid - lo)
    order = np.argsort(key, kind="stable")
    key, r_sup, known = key[order], r_sup[order], known[order]
    # within each supplier (sorted by payment day): the earliest known day of the payments from here on
    suffix = pd.Series(known[::-1]).groupby(r_sup[::-1]).cummin().to_numpy()[::-1]
    valid = sup >= 0
    q = sup[valid].astype(np.int64) * span + (due[valid].astype(np.int64) - lo)
    at = np.searchsorted(key, q, side="left")
    hit = at < len(key)
    hit[hit] = r_sup[at[hit]] == sup[valid][hit]
    res = np.full(len(q), NEVER, dtype=np.int64)
    res[hit] = suffix[at[hit]]
    out[valid] = res
    return out


def _supplier_positions(index: pd.Index, supplier_ids: Iterable[str]) -> np.ndarray:
    ids = pd.Index(list(supplier_ids))
    pos = positions(index, ids)
    if (pos < 0).any():
        raise FeatureError(f"supplier id(s) not in {SUPPLIERS}: {ids[pos < 0][:5].tolist()}")
    return pos


def supplier_features(frames: Frames, supplier_ids: Iterable[str], as_of_dates: Iterable[dt.date]) -> pd.DataFrame:
    """Features of every supplier at every as-of date (the product of both), indexed by
    (supplier_id, as_of); columns ``feature_names("supplier_pd")``.

    Needs ``erp.suppliers``, ``bom``, ``sub_bom``, ``production``, ``goods_receipts``, ``payables``,
    ``credit_memos`` and ``supplier_repayments`` in ``frames``.

    Raises:
        FeatureError: if a table or column is missing or a supplier id is unknown.
    """
    index, _ = supplier_index(frames)
    sup = _supplier_positions(index, supplier_ids)
    days = np.array([day_of(d) for d in as_of_dates], dtype=np.int64)
    if not len(days) or not len(sup):
        raise FeatureError("supplier_features needs at least one supplier id and one as-of date")
    panel = SupplierPanel(frames, int(days.min()), int(days.max()))
    s_rep, d_rep = np.repeat(sup, len(days)), np.tile(days, len(sup))
    out = panel.features(s_rep, d_rep)
    out.index = pd.MultiIndex.from_arrays([index[s_rep], days_to_dates(d_rep)], names=["supplier_id", "as_of"])
    return out


def supplier_pd_dataset(frames: Frames, as_of: dt.date, *, snapshot_every_days: int = 30,
                        horizon_days: int = SUPPLIER_HORIZON_DAYS,
                        bad_min_count: int = SUPPLIER_BAD_MIN_COUNT) -> pd.DataFrame:
    """The training set of the supplier PD model as known at ``as_of``.

    Snapshots of every onboarded supplier on the dates ``first + k × snapshot_every_days`` up to
    ``as_of``, where ``first`` is the first goods-receipt day known at ``as_of`` (the caller leaves
    out a burn-in: the model factory drops the first 60 days).
    ``label`` is 1 if the supplier goes bad in ``[obs_date, obs_date + horizon_days)`` as known at
    ``as_of``, 0 if the whole horizon elapsed by ``as_of`` without it. Suppliers already bad
    before obs_date and rows still open (not bad, horizon not elapsed) are left out.
    Columns: supplier_id, obs_date, the ``supplier_pd`` features, label.
    """
    if snapshot_every_days < 1 or horizon_days < 1:
        raise FeatureError(f"snapshot_every_days and horizon_days must be >= 1, got {snapshot_every_days} "
                           f"and {horizon_days}")
    d = day_of(as_of)
    index, attrs = supplier_index(frames)
    rec = require(frames, RECEIPTS, ("received_at", "updated_at"))
    received, rec_known = timing(rec, RECEIPTS)
    seen = received[rec_known <= d]
    columns = ["supplier_id", "obs_date", *feature_names(SUPPLIER_PD), "label"]
    if not len(seen):
        return pd.DataFrame(columns=columns)
    snaps = np.arange(int(seen.min()) + FIRST_SNAPSHOT_AFTER_DAYS, d + 1, snapshot_every_days, dtype=np.int64)
    if not len(snaps):
        return pd.DataFrame(columns=columns)
    inst = Instalments.build(frames, index)
    first_bad = inst.first_bad_day(len(index), d, bad_min_count)
    sup = np.repeat(np.arange(len(index)), len(snaps))
    day = np.tile(snaps, len(index))
    bad_at = first_bad[sup]
    is_bad = (bad_at >= day) & (bad_at < day + horizon_days)
    keep = (attrs["onboarded"].to_numpy()[sup] <= day) & (bad_at >= day) & (is_bad | (day + horizon_days <= d))
    sup, day, is_bad = sup[keep], day[keep], is_bad[keep]
    panel = SupplierPanel(frames, int(snaps.min()), int(snaps.max()), instalments=inst)
    out = pd.concat([pd.DataFrame({"supplier_id": index[sup].to_numpy(), "obs_date": days_to_dates(day)}),
                     panel.features(sup, day)], axis=1)
    out["label"] = is_bad.astype(np.int64)
    return out.sort_values(["obs_date", "supplier_id"], kind="stable").reset_index(drop=True)[columns]

