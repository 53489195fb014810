"""The quality rules of every landed table, derived from the source contract plus the value
domains below. Each rule is a named check with a severity:

- ``row``: failing rows are quarantined with the check's name as reason, the rest flows;
- ``batch``: the batch does not publish and everything downstream of it waits.

Check names are stable identifiers used in quarantine reasons, alerts and the report:
``not_null:<col>``, ``type:<col>``, ``range:<col>``, ``allowed:<col>``, ``unique:<key>``,
``unique_vin``, ``fk:<col>``, ``not_future:<col>``, ``schema:columns``, ``volume``, ``freshness``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sources.contract import Table

Severity = Literal["row", "batch"]
ROW: Severity = "row"
BATCH: Severity = "batch"

MAX_AMOUNT_FEN = 10**12  # 10 bn CNY: anything larger is an absurd amount for one row
# value domains (allowed sets and ranges) beyond what the contract's types say
ALLOWED: dict[str, tuple] = {
    "tier": (1, 2),
    "city_tier": (1, 2, 3, 4),
    "channel": ("consumer", "dealer"),
    "confirmation_status": ("pending", "confirmed", "disputed", "withdrawn"),
    "reason": ("return", "quality_dispute", "price_adjustment"),
    "status": ("active", "blocked"),
    "term_days": (30, 60, 90),
}
RANGES: dict[str, tuple[float | None, float | None]] = {
    "quantity": (1, 100_000),
    "mileage_km": (0, 2_000_000),
    "model_year": (1980, 2030),
    "vehicles_expected": (0, 100_000),
    "vehicles_found": (0, 100_000),
}
# columns whose dates may legitimately lie in the future
FUTURE_OK = {"due_on"}


@dataclass(frozen=True)
class Check:
    name: str
    kind: str  # not_null | type | range | allowed | unique | unique_vin | fk | not_future | schema | volume | freshness
    severity: Severity
    column: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    allowed: tuple = ()
    parent: tuple[str, str] | None = None  # (table, column) of a foreign key
    description: str = ""


def row_checks(contract: Table) -> list[Check]:
    """The row-level checks of a table, in a stable order."""
    checks: list[Check] = []
    for c in contract.columns:
        checks.append(Check(f"type:{c.name}", "type", ROW, c.name,
                            description=f"{c.name} holds a {c.type} value"))
        if not c.nullable:
            checks.append(Check(f"not_null:{c.name}", "not_null", ROW, c.name,
                                description=f"{c.name} is not null"))
    for c in contract.columns:
        if c.name.endswith("_fen"):
            checks.append(Check(f"range:{c.name}", "range", ROW, c.name, 0, MAX_AMOUNT_FEN,
                                description=f"{c.name} is between 0 and {MAX_AMOUNT_FEN:,} fen"))
        elif c.name in RANGES:
            lo, hi = RANGES[c.name]
            checks.append(Check(f"range:{c.name}", "range", ROW, c.name, lo, hi,
                                description=f"{c.name} is between {lo} and {hi}"))
        if c.name in ALLOWED:
            checks.append(Check(f"allowed:{c.name}", "allowed", ROW, c.name, allowed=ALLOWED[c.name],
                                description=f"{c.name} is one of {ALLOWED[c.name]}"))
        if c.type in ("ts", "date") and c.name != "updated_at" and c.name not in FUTURE_OK:
            checks.append(Check(f"not_future:{c.name}", "not_future", ROW, c.name,
                                description=f"{c.name} is not after the end of the business day"))
    checks.append(Check(f"unique:{contract.key}", "unique", ROW, contract.key,
                        description=f"{contract.key} is unique in the batch (every copy is quarantined)"))
    if contract.unique_vin and contract.key != "vin":  # a VIN key is covered by unique:vin
        checks.append(Check("unique_vin", "unique_vin", ROW, "vin",
                            description="the VIN is not already used by another row (the first one wins)"))
    for fk in contract.foreign_keys:
        checks.append(Check(f"fk:{fk.column}", "fk", ROW, fk.column, parent=(fk.table, fk.ref_column),
                            description=f"{fk.column} exists in {fk.table}.{fk.ref_column}"))
    return checks


def batch_checks(contract: Table) -> list[Check]:
    return [
        Check("schema:columns", "schema", BATCH, description="the table has exactly its contract columns"),
        Check("volume", "volume", BATCH, description="row count at most 20x the recent maximum + 1,000"),
        Check("freshness", "freshness", BATCH,
              description="a table that had rows in each recent batch has rows today"),
    ]
