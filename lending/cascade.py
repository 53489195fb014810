"""Flow A: IoT-triggered, BOM-proportional supplier credit, as pure functions.

A vehicle (VIN) that rolls off the line with an IoT-verified event creates one credit for each
supplier whose parts it contains. The vehicle's *financeable value* — the advance rate times the
BOM cost of its model — is split in two levels:

1. among the model's tier-1 suppliers, in proportion to each one's BOM cost
   (Σ ``quantity × unit_price_fen`` of its BOM lines);
2. each tier-1 share again, between the tier-1 supplier and the tier-2 suppliers of the parts it
   sells: a tier-2 supplier's weight is its component cost (``sub_bom.quantity ×
   sub_bom.unit_price_fen ×`` the parent BOM line's ``quantity``), the tier-1 supplier keeps the
   weight of its BOM cost less those components.

Amounts are integer fen and add up exactly, at both levels, by the largest-remainder rule (see
``largest_remainder``). Each supplier's credits are then capped, in event order, by its limit less
its exposure and by its OEM-confirmed payables less a dilution reserve (see ``allocate``).

Lineage is stored once per split, not per credit. The BOM lines behind a credit (its
*lineage*: each line's cost basis ``line_value_fen``) depend only on the vehicle model's BOM and
sub-BOM and on the supplier — not on the VIN, the financeable value, the rounding or the caps —
so every vehicle of one model and BOM carries the same lines for one supplier. ``allocate``
returns them once per *split* ``split_id = "<model_id>:<structure hash>:<supplier_id>"``, where
the structure hash (``structure_hash``: sha256 of the model's whole lineage, its first
``STRUCTURE_HASH_CHARS`` hex characters in the id) changes whenever a line, quantity or price of
the model's BOM or sub-BOM does: a split is content-addressed and immutable, a credit names its
split, and a credit's lines are exactly its split's lines (``credit_lines``; ``Allocation.lines``
gives the per-credit frame the cascade returned before: 3,000 vehicles × ~600 suppliers are
~1.8 M credits but ~12 M lines a day, and only ~80,000 distinct split lines).

Everything here takes plain values and returns plain values: no clock, no environment, no IO.
Money is integer fen (1 CNY = 100 fen) in ``int64``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

CAP_LIMIT = "limit"
CAP_PAYABLES = "payables"
MAX_RESERVE = 1.0  # a dilution reserve holds back at most all confirmed payables
_FEN_DECIMALS = 6  # float fen amounts are rounded to 6 decimals before floor/ceil (float noise)
_INT64_SAFE = 2**62

LINE_OFF_COLUMNS = ("event_id", "vin", "line_off_at", "iot_verified", "verification_note")
PRODUCTION_COLUMNS = ("vin", "model_id")
BOM_COLUMNS = ("bom_line_id", "model_id", "part_id", "supplier_id", "quantity", "unit_price_fen")
SUB_BOM_COLUMNS = ("sub_bom_line_id", "parent_part_id", "supplier_id", "quantity", "unit_price_fen")
SUPPLIER_COLUMNS = ("supplier_id", "tier", "limit_fen", "exposure_fen", "confirmed_payables_fen",
                    "dilution_ratio")

SHARE_COLUMNS = ("supplier_id", "tier", "basis_fen", "share_fen")
LINEAGE_COLUMNS = ("supplier_id", "bom_line_id", "sub_bom_line_id", "line_value_fen")
CREDIT_COLUMNS = ("credit_id", "batch_id", "event_id", "vin", "model_id", "supplier_id", "tier",
                  "share_fen", "amount_fen", "capped_fen", "capped_by", "policy_version", "split_id")
LINE_COLUMNS = ("credit_id", "bom_line_id", "sub_bom_line_id", "line_value_fen")
SPLIT_COLUMNS = ("split_id", "model_id", "structure_hash", "supplier_id", "bom_line_id", "sub_bom_line_id",
                 "line_value_fen")
STRUCTURE_HASH_CHARS = 16  # hex characters of the structure hash in a split_id (64 bits)
EXCEPTION_COLUMNS = ("batch_id", "event_id", "vin", "reason")

REASON_UNVERIFIED = "iot_unverified"
REASON_DUPLICATE = "duplicate_vin_in_batch"
REASON_NOT_PRODUCED = "vin_not_produced"
REASON_NO_BOM = "no_bom_for_model"
REASON_INVALID_BOM = "invalid_bom_for_model"


class CascadeError(ValueError):
    """A policy, an input frame or a BOM breaks the contract of the supplier-credit cascade."""


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CascadePolicy:
    """The versioned parameters of supplier credit; validated when built.

    Attributes:
        version: the policy version recorded on every credit.
        advance_rate: financeable share of a vehicle's BOM cost, in (0, 1].
        lgd: loss given default used to turn the EL budget into a limit, in (0, 1].
        el_budget_fen: expected-loss budget per supplier; limit = el_budget / (PD × LGD).
        max_limit_fen: the largest limit any supplier gets.
        min_limit_fen: the smallest limit any supplier gets (≥ 0, ≤ max_limit_fen).
        dilution_reserve_floor: minimum share of confirmed payables held back, in [0, 1).
        dilution_multiplier: reserve = max(floor, multiplier × observed dilution ratio), ≥ 0.
    """

    version: str
    advance_rate: float
    lgd: float
    el_budget_fen: int
    max_limit_fen: int
    min_limit_fen: int
    dilution_reserve_floor: float
    dilution_multiplier: float

    def __post_init__(self) -> None:
        if not isinstance(self.version, str) or not self.version.strip():
            raise CascadeError(f"policy field 'version': expected a non-empty string, got {self.version!r}")
        _check_real("advance_rate", self.advance_rate, low=0.0, high=1.0, low_open=True)
        _check_real("lgd", self.lgd, low=0.0, high=1.0, low_open=True)
        _check_int("el_budget_fen", self.el_budget_fen, low=1)
        _check_int("max_limit_fen", self.max_limit_fen, low=1)
        _check_int("min_limit_fen", self.min_limit_fen, low=0)
        if self.min_limit_fen > self.max_limit_fen:
            raise CascadeError(f"policy field 'min_limit_fen': expected ≤ max_limit_fen "
                               f"({self.max_limit_fen}), got {self.min_limit_fen}")
        _check_real("dilution_reserve_floor", self.dilution_reserve_floor, low=0.0, high=1.0, high_open=True)
        _check_real("dilution_multiplier", self.dilution_multiplier, low=0.0, high=math.inf)
        for name in ("el_budget_fen", "max_limit_fen", "min_limit_fen"):  # numpy ints -> int (canonical JSON)
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("advance_rate", "lgd", "dilution_reserve_floor", "dilution_multiplier"):
            object.__setattr__(self, name, float(getattr(self, name)))


def _check_real(name: str, value: Any, *, low: float, high: float, low_open: bool = False,
                high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CascadeError(f"policy field {name!r}: expected a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise CascadeError(f"policy field {name!r}: expected a number in {interval}, got {value!r}")


def _check_int(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise CascadeError(f"policy field {name!r}: expected an integer number of fen, got {value!r}")
    if value < low:
        raise CascadeError(f"policy field {name!r}: expected an integer ≥ {low}, got {value!r}")


def load_cascade_policy(mapping: Mapping[str, Any]) -> CascadePolicy:
    """Build a ``CascadePolicy`` from a mapping (e.g. parsed YAML/JSON), validating every field.

    Raises:
        CascadeError: a field is missing, unknown, or out of range; the message names the field.
    """
    if not isinstance(mapping, Mapping):
        raise CascadeError(f"cascade policy: expected a mapping, got {type(mapping).__name__}")
    expected = {f.name for f in fields(CascadePolicy)}
    missing = sorted(expected - set(mapping))
    unknown = sorted(set(mapping) - expected)
    if missing:
        raise CascadeError(f"cascade policy: missing field(s) {missing}; expected {sorted(expected)}")
    if unknown:
        raise CascadeError(f"cascade policy: unknown field(s) {unknown}; expected {sorted(expected)}")
    return CascadePolicy(**{name: mapping[name] for name in expected})


CASCADE_POLICY_V1 = CascadePolicy(
    version="cascade-v1",
    advance_rate=0.7,
    lgd=0.5,
    el_budget_fen=5_000_000,  # 50,000 CNY of expected loss per supplier
    max_limit_fen=5_000_000_000,  # 50,000,000 CNY
    min_limit_fen=0,
    dilution_reserve_floor=0.05,
    dilution_multiplier=1.5,
)


def policy_hash(policy: CascadePolicy) -> str:
    """sha256 (hex) of the policy as canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(asdict(policy), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------------------------


def _floor_fen(values: np.ndarray) -> np.ndarray:
    """Floor float fen amounts to int64 after rounding away float noise (6 decimals)."""
    return np.floor(np.round(values, _FEN_DECIMALS)).astype(np.int64)


def _ceil_fen(values: np.ndarray) -> np.ndarray:
    return np.ceil(np.round(values, _FEN_DECIMALS)).astype(np.int64)


def supplier_limits(pd_: pd.Series, policy: CascadePolicy) -> pd.Series:
    """Each supplier's credit limit in integer fen from its PD and the expected-loss budget.

    ``limit = clip(el_budget_fen / (PD × LGD), min_limit_fen, max_limit_fen)``, floored to a fen.

    Args:
        pd_: PD per supplier, indexed by supplier_id; every PD in (0, 1].

    Returns:
        ``int64`` Series ``limit_fen`` with the same index.

    Raises:
        CascadeError: a PD is missing, not a number, ≤ 0 (the limit would be infinite) or > 1,
            or the index holds duplicate supplier ids.
    """
    if not isinstance(pd_, pd.Series):
        raise CascadeError(f"supplier_limits: expected a pandas Series of PDs, got {type(pd_).__name__}")
    if pd_.index.has_duplicates:
        dups = sorted(map(str, pd_.index[pd_.index.duplicated()].unique()))[:10]
        raise CascadeError(f"supplier_limits: expected one PD per supplier, got duplicates {dups}")
    values = pd.to_numeric(pd_, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(values) & (values > 0.0) & (values <= 1.0))
    if bad.any():
        examples = {str(k): pd_.iloc[i] for k, i in zip(pd_.index[bad][:5], np.flatnonzero(bad)[:5])}
        raise CascadeError(f"supplier_limits: expected every PD in (0, 1] (a PD of 0 gives an infinite "
                           f"limit), got {int(bad.sum())} bad value(s), e.g. {examples}")
    raw = policy.el_budget_fen / (values * policy.lgd)
    limits = np.clip(_floor_fen(np.minimum(raw, float(policy.max_limit_fen))),
                     policy.min_limit_fen, policy.max_limit_fen)
    return pd.Series(limits.astype(np.int64), index=pd_.index.copy(), name="limit_fen")


# --------------------------------------------------------------------------------------------
# The exact split
# --------------------------------------------------------------------------------------------


def largest_remainder(totals: np.ndarray, groups: np.ndarray, weights: np.ndarray,
                      tie_rank: np.ndarray) -> np.ndarray:
    """Split integer ``totals[g]`` among the members of each group in proportion to their weights.

    The rule (exact, deterministic): member ``k`` of group ``g`` with weight ``w`` in a group of
    total weight ``W`` first gets ``floor(total × w / W)`` (integer arithmetic, no floats); the
    fen left over (fewer than the group's members) go one each to the members with the largest
    remainders ``total × w mod W``, ties broken by ``tie_rank`` ascending (the callers pass the
    rank of the supplier_id). A group of total weight 0 must have total 0 and gives 0 to all.

    Args:
        totals: int, one per group (``groups`` indexes it).
        groups: group index of each member.
        weights: non-negative integer weight of each member.
        tie_rank: integer tie-break key of each member (smaller wins).

    Returns:
        int64 amount per member; the amounts of each group add up exactly to its total.
    """
    groups = np.asarray(groups, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.int64)
    totals = np.asarray(totals, dtype=np.int64)
    if len(weights) == 0:
        return np.zeros(0, dtype=np.int64)
    if (weights < 0).any() or (totals < 0).any():
        raise CascadeError("largest_remainder: expected weights and totals ≥ 0, got a negative value")
    group_weight = np.zeros(len(totals), dtype=np.int64)
    np.add.at(group_weight, groups, weights)
    if (group_weight[groups] == 0).any() and (totals[groups][group_weight[groups] == 0] != 0).any():
        raise CascadeError("largest_remainder: a group of zero weight cannot receive a non-zero total")
    member_total = totals[groups]
    member_weight_sum = np.where(group_weight[groups] == 0, 1, group_weight[groups])
    if int(np.abs(totals).max(initial=0)) * int(weights.max(initial=0)) < _INT64_SAFE:
        numerator = member_total * weights
        floor = numerator // member_weight_sum
        remainder = numerator % member_weight_sum
    else:  # exact Python integers when the product could overflow int64
        numerator = member_total.astype(object) * weights.astype(object)
        floor = (numerator // member_weight_sum.astype(object)).astype(np.int64)
        remainder = (numerator % member_weight_sum.astype(object)).astype(np.int64)
    leftover = totals.copy()
    np.subtract.at(leftover, groups, floor)
    order = np.lexsort((np.asarray(tie_rank, dtype=np.int64), -remainder, groups))
    sorted_groups = groups[order]
    starts = np.searchsorted(sorted_groups, sorted_groups, side="left")
    position = np.arange(len(order)) - starts
    bonus = np.zeros(len(order), dtype=np.int64)
    bonus[order] = (position < leftover[sorted_groups]).astype(np.int64)
    return floor.astype(np.int64) + bonus


def _require(frame: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise CascadeError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CascadeError(f"{name}: missing column(s) {missing}; expected {list(columns)}, "
                           f"got {list(frame.columns)}")


def _int_column(frame: pd.DataFrame, name: str, column: str) -> np.ndarray:
    values = frame[column]
    if values.isna().any():
        raise CascadeError(f"{name}.{column}: expected integers, got {int(values.isna().sum())} null(s)")
    if not pd.api.types.is_integer_dtype(values.dtype):
        as_float = pd.to_numeric(values, errors="coerce")
        if as_float.isna().any() or (as_float != np.floor(as_float)).any():
            raise CascadeError(f"{name}.{column}: expected integers, got dtype {values.dtype} "
                               f"with non-integer values")
    return values.to_numpy(dtype=np.int64)


def _member(values: pd.Series, of: pd.Series) -> np.ndarray:
    """``values.isin(of)`` as a bool array, by Python set membership (pandas' Arrow-backed
    ``isin`` converts element by element and costs ~25 ms per call on a sub-BOM)."""
    members = set(of.tolist())
    return np.fromiter((v in members for v in values.tolist()), dtype=bool, count=len(values))


def _unique_ids(frame: pd.DataFrame, name: str, column: str) -> None:
    ids = frame[column]
    if ids.isna().any():
        raise CascadeError(f"{name}.{column}: expected no nulls, got {int(ids.isna().sum())}")
    if ids.duplicated().any():
        dups = sorted(map(str, ids[ids.duplicated()].unique()))[:10]
        raise CascadeError(f"{name}.{column}: expected unique keys, got duplicates {dups}")


@dataclass(frozen=True)
class _ModelSplit:
    """One model's cost structure: lineage rows with tier-1 (group) and member supplier."""

    tier1_cost: pd.Series  # int64 BOM cost per tier-1 supplier, index sorted
    pairs: pd.DataFrame  # one row per (bom line, sub-BOM line): tier1, supplier_id, values
    lineage: pd.DataFrame  # LINEAGE_COLUMNS
    problem: str | None  # why this model's BOM cannot be split, or None


def _model_structure(model_bom: pd.DataFrame, sub_bom: pd.DataFrame) -> _ModelSplit:
    """Costs and lineage of one model's BOM and the sub-BOM lines under its parts."""
    bom = pd.DataFrame({
        "bom_line_id": model_bom["bom_line_id"].to_numpy(),
        "part_id": model_bom["part_id"].to_numpy(),
        "tier1": model_bom["supplier_id"].to_numpy(),
        "quantity": _int_column(model_bom, "bom", "quantity"),
        "unit_price_fen": _int_column(model_bom, "bom", "unit_price_fen"),
    })
    sub = pd.DataFrame({
        "sub_bom_line_id": sub_bom["sub_bom_line_id"].to_numpy(),
        "parent_part_id": sub_bom["parent_part_id"].to_numpy(),
        "supplier_id": sub_bom["supplier_id"].to_numpy(),
        "sub_quantity": _int_column(sub_bom, "sub_bom", "quantity"),
        "sub_unit_price_fen": _int_column(sub_bom, "sub_bom", "unit_price_fen"),
    })
    sub = sub[_member(sub["parent_part_id"], bom["part_id"])]
    bom["line_value_fen"] = bom["quantity"] * bom["unit_price_fen"]
    pairs = bom.merge(sub, left_on="part_id", right_on="parent_part_id", how="inner", sort=False)
    pairs["line_value_fen"] = pairs["quantity"] * pairs["sub_quantity"] * pairs["sub_unit_price_fen"]
    tier1_cost = bom.groupby("tier1", sort=True)["line_value_fen"].sum().astype(np.int64)
    component_cost = pairs.groupby("tier1", sort=True)["line_value_fen"].sum().astype(np.int64)
    component_cost = component_cost.reindex(tier1_cost.index, fill_value=0)

    problem = None
    if (bom["quantity"] <= 0).any() or (sub["sub_quantity"] <= 0).any():
        problem = "a BOM or sub-BOM quantity ≤ 0"
    elif (bom["unit_price_fen"] < 0).any() or (sub["sub_unit_price_fen"] < 0).any():
        problem = "a negative unit price"
    elif int(tier1_cost.sum()) <= 0:
        problem = "BOM cost is 0"
    elif (component_cost > tier1_cost).any():
        over = list(tier1_cost.index[(component_cost > tier1_cost).to_numpy()][:5])
        problem = f"tier-2 components cost more than the tier-1 parts of supplier(s) {over}"

    tier1_lines = pd.DataFrame({"supplier_id": bom["tier1"], "bom_line_id": bom["bom_line_id"],
                                "sub_bom_line_id": None, "line_value_fen": bom["line_value_fen"]})
    tier2_lines = pd.DataFrame({"supplier_id": pairs["supplier_id"], "bom_line_id": pairs["bom_line_id"],
                                "sub_bom_line_id": pairs["sub_bom_line_id"],
                                "line_value_fen": pairs["line_value_fen"]})
    frames = [f for f in (tier1_lines, tier2_lines) if len(f)]
    lineage = (pd.concat(frames, ignore_index=True) if frames else tier1_lines)
    lineage = lineage.astype({"line_value_fen": np.int64})
    lineage = lineage.sort_values(["supplier_id", "bom_line_id", "sub_bom_line_id"], na_position="first",
                                  kind="mergesort", ignore_index=True)
    sub_ids = lineage["sub_bom_line_id"]
    lineage["sub_bom_line_id"] = pd.Series(np.where(sub_ids.notna(), sub_ids.to_numpy(dtype=object), None),
                                           dtype=object, index=lineage.index)
    return _ModelSplit(tier1_cost, pairs[["tier1", "supplier_id", "line_value_fen"]], lineage, problem)


def _split(structure: _ModelSplit, financeable_fen: int) -> pd.DataFrame:
    """The two-level largest-remainder split of one model (SHARE_COLUMNS, sorted by supplier_id)."""
    tier1 = structure.tier1_cost
    ids = np.array(sorted(set(map(str, tier1.index)) | set(map(str, structure.pairs["supplier_id"]))),
                   dtype=object)
    rank = {s: i for i, s in enumerate(ids)}
    t1_rank = np.array([rank[str(s)] for s in tier1.index], dtype=np.int64)
    # level 1: the financeable value among tier-1 suppliers by BOM cost
    level1 = largest_remainder(np.array([financeable_fen]), np.zeros(len(tier1), dtype=np.int64),
                               tier1.to_numpy(dtype=np.int64), t1_rank)
    # level 2: each tier-1 share between the tier-1 (keeps BOM cost − components) and its tier-2s
    comp = (structure.pairs.assign(tier1=structure.pairs["tier1"].map(str),
                                   supplier_id=structure.pairs["supplier_id"].map(str))
            .groupby(["tier1", "supplier_id"], sort=True)["line_value_fen"].sum())
    group_of = {str(s): g for g, s in enumerate(tier1.index)}
    comp_total = comp.groupby(level="tier1").sum() if len(comp) else pd.Series(dtype=np.int64)
    keep_weight = tier1.to_numpy(dtype=np.int64) - np.array(
        [int(comp_total.get(str(s), 0)) for s in tier1.index], dtype=np.int64)
    members = pd.DataFrame({
        "group": np.concatenate([np.arange(len(tier1)),
                                 np.array([group_of[t] for t in comp.index.get_level_values("tier1")],
                                          dtype=np.int64)]).astype(np.int64),
        "supplier_id": np.concatenate([np.array([str(s) for s in tier1.index], dtype=object),
                                       comp.index.get_level_values("supplier_id").to_numpy(dtype=object)]),
        "weight": np.concatenate([keep_weight, comp.to_numpy(dtype=np.int64)]),
        "role": np.concatenate([np.ones(len(tier1), dtype=np.int64), np.full(len(comp), 2, dtype=np.int64)]),
    })
    # a tier-1 supplier that is also a tier-2 component maker under itself: one member per group
    members = (members.groupby(["group", "supplier_id"], sort=True)
               .agg(weight=("weight", "sum"), role=("role", "min")).reset_index())
    members["share_fen"] = largest_remainder(level1, members["group"].to_numpy(),
                                             members["weight"].to_numpy(),
                                             members["supplier_id"].map(rank).to_numpy())
    shares = (members.groupby("supplier_id", sort=True)
              .agg(tier=("role", "min"), basis_fen=("weight", "sum"), share_fen=("share_fen", "sum"))
              .reset_index())
    return shares.astype({"tier": np.int64, "basis_fen": np.int64, "share_fen": np.int64})[list(SHARE_COLUMNS)]


def _check_split_inputs(model_bom: pd.DataFrame, sub_bom: pd.DataFrame) -> None:
    _require(model_bom, "bom", tuple(c for c in BOM_COLUMNS if c != "model_id"))
    _require(sub_bom, "sub_bom", SUB_BOM_COLUMNS)
    if "model_id" in model_bom.columns and model_bom["model_id"].nunique(dropna=False) > 1:
        raise CascadeError(f"split_vehicle_value: expected the BOM of one vehicle model, got models "
                           f"{sorted(map(str, model_bom['model_id'].unique()))[:10]}")
    if model_bom.empty:
        raise CascadeError("split_vehicle_value: expected at least one BOM line, got none")
    _unique_ids(model_bom, "bom", "bom_line_id")
    _unique_ids(sub_bom, "sub_bom", "sub_bom_line_id")
    for frame, name in ((model_bom, "bom"), (sub_bom, "sub_bom")):
        if frame["supplier_id"].isna().any():
            raise CascadeError(f"{name}.supplier_id: expected no nulls, got {int(frame['supplier_id'].isna().sum())}")


def split_vehicle_value(model_bom: pd.DataFrame, sub_bom: pd.DataFrame, financeable_fen: int) -> pd.DataFrame:
    """Split one vehicle's financeable value exactly among its tier-1 and tier-2 suppliers.

    Level 1: each tier-1 supplier's weight is its BOM cost ``B = Σ quantity × unit_price_fen`` of
    its lines in ``model_bom``. Level 2: its share is split again among itself and the tier-2
    suppliers of its parts; a tier-2 supplier's weight is its component cost ``C = Σ sub_bom
    quantity × sub_bom unit_price_fen × quantity of the parent BOM line`` (sub-BOM lines join BOM
    lines on ``parent_part_id == part_id``), the tier-1 supplier keeps the weight ``B − ΣC``.
    A supplier's share is the sum of what it gets in every group.

    Rounding, at both levels (``largest_remainder``): floor each exact share with integer
    arithmetic, then hand the fen left over one each to the largest fractional remainders, ties
    broken by supplier_id ascending. So the shares are integer fen and add up exactly to
    ``financeable_fen``, and each tier-1 group adds up exactly to its level-1 share.

    Args:
        model_bom: BOM lines of ONE vehicle model (bom_line_id, part_id, supplier_id, quantity,
            unit_price_fen; model_id optional).
        sub_bom: sub-BOM lines (sub_bom_line_id, parent_part_id, supplier_id, quantity,
            unit_price_fen); lines under parts not in ``model_bom`` are ignored.
        financeable_fen: the integer fen to split (≥ 0).

    Returns:
        One row per supplier, sorted by supplier_id: supplier_id, tier (1 if it has BOM lines in
        this model, else 2), basis_fen (its weight: B − ΣC for a tier-1, C for a tier-2; they add
        up to the model's BOM cost), share_fen. ``bom_lineage`` gives the lines behind each share.

    Raises:
        CascadeError: missing columns, duplicate line ids, more than one model, a quantity ≤ 0, a
            negative price, a BOM cost of 0, tier-2 components costing more than the tier-1 parts
            they go into, or a negative / non-integer ``financeable_fen``.
    """
    if isinstance(financeable_fen, bool) or not isinstance(financeable_fen, int | np.integer) \
            or financeable_fen < 0:
        raise CascadeError(f"split_vehicle_value: expected financeable_fen as an integer ≥ 0, "
                           f"got {financeable_fen!r}")
    _check_split_inputs(model_bom, sub_bom)
    structure = _model_structure(model_bom, sub_bom)
    if structure.problem is not None:
        raise CascadeError(f"split_vehicle_value: cannot split this BOM: {structure.problem}")
    return _split(structure, int(financeable_fen))


def bom_lineage(model_bom: pd.DataFrame, sub_bom: pd.DataFrame) -> pd.DataFrame:
    """The BOM lines behind each supplier's share in ``split_vehicle_value`` (same arguments).

    Returns:
        supplier_id, bom_line_id, sub_bom_line_id (None for a tier-1 line), line_value_fen (the
        line's cost basis: ``quantity × unit_price_fen`` for a BOM line — the full line, including
        the components it passes on to tier-2 —, ``sub quantity × sub unit price × parent BOM line
        quantity`` for a tier-2 component), sorted by supplier_id, bom_line_id, sub_bom_line_id.
    """
    _check_split_inputs(model_bom, sub_bom)
    return _model_structure(model_bom, sub_bom).lineage


# --------------------------------------------------------------------------------------------
# Allocation of a micro-batch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """The result of one micro-batch.

    credits: CREDIT_COLUMNS, one row per (vin, supplier_id), sorted by credit_id; ``split_id``
        names the split that holds the credit's lineage.
    splits: SPLIT_COLUMNS, the lineage of every split a credit names (one row per BOM line and
        sub-BOM line of the supplier in the model), sorted by split_id, bom_line_id,
        sub_bom_line_id (tier-1 line first, its sub_bom_line_id None).
    exceptions: EXCEPTION_COLUMNS, one row per event that created nothing, sorted by event_id.
    """

    credits: pd.DataFrame
    splits: pd.DataFrame
    exceptions: pd.DataFrame

    @property
    def lines(self) -> pd.DataFrame:
        """LINE_COLUMNS, the lineage of each credit (``credit_lines``), sorted by credit_id,
        bom_line_id, sub_bom_line_id (tier-1 line first). Built on demand: at reference scale it
        is ~12 M rows a day; storage keeps ``splits`` instead."""
        return credit_lines(self.credits, self.splits)


def structure_hash(lineage: pd.DataFrame) -> str:
    """sha256 (hex) of one model's lineage (LINEAGE_COLUMNS, as ``bom_lineage`` returns it): the
    rows in (supplier_id, bom_line_id, sub_bom_line_id) order, tab-separated, one per line,
    ``sub_bom_line_id`` empty for a tier-1 line. It changes when any BOM or sub-BOM line,
    quantity or price behind the model's split changes, and only then."""
    _require(lineage, "lineage", LINEAGE_COLUMNS)
    frame = lineage.sort_values(["supplier_id", "bom_line_id", "sub_bom_line_id"], na_position="first",
                                kind="mergesort", ignore_index=True)
    sub = frame["sub_bom_line_id"].astype(object)
    text = (frame["supplier_id"].astype(str) + "\t" + frame["bom_line_id"].astype(str) + "\t"
            + pd.Series(np.where(sub.isna(), "", sub.astype(str)), dtype=object, index=frame.index) + "\t"
            + frame["line_value_fen"].astype(np.int64).astype(str))
    return hashlib.sha256(("\n".join(text.tolist()) + "\n").encode("utf-8")).hexdigest()


def split_id(model_id: Any, structure_hash_hex: str, supplier_id: Any) -> str:
    """``<model_id>:<first STRUCTURE_HASH_CHARS of the structure hash>:<supplier_id>``."""
    return f"{model_id}:{structure_hash_hex[:STRUCTURE_HASH_CHARS]}:{supplier_id}"


def financeable_value(bom_cost_fen: int, policy: CascadePolicy) -> int:
    """floor(advance_rate × BOM cost) in fen; the advance rate is taken as the exact decimal
    it is written as (``Fraction(str(rate))``), so 0.29 × 100 fen is 29, not 28."""
    return math.floor(Fraction(str(policy.advance_rate)) * int(bom_cost_fen))


def _verified_flags(line_offs: pd.DataFrame) -> np.ndarray:
    flags = line_offs["iot_verified"]
    ok = flags.isna() | flags.map(lambda v: isinstance(v, bool | np.bool_) or v in (0, 1))
    if not ok.all():
        raise CascadeError(f"line_offs.iot_verified: expected booleans, got e.g. "
                           f"{flags[~ok].head(3).tolist()}")
    return flags.map(lambda v: v is True or v is np.True_ or (not pd.isna(v) and v == 1)).to_numpy(dtype=bool)


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def allocate(line_offs: pd.DataFrame, production: pd.DataFrame, bom: pd.DataFrame, sub_bom: pd.DataFrame,
             suppliers: pd.DataFrame, policy: CascadePolicy, *, batch_id: str) -> Allocation:
    """Turn a micro-batch of line-off events into capped supplier credits, lineage and exceptions.

    Events are taken in the order (line_off_at, event_id). An event creates nothing and goes to
    ``exceptions`` with the first reason that applies:
    ``iot_unverified: <verification_note>`` (not IoT-verified), ``duplicate_vin_in_batch`` (a
    later event of a VIN already seen in this batch, whatever the first one's outcome),
    ``vin_not_produced`` (no production row), ``no_bom_for_model <model_id>``,
    ``invalid_bom_for_model <model_id>: <why>`` (see ``split_vehicle_value``).

    Every other vehicle's financeable value is ``financeable_value(BOM cost of its model)``,
    split by ``split_vehicle_value`` (computed once per model and broadcast to its VINs).

    Caps. Per supplier: ``reserve = min(max(dilution_reserve_floor, dilution_multiplier ×
    dilution_ratio), 1)`` (a NaN ratio counts as 0); ``payables headroom = confirmed_payables_fen
    − ceil(confirmed_payables_fen × reserve)``; ``limit headroom = limit_fen − exposure_fen``;
    ``headroom = max(0, min(limit headroom, payables headroom))``. Credits consume the headroom
    in event order: ``amount = min(share, headroom − amounts of the supplier's earlier credits
    in this batch)``, never below 0. The shortfall is not re-allocated to other suppliers; it is
    ``capped_fen`` and ``capped_by`` names the smaller headroom ("limit" on a tie), None when
    not capped. Rows with amount 0 are kept so the cap is visible; suppliers whose share rounds
    to 0 fen get no row.

    Idempotency. The result is a pure function of the inputs (same frames, same order), and
    ``credit_id = f"{vin}:{supplier_id}"``: the caller makes "re-running a micro-batch creates no
    new credit" true by upserting credits (and lines) on credit_id and by passing, as
    ``exposure_fen``, the exposure *before* this batch's credits on a re-run.

    Args:
        line_offs: event_id, vin, line_off_at, iot_verified, verification_note.
        production: vin, model_id (one row per vin).
        bom: bom_line_id, model_id, part_id, supplier_id, quantity, unit_price_fen.
        sub_bom: sub_bom_line_id, parent_part_id, supplier_id, quantity, unit_price_fen.
        suppliers: supplier_id, tier, limit_fen, exposure_fen, confirmed_payables_fen,
            dilution_ratio; must cover every supplier that gets a share.
        policy: the cascade policy; its version is recorded on each credit.
        batch_id: the micro-batch id recorded on each credit and exception.

    Raises:
        CascadeError: a missing column, a duplicate key (event_id, production vin, bom_line_id,
            sub_bom_line_id, supplier_id), a null or non-integer amount, a negative limit,
            exposure, payables or dilution ratio, or a supplier with a share but no row in
            ``suppliers``.
    """
    if not isinstance(policy, CascadePolicy):
        raise CascadeError(f"allocate: expected a CascadePolicy, got {type(policy).__name__}")
    if not isinstance(batch_id, str) or not batch_id:
        raise CascadeError(f"allocate: expected a non-empty batch_id string, got {batch_id!r}")
    _require(line_offs, "line_offs", LINE_OFF_COLUMNS)
    _require(production, "production", PRODUCTION_COLUMNS)
    _require(bom, "bom", BOM_COLUMNS)
    _require(sub_bom, "sub_bom", SUB_BOM_COLUMNS)
    _require(suppliers, "suppliers", SUPPLIER_COLUMNS)
    _unique_ids(line_offs, "line_offs", "event_id")
    _unique_ids(production, "production", "vin")
    _unique_ids(bom, "bom", "bom_line_id")
    _unique_ids(sub_bom, "sub_bom", "sub_bom_line_id")
    _unique_ids(suppliers, "suppliers", "supplier_id")
    if line_offs["vin"].isna().any():
        raise CascadeError(f"line_offs.vin: expected no nulls, got {int(line_offs['vin'].isna().sum())}")
    line_off_at = pd.to_datetime(line_offs["line_off_at"])
    if line_off_at.isna().any():
        raise CascadeError(f"line_offs.line_off_at: expected timestamps, got {int(line_off_at.isna().sum())} null(s)")
    for column in ("supplier_id", "model_id", "part_id"):
        if bom[column].isna().any():
            raise CascadeError(f"bom.{column}: expected no nulls, got {int(bom[column].isna().sum())}")
    if production["model_id"].isna().any():
        raise CascadeError(f"production.model_id: expected no nulls, got {int(production['model_id'].isna().sum())}")

    events = pd.DataFrame({
        "event_id": line_offs["event_id"].to_numpy(),
        "vin": line_offs["vin"].to_numpy(),
        "line_off_at": line_off_at.to_numpy(),
        "verified": _verified_flags(line_offs),
        "note": line_offs["verification_note"].to_numpy(),
    }).sort_values(["line_off_at", "event_id"], kind="mergesort", ignore_index=True)
    model_of = pd.Series(production["model_id"].to_numpy(), index=production["vin"].to_numpy())
    events["model_id"] = events["vin"].map(model_of)

    reason = pd.Series(None, index=events.index, dtype=object)
    unverified = ~events["verified"]
    reason[unverified] = [REASON_UNVERIFIED if pd.isna(n) or str(n) == "" else f"{REASON_UNVERIFIED}: {n}"
                          for n in events.loc[unverified, "note"]]
    reason[reason.isna() & events["vin"].duplicated(keep="first")] = REASON_DUPLICATE
    reason[reason.isna() & events["model_id"].isna()] = REASON_NOT_PRODUCED

    models_with_bom = set(bom["model_id"].unique())
    structures: dict[Any, _ModelSplit] = {}
    shares: list[pd.DataFrame] = []
    lineages: list[pd.DataFrame] = []
    candidate_models = events.loc[reason.isna(), "model_id"].unique()
    for model in sorted(candidate_models, key=str):
        in_model = reason.isna() & (events["model_id"] == model)
        if model not in models_with_bom:
            reason[in_model] = f"{REASON_NO_BOM} {model}"
            continue
        structure = _model_structure(bom[bom["model_id"] == model], sub_bom)
        if structure.problem is not None:
            reason[in_model] = f"{REASON_INVALID_BOM} {model}: {structure.problem}"
            continue
        structures[model] = structure
        financeable = financeable_value(int(structure.tier1_cost.sum()), policy)
        split = _split(structure, financeable)
        split = split[split["share_fen"] > 0]
        digest = structure_hash(structure.lineage)
        ids = pd.Series([split_id(model, digest, s) for s in split["supplier_id"]], dtype=object,
                        index=split.index)
        shares.append(split.assign(model_id=model, split_id=ids))
        lineage = structure.lineage
        lineage = lineage[_member(lineage["supplier_id"].astype(str), split["supplier_id"].astype(str))]
        lineages.append(lineage.assign(
            model_id=model, structure_hash=digest,
            split_id=[split_id(model, digest, s) for s in lineage["supplier_id"]]))

    failed = reason.notna()
    exceptions = pd.DataFrame({
        "batch_id": batch_id,
        "event_id": events.loc[failed, "event_id"].to_numpy(),
        "vin": events.loc[failed, "vin"].to_numpy(),
        "reason": reason[failed].to_numpy(dtype=object),
    }, columns=list(EXCEPTION_COLUMNS))
    exceptions = exceptions.sort_values("event_id", kind="mergesort", ignore_index=True)

    accepted = events.loc[~failed, ["event_id", "vin", "model_id"]].reset_index(drop=True)
    accepted["order"] = np.arange(len(accepted), dtype=np.int64)
    if not shares or accepted.empty:
        return Allocation(_empty(CREDIT_COLUMNS), _empty(SPLIT_COLUMNS), exceptions)

    all_shares = pd.concat(shares, ignore_index=True)
    credits = accepted.merge(all_shares[["model_id", "supplier_id", "share_fen", "split_id"]], on="model_id",
                             how="inner")
    credits = _apply_caps(credits, suppliers, policy)
    credits["credit_id"] = credits["vin"].astype(str) + ":" + credits["supplier_id"].astype(str)
    credits["batch_id"] = batch_id
    credits["policy_version"] = policy.version
    credits = credits.take(_credit_id_order(credits)).reset_index(drop=True)[list(CREDIT_COLUMNS)]

    used = set(credits["split_id"].unique())  # splits of models whose vehicles all failed are left out
    splits = pd.concat(lineages, ignore_index=True)
    splits = splits[splits["split_id"].isin(used)]
    splits = splits.sort_values(["split_id", "bom_line_id", "sub_bom_line_id"], na_position="first",
                                kind="mergesort", ignore_index=True)
    sub_ids = splits["sub_bom_line_id"]
    splits["sub_bom_line_id"] = pd.Series(np.where(sub_ids.notna(), sub_ids.to_numpy(dtype=object), None),
                                          dtype=object, index=splits.index)
    splits = splits.astype({"line_value_fen": np.int64})[list(SPLIT_COLUMNS)]
    return Allocation(credits, splits, exceptions)


def _credit_id_order(credits: pd.DataFrame) -> np.ndarray:
    """Positions that sort ``credits`` by ``credit_id`` (``<vin>:<supplier_id>``, unique).

    When every VIN has one length and no VIN holds a ':', that order is the order by (vin,
    supplier_id): two ids of different VINs differ first inside the VINs, two of one VIN compare
    their supplier ids. Then the ~3,000 VINs and ~700 suppliers are ranked as text and the 1.8 M
    credits sorted by those integer ranks (a string sort of the ids costs ~1 s); otherwise by
    the ids themselves."""
    vin = credits["vin"].astype(str)
    vin_codes, vins = pd.factorize(vin.to_numpy(dtype=object))
    lengths = {len(v) for v in vins.tolist()}
    if len(lengths) > 1 or any(":" in v for v in vins.tolist()):
        return np.argsort(credits["credit_id"].to_numpy(dtype=object), kind="stable")
    sup_codes, sups = pd.factorize(credits["supplier_id"].astype(str).to_numpy(dtype=object))
    vin_rank = np.empty(len(vins), dtype=np.int64)
    vin_rank[np.argsort(np.asarray(vins, dtype=object), kind="stable")] = np.arange(len(vins))
    sup_rank = np.empty(len(sups), dtype=np.int64)
    sup_rank[np.argsort(np.asarray(sups, dtype=object), kind="stable")] = np.arange(len(sups))
    return np.lexsort((sup_rank[sup_codes], vin_rank[vin_codes]))


def _supplier_caps(suppliers: pd.DataFrame, policy: CascadePolicy) -> pd.DataFrame:
    """Headroom per supplier (index supplier_id as str): tier, headroom_fen, capped_by."""
    limit = _int_column(suppliers, "suppliers", "limit_fen")
    exposure = _int_column(suppliers, "suppliers", "exposure_fen")
    payables = _int_column(suppliers, "suppliers", "confirmed_payables_fen")
    dilution = pd.to_numeric(suppliers["dilution_ratio"], errors="raise").to_numpy(dtype=np.float64)
    dilution = np.where(np.isnan(dilution), 0.0, dilution)
    for name, values in (("limit_fen", limit), ("exposure_fen", exposure),
                         ("confirmed_payables_fen", payables), ("dilution_ratio", dilution)):
        if (values < 0).any() or not np.isfinite(values).all():
            raise CascadeError(f"suppliers.{name}: expected finite values ≥ 0, got e.g. "
                               f"{values[(values < 0) | ~np.isfinite(values)][:3].tolist()}")
    reserve = np.minimum(np.maximum(policy.dilution_reserve_floor, policy.dilution_multiplier * dilution),
                         MAX_RESERVE)
    payables_headroom = payables - np.minimum(_ceil_fen(payables * reserve), payables)
    limit_headroom = limit - exposure
    return pd.DataFrame({
        "tier": suppliers["tier"].to_numpy(),
        "headroom_fen": np.maximum(0, np.minimum(limit_headroom, payables_headroom)).astype(np.int64),
        "binding": np.where(limit_headroom <= payables_headroom, CAP_LIMIT, CAP_PAYABLES).astype(object),
    }, index=pd.Index(suppliers["supplier_id"].astype(str).to_numpy(), name="supplier_id"))


def _apply_caps(credits: pd.DataFrame, suppliers: pd.DataFrame, policy: CascadePolicy) -> pd.DataFrame:
    """Amounts after caps, consumed per supplier in event order (cumulative sums, no row loop)."""
    caps = _supplier_caps(suppliers, policy)
    missing = sorted(set(map(str, credits["supplier_id"].unique())) - set(caps.index))
    if missing:
        raise CascadeError(f"suppliers: expected a row (limit, exposure, payables) for every supplier with "
                           f"a share, got none for {len(missing)}: {missing[:10]}")
    credits = credits.iloc[np.argsort(credits["order"].to_numpy(), kind="stable")].reset_index(drop=True)
    code = caps.index.get_indexer(credits["supplier_id"].astype(str))
    share = credits["share_fen"].to_numpy(dtype=np.int64)
    # earlier shares of the same supplier in event order (one row per supplier per event)
    earlier = pd.Series(share).groupby(code, sort=False).cumsum().to_numpy(dtype=np.int64) - share
    headroom = caps["headroom_fen"].to_numpy(dtype=np.int64)[code]
    # greedy consumption: earlier amounts = min(headroom, earlier shares), so this is exact
    amount = np.clip(headroom - earlier, 0, share)
    capped = share - amount
    credits["tier"] = caps["tier"].to_numpy()[code]
    credits["amount_fen"] = amount.astype(np.int64)
    credits["capped_fen"] = capped.astype(np.int64)
    binding = caps["binding"].to_numpy(dtype=object)[code]
    credits["capped_by"] = pd.Series(np.where(capped > 0, binding, None), dtype=object, index=credits.index)
    return credits


def credit_lines(credits: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """The lineage of each credit: its split's lines, under its credit_id.

    Args:
        credits: credit_id, split_id (e.g. ``Allocation.credits``).
        splits: SPLIT_COLUMNS (at least split_id, bom_line_id, sub_bom_line_id, line_value_fen),
            holding every split a credit names.

    Returns:
        LINE_COLUMNS, one row per (credit, line of its split), in credit order then
        bom_line_id, sub_bom_line_id (tier-1 line first).

    Raises:
        CascadeError: a credit names a split that ``splits`` does not hold.
    """
    _require(credits, "credits", ("credit_id", "split_id"))
    _require(splits, "splits", ("split_id", "bom_line_id", "sub_bom_line_id", "line_value_fen"))
    if credits.empty:
        return _empty(LINE_COLUMNS)
    lineage = splits.sort_values(["split_id", "bom_line_id", "sub_bom_line_id"], na_position="first",
                                 kind="mergesort", ignore_index=True)
    blocks = lineage.groupby("split_id", sort=False).size().rename("count").reset_index()
    blocks["start"] = np.concatenate([[0], np.cumsum(blocks["count"].to_numpy())[:-1]]).astype(np.int64)
    keyed = credits[["credit_id", "split_id"]].merge(blocks, on="split_id", how="left", sort=False)
    if keyed["count"].isna().any():
        missing = sorted(map(str, keyed.loc[keyed["count"].isna(), "split_id"].unique()))[:5]
        raise CascadeError(f"credit_lines: expected a split for every credit, got none for {missing}")
    count = keyed["count"].to_numpy(dtype=np.int64)
    start = keyed["start"].to_numpy(dtype=np.int64)
    offset_in_block = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    take = np.repeat(start, count) + offset_in_block
    sub = lineage["sub_bom_line_id"].to_numpy(dtype=object)[take]
    return pd.DataFrame({
        "credit_id": keyed["credit_id"].array.take(np.repeat(np.arange(len(keyed)), count)),
        "bom_line_id": lineage["bom_line_id"].array.take(take),
        "sub_bom_line_id": pd.Series(np.where(pd.isna(sub), None, sub), dtype=object),
        "line_value_fen": lineage["line_value_fen"].to_numpy(dtype=np.int64)[take],
    }, columns=list(LINE_COLUMNS))
