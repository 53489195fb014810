"""Reason codes of an order-loan decision, with texts in Chinese and English.

Two kinds of code:

- rule codes ``R01``..``R11``: a hard rule or the policy decided (blocked dealer, old vehicle, PD
  band, amount caps ...). Some texts are templates filled with the policy values that applied
  (``{max_vehicle_age_years}``, ``{advance_pct}`` ...): pass them to :func:`reason_text`.
- model codes ``M_<feature>``: one per feature of the dealer PD model
  (``features.definitions.FEATURES["dealer_pd"]``). The model names the features that pushed a
  PD up most; the text says what a risk-increasing value of that feature means, in words a dealer
  and a credit officer can act on.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from features.definitions import DEALER_PD, feature_names

LANGS = ("zh", "en")
MODEL_PREFIX = "M_"


@dataclass(frozen=True)
class Reason:
    """One reason code and its texts; texts may hold ``{placeholders}`` named in :attr:`params`."""

    code: str
    zh: str
    en: str

    @property
    def params(self) -> tuple[str, ...]:
        """The placeholder names the texts use, sorted."""
        names = {f for text in (self.zh, self.en) for _, f, _, _ in string.Formatter().parse(text) if f}
        return tuple(sorted(names))


# rule codes, in the order a decision lists them ---------------------------------------------------
DEALER_BLOCKED = "R01"
VEHICLE_TOO_OLD = "R02"
MILEAGE_TOO_HIGH = "R03"
VIN_FINANCED = "R04"
DEALER_FROZEN = "R05"
LIMIT_REACHED = "R06"
REDUCED_TO_ADVANCE = "R07"
REDUCED_TO_LIMIT = "R08"
BELOW_MINIMUM = "R09"
BAND_REVIEW = "R10"
BAND_DECLINED = "R11"

_RULES = (
    Reason(DEALER_BLOCKED, "经销商已被列入禁入名单", "The dealer is blocked from new loans"),
    Reason(VEHICLE_TOO_OLD, "车龄超过{max_vehicle_age_years}年上限",
           "The vehicle is older than the {max_vehicle_age_years}-year limit"),
    Reason(MILEAGE_TOO_HIGH, "行驶里程超过{max_mileage_km}公里上限",
           "The vehicle's mileage exceeds the {max_mileage_km} km limit"),
    Reason(VIN_FINANCED, "该车辆（VIN）已有在贷或已获批的融资",
           "The vehicle (VIN) is already financed by an approved loan"),
    Reason(DEALER_FROZEN, "贷后预警已冻结该经销商的新增用款",
           "Post-loan early warning has frozen new drawdowns for the dealer"),
    Reason(LIMIT_REACHED, "经销商授信额度已用尽（剩余额度低于最低贷款金额）",
           "The dealer's exposure limit is used up (the remaining limit is below the minimum loan)"),
    Reason(REDUCED_TO_ADVANCE, "金额已下调至评估价的{advance_pct}（风险等级{band}的放款比例）",
           "Amount reduced to {advance_pct} of the appraised value, the advance rate of risk band {band}"),
    Reason(REDUCED_TO_LIMIT, "金额已下调至经销商剩余授信额度",
           "Amount reduced to the dealer's remaining exposure limit"),
    Reason(BELOW_MINIMUM, "可贷金额低于最低贷款金额{min_amount_cny}元",
           "The loan amount available is below the minimum of CNY {min_amount_cny}"),
    Reason(BAND_REVIEW, "违约概率处于风险等级{band}，需人工审批",
           "The probability of default is in risk band {band}, which requires manual review"),
    Reason(BAND_DECLINED, "违约概率处于风险等级{band}，超出可受理范围",
           "The probability of default is in risk band {band}, which is declined"),
)

# model codes: what a risk-increasing value of each dealer_pd feature means -----------------------
_MODEL_TEXTS: dict[str, tuple[str, str]] = {
    "sales_30d": ("近30天销量偏低", "Few cars sold in the last 30 days"),
    "sales_90d": ("近90天销量偏低", "Few cars sold in the last 90 days"),
    "sales_trend": ("销量较自身历史水平下降",
                    "Sales velocity has fallen against the dealer's own history"),
    "stock_count": ("在库车辆数量对风险不利（库存积压或经营规模过小）",
                    "The number of cars on the lot points to risk (stock piling up, or a very small operation)"),
    "stock_age_mean_days": ("库存车辆平均在库时间偏长", "Cars on the lot have been held for a long time on average"),
    "stock_over_60d_share": ("在库超过60天的车辆占比偏高", "A high share of the stock has been on the lot over 60 days"),
    "turnover_90d": ("库存周转偏慢（近90天销量相对库存偏少）",
                     "Stock turns over slowly: few sales in 90 days relative to the cars on the lot"),
    "loans_matured_365d": ("近一年到期贷款记录对风险不利（还款历史较短或用款集中）",
                           "The number of loans matured in the last year points to risk (a short or "
                           "concentrated repayment record)"),
    "bad_loan_share_365d": ("近一年到期贷款中逾期30天以上未还的占比偏高",
                            "A high share of the dealer's loans of the last year went 30+ days past due"),
    "late_repay_share_180d": ("近180天逾期还款占比偏高", "A high share of repayments in the last 180 days were late"),
    "sale_to_repay_days_180d": ("近180天车辆售出后还款偏慢",
                                "Loans of the last 180 days were repaid slowly after their cars were sold"),
    "repaid_late_after_sale_share_180d": ("近180天车辆售出超过5天才还款的占比偏高（售车未及时还款）",
                                          "A high share of recent loans were repaid more than 5 days after "
                                          "the car was sold (sold out of trust)"),
    "applications_90d": ("近90天融资申请数量对风险不利", "The number of loan applications in the last 90 days "
                                                         "points to risk"),
    "ltv_mean_90d": ("近90天申请的贷款价值比偏高", "The dealer's applications of the last 90 days asked for a high "
                                                   "loan-to-value"),
    "long_term_share_90d": ("近90天申请长期限贷款的占比偏高", "A high share of the dealer's recent applications "
                                                              "asked for long terms"),
    "overdue_loans_now": ("当前有逾期未还贷款", "The dealer has loans past due and unpaid now"),
    "overdue_30_now": ("当前有逾期30天以上未还贷款", "The dealer has loans 30+ days past due and unpaid now"),
    "audits_180d": ("近180天库存核查次数对风险不利（核查覆盖不足）",
                    "Floor audits in the last 180 days point to risk (too little audit coverage)"),
    "audit_skips_180d": ("近180天有未配合的库存核查", "The dealer skipped floor audits in the last 180 days"),
    "audit_missing_share_180d": ("库存核查中发现车辆缺失", "Cars were missing at floor audits in the last 180 days"),
    "appraisal_ratio_90d": ("近90天收车评估价相对收购价不利（收购价偏高）",
                            "Recent purchases were appraised low against the prices paid (overpaying for stock)"),
    "sale_to_appraisal_90d": ("近90天售价低于评估价（折价销售）",
                              "Recent sales were below the appraised values (selling at a discount)"),
    "acquired_age_mean_90d": ("近90天收购车辆车龄偏大", "Cars bought in the last 90 days are old on average"),
    "acquired_mileage_mean_90d": ("近90天收购车辆里程偏高", "Cars bought in the last 90 days have high mileage on average"),
    "tenure_days": ("合作时间较短", "The dealer has a short relationship with the platform"),
    "city_tier": ("所在城市等级对应的市场风险较高", "The dealer's city tier carries higher market risk"),
    "vehicle_age_years": ("融资车辆车龄偏大", "The financed vehicle is old"),
    "mileage_km": ("融资车辆里程偏高", "The financed vehicle has high mileage"),
    "price_to_appraisal": ("收购价高于评估价", "The purchase price is high against the appraised value"),
    "ltv": ("申请金额相对评估价偏高（贷款价值比高）",
            "The requested amount is high against the appraised value (high loan-to-value)"),
    "term_days": ("申请期限对风险不利（期限较长）", "The requested term raises the risk (a longer term)"),
    "appraised_value_cny": ("融资车辆评估价对风险不利", "The appraised value of the vehicle raises the risk"),
}


def model_code(feature: str) -> str:
    """The reason code of a dealer_pd feature, ``M_<feature>``."""
    return MODEL_PREFIX + feature


def _catalogue() -> dict[str, Reason]:
    names = feature_names(DEALER_PD)
    missing = [n for n in names if n not in _MODEL_TEXTS]
    stale = [n for n in _MODEL_TEXTS if n not in names]
    if missing or stale:  # a definitions change must come with its reason texts
        raise RuntimeError(f"dealer_pd reason texts out of date: missing {missing}, not features {stale}")
    reasons = {r.code: r for r in _RULES}
    for name in names:
        zh, en = _MODEL_TEXTS[name]
        reasons[model_code(name)] = Reason(model_code(name), zh, en)
    return reasons


REASONS: dict[str, Reason] = _catalogue()
RULE_CODES: tuple[str, ...] = tuple(r.code for r in _RULES)


def reason_text(code: str, lang: str, **params: object) -> str:
    """The text of ``code`` in ``lang`` ("zh" or "en"), its placeholders filled from ``params``.

    Raises:
        KeyError: for an unknown code, or a placeholder of the text missing from ``params``.
        ValueError: for an unknown language.
    """
    if lang not in LANGS:
        raise ValueError(f"lang: expected one of {list(LANGS)}, got {lang!r}")
    if code not in REASONS:
        raise KeyError(f"unknown reason code {code!r}")
    reason = REASONS[code]
    missing = [p for p in reason.params if p not in params]
    if missing:
        raise KeyError(f"reason {code} needs the parameters {missing}")
    return getattr(reason, lang).format(**params)
