"""The supplier-credit cascade against hand-built BOMs with expected fen values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from lending.cascade import (
    CASCADE_POLICY_V1,
    CREDIT_COLUMNS,
    EXCEPTION_COLUMNS,
    LINE_COLUMNS,
    CascadeError,
    CascadePolicy,
    allocate,
    bom_lineage,
    credit_lines,
    financeable_value,
    largest_remainder,
    load_cascade_policy,
    policy_hash,
    split_vehicle_value,
    structure_hash,
    supplier_limits,
)

T0 = pd.Timestamp("2025-03-01 08:00:00")
BIG = 10**12


def model_bom(model: str = "M1") -> pd.DataFrame:
    """Two tier-1 suppliers; S1's parts P1 and P2 hold tier-2 components of T1 and T2.

    BOM cost: S1 = 1×1000 + 2×500 = 2000, S2 = 1×1001; total 3001.
    Components: T1 = 2×100 × 1 (under L1) = 200, T2 = 1×50 × 2 (under L2) = 100.
    """
    return pd.DataFrame({
        "bom_line_id": [f"{model}-L1", f"{model}-L2", f"{model}-L3"],
        "model_id": model,
        "part_id": ["P1", "P2", "P3"],
        "supplier_id": ["S1", "S1", "S2"],
        "quantity": [1, 2, 1],
        "unit_price_fen": [1000, 500, 1001],
    })


SUB_BOM = pd.DataFrame({
    "sub_bom_line_id": ["X1", "X2", "X3"],
    "parent_part_id": ["P1", "P2", "P9"],  # P9 is in no BOM: ignored
    "supplier_id": ["T1", "T2", "T1"],
    "quantity": [2, 1, 1],
    "unit_price_fen": [100, 50, 5],
})


def suppliers(**overrides: dict) -> pd.DataFrame:
    base = {
        "S1": dict(tier=1, limit_fen=BIG, exposure_fen=0, confirmed_payables_fen=BIG, dilution_ratio=0.0),
        "S2": dict(tier=1, limit_fen=BIG, exposure_fen=0, confirmed_payables_fen=BIG, dilution_ratio=0.0),
        "T1": dict(tier=2, limit_fen=BIG, exposure_fen=0, confirmed_payables_fen=BIG, dilution_ratio=0.0),
        "T2": dict(tier=2, limit_fen=BIG, exposure_fen=0, confirmed_payables_fen=BIG, dilution_ratio=np.nan),
    }
    for sid, values in overrides.items():
        base[sid] = {**base[sid], **values}
    return pd.DataFrame([{"supplier_id": sid, **v} for sid, v in base.items()])


def events(*rows: tuple) -> pd.DataFrame:
    """rows: (event_id, vin, minutes after T0, verified, note)."""
    return pd.DataFrame([{"event_id": e, "vin": v, "line_off_at": T0 + pd.Timedelta(minutes=m),
                          "iot_verified": ok, "verification_note": note} for e, v, m, ok, note in rows])


PRODUCTION = pd.DataFrame({"vin": ["V1", "V2", "V3", "V5", "V6"], "model_id": ["M1", "M1", "M1", "M2", "M3"]})
BOM = pd.concat([model_bom("M1"),
                 # M3: the components of its only part (2×100) cost more than the part (150)
                 pd.DataFrame({"bom_line_id": ["M3-L1"], "model_id": "M3", "part_id": ["P1"],
                               "supplier_id": ["S1"], "quantity": [1], "unit_price_fen": [150]})],
                ignore_index=True)


def run(line_offs: pd.DataFrame, sups: pd.DataFrame | None = None, policy: CascadePolicy = CASCADE_POLICY_V1):
    return allocate(line_offs, PRODUCTION, BOM, SUB_BOM, suppliers() if sups is None else sups, policy,
                    batch_id="B1")


# ---------------------------------------------------------------------------------- split


def test_split_two_levels_with_remainders():
    # level 1 (1000 by 2000 : 1001): S1 666.44, S2 333.56 -> floors 666 + 333, the leftover fen to S2
    # level 2 (S1's 666 by 1700 : 200 : 100): 566.1, 66.6, 33.3 -> floors 565, the leftover fen to T1
    shares = split_vehicle_value(model_bom(), SUB_BOM, 1000)
    assert shares.to_dict("list") == {
        "supplier_id": ["S1", "S2", "T1", "T2"],
        "tier": [1, 1, 2, 2],
        "basis_fen": [1700, 1001, 200, 100],
        "share_fen": [566, 334, 67, 33],
    }
    assert shares["share_fen"].sum() == 1000


def test_split_ties_go_to_the_smaller_supplier_id():
    bom = pd.DataFrame({"bom_line_id": ["a", "b"], "part_id": ["P1", "P2"], "supplier_id": ["SB", "SA"],
                        "quantity": [1, 1], "unit_price_fen": [7, 7]})
    shares = split_vehicle_value(bom, SUB_BOM.iloc[0:0], 3)
    assert dict(zip(shares["supplier_id"], shares["share_fen"])) == {"SA": 2, "SB": 1}


def test_split_zero_and_whole():
    assert split_vehicle_value(model_bom(), SUB_BOM, 0)["share_fen"].tolist() == [0, 0, 0, 0]
    # the full BOM cost splits into exactly the cost bases
    shares = split_vehicle_value(model_bom(), SUB_BOM, 3001)
    assert shares["share_fen"].tolist() == shares["basis_fen"].tolist() == [1700, 1001, 200, 100]


def test_a_tier2_supplier_under_two_parts_and_a_tier1_making_its_own_components():
    bom = pd.DataFrame({"bom_line_id": ["a", "b"], "part_id": ["P1", "P2"], "supplier_id": ["S1", "S2"],
                        "quantity": [1, 1], "unit_price_fen": [100, 100]})
    sub = pd.DataFrame({"sub_bom_line_id": ["x", "y", "z"], "parent_part_id": ["P1", "P2", "P2"],
                        "supplier_id": ["T1", "T1", "S2"], "quantity": [1, 1, 1],
                        "unit_price_fen": [30, 20, 10]})
    shares = split_vehicle_value(bom, sub, 100)
    # S1: 50 -> S1 (70 of 100) 35, T1 15; S2: 50 -> S2 (keeps 70 + its own component 10 of 100) 40, T1 10
    assert dict(zip(shares["supplier_id"], shares["share_fen"])) == {"S1": 35, "S2": 40, "T1": 25}
    assert dict(zip(shares["supplier_id"], shares["tier"])) == {"S1": 1, "S2": 1, "T1": 2}


def test_lineage_names_the_lines_behind_each_share():
    lineage = bom_lineage(model_bom(), SUB_BOM)
    assert lineage.to_dict("list") == {
        "supplier_id": ["S1", "S1", "S2", "T1", "T2"],
        "bom_line_id": ["M1-L1", "M1-L2", "M1-L3", "M1-L1", "M1-L2"],
        "sub_bom_line_id": [None, None, None, "X1", "X2"],
        "line_value_fen": [1000, 1000, 1001, 200, 100],
    }


@pytest.mark.parametrize(("change", "message"), [
    ({"quantity": [0, 2, 1]}, "quantity ≤ 0"),
    ({"unit_price_fen": [-1, 500, 1001]}, "negative unit price"),
    ({"unit_price_fen": [0, 0, 0]}, "BOM cost is 0"),
    ({"unit_price_fen": [150, 50, 1001]}, "tier-2 components cost more"),
    ({"model_id": ["M1", "M1", "M2"]}, "one vehicle model"),
    ({"bom_line_id": ["a", "a", "b"]}, "duplicates"),
])
def test_split_rejects_a_bad_bom(change, message):
    with pytest.raises(CascadeError, match=message):
        split_vehicle_value(model_bom().assign(**change), SUB_BOM, 100)


@pytest.mark.parametrize("amount", [-1, 1.5, True])
def test_split_rejects_a_bad_amount(amount):
    with pytest.raises(CascadeError, match="financeable_fen"):
        split_vehicle_value(model_bom(), SUB_BOM, amount)


def test_split_rejects_missing_columns():
    with pytest.raises(CascadeError, match=r"missing column\(s\) \['unit_price_fen'\]"):
        split_vehicle_value(model_bom().drop(columns="unit_price_fen"), SUB_BOM, 100)


def test_largest_remainder_is_exact_even_beyond_int64_products():
    totals = np.array([2**40, 7])
    got = largest_remainder(totals, np.array([0, 0, 0, 1, 1]), np.array([2**40, 3, 1, 1, 1]),
                            np.array([0, 1, 2, 3, 4]))
    assert got[:3].sum() == 2**40 and got[3:].tolist() == [4, 3]


# ---------------------------------------------------------------------------------- policy


def test_policy_v1_values_and_hash():
    assert CASCADE_POLICY_V1.advance_rate == 0.7 and CASCADE_POLICY_V1.lgd == 0.5
    assert CASCADE_POLICY_V1.el_budget_fen == 5_000_000 and CASCADE_POLICY_V1.max_limit_fen == 5_000_000_000
    assert load_cascade_policy(dataclasses.asdict(CASCADE_POLICY_V1)) == CASCADE_POLICY_V1
    assert policy_hash(CASCADE_POLICY_V1) == policy_hash(load_cascade_policy(dataclasses.asdict(CASCADE_POLICY_V1)))
    assert len(policy_hash(CASCADE_POLICY_V1)) == 64
    assert policy_hash(dataclasses.replace(CASCADE_POLICY_V1, version="v2")) != policy_hash(CASCADE_POLICY_V1)


@pytest.mark.parametrize(("field", "value"), [
    ("version", ""), ("advance_rate", 0), ("advance_rate", 1.2), ("advance_rate", "0.7"), ("lgd", 0.0),
    ("lgd", float("nan")), ("el_budget_fen", 0), ("el_budget_fen", 10.5), ("max_limit_fen", True),
    ("min_limit_fen", -1), ("min_limit_fen", 6_000_000_000), ("dilution_reserve_floor", 1.0),
    ("dilution_reserve_floor", -0.1), ("dilution_multiplier", -1),
])
def test_policy_rejects_bad_fields_by_name(field, value):
    with pytest.raises(CascadeError, match=field):
        load_cascade_policy({**dataclasses.asdict(CASCADE_POLICY_V1), field: value})


def test_policy_rejects_missing_and_unknown_fields():
    fields = dataclasses.asdict(CASCADE_POLICY_V1)
    with pytest.raises(CascadeError, match=r"missing field\(s\) \['lgd'\]"):
        load_cascade_policy({k: v for k, v in fields.items() if k != "lgd"})
    with pytest.raises(CascadeError, match=r"unknown field\(s\) \['advance'\]"):
        load_cascade_policy({**fields, "advance": 0.5})


# ---------------------------------------------------------------------------------- limits


def test_supplier_limits():
    pds = pd.Series([0.01, 0.0001, 1.0, 0.3], index=pd.Index(["A", "B", "C", "D"], name="supplier_id"))
    limits = supplier_limits(pds, CASCADE_POLICY_V1)
    # 5,000,000 / (PD × 0.5): 1e9; 1e11 -> max 5e9; 1e7; 33,333,333.33 -> floored
    assert limits.to_dict() == {"A": 1_000_000_000, "B": 5_000_000_000, "C": 10_000_000, "D": 33_333_333}
    assert limits.dtype == np.int64 and limits.name == "limit_fen"
    floor = dataclasses.replace(CASCADE_POLICY_V1, min_limit_fen=20_000_000)
    assert supplier_limits(pds, floor)["C"] == 20_000_000


@pytest.mark.parametrize("bad", [0.0, np.nan, 1.5, -0.1, "x"])
def test_supplier_limits_reject_bad_pd(bad):
    with pytest.raises(CascadeError, match=r"PD in \(0, 1\]"):
        supplier_limits(pd.Series([0.1, bad], index=["A", "B"], dtype=object), CASCADE_POLICY_V1)


# ---------------------------------------------------------------------------------- allocate


def test_financeable_value_uses_the_decimal_rate():
    assert financeable_value(3001, CASCADE_POLICY_V1) == 2100  # 2100.7 floored
    assert financeable_value(100, dataclasses.replace(CASCADE_POLICY_V1, advance_rate=0.29)) == 29


def test_allocate_one_vehicle_credits_and_lineage():
    out = run(events(("E1", "V1", 0, True, None)))
    digest = structure_hash(bom_lineage(model_bom(), SUB_BOM))
    # 0.7 × 3001 = 2100; S1 1399.53 / S2 700.47 -> 1400 / 700; S1's 1400 -> 1190 / T1 140 / T2 70
    assert out.credits.to_dict("list") == {
        "credit_id": ["V1:S1", "V1:S2", "V1:T1", "V1:T2"],
        "batch_id": ["B1"] * 4,
        "event_id": ["E1"] * 4,
        "vin": ["V1"] * 4,
        "model_id": ["M1"] * 4,
        "supplier_id": ["S1", "S2", "T1", "T2"],
        "tier": [1, 1, 2, 2],
        "share_fen": [1190, 700, 140, 70],
        "amount_fen": [1190, 700, 140, 70],
        "capped_fen": [0, 0, 0, 0],
        "capped_by": [None] * 4,
        "policy_version": ["cascade-v1"] * 4,
        "split_id": [f"M1:{digest[:16]}:{s}" for s in ("S1", "S2", "T1", "T2")],
    }
    # the lineage is stored once per (model, structure, supplier) split and named by each credit
    assert out.splits.to_dict("list") == {
        "split_id": [f"M1:{digest[:16]}:{s}" for s in ("S1", "S1", "S2", "T1", "T2")],
        "model_id": ["M1"] * 5,
        "structure_hash": [digest] * 5,
        "supplier_id": ["S1", "S1", "S2", "T1", "T2"],
        "bom_line_id": ["M1-L1", "M1-L2", "M1-L3", "M1-L1", "M1-L2"],
        "sub_bom_line_id": [None, None, None, "X1", "X2"],
        "line_value_fen": [1000, 1000, 1001, 200, 100],
    }
    assert out.lines.to_dict("list") == {
        "credit_id": ["V1:S1", "V1:S1", "V1:S2", "V1:T1", "V1:T2"],
        "bom_line_id": ["M1-L1", "M1-L2", "M1-L3", "M1-L1", "M1-L2"],
        "sub_bom_line_id": [None, None, None, "X1", "X2"],
        "line_value_fen": [1000, 1000, 1001, 200, 100],
    }
    assert out.exceptions.empty and list(out.exceptions.columns) == list(EXCEPTION_COLUMNS)


def test_structure_hash_follows_the_lines_not_their_order():
    lineage = bom_lineage(model_bom(), SUB_BOM)
    digest = structure_hash(lineage)
    assert len(digest) == 64 and structure_hash(lineage.sample(frac=1, random_state=1)) == digest
    # a new price behind one line (a tier-2 component here) is a new structure, so a new split
    dearer = SUB_BOM.assign(unit_price_fen=[101, 50, 5])
    assert structure_hash(bom_lineage(model_bom(), dearer)) != digest
    # a sub-BOM line under a part the model does not use changes nothing
    assert structure_hash(bom_lineage(model_bom(), SUB_BOM.assign(unit_price_fen=[100, 50, 6]))) == digest


def test_a_changed_bom_gives_new_splits_and_the_old_credits_keep_theirs():
    before = run(events(("E1", "V1", 0, True, None)))
    dearer = BOM.assign(unit_price_fen=BOM["unit_price_fen"].where(BOM["bom_line_id"] != "M1-L3", 1002))
    after = allocate(events(("E2", "V2", 0, True, None)), PRODUCTION, dearer, SUB_BOM, suppliers(),
                     CASCADE_POLICY_V1, batch_id="B2")
    assert not set(before.splits["split_id"]) & set(after.splits["split_id"])
    assert before.lines.query("credit_id == 'V1:S2'")["line_value_fen"].tolist() == [1001]
    assert after.lines.query("credit_id == 'V2:S2'")["line_value_fen"].tolist() == [1002]


def test_credit_lines_refuses_a_credit_without_its_split():
    out = run(events(("E1", "V1", 0, True, None)))
    with pytest.raises(CascadeError, match="expected a split for every credit"):
        credit_lines(out.credits, out.splits[out.splits["supplier_id"] != "T2"])


def test_exceptions_per_reason_create_nothing():
    out = run(events(
        ("E1", "V1", 0, True, None),
        ("E2", "V2", 1, False, "parts_mismatch"),
        ("E3", "V3", 2, False, None),
        ("E4", "V4", 3, True, None),  # no production row
        ("E5", "V5", 4, True, None),  # model M2 has no BOM
        ("E6", "V6", 5, True, None),  # model M3's BOM is inconsistent
        ("E0", "V1", 6, True, None),  # V1 again, later (a smaller event_id does not make it first)
    ))
    assert out.exceptions.to_dict("list") == {
        "batch_id": ["B1"] * 6,
        "event_id": ["E0", "E2", "E3", "E4", "E5", "E6"],
        "vin": ["V1", "V2", "V3", "V4", "V5", "V6"],
        "reason": ["duplicate_vin_in_batch", "iot_unverified: parts_mismatch", "iot_unverified",
                   "vin_not_produced", "no_bom_for_model M2",
                   "invalid_bom_for_model M3: tier-2 components cost more than the tier-1 parts of "
                   "supplier(s) ['S1']"],
    }
    assert set(out.credits["event_id"]) == {"E1"}
    assert set(out.lines["credit_id"]) == set(out.credits["credit_id"])


def test_caps_by_limit_payables_and_dilution_reserve_in_event_order():
    sups = suppliers(
        S1={"limit_fen": 10_000, "exposure_fen": 8_000},  # limit headroom 2,000
        S2={"confirmed_payables_fen": 1_000, "dilution_ratio": 0.1},  # reserve 0.15 -> 850
        T1={"confirmed_payables_fen": 0},  # nothing confirmed
        T2={"limit_fen": 100, "exposure_fen": 250},  # already over its limit
    )
    # V2 rolls off first: it consumes the headroom before V1
    out = run(events(("E1", "V1", 10, True, None), ("E2", "V2", 0, True, None)), sups)
    got = out.credits.set_index("credit_id")[["share_fen", "amount_fen", "capped_fen", "capped_by"]]
    assert got.to_dict("index") == {
        "V1:S1": {"share_fen": 1190, "amount_fen": 810, "capped_fen": 380, "capped_by": "limit"},
        "V1:S2": {"share_fen": 700, "amount_fen": 150, "capped_fen": 550, "capped_by": "payables"},
        "V1:T1": {"share_fen": 140, "amount_fen": 0, "capped_fen": 140, "capped_by": "payables"},
        "V1:T2": {"share_fen": 70, "amount_fen": 0, "capped_fen": 70, "capped_by": "limit"},
        "V2:S1": {"share_fen": 1190, "amount_fen": 1190, "capped_fen": 0, "capped_by": None},
        "V2:S2": {"share_fen": 700, "amount_fen": 700, "capped_fen": 0, "capped_by": None},
        "V2:T1": {"share_fen": 140, "amount_fen": 0, "capped_fen": 140, "capped_by": "payables"},
        "V2:T2": {"share_fen": 70, "amount_fen": 0, "capped_fen": 70, "capped_by": "limit"},
    }


def test_reserve_floor_applies_when_dilution_is_low_and_rounds_the_reserve_up():
    # payables 1,001 with the 5 % floor: reserve 50.05 -> 51 held back, headroom 950
    sups = suppliers(S1={"confirmed_payables_fen": 1_001, "dilution_ratio": 0.01})
    out = run(events(("E1", "V1", 0, True, None)), sups)
    row = out.credits.set_index("credit_id").loc["V1:S1"]
    assert (row["amount_fen"], row["capped_fen"], row["capped_by"]) == (950, 240, "payables")
    # a dilution ratio so high the reserve reaches 100 %: nothing is financeable
    sups = suppliers(S1={"dilution_ratio": 0.9})
    assert run(events(("E1", "V1", 0, True, None)), sups).credits.set_index("credit_id").loc[
        "V1:S1", "amount_fen"] == 0


def test_rerun_and_shuffled_inputs_give_identical_frames():
    batch = events(("E1", "V1", 5, True, None), ("E2", "V2", 5, True, None), ("E3", "V3", 1, False, "x"),
                   ("E4", "V4", 2, True, None))
    sups = suppliers(S1={"limit_fen": 2_000})
    first = run(batch, sups)
    again = run(batch, sups)
    shuffled = allocate(batch.sample(frac=1, random_state=3), PRODUCTION.sample(frac=1, random_state=4),
                        BOM.sample(frac=1, random_state=5), SUB_BOM.sample(frac=1, random_state=6),
                        sups.sample(frac=1, random_state=7), CASCADE_POLICY_V1, batch_id="B1")
    for other in (again, shuffled):
        pd.testing.assert_frame_equal(first.credits, other.credits)
        pd.testing.assert_frame_equal(first.lines, other.lines)
        pd.testing.assert_frame_equal(first.exceptions, other.exceptions)
    # same line_off_at: event_id breaks the tie, so E1 (V1) consumes S1's 2,000 first
    assert first.credits.set_index("credit_id").loc[["V1:S1", "V2:S1"], "amount_fen"].tolist() == [1190, 810]


def test_empty_batch():
    out = run(events(("E1", "V1", 0, False, "no_signal")))
    assert out.credits.empty and list(out.credits.columns) == list(CREDIT_COLUMNS)
    assert out.lines.empty and list(out.lines.columns) == list(LINE_COLUMNS)
    assert out.exceptions["reason"].tolist() == ["iot_unverified: no_signal"]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda a: {**a, "suppliers": a["suppliers"][a["suppliers"]["supplier_id"] != "T2"]}, r"none for 1: \['T2'\]"),
    (lambda a: {**a, "suppliers": a["suppliers"].assign(exposure_fen=-1)}, "exposure_fen"),
    (lambda a: {**a, "suppliers": a["suppliers"].assign(dilution_ratio=-0.1)}, "dilution_ratio"),
    (lambda a: {**a, "suppliers": a["suppliers"].assign(limit_fen=np.nan)}, "limit_fen"),
    (lambda a: {**a, "production": pd.concat([a["production"]] * 2)}, "production.vin"),
    (lambda a: {**a, "line_offs": a["line_offs"].drop(columns="iot_verified")}, "iot_verified"),
    (lambda a: {**a, "line_offs": a["line_offs"].assign(iot_verified="yes")}, "expected booleans"),
    (lambda a: {**a, "line_offs": pd.concat([a["line_offs"]] * 2)}, "line_offs.event_id"),
])
def test_allocate_rejects_broken_inputs(mutate, message):
    args = {"line_offs": events(("E1", "V1", 0, True, None)), "production": PRODUCTION, "bom": BOM,
            "sub_bom": SUB_BOM, "suppliers": suppliers()}
    with pytest.raises(CascadeError, match=message):
        allocate(**mutate(args), policy=CASCADE_POLICY_V1, batch_id="B1")


def test_policy_accepts_numpy_numbers_and_hashes_them_like_python_ones():
    fields = {**dataclasses.asdict(CASCADE_POLICY_V1), "el_budget_fen": np.int64(5_000_000),
              "advance_rate": np.float64(0.7)}
    assert policy_hash(load_cascade_policy(fields)) == policy_hash(CASCADE_POLICY_V1)


@pytest.mark.parametrize("vins", [["V2", "V1", "V3"],  # one length: sorted by integer ranks
                                  ["V1", "V10", "V1:"],  # "V1:" < "V10" as ids only when the ':' is compared
                                  ["V9", "V10", "V1"]])
def test_credits_are_in_credit_id_order_whatever_the_vins(vins):
    production = pd.DataFrame({"vin": vins, "model_id": "M1"})
    out = allocate(events(*[(f"E{i}", v, i, True, None) for i, v in enumerate(vins)]), production, BOM, SUB_BOM,
                   suppliers(), CASCADE_POLICY_V1, batch_id="B1")
    ids = out.credits.credit_id.tolist()
    assert ids == sorted(ids) and len(ids) == 4 * len(vins)
    assert ids == sorted(f"{v}:{s}" for v in vins for s in ("S1", "S2", "T1", "T2"))
