"""The approval policy: V1 values, bands, the canonical hash, and the loader refusing bad configs."""

from __future__ import annotations

import copy

import pytest

from lending.policy import (
    APPROVAL_POLICY_V1,
    ApprovalPolicy,
    Band,
    PolicyError,
    load_approval_policy,
    policy_hash,
)


def good() -> dict:
    return copy.deepcopy(APPROVAL_POLICY_V1.as_mapping())


def test_v1_values():
    p = APPROVAL_POLICY_V1
    assert [(b.name, b.max_pd, b.action, b.advance_rate) for b in p.bands] == [
        ("A", 0.03, "approve", 0.80), ("B", 0.06, "approve", 0.70), ("C", 0.10, "reduce", 0.55),
        ("D", 0.18, "review", 0.50), ("E", 1.0, "decline", 0.0)]
    assert (p.lgd, p.max_vehicle_age_years, p.max_mileage_km, p.min_amount_fen) == (0.45, 10, 200_000, 1_000_000)
    assert p.dealer_limit_fen_by_city_tier == {1: 6_000_000_000, 2: 4_000_000_000, 3: 2_500_000_000, 4: 1_500_000_000}
    assert isinstance(p.bands[0], Band) and isinstance(p, ApprovalPolicy)


def test_round_trip_and_hash():
    again = load_approval_policy(good())
    assert again == APPROVAL_POLICY_V1
    h = policy_hash(APPROVAL_POLICY_V1)
    assert h == policy_hash(again) and len(h) == 64 and int(h, 16) >= 0
    changed = good()
    changed["bands"][1]["advance_rate"] = 0.65
    assert policy_hash(load_approval_policy(changed)) != h
    renamed = good()
    renamed["version"] = "order-loan-v2"
    assert policy_hash(load_approval_policy(renamed)) != h


def test_tier_keys_may_be_strings_or_ints():
    m = good()
    m["dealer_limit_fen_by_city_tier"] = {1: 5, "2": 4, 3: 3, "4": 2}
    assert load_approval_policy(m).dealer_limit_fen_by_city_tier == {1: 5, 2: 4, 3: 3, 4: 2}


@pytest.mark.parametrize("pd_value, band", [
    (0.0, "A"), (0.029999, "A"), (0.03, "B"), (0.059999, "B"), (0.06, "C"), (0.099999, "C"),
    (0.10, "D"), (0.179999, "D"), (0.18, "E"), (0.5, "E"), (1.0, "E"),
])
def test_band_bounds_are_exclusive_above(pd_value, band):
    assert APPROVAL_POLICY_V1.bands[APPROVAL_POLICY_V1.band_index(pd_value)].name == band


def _set(path, value):
    def mutate(m):
        target = m
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
    return mutate


def _delete(key):
    def mutate(m):
        del m[key]
    return mutate


def _swap_bands(m):
    m["bands"][0], m["bands"][1] = m["bands"][1], m["bands"][0]


@pytest.mark.parametrize("mutate, field, expected", [
    (_delete("lgd"), "policy", "missing ['lgd']"),
    (_set(("surprise",), 1), "policy", "unknown keys ['surprise']"),
    (_set(("version",), ""), "version", "non-empty string"),
    (_set(("version",), 3), "version", "non-empty string"),
    (_set(("bands",), []), "bands", "non-empty list"),
    (_set(("bands",), "A"), "bands", "non-empty list"),
    (_set(("bands", 0, "action"), "maybe"), "bands[0].action", "one of"),
    (_set(("bands", 0, "advance_rate"), 1.2), "bands[0].advance_rate", "(0, 1]"),
    (_set(("bands", 0, "advance_rate"), -0.1), "bands[0].advance_rate", "(0, 1]"),
    (_set(("bands", 0, "advance_rate"), 0.0), "bands[0].advance_rate", "(0, 1]"),
    (_set(("bands", 0, "advance_rate"), 0.80001), "bands[0].advance_rate", "basis points"),
    (_set(("bands", 0, "advance_rate"), "0.8"), "bands[0].advance_rate", "finite number"),
    (_set(("bands", 0, "advance_rate"), float("nan")), "bands[0].advance_rate", "finite number"),
    (_set(("bands", 4, "advance_rate"), 0.3), "bands[4].advance_rate", "0 for a decline band"),
    (_set(("bands", 0, "max_pd"), 0.0), "bands[0].max_pd", "> 0"),
    (_set(("bands", 2, "max_pd"), 0.05), "bands[2].max_pd", "ascending"),
    (_set(("bands", 4, "max_pd"), 0.9), "bands[4].max_pd", ">= 1.0"),
    (_set(("bands", 1, "name"), "A"), "bands", "unique band names"),
    (_set(("bands", 1, "name"), " "), "bands[1].name", "non-empty string"),
    (_set(("bands", 0, "colour"), "red"), "bands[0]", "unknown keys ['colour']"),
    (_set(("bands", 3, "action"), "approve"), "bands[3].action", "at least as severe"),
    (_set(("bands", 1, "advance_rate"), 0.9), "bands[1].advance_rate", "never lend more"),
    (_swap_bands, "bands[1].max_pd", "ascending"),
    (_set(("lgd",), 0.0), "lgd", "(0, 1]"),
    (_set(("lgd",), 1.5), "lgd", "(0, 1]"),
    (_set(("lgd",), True), "lgd", "finite number"),
    (_set(("max_vehicle_age_years",), 10.5), "max_vehicle_age_years", "integer >= 1"),
    (_set(("max_vehicle_age_years",), 0), "max_vehicle_age_years", "integer >= 1"),
    (_set(("max_mileage_km",), True), "max_mileage_km", "integer >= 1"),
    (_set(("min_amount_fen",), -1), "min_amount_fen", "integer >= 0"),
    (_set(("dealer_limit_fen_by_city_tier",), {1: 1, 2: 1, 3: 1}), "dealer_limit_fen_by_city_tier",
     "no limit for tiers [4]"),
    (_set(("dealer_limit_fen_by_city_tier", 5), 1), "dealer_limit_fen_by_city_tier", "city tiers [1, 2, 3, 4]"),
    (_set(("dealer_limit_fen_by_city_tier", 1), 7), "dealer_limit_fen_by_city_tier", "each city tier once"),
    (_set(("dealer_limit_fen_by_city_tier", "2"), 0), "dealer_limit_fen_by_city_tier[2]", "integer >= 1"),
    (_set(("dealer_limit_fen_by_city_tier", "3"), 1.5e6), "dealer_limit_fen_by_city_tier[3]", "integer"),
    (_set(("dealer_limit_fen_by_city_tier",), [1, 2, 3, 4]), "dealer_limit_fen_by_city_tier", "mapping"),
])
def test_loader_rejects_bad_config_naming_the_field(mutate, field, expected):
    m = good()
    mutate(m)
    with pytest.raises(PolicyError) as err:
        load_approval_policy(m)
    message = str(err.value)
    assert message.startswith(f"{field}: expected"), message
    assert expected in message, message
    assert "got" in message


def test_policy_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_approval_policy("not a mapping")  # type: ignore[arg-type]
