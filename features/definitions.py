"""Every feature the builders produce, with its meaning and unit, and the label definitions.

One place names each feature column of the three model families, so training, scoring,
monitoring (PSI per feature) and the reason codes of a decision agree on what a column means.
A test checks that the builders produce exactly these columns, in this order.
"""

from __future__ import annotations

from dataclasses import dataclass

DEALER_PD = "dealer_pd"
SUPPLIER_PD = "supplier_pd"
POST_LOAN = "post_loan_behaviour"
OWNER = "risk-modelling"

# labels -------------------------------------------------------------------------------------
DEALER_BAD_DPD = 30  # a dealer loan is bad at 30+ days past due ...
DEALER_GRACE_DAYS = 30  # ... i.e. not repaid before due_on + 30 days (due_on = applied date + term)
SUPPLIER_BAD_DPD = 60  # a supplier is bad once an instalment is unpaid 60 days after its due date ...
SUPPLIER_HORIZON_DAYS = 365  # ... within 12 months of the observation date
SUPPLIER_BAD_WINDOW = 30  # materiality: of the instalments reaching 60 DPD within 30 days ...
SUPPLIER_BAD_SHARE = 0.5  # ... at least half unpaid (a supplier that stopped paying)
SUPPLIER_BAD_MIN_COUNT = 2  # ... and at least two of them

# windows (days before the as-of date)
SHORT_WINDOW = 30
MID_WINDOW = 90
# a loan counts as "overdue now" for at most this many days past due (then it is non-performing)
OVERDUE_NOW_MAX_DPD = 90
LONG_WINDOW = 180
YEAR_WINDOW = 365
OLD_STOCK_DAYS = 60
# a financed car's loan repaid more than this many days after the car was sold: sold out of trust
SOLD_OUT_OF_TRUST_DAYS = 5
MID_TERM_DAYS = 60  # terms above it are long (the platform offers 30, 60 and 90 days)


@dataclass(frozen=True)
class Feature:
    """One model input column."""

    name: str
    family: str
    description: str
    unit: str
    owner: str = OWNER


def _family(family: str, rows: tuple[tuple[str, str, str], ...]) -> tuple[Feature, ...]:
    return tuple(Feature(name, family, desc, unit) for name, desc, unit in rows)


_DEALER_LEVEL = (
    ("sales_30d", "cars the dealer sold in the 30 days before the as-of date", "count"),
    ("sales_90d", "cars the dealer sold in the 90 days before the as-of date", "count"),
    ("sales_trend", "daily sales rate of the last 30 days / rate of the last 180 days (or of the dealer's "
                    "shorter observed history); NaN without a sale in 180 days", "ratio"),
    ("stock_count", "cars on the lot at the as-of date (bought, not yet sold)", "count"),
    ("stock_age_mean_days", "mean days since acquisition of the cars on the lot; NaN with no stock", "days"),
    ("stock_over_60d_share", "share of the cars on the lot held more than 60 days; NaN with no stock", "share"),
    ("turnover_90d", "sales_90d / stock_count; NaN with no stock", "ratio"),
    ("loans_matured_365d", "the dealer's order loans whose label window (due + 30 days) closed in the last "
                           "365 days", "count"),
    ("bad_loan_share_365d", "share of those matured loans not repaid before due + 30 days; NaN if none "
                            "matured", "share"),
    ("late_repay_share_180d", "share of the dealer's repayments of the last 180 days paid after their due "
                              "date; NaN if none", "share"),
    ("overdue_loans_now", "the dealer's loans 1-90 days past their due date and not repaid at the as-of date",
     "count"),
    ("overdue_30_now", "the dealer's loans 30-90 days past due and not repaid at the as-of date", "count"),
    ("sale_to_repay_days_180d", "mean days from the financed car's sale to the loan's repayment (0 if repaid "
                                "before the sale), over the repayments of the last 180 days whose car's sale is "
                                "known; NaN if none", "days"),
    ("repaid_late_after_sale_share_180d", "share of those repayments made more than 5 days after the car's sale "
                                          "(sold out of trust); NaN if none", "share"),
    ("applications_90d", "the dealer's order-loan applications of the last 90 days", "count"),
    ("ltv_mean_90d", "mean requested amount / appraised value of those applications; NaN if none", "ratio"),
    ("long_term_share_90d", "share of those applications asking for a term over 60 days; NaN if none", "share"),
    ("audits_180d", "floor audits of the dealer in the last 180 days", "count"),
    ("audit_skips_180d", "floor audits the dealer skipped in the last 180 days", "count"),
    ("audit_missing_share_180d", "cars missing / cars expected at the completed audits of the last 180 days; "
                                 "NaN without a completed audit", "share"),
    ("appraisal_ratio_90d", "mean appraised value / purchase price of the cars the dealer bought in the last "
                            "90 days; NaN if none", "ratio"),
    ("sale_to_appraisal_90d", "mean sale price / appraised value of the cars the dealer sold in the last 90 "
                              "days; NaN if none", "ratio"),
    ("acquired_age_mean_90d", "mean age (acquisition year - model year) of the cars the dealer bought in the "
                              "last 90 days; NaN if none", "years"),
    ("acquired_mileage_mean_90d", "mean odometer of the cars the dealer bought in the last 90 days; NaN if "
                                  "none", "km"),
    ("tenure_days", "days since the dealer was onboarded", "days"),
    ("city_tier", "tier of the dealer's city, 1 (largest) .. 4", "tier"),
)
_VEHICLE = (
    ("vehicle_age_years", "year of the application - model year of the financed car", "years"),
    ("mileage_km", "odometer of the financed car at acquisition", "km"),
    ("price_to_appraisal", "purchase price / appraised value of the financed car", "ratio"),
    ("ltv", "requested amount / appraised value", "ratio"),
    ("term_days", "requested loan term", "days"),
    ("appraised_value_cny", "platform appraisal of the financed car", "CNY"),
)

