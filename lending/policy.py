"""The approval policy of the used-car order loan: versioned configuration in code, validated on load.

A policy is written as a plain mapping (so it can live in code, JSON or YAML alike) and turned into
a frozen :class:`ApprovalPolicy` by :func:`load_approval_policy`, which checks every field and
raises :class:`PolicyError` naming the field, what was expected and what it got. A decision records
``policy.version`` and :func:`policy_hash` so it is always known exactly which policy ran.

Bands partition the PD scale: band ``i`` holds ``bands[i-1].max_pd <= pd < bands[i].max_pd``
(the first band starts at 0); the last band's ``max_pd`` is at least 1.0 and it is closed at the
top, so every PD in [0, 1] falls in exactly one band (see :meth:`ApprovalPolicy.band_index`).

Rates are fixed-point: advance rates and LGD are multiples of 0.0001 (one basis point), so amounts
and expected losses are computed in exact integer arithmetic on fen (``0.57 * 100`` is
``56.99999999999999`` in floating point; a loan amount must not depend on that).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

APPROVE = "approve"
REDUCE = "reduce"
REVIEW = "review"
DECLINE = "decline"
# a band's action, from least to most severe; bands must not get milder as PD rises
ACTIONS = (APPROVE, REDUCE, REVIEW, DECLINE)
CITY_TIERS = (1, 2, 3, 4)
RATE_SCALE = 10_000  # advance rates and LGD are whole basis points
_FIELDS = ("version", "bands", "lgd", "max_vehicle_age_years", "max_mileage_km",
           "dealer_limit_fen_by_city_tier", "min_amount_fen")
_BAND_FIELDS = ("name", "max_pd", "action", "advance_rate")


class PolicyError(ValueError):
    """A policy mapping is invalid; the message names the field, the expectation and the value got."""


@dataclass(frozen=True)
class Band:
    """One PD band: PDs below ``max_pd`` (and at or above the previous band's) get ``action``.

    ``advance_rate`` is the share of the appraised value the band lends at most (0 for decline).
    """

    name: str
    max_pd: float
    action: str
    advance_rate: float

    @property
    def advance_bp(self) -> int:
        """The advance rate in whole basis points (exact)."""
        return round(self.advance_rate * RATE_SCALE)


@dataclass(frozen=True)
class ApprovalPolicy:
    """The order-loan approval policy. Build it with :func:`load_approval_policy`, never directly.

    ``dealer_limit_fen_by_city_tier`` is each dealer's total exposure limit by the tier of its city
    (before an early-warning limit cut). Applications whose amount would fall below
    ``min_amount_fen`` are declined. Vehicles older than ``max_vehicle_age_years`` or with more than
    ``max_mileage_km`` are declined (the limits themselves are allowed).
    """

    version: str
    bands: tuple[Band, ...]
    lgd: float
    max_vehicle_age_years: int
    max_mileage_km: int
    dealer_limit_fen_by_city_tier: dict[int, int]
    min_amount_fen: int

    @property
    def lgd_bp(self) -> int:
        """LGD in whole basis points (exact)."""
        return round(self.lgd * RATE_SCALE)

    def band_index(self, pd_value: float) -> int:
        """Index of the band holding ``pd_value`` (upper bounds exclusive; the last band is closed)."""
        for i, band in enumerate(self.bands[:-1]):
            if pd_value < band.max_pd:
                return i
        return len(self.bands) - 1

    def as_mapping(self) -> dict[str, Any]:
        """The mapping :func:`load_approval_policy` reads back into an equal policy (JSON-ready)."""
        return {
            "version": self.version,
            "bands": [{"name": b.name, "max_pd": b.max_pd, "action": b.action, "advance_rate": b.advance_rate}
                      for b in self.bands],
            "lgd": self.lgd,
            "max_vehicle_age_years": self.max_vehicle_age_years,
            "max_mileage_km": self.max_mileage_km,
            "dealer_limit_fen_by_city_tier": {str(t): v for t, v in
                                              sorted(self.dealer_limit_fen_by_city_tier.items())},
            "min_amount_fen": self.min_amount_fen,
        }


def policy_hash(policy: ApprovalPolicy) -> str:
    """SHA-256 hex of the policy's canonical JSON (sorted keys, no whitespace, floats as ``repr``)."""
    canonical = json.dumps(policy.as_mapping(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           allow_nan=False)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


# validation -----------------------------------------------------------------------------------

def _fail(field: str, expected: str, got: Any) -> PolicyError:
    return PolicyError(f"{field}: expected {expected}, got {got!r}")


def _int(value: Any, field: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, f"an integer >= {minimum}", value)
    if value < minimum:
        raise _fail(field, f"an integer >= {minimum}", value)
    return int(value)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(field, "a finite number", value)
    return float(value)


def _basis_points(value: float, field: str) -> None:
    scaled = value * RATE_SCALE
    if abs(scaled - round(scaled)) > 1e-6:
        raise _fail(field, "a multiple of 0.0001 (whole basis points)", value)


def _keys(mapping: Any, field: str, expected: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(mapping, Mapping):
        raise _fail(field, f"a mapping with keys {list(expected)}", mapping)
    missing = [k for k in expected if k not in mapping]
    if missing:
        raise _fail(field, f"keys {list(expected)}", f"a mapping missing {missing}")
    unknown = sorted(str(k) for k in mapping if k not in expected)
    if unknown:
        raise _fail(field, f"only the keys {list(expected)}", f"a mapping with unknown keys {unknown}")
    return mapping


def _band(raw: Any, i: int) -> Band:
    where = f"bands[{i}]"
    raw = _keys(raw, where, _BAND_FIELDS)
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise _fail(f"{where}.name", "a non-empty string", name)
    max_pd = _number(raw["max_pd"], f"{where}.max_pd")
    if max_pd <= 0:
        raise _fail(f"{where}.max_pd", "a PD bound > 0", max_pd)
    action = raw["action"]
    if action not in ACTIONS:
        raise _fail(f"{where}.action", f"one of {list(ACTIONS)}", action)
    rate = _number(raw["advance_rate"], f"{where}.advance_rate")
    if action == DECLINE:
        if rate != 0:
            raise _fail(f"{where}.advance_rate", "0 for a decline band", rate)
    elif not 0 < rate <= 1:
        raise _fail(f"{where}.advance_rate", f"a share in (0, 1] for a {action} band", rate)
    _basis_points(rate, f"{where}.advance_rate")
    return Band(name, max_pd, action, rate)


def _bands(raw: Any) -> tuple[Band, ...]:
    if isinstance(raw, str | bytes) or not isinstance(raw, list | tuple) or not raw:
        raise _fail("bands", "a non-empty list of bands", raw)
    bands = tuple(_band(b, i) for i, b in enumerate(raw))
    names = [b.name for b in bands]
    if len(set(names)) != len(names):
        raise _fail("bands", "unique band names", names)
    for i in range(1, len(bands)):
        prev, band = bands[i - 1], bands[i]
        if band.max_pd <= prev.max_pd:
            raise _fail(f"bands[{i}].max_pd", f"ascending bounds, > bands[{i - 1}].max_pd = {prev.max_pd}",
                        band.max_pd)
        if ACTIONS.index(band.action) < ACTIONS.index(prev.action):
            raise _fail(f"bands[{i}].action", f"an action at least as severe as bands[{i - 1}]'s "
                        f"{prev.action!r} (order {list(ACTIONS)})", band.action)
        if band.action != DECLINE and band.advance_rate > prev.advance_rate:
            raise _fail(f"bands[{i}].advance_rate", f"a rate <= bands[{i - 1}].advance_rate = "
                        f"{prev.advance_rate} (riskier bands never lend more)", band.advance_rate)
    if bands[-1].max_pd < 1.0:
        raise _fail(f"bands[{len(bands) - 1}].max_pd", "the last band to reach PD 1.0 (max_pd >= 1.0), "
                    "so the bands cover [0, 1]", bands[-1].max_pd)
    return bands


def _tier_limits(raw: Any) -> dict[int, int]:
    field = "dealer_limit_fen_by_city_tier"
    if not isinstance(raw, Mapping):
        raise _fail(field, f"a mapping of city tier {list(CITY_TIERS)} to a limit in fen", raw)
    limits: dict[int, int] = {}
    for key, value in raw.items():
        tier = int(key) if isinstance(key, str) and key.isdigit() else key
        if isinstance(tier, bool) or tier not in CITY_TIERS:
            raise _fail(field, f"city tiers {list(CITY_TIERS)} as keys", key)
        if tier in limits:
            raise _fail(field, "each city tier once", key)
        limits[tier] = _int(value, f"{field}[{tier}]", minimum=1)
    missing = [t for t in CITY_TIERS if t not in limits]
    if missing:
        raise _fail(field, f"a limit for every city tier {list(CITY_TIERS)}", f"no limit for tiers {missing}")
    return dict(sorted(limits.items()))


def load_approval_policy(mapping: Mapping[str, Any]) -> ApprovalPolicy:
    """Validate a policy mapping and build the frozen :class:`ApprovalPolicy`.

    Raises:
        PolicyError: on a missing or unknown key, a wrong type, or a value out of range: a version
            that is not a non-empty string; bands that are empty, unordered, with an unknown action,
            actions getting milder or advance rates rising with PD, a decline band advancing more
            than 0, another band's rate outside (0, 1] or finer than a basis point, or a last band
            not reaching PD 1.0; an LGD outside (0, 1]; limits that are not positive integers or do
            not cover city tiers 1..4; a negative minimum amount. The message names the field.
    """
    mapping = _keys(mapping, "policy", _FIELDS)
    version = mapping["version"]
    if not isinstance(version, str) or not version.strip():
        raise _fail("version", "a non-empty string", version)
    bands = _bands(mapping["bands"])
    lgd = _number(mapping["lgd"], "lgd")
    if not 0 < lgd <= 1:
        raise _fail("lgd", "a share in (0, 1]", lgd)
    _basis_points(lgd, "lgd")
    return ApprovalPolicy(
        version=version,
        bands=bands,
        lgd=lgd,
        max_vehicle_age_years=_int(mapping["max_vehicle_age_years"], "max_vehicle_age_years", minimum=1),
        max_mileage_km=_int(mapping["max_mileage_km"], "max_mileage_km", minimum=1),
        dealer_limit_fen_by_city_tier=_tier_limits(mapping["dealer_limit_fen_by_city_tier"]),
        min_amount_fen=_int(mapping["min_amount_fen"], "min_amount_fen", minimum=0),
    )


FEN_PER_CNY = 100

# A 30-90-day loan to buy one used car, no collateral, around a 5 % mean dealer PD. The bands put
# the bulk of dealers (PD < 6 %) in automatic approval at 70-80 % of the appraised value, lend
# less and only at a reduced amount up to 10 %, send 10-18 % to a credit officer at 50 %, and
# decline above. LGD 45 % is the Basel foundation-IRB senior unsecured value: the car is not
# pledged, and sold-out-of-trust losses are the main loss channel.
APPROVAL_POLICY_V1 = load_approval_policy({
    "version": "order-loan-v1",
    "bands": [
        {"name": "A", "max_pd": 0.03, "action": APPROVE, "advance_rate": 0.80},
        {"name": "B", "max_pd": 0.06, "action": APPROVE, "advance_rate": 0.70},
        {"name": "C", "max_pd": 0.10, "action": REDUCE, "advance_rate": 0.55},
        {"name": "D", "max_pd": 0.18, "action": REVIEW, "advance_rate": 0.50},
        {"name": "E", "max_pd": 1.0, "action": DECLINE, "advance_rate": 0.0},
    ],
    "lgd": 0.45,
    "max_vehicle_age_years": 10,
    "max_mileage_km": 200_000,
    # sized for the simulated dealers: ~10 financed purchases a day at ~72,000 CNY, held 30-60
    # days, put a dealer's order-loan book at 20-40 million CNY (the first limits, 0.5-3 million,
    # declined two applications in three for the limit)
    "dealer_limit_fen_by_city_tier": {
        1: 60_000_000 * FEN_PER_CNY,
        2: 40_000_000 * FEN_PER_CNY,
        3: 25_000_000 * FEN_PER_CNY,
        4: 15_000_000 * FEN_PER_CNY,
    },
    "min_amount_fen": 10_000 * FEN_PER_CNY,
})
