"""Invariants of the supplier-credit cascade on random BOMs, sub-BOMs, batches and caps."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lending.cascade import (
    CASCADE_POLICY_V1,
    LINE_COLUMNS,
    CascadePolicy,
    allocate,
    bom_lineage,
    credit_lines,
    financeable_value,
    split_vehicle_value,
    structure_hash,
)

T0 = pd.Timestamp("2025-03-01")
TIER1 = [f"S{i}" for i in range(5)]
TIER2 = [f"T{i}" for i in range(4)]
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def world(draw):
    """Models with BOMs, sub-BOMs whose components never cost more than their parent part."""
    n_models = draw(st.integers(1, 3))
    bom_rows, sub_rows, part_price = [], [], {}
    for m in range(n_models):
        for j in range(draw(st.integers(1, 6))):
            part = f"P{draw(st.integers(0, 7))}"  # parts may repeat across lines and models
            price = part_price.setdefault(part, draw(st.integers(0, 50_000)))
            bom_rows.append({"bom_line_id": f"M{m}-L{j}", "model_id": f"M{m}", "part_id": part,
                             "supplier_id": draw(st.sampled_from(TIER1)), "quantity": draw(st.integers(1, 9)),
                             "unit_price_fen": price})
    if sum(r["quantity"] * r["unit_price_fen"] for r in bom_rows) == 0:
        bom_rows[0]["unit_price_fen"] = 1
        part_price[bom_rows[0]["part_id"]] = max(part_price[bom_rows[0]["part_id"]], 1)
        for r in bom_rows:
            r["unit_price_fen"] = part_price[r["part_id"]]
    for part, price in sorted(part_price.items()):
        budget = price  # Σ sub quantity × sub price ≤ the part's unit price
        for _ in range(draw(st.integers(0, 3))):
            qty = draw(st.integers(1, 3))
            sub_price = draw(st.integers(0, budget // qty))
            budget -= qty * sub_price
            sub_rows.append({"sub_bom_line_id": f"X{len(sub_rows)}", "parent_part_id": part,
                             "supplier_id": draw(st.sampled_from(TIER2 + TIER1[:1])), "quantity": qty,
                             "unit_price_fen": sub_price})
    bom = pd.DataFrame(bom_rows)
    sub = pd.DataFrame(sub_rows, columns=["sub_bom_line_id", "parent_part_id", "supplier_id", "quantity",
                                          "unit_price_fen"])
    return bom, sub


@st.composite
def batch(draw):
    bom, sub = draw(world())
    models = sorted(bom["model_id"].unique()) + ["M9"]  # M9: no BOM
    n = draw(st.integers(1, 12))
    vins = [f"V{draw(st.integers(0, n + 2))}" for _ in range(n)]  # repeats make duplicates
    line_offs = pd.DataFrame({
        "event_id": [f"E{i:02d}" for i in range(n)],
        "vin": vins,
        "line_off_at": [T0 + pd.Timedelta(minutes=draw(st.integers(0, 5))) for _ in range(n)],
        "iot_verified": [draw(st.booleans()) for _ in range(n)],
        "verification_note": None,
    })
    produced = sorted(set(vins))[: max(1, len(set(vins)) - 1)]  # one VIN may be missing
    production = pd.DataFrame({"vin": produced, "model_id": [draw(st.sampled_from(models)) for _ in produced]})
    ids = TIER1 + TIER2
    suppliers = pd.DataFrame({
        "supplier_id": ids,
        "tier": [1] * len(TIER1) + [2] * len(TIER2),
        "limit_fen": [draw(st.integers(0, 400_000)) for _ in ids],
        "exposure_fen": [draw(st.integers(0, 200_000)) for _ in ids],
        "confirmed_payables_fen": [draw(st.integers(0, 600_000)) for _ in ids],
        "dilution_ratio": [draw(st.one_of(st.just(np.nan), st.floats(0, 0.8))) for _ in ids],
    })
    policy = CascadePolicy(version="p", advance_rate=draw(st.sampled_from([0.1, 0.29, 0.7, 1.0])), lgd=0.5,
                           el_budget_fen=1, max_limit_fen=1, min_limit_fen=0,
                           dilution_reserve_floor=draw(st.sampled_from([0.0, 0.05, 0.2])),
                           dilution_multiplier=draw(st.sampled_from([0.0, 1.0, 1.5])))
    return line_offs, production, bom, sub, suppliers, policy


def run(args):
    line_offs, production, bom, sub, suppliers, policy = args
    return allocate(line_offs, production, bom, sub, suppliers, policy, batch_id="B")


@SETTINGS
@given(world(), st.integers(0, 10**9))
def test_split_adds_up_exactly_and_each_tier1_group_too(w, amount):
    bom, sub = w
    model = bom[bom["model_id"] == "M0"]
    shares = split_vehicle_value(model, sub, amount)
    assert shares["share_fen"].sum() == amount
    assert (shares["share_fen"] >= 0).all()
    cost = int((model["quantity"] * model["unit_price_fen"]).sum())
    assert shares["basis_fen"].sum() == cost
    # no share is more than one fen away from the exact proportional share of its basis
    # (per group; a supplier in several groups can collect one fen per group)
    exact = amount * shares["basis_fen"].to_numpy(dtype=float) / cost
    assert (np.abs(shares["share_fen"].to_numpy() - exact) < len(shares) + 1).all()


@SETTINGS
@given(batch())
def test_allocation_invariants(args):
    line_offs, production, bom, sub, suppliers, policy = args
    out = run(args)
    credits = out.credits

    # every event is either credited or an exception, never both, never lost
    credited = set(credits["event_id"])
    excepted = set(out.exceptions["event_id"])
    assert credited.isdisjoint(excepted)
    assert credited | excepted == set(line_offs["event_id"])
    # an unverified event never creates a credit; a VIN is credited at most once
    unverified = set(line_offs.loc[~line_offs["iot_verified"], "event_id"])
    assert unverified <= excepted
    assert credits.groupby("vin")["event_id"].nunique().le(1).all()
    assert credits["credit_id"].is_unique

    # per VIN, shares add up exactly to the financeable value of its model
    cost = (bom["quantity"] * bom["unit_price_fen"]).groupby(bom["model_id"]).sum()
    for (vin, model), rows in credits.groupby(["vin", "model_id"]):
        assert rows["share_fen"].sum() == financeable_value(int(cost[model]), policy), vin

    # amounts: 0 ≤ amount ≤ share, share = amount + capped, capped_by set iff capped
    assert ((credits["amount_fen"] >= 0) & (credits["amount_fen"] <= credits["share_fen"])).all()
    assert (credits["amount_fen"] + credits["capped_fen"] == credits["share_fen"]).all()
    assert (credits["capped_by"].notna() == (credits["capped_fen"] > 0)).all()

    # no supplier's total exceeds any of its caps
    totals = credits.groupby("supplier_id")["amount_fen"].sum()
    sup = suppliers.set_index("supplier_id")
    for sid, total in totals.items():
        s = sup.loc[sid]
        ratio = 0.0 if math.isnan(s["dilution_ratio"]) else s["dilution_ratio"]
        reserve = min(max(policy.dilution_reserve_floor, policy.dilution_multiplier * ratio), 1.0)
        assert total <= max(0, s["limit_fen"] - s["exposure_fen"]), sid
        assert total <= s["confirmed_payables_fen"] * (1 - reserve) + 1e-6, sid

    # lineage covers every credit and only credits
    assert set(out.lines["credit_id"]) == set(credits["credit_id"])


def per_credit_lineage(credits: pd.DataFrame, bom: pd.DataFrame, sub: pd.DataFrame) -> pd.DataFrame:
    """The lineage as it was stored before splits: for each credit, the lines of its supplier in
    ``bom_lineage`` of its vehicle's model, computed credit by credit."""
    rows = []
    for credit in credits.itertuples():
        lineage = bom_lineage(bom[bom["model_id"] == credit.model_id], sub)
        for line in lineage[lineage["supplier_id"] == credit.supplier_id].itertuples():
            rows.append((credit.credit_id, line.bom_line_id, line.sub_bom_line_id, line.line_value_fen))
    frame = pd.DataFrame(rows, columns=list(LINE_COLUMNS)).astype({"line_value_fen": np.int64})
    frame["sub_bom_line_id"] = pd.Series([None if pd.isna(v) else v for v in frame["sub_bom_line_id"]],
                                         dtype=object)
    return frame


