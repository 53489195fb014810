"""The daily ``monitor_post_loan`` computation at reference scale, step by step, in one process.

What :func:`chainlend.monitoring_ops.early_warning` and the post-loan part of
:func:`chainlend.monitoring_ops.monitor_models` compute once the published frames are read, on
synthetic frames of the reference shape (no database: reading the frames, the quarantine and the
previous watchlist, and writing the partitions, are not timed here):

1. ``loan_dpd``: :func:`lending.early_warning.loan_dpd`, then the performing book (DPD below
   ``DEALER_GRACE_DAYS``), as ``monitoring_ops._live_loans``;
2. ``post_loan_features``: :func:`features.post_loan.post_loan_features` of the performing book
   on the as-of date, as float64;
3. ``score``: the behaviour PD of every performing loan by
   :meth:`models.trainers.Candidate.predict_pd` (as ``monitoring_ops._pd_only``: no SHAP), then
   each dealer's exposure-weighted mean PD;
4. ``dealer_signals`` (with a few quarantined duplicate VINs), ``supplier_signals``,
   ``score_signals``, ``combine`` (signals → a level per borrower), ``changes`` (against a
   previous watchlist), ``roll_rates`` (30 days back);
5. ``monitor_psi``: the baseline's and the book's scores (``_pd_only`` of both, as
   ``monitor_models`` does), their :func:`models.metrics.psi` and
   :func:`models.metrics.feature_psi` of the book's features against a 50,000-row baseline
   (``monitoring_ops.BASELINE_SAMPLE``), with their bands.

``monitor_models`` is a separate task: for this family it rebuilds the performing book and its
features (steps 1 and 2) before step 5; ``post_loan_monitoring_s`` in the report is that sum.

Input. Seeded numpy frames with exactly the contract's columns and the dtypes
``Warehouse.read_frames`` returns (pandas ``str``, datetime64[us], int64, bool; keys numbered in
row order, so sorted by the contract key as it reads them), over ``BUSINESS_DAYS`` business days
(Mon-Fri) to the business date, so the 180-day baselines exist. The shapes follow
``sources/sim_days.py``:

- dealers: the Scale's dealers (lognormal sizes, a latent risk per dealer); cars bought per
  business day = applications per day / 0.85 (85 % financed, the application 0-2 business days
  after the purchase), plus ~8 days of opening stock; each car sold after a gamma-distributed
  number of business days; a floor audit every ~20 business days per dealer (some skipped, some
  cars missing);
- loans: terms 30/60/90 days; a logistic default flag per loan (dealer risk, LTV, term; ~4 % of
  the loans): 70 % of the defaults are never repaid, the rest 31-80 days after the due date; a
  good loan is repaid 0-2 business days after its car's sale (slow payers later) or around its
  due date; a repayment row exists once paid by the business date;
- suppliers: the Scale's tier-1/tier-2 suppliers, vehicle models, BOM lines per model (parts
  shared between models) and sub-BOM (half of the parts have 1-3 tier-2 components); the Scale's
  vehicles built per day; one goods receipt and payable per part consumed per day (short
  deliveries; disputed, pending and withdrawn confirmations); credit memos; one instalment per
  confirmed payable and supplier (the tier-1 share and the tier-2 shares), some paid late, none
  after the supplier's default (~3 % of the suppliers default in the window);
- 0.5 % of the transactional rows are written 1-3 business days after their event (those of
  the last days, which would not be published yet, on time).

Volume. The reference Scale has 100,000 applications a day: 200 business days of it are 20 M
applications, 23.5 M cars and ~18 M repayments, more than this entry's budget (about 4 minutes
on 2 cores, 24 GB). Most steps match string keys over the whole book (hashing 10 M strings takes
~5 s here), and ``post_loan_features`` alone grows to minutes. So the entry uses
``APPS_PER_DAY`` applications a day and the reference Scale for everything else (dealers,
suppliers, BOM, vehicles per day); the report records the sizes used.

The model: LightGBM with the production ``TrainConfig()`` (one thread, early stopping), trained
at setup (not timed) on synthetic post-loan features shaped like the book's; the PSI baseline is
50,000 rows of the same distribution. There is no goal: the figures are the time of one daily
run. ``python -m bench.monitor_bench 10000`` runs it at another volume.
"""

from __future__ import annotations

import datetime as dt
import gc
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 31
BUSINESS_DATE = dt.date(2026, 3, 2)  # a Monday; the run's as_of is the next day
BUSINESS_DAYS = 200
APPS_PER_DAY = 35_000  # the volume used (the reference Scale has 100,000 a day): see the module doc
FINANCED_SHARE = 0.85  # sources.sim_world.FINANCED_SHARE
OPENING_STOCK_DAYS = 8
LATE_SHARE = 0.005  # rows written 1-3 business days after their event
DUPLICATE_VINS = 40  # VINs the gate quarantined as duplicates in the last 30 days
TRAIN_ROWS = 80_000
ROLL_BACK_DAYS = 30
DAY_US = 86_400 * 10**6
HOUR_S = 3_600

_MAKES = ("Toyota Corolla", "Toyota Camry", "Honda Accord", "Honda Civic", "VW Lavida", "VW Sagitar",
          "VW Passat", "Nissan Sylphy", "Buick Excelle", "Buick Regal", "BYD Qin", "BYD Han", "Geely Emgrand",
          "Changan CS75", "Haval H6", "Audi A4L", "BMW 3 Series", "Mercedes C-Class", "Mazda 3", "Kia K5",
          "Hyundai Elantra", "Chevrolet Cruze", "Ford Focus", "Skoda Octavia", "Tesla Model 3", "Li Auto L7",
          "Nio ET5", "Xpeng P7", "Wuling Hongguang", "Roewe i5")