FEATURES: dict[str, tuple[Feature, ...]] = {
    DEALER_PD: _family(DEALER_PD, _DEALER_LEVEL + _VEHICLE),
    SUPPLIER_PD: _family(SUPPLIER_PD, (
        ("tier", "1 = sells to the OEM, 2 = sells to a tier-1 supplier", "tier"),
        ("tenure_days", "days since the supplier was onboarded", "days"),
        ("bom_share", "the supplier's share of the OEM's BOM cost (tier-2: its sub-BOM components weighted "
                      "by the parent parts' BOM usage)", "share"),
        ("delivery_ratio_30d", "goods received from the supplier in the last 30 days / the amount the last "
                               "30 days' production consumed by the BOM; tier-1 only (NaN for tier-2 or "
                               "without production)", "ratio"),
        ("payables_90d_fen", "payables to the supplier of the last 90 days", "fen"),
        ("disputed_share_90d", "disputed amount / payable amount of the last 90 days; NaN without payables",
         "share"),
        ("withdrawn_90d", "payables whose confirmation the OEM withdrew in the last 90 days", "count"),
        ("dilution_ratio_90d", "credit memo amount / payable amount of the last 90 days; NaN without payables",
         "ratio"),
        ("late_instalment_share_180d", "share of the instalments paid in the last 180 days that were paid "
                                       "after their due date; NaN if none", "share"),
        ("mean_days_late_180d", "mean days past due (0 if on time) of those instalments; NaN if none", "days"),
        ("max_days_late_180d", "largest days past due of those instalments; NaN if none", "days"),
        ("days_since_last_payment", "days since the supplier's last instalment payment; NaN if none", "days"),
        ("overdue_instalments_now", "expected instalments past their due date and not paid at the as-of date",
         "count"),
        # in default already? (a supplier that stopped paying leaves every instalment due since unpaid)
        ("oldest_overdue_dpd", "days past due of the supplier's oldest expected instalment not paid at the as-of "
                               "date; 0 if none is overdue", "days"),
        ("unpaid_streak_dpd", "days past due of the oldest expected instalment that fell due after the supplier's "
                              "last known instalment payment (all of them if it never paid) and is unpaid at the "
                              "as-of date: how long it has not paid anything due; 0 if none", "days"),
        ("unpaid_due_30d", "expected instalments due in the 30 days before the as-of date and not paid at it",
         "count"),
        ("repaid_due_ratio_30d", "of the expected instalments due in the 30 days before the as-of date, the share "
                                 "paid by the as-of date; NaN if none fell due", "share"),
        ("repaid_due_ratio_90d", "the same over the 90 days before the as-of date; NaN if none fell due", "share"),
        ("missed_due_30d", "expected instalments due in the 30 days before the as-of date and not paid by their "
                           "due date (paid late or still unpaid), as known at the as-of date", "count"),
        ("missed_due_60d", "the same over the 60 days before the as-of date", "count"),
        ("missed_due_90d", "the same over the 90 days before the as-of date", "count"),
        ("due_since_last_payment", "expected instalments that fell due after the supplier's last known instalment "
                                   "payment (all of them if it never paid) and are unpaid at the as-of date",
         "count"),
        # the same behaviours over the last 30 days: the supplier's risk moves (a daily AR(1) with a
        # half-life of about a month in the simulator), and a 90/180-day window lags a deterioration
        ("disputed_share_30d", "disputed amount / payable amount of the last 30 days; NaN without payables",
         "share"),
        ("dilution_ratio_30d", "credit memo amount / payable amount of the last 30 days; NaN without payables",
         "ratio"),
        ("late_instalment_share_30d", "share of the instalments paid in the last 30 days that were paid after "
                                      "their due date; NaN if none", "share"),
        ("mean_days_late_30d", "mean days past due (0 if on time) of the instalments paid in the last 30 days; "
                               "NaN if none", "days"),
    )),
    POST_LOAN: _family(POST_LOAN, (
        ("days_since_drawdown", "days since the loan was drawn (its application date)", "days"),
        ("days_to_due", "days until the due date (negative once past due)", "days"),
        ("vehicle_sold", "1 if a sale of the financed car is known", "flag"),
        ("days_sold_unpaid", "days since the financed car was sold while the loan is unpaid (sold out of "
                             "trust); 0 if not sold", "days"),
        ("dealer_overdue_loans_now", "the dealer's loans 1-90 days past due and not repaid", "count"),
        ("dealer_late_repays_since_drawdown", "late repayments of the dealer that became known since the "
                                              "drawdown", "count"),
        ("stock_change_since_drawdown", "cars on the dealer's lot now - at the drawdown", "count"),
        ("sales_since_drawdown_vs_expected", "the dealer's sales that became known since the drawdown / the "
                                             "sales its daily rate over the 90 days (or its shorter "
                                             "history) before the drawdown predicts; NaN if that rate was 0", "ratio"),
        ("appraisal_drift", "the dealer's appraisal_ratio_90d now - at the drawdown", "ratio"),
        ("ltv", "requested amount / appraised value", "ratio"),
        ("term_days", "loan term", "days"),
    )),
}


def feature_names(family: str) -> list[str]:
    """The feature columns of a model family, in order.

    Raises:
        KeyError: for an unknown family, naming the known ones.
    """
    if family not in FEATURES:
        raise KeyError(f"unknown feature family {family!r}; expected one of {sorted(FEATURES)}")
    return [f.name for f in FEATURES[family]]