@SETTINGS
@given(batch())
def test_split_lineage_reproduces_the_per_credit_lineage_exactly(args):
    _, _, bom, sub, _, _ = args
    out = run(args)
    credits = out.credits
    expected = per_credit_lineage(credits, bom, sub)
    got = credit_lines(credits, out.splits)
    assert got.astype({"credit_id": object, "bom_line_id": object}).to_dict("list") == \
        expected.astype({"credit_id": object, "bom_line_id": object}).to_dict("list")
    pd.testing.assert_frame_equal(out.lines, got)
    # every split is one (model, structure, supplier): its id carries the model's structure hash
    for split_id, lines in out.splits.groupby("split_id"):
        model, digest, supplier = split_id.split(":")
        assert lines["model_id"].eq(model).all() and lines["supplier_id"].eq(supplier).all()
        assert lines["structure_hash"].eq(structure_hash(bom_lineage(bom[bom["model_id"] == model], sub))).all()
        assert digest == lines["structure_hash"].iloc[0][:16]
    # each credit names the split of its own model and supplier, and only splits of credits are kept
    assert (credits["split_id"] == credits["model_id"].astype(str) + ":" + credits["split_id"].str.split(":").str[1]
            + ":" + credits["supplier_id"].astype(str)).all()
    assert set(out.splits["split_id"]) == set(credits["split_id"])


@SETTINGS
@given(batch())
def test_allocating_the_same_batch_twice_is_identical(args):
    first, second = run(args), run(args)
    pd.testing.assert_frame_equal(first.credits, second.credits)
    pd.testing.assert_frame_equal(first.lines, second.lines)
    pd.testing.assert_frame_equal(first.exceptions, second.exceptions)


@settings(max_examples=20, deadline=None)
@given(world())
def test_all_unverified_creates_nothing(w):
    bom, sub = w
    line_offs = pd.DataFrame({"event_id": ["E1", "E2"], "vin": ["V1", "V2"], "line_off_at": [T0, T0],
                              "iot_verified": [False, False], "verification_note": ["parts_mismatch", None]})
    production = pd.DataFrame({"vin": ["V1", "V2"], "model_id": ["M0", "M0"]})
    suppliers = pd.DataFrame({"supplier_id": TIER1 + TIER2, "tier": 1, "limit_fen": 10**9, "exposure_fen": 0,
                              "confirmed_payables_fen": 10**9, "dilution_ratio": 0.0})
    out = allocate(line_offs, production, bom, sub, suppliers, CASCADE_POLICY_V1, batch_id="B")
    assert out.credits.empty and out.lines.empty
    assert out.exceptions["reason"].tolist() == ["iot_unverified: parts_mismatch", "iot_unverified"]