_CITIES = ("Shanghai", "Beijing", "Shenzhen", "Guangzhou", "Chengdu", "Hangzhou", "Wuhan", "Nanjing", "Xi'an",
           "Suzhou", "Tianjin", "Changsha", "Zhengzhou", "Dongguan", "Qingdao", "Kunming", "Ningbo", "Hefei",
           "Foshan", "Shenyang", "Jinan", "Harbin", "Fuzhou", "Wuxi", "Xiamen", "Nanning", "Taiyuan", "Lanzhou")
_PLANTS = ("Anting", "Changchun", "Chengdu", "Foshan")
_COMPONENTS = ("housing", "bracket", "seal", "sensor", "harness", "bearing")
_REASONS = ("return", "quality_dispute", "price_adjustment")
_STATUSES = ("confirmed", "pending", "disputed", "withdrawn")
_DIGITS5 = np.stack([(np.arange(100_000) // 10 ** (4 - j)) % 10 + 48 for j in range(5)],
                    axis=1).astype(np.uint8)  # the ASCII digits of 0 .. 99,999


# --------------------------------------------------------------------------------------------
# columns as Warehouse.read_frames returns them


def _str_array(arrow_array):
    """An Arrow string array as a column of pandas' default string dtype (``str``)."""
    return pd.array(arrow_array, dtype=pd.Series(["x"]).dtype)


def _serials(prefix: str, numbers, width: int):
    """``prefix`` + each number zero-padded to ``width`` (<= 10) digits, built as bytes (no
    Python strings): the ids of the simulator (``APP0000000001``) and 17-character VINs."""
    import pyarrow as pa

    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(numbers)
    parts = [("head", np.bytes_(prefix.encode()))]
    if width > 5:
        parts.append(("high", _digits(width - 5, numbers // 100_000)))
    parts.append(("low", _digits(min(width, 5), numbers % 100_000)))
    rows = np.empty(n, dtype=[(name, np.asarray(value).dtype) for name, value in parts])  # one row = one id
    for name, value in parts:
        rows[name] = value
    offsets = np.arange(n + 1, dtype=np.int64) * rows.dtype.itemsize
    return _str_array(pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(rows)))


def _digits(k: int, values: np.ndarray) -> np.ndarray:
    """The last ``k`` (1-5) ASCII digits of each of ``values`` (< 100,000), as ``S{k}`` items."""
    return np.ascontiguousarray(_DIGITS5[:, 5 - k:]).view(f"S{k}").ravel()[values]


def _labels(values, codes):
    """``values[codes]`` as a ``str`` column."""
    import pyarrow as pa

    return _str_array(pa.array(list(values), type=pa.large_string()).take(pa.array(np.asarray(codes, np.int64))))


def _stamp(day, seconds) -> np.ndarray:
    """datetime64[us] of day numbers plus seconds into the day."""
    us = np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return (np.asarray(day, dtype=np.int64) * DAY_US + us).astype("datetime64[us]")


def _days(day) -> np.ndarray:
    return np.asarray(day, dtype=np.int64).astype("datetime64[D]")


def _dates(day) -> np.ndarray:
    return _days(day).astype("datetime64[us]")


class _Calendar:
    """Business days (Mon-Fri) indexed from the first day of the window (0 .. days-1)."""

    def __init__(self, end: dt.date, days: int):
        self.end = np.datetime64(end, "D")
        self.first = np.busday_offset(self.end, -(days - 1), roll="backward")
        self.days = days
        self.end_day = int(self.end.astype(np.int64))

    def day(self, k) -> np.ndarray:
        """Day numbers of business-day indexes (any integer, before or after the window)."""
        return np.busday_offset(self.first, np.asarray(k, dtype=np.int64)).astype(np.int64)

    def add(self, day, n) -> np.ndarray:
        """The business day ``n`` business days after each calendar day (rolled forward first)."""
        return np.busday_offset(_days(day), n, roll="forward").astype(np.int64)

    def back(self, day) -> np.ndarray:
        """The last business day on or before each calendar day."""
        return np.busday_offset(_days(day), 0, roll="backward").astype(np.int64)

    def index(self, day) -> np.ndarray:
        """Business-day indexes of business days."""
        return np.busday_count(self.first, _days(day)).astype(np.int64)


def _written(rng, cal: _Calendar, event_us: np.ndarray) -> np.ndarray:
    """``updated_at``: 1 min - 2 h after the event; 1-3 business days later for ``LATE_SHARE`` of
    the rows, unless that falls after the business date (such a row would not be published yet;
    writing it on time keeps every built row published, and there are few)."""
    n = len(event_us)
    lag = rng.integers(60, 2 * HOUR_S, n).astype(np.int64) * 10**6
    late = np.flatnonzero(rng.random(n) < LATE_SHARE)
    ev_day = event_us[late].astype("datetime64[D]").astype(np.int64)
    later = cal.add(ev_day, rng.integers(1, 4, len(late)))
    keep = later <= cal.end_day
    lag[late[keep]] += (later[keep] - ev_day[keep]) * DAY_US
    return (event_us.astype(np.int64) + lag).astype("datetime64[us]")


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _frame(columns: dict, key: str, cal: _Calendar) -> pd.DataFrame:
    """The published table ``key``: ``columns``, checked to be exactly the contract's (in order)
    and written by the end of the business date."""
    from sources.contract import table

    source, name = key.split(".")
    names = table(source, name).column_names
    if list(columns) != list(names):
        raise AssertionError(f"{key}: built columns {list(columns)}, the contract has {list(names)}")
    if not (np.asarray(columns["updated_at"]) < np.datetime64(cal.end + 1, "us")).all():
        raise AssertionError(f"{key}: rows written after the business date {cal.end}")
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------------------------
# dealer platform


def dealer_frames(scale, apps_per_day: int, cal: _Calendar, seed: int) -> tuple[dict, dict]:
    """``dealer.*`` frames, and the number of loans that default and that are never repaid."""
    rng = np.random.default_rng([seed, 1])
    nd, days = scale.dealers, cal.days
    size = rng.lognormal(0.0, 0.7, nd)
    risk = rng.normal(0.0, 1.0, nd)
    style = rng.normal(0.0, 0.5, (nd, 3))  # habits: days to sale, repayment, audits
    cars_per_day = apps_per_day / FINANCED_SHARE
    blocked = rng.random(nd) < 0.005 * np.exp(risk)
    city = rng.integers(0, len(_CITIES), nd)
    dealers = _frame({
        "dealer_id": _serials("D", np.arange(1, nd + 1), 6),
        "dealer_name": _labels([f"{_CITIES[c]} Auto Trading {i:04d}" for i, c in enumerate(city)], np.arange(nd)),
        "owner_name": _labels([f"Owner {i:05d}" for i in range(nd)], np.arange(nd)),
        "owner_id_number": _serials("11010119800101", np.arange(nd), 4),
        "phone": _serials("1380", rng.permutation(nd), 7),
        "city": _labels(_CITIES, city),
        "city_tier": rng.choice(np.array([1, 2, 3, 4]), nd, p=[0.15, 0.3, 0.35, 0.2]).astype(np.int64),
        "onboarded_on": _dates(cal.day(0) - np.clip(rng.exponential(900, nd), 30, 3_650).astype(np.int64)),
        "status": _labels(("active", "blocked"), blocked.astype(np.int64)),
        "updated_at": np.full(nd, _stamp(cal.day(-60), 0)),
    }, "dealer.dealers", cal)

    # cars bought on business day k (the opening stock 1-40 business days before the window)
    k = np.concatenate([-rng.integers(1, 41, rng.poisson(OPENING_STOCK_DAYS * cars_per_day)),
                        np.repeat(np.arange(days), rng.poisson(cars_per_day, days))])
    n = len(k)
    dealer = rng.choice(nd, n, p=size / size.sum())
    acquired_us = _stamp(cal.day(k), rng.uniform(8 * HOUR_S, 17 * HOUR_S, n))
    order = np.argsort(acquired_us, kind="stable")  # VINs numbered in purchase order
    k, dealer, acquired_us = k[order], dealer[order], acquired_us[order]
    age = rng.integers(1, 11, n)
    purchase = np.maximum(200_000, np.round(rng.lognormal(np.log(9e6), 0.45, n), -4)).astype(np.int64)
    appraised = np.round(purchase * rng.uniform(0.97, 1.15, n) * np.exp(-0.02 * risk[dealer]), -2).astype(np.int64)
    dts_mean = np.clip(12.0 * np.exp(0.25 * (risk[dealer] + style[dealer, 0])) * (1 + 0.04 * age), 2.0, 120.0)
    dts = np.maximum(1, np.round(rng.gamma(2.0, dts_mean / 2.0))).astype(np.int64)  # business days to sale
    opening = np.maximum(1, np.round(rng.exponential(dts_mean))).astype(np.int64)  # from the first day
    sale_k = np.where(k < 0, opening, k + dts)
    inventory = _frame({
        "vin": _serials("LSVAB2C3", np.arange(n), 9), "dealer_id": _serials("D", dealer + 1, 6),
        "make_model": _labels(_MAKES, rng.integers(0, len(_MAKES), n)),
        "model_year": (int(str(cal.end)[:4]) - age).astype(np.int64),
        "mileage_km": np.round(age * rng.uniform(8_000, 20_000, n)).astype(np.int64),
        "purchase_price_fen": purchase, "appraised_value_fen": appraised,
        "acquired_at": acquired_us, "updated_at": _written(rng, cal, acquired_us),
    }, "dealer.inventory", cal)

    sold_us = _stamp(cal.day(sale_k), rng.uniform(9 * HOUR_S, 18 * HOUR_S, n))
    price = np.round(appraised * np.clip(rng.normal(1.03 - 0.02 * risk[dealer], 0.04), 0.7, 1.3), -4)
    s = np.flatnonzero(sale_k < days)
    s = s[np.argsort(sold_us[s], kind="stable")]
    sales = _frame({
        "sale_id": _serials("SAL", np.arange(1, len(s) + 1), 10), "vin": _serials("LSVAB2C3", s, 9),
        "dealer_id": _serials("D", dealer[s] + 1, 6), "sale_price_fen": price[s].astype(np.int64),
        "sold_at": sold_us[s], "updated_at": _written(rng, cal, sold_us[s]),
    }, "dealer.sales", cal)

    # loan applications of the financed cars bought in the window, numbered in application order
    lag = np.minimum(rng.choice(np.array([0, 1, 2]), n, p=[0.75, 0.2, 0.05]), dts - 1)
    a = np.flatnonzero((k >= 0) & (rng.random(n) < FINANCED_SHARE) & (k + lag < days))
    app_day = cal.day(k[a] + lag[a])
    after_purchase = acquired_us[a].astype(np.int64) // 10**6 + rng.integers(900, 3 * HOUR_S, len(a))
    applied_s = np.where(lag[a] == 0, np.minimum(after_purchase, app_day * 86_400 + 18 * HOUR_S - 1),
                         app_day * 86_400 + rng.integers(8 * HOUR_S, 18 * HOUR_S, len(a)))
    order = np.argsort(applied_s, kind="stable")
    a, applied_s = a[order], applied_s[order]
    applied_us = (applied_s * 10**6).astype("datetime64[us]")
    na = len(a)
    ad = dealer[a]
    ltv = np.clip(rng.uniform(0.55, 0.80, na) + 0.03 * risk[ad], 0.4, 0.88)
    requested = np.maximum(10_000, np.floor(np.minimum(appraised[a] * ltv, purchase[a]) / 10_000) * 10_000
                           ).astype(np.int64)
    term = rng.choice(np.array([30, 60, 90]), na, p=[0.3, 0.45, 0.25]).astype(np.int64)
    default = rng.random(na) < _sigmoid(_logit(0.025) + 0.9 * risk[ad] + 1.5 * (requested / appraised[a] - 0.68)
                                        + np.select([term == 30, term == 90], [-0.25, 0.25], 0.0))
    applications = _frame({
        "application_id": _serials("APP", np.arange(1, na + 1), 10), "dealer_id": _serials("D", ad + 1, 6),
        "vin": _serials("LSVAB2C3", a, 9), "purchase_price_fen": purchase[a], "appraised_value_fen": appraised[a],
        "requested_fen": requested, "term_days": term, "applied_at": applied_us,
        "updated_at": _written(rng, cal, applied_us),
    }, "dealer.loan_applications", cal)

    # repayments: after the car's sale (slow payers later) or around the due date; defaults late or never
    applied_day = applied_s // 86_400
    due = applied_day + term
    sale_day = cal.day(sale_k[a])
    ra = risk[ad] + style[ad, 1]
    slow = rng.random(na) < _sigmoid(_logit(0.1) + ra)
    after_sale = np.where(slow, 1 + np.round(rng.exponential(3.0 + 5.0 * np.maximum(ra, 0.0))),
                          rng.integers(0, 3, na)).astype(np.int64)
    at_due = np.where(slow, np.round(rng.exponential(3.0 + 6.0 * np.maximum(ra, 0.0))),
                      -rng.integers(0, 4, na)).astype(np.int64)
    good = np.minimum(np.where(sale_day <= due, cal.add(sale_day, after_sale), cal.add(due + at_due, 0)),
                      cal.back(due + 25))
    bad = cal.add(due + rng.integers(31, 81, na), 0)
    pay = np.maximum(np.where(default, bad, good), cal.add(applied_day, 1))
    never = default & (rng.random(na) < 0.7)
    r = np.flatnonzero(~never & (pay <= cal.end_day))
    paid_us = _stamp(pay[r], rng.uniform(9 * HOUR_S, 18 * HOUR_S, len(r)))
    order = np.argsort(paid_us, kind="stable")
    r, paid_us = r[order], paid_us[order]
    interest = np.round(requested[r] * 0.085 * (pay[r] - applied_day[r]) / 365)
    repayments = _frame({
        "repayment_id": _serials("LRP", np.arange(1, len(r) + 1), 10),
        "application_id": _serials("APP", r + 1, 10), "dealer_id": _serials("D", ad[r] + 1, 6),
        "amount_fen": (requested[r] + interest).astype(np.int64),
        "due_on": _dates(due[r]), "paid_at": paid_us, "updated_at": _written(rng, cal, paid_us),
    }, "dealer.loan_repayments", cal)

    # floor audits, every ~20 business days per dealer
    au_k, au_d = np.nonzero(rng.random((days, nd)) < 1 / 20)
    open_ = ~blocked[au_d]
    au_k, au_d = au_k[open_], au_d[open_]
    ra = risk[au_d] + style[au_d, 2]
    expected = rng.poisson(size[au_d] / size.mean() * cars_per_day / nd * 15)
    missing = rng.binomial(expected, np.clip(0.003 * np.exp(ra), 0.0, 0.3))
    skipped = rng.random(len(au_k)) < _sigmoid(_logit(0.04) + 0.9 * ra)
    audited_us = _stamp(cal.day(au_k), rng.uniform(9 * HOUR_S, 17 * HOUR_S, len(au_k)))
    audits = _frame({
        "audit_id": _serials("AUD", np.arange(1, len(au_k) + 1), 10), "dealer_id": _serials("D", au_d + 1, 6),
        "audited_at": audited_us, "vehicles_expected": expected.astype(np.int64),
        "vehicles_found": np.where(skipped, 0, expected - missing).astype(np.int64), "skipped": skipped,
        "updated_at": _written(rng, cal, audited_us),
    }, "dealer.floor_audits", cal)

    frames = {"dealer.dealers": dealers, "dealer.inventory": inventory, "dealer.sales": sales,
              "dealer.floor_audits": audits, "dealer.loan_applications": applications,
              "dealer.loan_repayments": repayments}
    return frames, {"defaulting_loans": int(default.sum()), "never_repaid_loans": int(never.sum())}


# --------------------------------------------------------------------------------------------
# ERP


def erp_frames(scale, cal: _Calendar, seed: int) -> dict:
    """The ``erp.*`` frames the supplier rules read: suppliers, BOM, sub-BOM, production, goods
    receipts, payables, credit memos and supplier repayments."""
    rng = np.random.default_rng([seed, 2])
    days = cal.days
    n1, n2 = scale.tier1_suppliers, scale.tier2_suppliers
    ns = n1 + n2
    s_size = rng.lognormal(0.0, 0.9, ns)
    s_risk = rng.normal(0.0, 1.0, ns)
    defaults_on = np.where(rng.random(ns) < 0.03, rng.integers(30, days, ns), days + 10_000)  # business-day index
    terms = rng.choice(np.array([30, 45, 60, 60, 60, 90]), ns)
    city = rng.integers(0, len(_CITIES), ns)
    suppliers = _frame({
        "supplier_id": _serials("S", np.arange(1, ns + 1), 5),
        "supplier_name": _labels([f"{_CITIES[c]} Parts {i:04d} Co., Ltd." for i, c in enumerate(city)],
                                 np.arange(ns)),
        "registration_no": _serials("91310000MA1", np.arange(ns), 7),
        "contact_phone": _serials("1390", rng.permutation(ns), 7),
        "tier": np.array([1] * n1 + [2] * n2, dtype=np.int64), "city": _labels(_CITIES, city),
        "onboarded_on": _dates(cal.day(0) - np.clip(rng.exponential(2_200, ns), 120, 9_000).astype(np.int64)),
        "updated_at": np.full(ns, _stamp(cal.day(-60), 0)),
    }, "erp.suppliers", cal)

    # parts (a pool shared by the models), BOM and sub-BOM
    lines, nm = scale.bom_lines_per_model, scale.vehicle_models
    n_parts = max(lines, int(round(lines * nm * scale.parts_sharing)), n1)
    part_supplier = np.concatenate([rng.permutation(n1),
                                    rng.choice(n1, n_parts - n1, p=s_size[:n1] / s_size[:n1].sum())])
    part_price = np.maximum(100, np.round(12_000_000 / (lines * 2.5) * rng.lognormal(-0.6, 1.1, n_parts), -1)
                            ).astype(np.int64)
    popularity = rng.lognormal(0.0, 1.0, n_parts)
    usage = np.zeros((nm, n_parts), dtype=np.int64)
    for m in range(nm):
        usage[m, rng.choice(n_parts, lines, replace=False, p=popularity / popularity.sum())] = rng.choice(
            np.array([1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 4, 4, 3, 6, 8]), lines)
    bm, bp = np.nonzero(usage)
    bom = _frame({
        "bom_line_id": _serials("BL", np.arange(1, len(bm) + 1), 7), "model_id": _serials("M", bm + 1, 3),
        "part_id": _serials("P", bp + 1, 6), "supplier_id": _serials("S", part_supplier[bp] + 1, 5),
        "quantity": usage[bm, bp], "unit_price_fen": part_price[bp],
        "updated_at": np.full(len(bm), _stamp(cal.day(-60), 0)),
    }, "erp.bom", cal)
    customers: dict[int, list[int]] = {c: [] for c in range(n1)}  # tier-1 → its tier-2 suppliers
    for j in range(n1, ns):
        for c in rng.choice(n1, int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])), replace=False):
            customers[int(c)].append(j)
    sub_parent, sub_supplier, sub_share = [], [], []
    for p in np.flatnonzero(rng.random(n_parts) < scale.sub_bom_fraction):
        tier2 = customers[int(part_supplier[p])]
        if not tier2:
            continue
        k = int(rng.integers(1, 4))
        for share in rng.dirichlet(np.ones(k)) * rng.uniform(0.2, 0.55):
            sub_parent.append(p)
            sub_supplier.append(tier2[int(rng.integers(len(tier2)))])
            sub_share.append(share)
    sub_parent, sub_supplier, sub_share = np.array(sub_parent), np.array(sub_supplier), np.array(sub_share)
    n_sub = len(sub_parent)
    sub_qty = rng.choice(np.array([1, 1, 2, 4]), n_sub)
    sub_bom = _frame({
        "sub_bom_line_id": _serials("SB", np.arange(1, n_sub + 1), 7),
        "parent_part_id": _serials("P", sub_parent + 1, 6), "supplier_id": _serials("S", sub_supplier + 1, 5),
        "component_name": _labels(_COMPONENTS, rng.integers(0, len(_COMPONENTS), n_sub)),
        "quantity": sub_qty.astype(np.int64),
        "unit_price_fen": np.maximum(1, np.round(part_price[sub_parent] * sub_share / sub_qty)).astype(np.int64),
        "updated_at": np.full(n_sub, _stamp(cal.day(-60), 0)),
    }, "erp.sub_bom", cal)

    # production, and one receipt (and payable) per part consumed per day from its tier-1 supplier
    pk = np.repeat(np.arange(days), rng.poisson(scale.vehicles_per_day, days))
    pm = rng.choice(nm, len(pk), p=rng.dirichlet(np.full(nm, 4.0)))
    produced_us = _stamp(cal.day(pk), rng.uniform(8 * HOUR_S, 15 * HOUR_S, len(pk)))
    order = np.argsort(produced_us, kind="stable")
    pk, pm, produced_us = pk[order], pm[order], produced_us[order]
    production = _frame({
        "vin": _serials("LFVOEM0A", np.arange(len(pk)), 9),
        "order_id": _serials("ORD", np.arange(1, len(pk) + 1), 10),
        "model_id": _serials("M", pm + 1, 3), "plant": _labels(_PLANTS, pm % len(_PLANTS)),
        "produced_at": produced_us, "updated_at": _written(rng, cal, produced_us),
    }, "erp.production", cal)
    per_model = np.zeros((days, nm), dtype=np.int64)
    np.add.at(per_model, (pk, pm), 1)
    consumption = per_model @ usage  # (days, parts)
    rk, rpart = np.nonzero(consumption)
    consumed = consumption[rk, rpart]
    sup = part_supplier[rpart]
    p_short = _sigmoid(_logit(0.02) + 0.8 * s_risk[sup]) + 0.3 * (defaults_on[sup] <= rk)
    short = rng.random(len(rk)) < np.clip(p_short, 0.0, 0.9)
    qty = np.where(short, np.floor(consumed * rng.uniform(0.6, 0.95, len(rk))), consumed).astype(np.int64)
    received_s = cal.day(rk) * 86_400 + rng.integers(8 * HOUR_S, 12 * HOUR_S, len(rk))
    keep = np.flatnonzero(qty > 0)
    keep = keep[np.argsort(received_s[keep], kind="stable")]
    rk, rpart, sup, qty, received_s = rk[keep], rpart[keep], sup[keep], qty[keep], received_s[keep]
    nr = len(rk)
    amount = qty * part_price[rpart]
    received_us = (received_s * 10**6).astype("datetime64[us]")
    receipts = _frame({
        "receipt_id": _serials("GR", np.arange(1, nr + 1), 10), "supplier_id": _serials("S", sup + 1, 5),
        "part_id": _serials("P", rpart + 1, 6), "quantity": qty, "amount_fen": amount, "received_at": received_us,
        "updated_at": _written(rng, cal, received_us),
    }, "erp.goods_receipts", cal)

    rs = s_risk[sup]
    p_withdrawn = np.minimum(0.002 * np.exp(0.7 * rs), 0.05)
    p_disputed = _sigmoid(_logit(0.015) + 0.8 * rs)
    u = rng.random(nr)
    status = np.zeros(nr, dtype=np.int64)  # an index into _STATUSES
    status[u < p_withdrawn + p_disputed + 0.05] = 1
    status[u < p_withdrawn + p_disputed] = 2
    status[u < p_withdrawn] = 3
    confirmed_s = received_s + rng.integers(HOUR_S, 5 * HOUR_S, nr)
    unconfirmed = (status == 1) | (status == 2)
    confirmed_us = (confirmed_s * 10**6).astype("datetime64[us]")
    pay_day = cal.day(rk)
    payables = _frame({
        "payable_id": _serials("PAY", np.arange(1, nr + 1), 10),
        "receipt_id": _serials("GR", np.arange(1, nr + 1), 10),
        "supplier_id": _serials("S", sup + 1, 5), "amount_fen": amount, "due_on": _dates(pay_day + terms[sup]),
        "confirmation_status": _labels(_STATUSES, status),
        "confirmed_at": np.where(unconfirmed, np.datetime64("NaT", "us"), confirmed_us),
        "updated_at": _written(rng, cal, np.where(unconfirmed, received_us, confirmed_us)),
    }, "erp.payables", cal)

    # credit memos, 1-15 business days after the receipt
    disputed = status == 2
    has_memo = rng.random(nr) < np.clip(_sigmoid(_logit(0.012) + 0.8 * rs) + 0.5 * disputed, 0.0, 0.95)
    memo_amount = np.maximum(1, np.round(amount * rng.uniform(0.02, 0.25, nr))).astype(np.int64)
    memo_k = rk + rng.integers(1, 16, nr)
    mrow = np.flatnonzero(has_memo & (memo_k < days))
    issued_us = _stamp(cal.day(memo_k[mrow]), rng.uniform(9 * HOUR_S, 18 * HOUR_S, len(mrow)))
    order = np.argsort(issued_us, kind="stable")
    mrow, issued_us = mrow[order], issued_us[order]
    memos = _frame({
        "memo_id": _serials("CM", np.arange(1, len(mrow) + 1), 10), "payable_id": _serials("PAY", mrow + 1, 10),
        "supplier_id": _serials("S", sup[mrow] + 1, 5), "amount_fen": memo_amount[mrow],
        "reason": _labels(_REASONS, np.where(disputed[mrow], 1, rng.integers(0, 3, len(mrow)))),
        "issued_at": issued_us, "updated_at": _written(rng, cal, issued_us),
    }, "erp.credit_memos", cal)

    # instalments of the confirmed payables: the tier-1 share and one per tier-2 supplier of the part
    conf = np.flatnonzero(status == 0)
    net = 0.8 * (amount - np.where(has_memo, memo_amount, 0))[conf].astype(np.float64)
    by_parent = np.argsort(sub_parent, kind="stable")
    sp, ss, sh = sub_parent[by_parent], sub_supplier[by_parent], sub_share[by_parent]
    lo, hi = np.searchsorted(sp, rpart[conf], "left"), np.searchsorted(sp, rpart[conf], "right")
    cnt = hi - lo
    row = np.repeat(np.arange(len(conf)), cnt)
    line = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    t2_share = np.bincount(row, weights=sh[line], minlength=len(conf))
    pairs, inverse = np.unique(row * ns + ss[line], return_inverse=True)
    t2_amount = np.bincount(inverse, weights=net[row] * sh[line], minlength=len(pairs))
    i_row = np.concatenate([np.arange(len(conf)), pairs // ns])
    i_sup = np.concatenate([sup[conf], pairs % ns])
    i_amount = np.round(np.concatenate([net * (1.0 - t2_share), t2_amount])).astype(np.int64)
    ni = len(i_row)
    ir = s_risk[i_sup]
    late = rng.random(ni) < _sigmoid(_logit(0.08) + ir)
    late_days = np.minimum(45, 1 + np.round(rng.exponential(2.0 + 5.0 * np.maximum(ir, 0.0)))).astype(np.int64)
    early = np.where(rng.random(ni) < 0.3, rng.integers(1, 4, ni), 0)
    i_due = (pay_day + terms[sup])[conf][i_row]
    i_pay = np.maximum(cal.add(i_due + np.where(late, late_days, -early), 0), cal.add(pay_day[conf][i_row], 1))
    paid = np.flatnonzero((i_amount > 0) & (i_pay <= cal.end_day) & (cal.index(i_pay) < defaults_on[i_sup]))
    paid_us = _stamp(i_pay[paid], rng.uniform(9 * HOUR_S, 18 * HOUR_S, len(paid)))
    order = np.argsort(paid_us, kind="stable")
    paid, paid_us = paid[order], paid_us[order]
    instalments = _frame({
        "repayment_id": _serials("SRP", np.arange(1, len(paid) + 1), 10),
        "supplier_id": _serials("S", i_sup[paid] + 1, 5), "payable_id": _serials("PAY", conf[i_row[paid]] + 1, 10),
        "amount_fen": i_amount[paid], "due_on": _dates(i_due[paid]), "paid_at": paid_us,
        "updated_at": _written(rng, cal, paid_us),
    }, "erp.supplier_repayments", cal)

    return {"erp.suppliers": suppliers, "erp.bom": bom, "erp.sub_bom": sub_bom, "erp.production": production,
            "erp.goods_receipts": receipts, "erp.payables": payables, "erp.credit_memos": memos,
            "erp.supplier_repayments": instalments}


def build(scale_name: str, apps_per_day: int, days: int = BUSINESS_DAYS, seed: int = SEED) -> tuple[dict, dict]:
    """The frames of a daily run (``{"<source>.<table>": frame}``) and facts about the loans."""
    from sources.simulator import SCALES

    scale = SCALES[scale_name]
    cal = _Calendar(BUSINESS_DATE, days)
    frames, facts = dealer_frames(scale, apps_per_day, cal, seed)
    frames.update(erp_frames(scale, cal, seed))
    return frames, facts


# --------------------------------------------------------------------------------------------
# setup: the model and its baseline, the previous watchlist, quarantined duplicates


def synthetic_features(n: int, seed: int, loans_per_dealer_day: float) -> tuple[pd.DataFrame, np.ndarray]:
    """``(X, y)``: post-loan behaviour features shaped like those of the performing book of these
    frames (counts of a dealer's loans grow with its loans a day) and a logistic label (~6 % bad)."""
    from features.definitions import POST_LOAN, feature_names

    rng = np.random.default_rng(seed)
    lam = loans_per_dealer_day
    term = rng.choice(np.array([30.0, 60.0, 90.0]), n, p=[0.3, 0.45, 0.25])
    since = np.minimum(1 + np.floor(rng.exponential(20.0, n)), term + 29)
    sold = (rng.random(n) < 0.08 + 0.3 * np.minimum(since / 60, 1.0)).astype(np.float64)
    sold_unpaid = np.where(sold == 1, np.minimum(since, np.floor(rng.exponential(20.0, n))), 0.0)
    overdue = rng.negative_binomial(1, 1 / (1 + 5.8 * lam), n).astype(np.float64)
    late = rng.poisson(0.13 * lam * since * rng.gamma(1.0, 1.0, n)).astype(np.float64)
    sales_vs = np.where(rng.random(n) < 0.01, np.nan, rng.lognormal(-0.08, 0.45, n))
    ltv = np.clip(rng.normal(0.685, 0.079, n), 0.4, 0.88)
    X = pd.DataFrame({
        "days_since_drawdown": since, "days_to_due": term - since, "vehicle_sold": sold,
        "days_sold_unpaid": sold_unpaid, "dealer_overdue_loans_now": overdue,
        "dealer_late_repays_since_drawdown": late,
        "stock_change_since_drawdown": np.round(rng.normal(0.5, 5.9 * np.sqrt(lam), n)),
        "sales_since_drawdown_vs_expected": sales_vs, "appraisal_drift": rng.normal(0.0, 0.005, n), "ltv": ltv,
        "term_days": term,
    })[feature_names(POST_LOAN)]
    z = (-3.4 + 0.05 * sold_unpaid + 0.25 * np.log1p(overdue / lam) + 0.1 * np.log1p(late) + 2.0 * (ltv - 0.68)
         + 0.03 * np.maximum(since - term, 0) - 0.5 * np.nan_to_num(sales_vs - 1.0))
    return X, (rng.random(n) < _sigmoid(z)).astype(np.int64)


def train_model(seed: int, loans_per_dealer_day: float):
    """A LightGBM post-loan model (``TrainConfig()``, as production) and the PSI baseline."""
    from chainlend.monitoring_ops import BASELINE_SAMPLE
    from models.trainers import TrainConfig, train_candidate

    X, y = synthetic_features(TRAIN_ROWS + BASELINE_SAMPLE, seed, loans_per_dealer_day)
    cut = int(TRAIN_ROWS * 0.8)
    candidate = train_candidate("lightgbm", X.iloc[:cut], y[:cut], X.iloc[cut:TRAIN_ROWS], y[cut:TRAIN_ROWS],
                                TrainConfig())
    return candidate, X.iloc[TRAIN_ROWS:].reset_index(drop=True)


def previous_levels(frames: dict, seed: int) -> pd.DataFrame:
    """The previous run's levels: a quarter of the borrowers not green."""
    rng = np.random.default_rng([seed, 3])
    dealers, suppliers = frames["dealer.dealers"].dealer_id, frames["erp.suppliers"].supplier_id
    ids = np.concatenate([dealers.to_numpy(dtype=object), suppliers.to_numpy(dtype=object)])
    kind = np.array(["dealer"] * len(dealers) + ["supplier"] * len(suppliers), dtype=object)
    pick = rng.random(len(ids)) < 0.25
    level = rng.choice(np.array(["yellow", "orange", "red"], dtype=object), int(pick.sum()), p=[0.6, 0.3, 0.1])
    return pd.DataFrame({"borrower_type": kind[pick], "borrower_id": ids[pick], "level": level})


def quarantined_duplicates(frames: dict, as_of: dt.date, seed: int) -> pd.DataFrame:
    """``duplicate_vins`` (``monitoring_ops.duplicate_vins``): VINs of applications the gate
    quarantined as duplicates in the last 30 days."""
    rng = np.random.default_rng([seed, 4])
    apps = frames["dealer.loan_applications"]
    rows = rng.choice(len(apps), DUPLICATE_VINS, replace=False)
    detected = pd.Timestamp(as_of) - pd.to_timedelta(rng.integers(1, 30, DUPLICATE_VINS), unit="D")
    return pd.DataFrame({"vin": apps.vin.to_numpy(dtype=object)[rows],
                         "dealer_id": apps.dealer_id.to_numpy(dtype=object)[rows], "detected_at": detected})


# --------------------------------------------------------------------------------------------
# the daily run


def daily_run(frames: dict, as_of: dt.date, candidate, baseline: pd.DataFrame, previous: pd.DataFrame,
              duplicates: pd.DataFrame) -> tuple[dict[str, float], dict]:
    """The steps of one daily run, each timed: ``({step: seconds}, {what came out})``."""
    from features.definitions import DEALER_GRACE_DAYS, POST_LOAN, feature_names
    from features.post_loan import post_loan_features
    from lending import early_warning as ew
    from models import metrics as m

    cfg = ew.EW_CONFIG_V1
    names = feature_names(POST_LOAN)
    spent: dict[str, float] = {}

    def step(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        spent[name] = time.perf_counter() - t0
        return out

    def live_loans():  # monitoring_ops._live_loans
        unpaid = ew.loan_dpd(frames, as_of)
        return unpaid, unpaid[unpaid.dpd < DEALER_GRACE_DAYS].reset_index(drop=True)

    def features(loans):
        feats = post_loan_features(frames, pd.DataFrame({"application_id": loans.application_id.to_numpy(),
                                                         "as_of": pd.Timestamp(as_of)}))
        return feats[names].astype("float64").reset_index(drop=True)

    def score(loans, X):  # monitoring_ops.early_warning: the PDs, each dealer's exposure-weighted mean PD
        pds = candidate.predict_pd(X)
        weight = loans.outstanding_fen.astype(float).to_numpy()
        dealer = loans.dealer_id.to_numpy()
        mean = pd.Series(weight * pds).groupby(dealer).sum() / pd.Series(weight).groupby(dealer).sum()
        return pds, mean.rename("score").rename_axis("borrower_id").reset_index().assign(borrower_type="dealer")

    def combine(parts):
        signals = pd.concat(parts, ignore_index=True)
        borrowers = pd.concat([  # as monitoring_ops.early_warning
            pd.DataFrame({"borrower_type": kind, "borrower_id": frames[key][column].astype(str)})
            for kind, key, column in (("dealer", "dealer.dealers", "dealer_id"),
                                      ("supplier", "erp.suppliers", "supplier_id"))], ignore_index=True)
        return signals, ew.combine(signals, borrowers, cfg)

    def monitor_psi(X):  # monitoring_ops.monitor_models, post_loan_behaviour: score and feature PSI
        score_psi = m.psi(candidate.predict_pd(baseline), candidate.predict_pd(X))
        fpsi = m.feature_psi(baseline, X, names)
        return score_psi, fpsi, fpsi.map(m.psi_band)

    unpaid, loans = step("loan_dpd", live_loans)
    X = step("post_loan_features", features, loans)
    pds, scores = step("score", score, loans, X)
    dealer = step("dealer_signals", ew.dealer_signals, frames, as_of, cfg, duplicate_vins=duplicates)
    supplier = step("supplier_signals", ew.supplier_signals, frames, as_of, cfg)
    behaviour = step("score_signals", ew.score_signals, scores[["borrower_type", "borrower_id", "score"]], cfg)
    signals, levels = step("combine", combine, [dealer, supplier, behaviour])
    changed = step("changes", ew.changes, previous, levels)
    rolls = step("roll_rates", ew.roll_rates, frames, as_of, prior=as_of - dt.timedelta(days=ROLL_BACK_DAYS))
    score_psi, _, bands = step("monitor_psi", monitor_psi, X)
    counts = levels.level.value_counts()
    return spent, {
        "loans_unpaid": len(unpaid),
        "loans_scored": len(loans),
        "dpd_buckets": {str(k): int(v) for k, v in unpaid.bucket.value_counts().sort_index().items()},
        "mean_pd": round(float(np.mean(pds)), 4),
        "dealers_scored": len(scores),
        "signals": len(signals),
        "rules_fired": {str(k): int(v) for k, v in signals.rule.value_counts().sort_index().items()},
        "levels": {lv: int(counts.get(lv, 0)) for lv in ew.LEVELS},
        "new_or_escalated": len(changed),
        "roll_rate_rows": len(rolls),
        "score_psi": round(score_psi, 4),
        "feature_psi_bands": {str(k): int(v) for k, v in bands.value_counts().sort_index().items()},
    }


def run(scale: str, workdir: Path, apps_per_day: int = APPS_PER_DAY) -> dict:
    from sources.simulator import SCALES

    ref = SCALES[scale]
    per_day = min(apps_per_day, ref.applications_per_day)
    as_of = BUSINESS_DATE + dt.timedelta(days=1)
    t0 = time.perf_counter()
    frames, facts = build(scale, per_day)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    candidate, baseline = train_model(SEED, per_day / ref.dealers)
    previous = previous_levels(frames, SEED)
    duplicates = quarantined_duplicates(frames, as_of, SEED)
    setup_s = time.perf_counter() - t0
    gc.collect()

    load = os.getloadavg()[0]
    spent, out = daily_run(frames, as_of, candidate, baseline, previous, duplicates)
    total = sum(spent.values())
    rows = {key: len(df) for key, df in frames.items()}
    apps, scored = rows["dealer.loan_applications"], out["loans_scored"]
    top = max(spent, key=spent.get)
    return {
        "scale": scale,
        "business_date": BUSINESS_DATE.isoformat(),
        "business_days": BUSINESS_DAYS,
        "applications_per_day": per_day,
        "scale_applications_per_day": ref.applications_per_day,
        "dealers": ref.dealers,
        "suppliers": ref.tier1_suppliers + ref.tier2_suppliers,
        "vehicles_per_day": ref.vehicles_per_day,
        "bom_lines": ref.vehicle_models * ref.bom_lines_per_model,
        "rows": rows,
        "rows_total": sum(rows.values()),
        **facts,
        "psi_baseline_rows": len(baseline),
        "build_frames_s": round(build_s, 1),
        "setup_s": round(setup_s, 1),
        "load_avg_1m": round(load, 2),
        "steps_s": {k: round(v, 2) for k, v in spent.items()},
        "total_s": round(total, 1),
        "post_loan_monitoring_s": round(spent["loan_dpd"] + spent["post_loan_features"] + spent["monitor_psi"], 1),
        "rows_per_s": {
            "loan_dpd_applications": round(apps / spent["loan_dpd"]),
            "post_loan_features_loans": round(scored / spent["post_loan_features"]),
            "score_loans": round(scored / spent["score"]),
            "dealer_signals_applications": round(apps / spent["dealer_signals"]),
            "supplier_signals_payables": round(rows["erp.payables"] / spent["supplier_signals"]),
            "roll_rates_applications": round(apps / spent["roll_rates"]),
            "daily_run_applications": round(apps / total),
        },
        "outputs": out,
        "summary": (f"one daily monitor_post_loan computation on {apps:,} loan applications ({per_day:,}/day × "
                    f"{BUSINESS_DAYS} business days; the {scale} Scale has {ref.applications_per_day:,}/day), "
                    f"{rows['dealer.inventory']:,} cars, {rows['dealer.loan_repayments']:,} repayments, "
                    f"{rows['erp.payables']:,} payables and {rows['erp.supplier_repayments']:,} supplier "
                    f"instalments: {total:.1f} s, {scored:,} performing loans scored; largest step {top} "
                    f"({spent[top]:.1f} s); load {load:.1f}"),
    }


if __name__ == "__main__":  # one run at another volume: python -m bench.monitor_bench 10000
    import json
    import sys

    from chainlend import settings

    settings.apply_embedded_defaults()
    volume = int(sys.argv[1]) if len(sys.argv) > 1 else APPS_PER_DAY
    print(json.dumps(run("reference", Path("/tmp"), volume), indent=2))
