"""The data-quality gate of one landed batch: validate, split, account for every row.

``run_gate`` takes the landed rows of one batch and what the checks need to know about the rest
of the warehouse (parent keys, VINs already used, recent batch sizes, the end of the business
day) and returns the rows to publish, the rows to quarantine with their reasons, and the
batch-level verdict. It never drops a row: rows in = accepted + quarantined, and a batch that
fails a batch-level check quarantines all its rows (reason ``blocked``) and publishes none.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from expectations.frames import TYPES_OK, VIN_OK, add_flags, check_frame, duplicated_all, fk_flag
from expectations.gx_runner import GxValidator, Validation
from expectations.rules import BATCH, Check, batch_checks, row_checks
from sources.contract import Table

REASONS = "_reasons"
SAMPLE_KEYS = 5
RECENT_BATCHES = 5


class GateError(RuntimeError):
    """The gate cannot account for the batch (a bug, never a data problem)."""


@dataclass(frozen=True)
class GateInputs:
    window_end: dt.datetime
    parent_keys: dict[str, object] = field(default_factory=dict)
    used_vins: pd.Series | None = None
    recent_counts: tuple[int, ...] = ()
    append_only: bool = True  # volume/freshness apply to tables with daily traffic


@dataclass
class Failure:
    check: str
    severity: str
    count: int
    sample_keys: list[str]
    detail: str | None = None
    column: str | None = None
    sample_values: list[str] = field(default_factory=list)  # the failing column's raw values


@dataclass
class GateOutcome:
    rows_in: int
    accepted: pd.DataFrame
    quarantined: pd.DataFrame  # the rows as landed plus ``_reasons`` ("check;check")
    failures: list[Failure]
    blocked: bool
    validation: Validation

    @property
    def blocking(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == BATCH]


def volume_params(recent: tuple[int, ...], append_only: bool) -> dict:
    """Bounds for the ``volume`` and ``freshness`` checks from recent landed batch sizes."""
    recent = tuple(recent)[-RECENT_BATCHES:]
    busy = append_only and len(recent) >= 3 and min(recent) > 0
    return {
        "freshness_min": 1 if busy else 0,
        "freshness_max": None,
        "volume_min": 0,
        "volume_max": (20 * max(recent) + 1_000) if len(recent) >= 3 else None,
    }


def _masks(frame: pd.DataFrame, check: Check, contract: Table, inputs: GateInputs,
           type_fail: dict[str, pd.Series]) -> pd.Series:
    """The rows failing ``check``, computed the way GX counts them (nulls pass value checks)."""
    if check.column is not None and check.column not in frame.columns:
        return pd.Series(False, index=frame.index)
    col = frame[check.column] if check.column else None
    if check.kind == "not_null":
        return col.isna()
    if check.kind == "range":
        bad = pd.Series(False, index=frame.index)
        if check.min_value is not None:
            bad |= col < check.min_value
        if check.max_value is not None:
            bad |= col > check.max_value
        return bad & col.notna()
    if check.kind == "allowed":
        return col.notna() & ~col.isin(list(check.allowed))
    if check.kind == "not_future":
        return col.notna() & (col > pd.Timestamp(inputs.window_end))
    if check.kind == "unique":
        return pd.Series(duplicated_all(col), index=frame.index)
    if check.kind == "unique_vin":
        return ~frame[VIN_OK]
    if check.kind == "fk":
        return ~frame[fk_flag(check.column)]
    if check.kind == "type":
        return type_fail.get(check.column, pd.Series(False, index=frame.index))
    raise GateError(f"no row mask for check kind {check.kind!r}")


def run_gate(df: pd.DataFrame, contract: Table, inputs: GateInputs, validator: GxValidator,
             run_name: str) -> GateOutcome:
    """Validate one landed batch ``df`` of ``contract`` and split it; see the module docstring."""
    rows_in = len(df)
    frame, type_fail = check_frame(df, contract)
    frame = add_flags(frame, contract, inputs.parent_keys, inputs.used_vins)
    rchecks, bchecks = row_checks(contract), batch_checks(contract)
    params = {"window_end": pd.Timestamp(inputs.window_end).to_pydatetime(),
              **volume_params(inputs.recent_counts, inputs.append_only)}
    validation = validator.validate(frame, contract, rchecks + bchecks, params, run_name)

    # raw keys: _sample renders the few it reports (astype(str) raises on undecodable bytes)
    key = df[contract.key] if contract.key in df.columns else pd.Series(
        df.index.astype(str), index=df.index)
    failures: list[Failure] = []
    reasons = np.empty(rows_in, dtype=object)  # None: no reason (yet)
    bad = np.zeros(rows_in, dtype=bool)

    def add_reason(mask: pd.Series, name: str) -> None:
        idx = np.flatnonzero(mask.to_numpy(dtype=bool))
        if len(idx):
            reasons[idx] = [f"{r};{name}" if r else name for r in reasons[idx]]
            bad[idx] = True

    # type failures: one GX expectation, one reason per column
    type_result = validation.results.get("type")
    if type_result is not None and not type_result.success:
        total = ~frame[TYPES_OK]
        _agree("type", type_result.unexpected_count, int(total.sum()))
        for column, mask in type_fail.items():
            add_reason(mask, f"type:{column}")
            failures.append(Failure(f"type:{column}", "row", int(mask.sum()), _sample(key, mask),
                                    column=column, sample_values=_sample(df[column], mask)))
    for check in rchecks:
        if check.kind == "type":
            continue
        if check.column is not None and check.column not in frame.columns:
            continue  # a missing column fails the batch-level schema check instead
        result = validation.results.get(check.name)
        if result is None:
            raise GateError(f"GX returned no result for {check.name} of {contract.source}.{contract.name}")
        if result.success:
            continue
        mask = _masks(frame, check, contract, inputs, type_fail)
        if result.error is None:
            _agree(check.name, result.unexpected_count, int(mask.sum()))
        add_reason(mask, check.name)
        values = _sample(df[check.column], mask) if check.column in df.columns else []
        failures.append(Failure(check.name, "row", int(mask.sum()), _sample(key, mask), result.error,
                                column=check.column, sample_values=values))

    blocked = False
    for check in bchecks:
        result = validation.results.get(check.name)
        if result is None or result.success:
            continue
        blocked = True
        failures.append(Failure(check.name, BATCH, rows_in, [], _batch_detail(check, result, frame, contract)))

    if blocked:
        names = ",".join(f.check for f in failures if f.severity == BATCH)
        reasons = np.array([f"blocked:{names};{r}" if r else f"blocked:{names}" for r in reasons], dtype=object)
        bad[:] = True
    accepted = df[~bad]
    quarantined = df[bad].copy()
    quarantined[REASONS] = reasons[bad]
    if len(accepted) + len(quarantined) != rows_in:
        raise GateError(f"rows in {rows_in} != accepted {len(accepted)} + quarantined {len(quarantined)}")
    failures.sort(key=lambda f: f.severity != BATCH)  # batch-level verdicts first
    return GateOutcome(rows_in, accepted, quarantined, failures, blocked, validation)


def _agree(name: str, gx_count, mask_count: int) -> None:
    if gx_count is not None and int(gx_count) != mask_count:
        raise GateError(f"GX counts {gx_count} rows failing {name} but the quarantine split found "
                        f"{mask_count}: the check and its row mask disagree")


def _sample(values: pd.Series, mask: pd.Series) -> list[str]:
    picked = values.iloc[np.flatnonzero(mask.to_numpy(dtype=bool))[:SAMPLE_KEYS]].tolist()
    return ["null" if _is_missing(v) else str(v) for v in picked]


def _is_missing(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):  # containers: not a missing scalar
        return False


def _batch_detail(check: Check, result, frame: pd.DataFrame, contract: Table) -> str:
    if check.kind == "schema":
        present = [c for c in frame.columns if not c.startswith("_")]
        missing = [c for c in contract.column_names if c not in present]
        unexpected = [c for c in present if c not in contract.column_names]
        return f"missing column(s) {missing}; unexpected column(s) {unexpected}"
    if result.error:
        return result.error
    return f"observed {result.observed}"
