"""The quality gate on 1,000,000 landed rows vs a bare Great Expectations validation of its suite.

The frame is a synthetic ``dealer.loan_applications`` batch (realistic keys and VINs, int64 fen
amounts, datetime64 timestamps) with 0.5 % bad rows spread over five kinds: negative amounts,
nulls, orphan dealer ids, future timestamps and duplicate keys (both copies of a pair are bad).

- ours: :func:`expectations.gate.run_gate` end to end from the raw frame (coercion, flag
  columns, GX, row masks, quarantine split) with an ephemeral :class:`GxValidator`, warmed once
  on a small frame;
- baseline: GX alone, the same expectations (:func:`build_expectations` of the table's row and
  batch checks) in its own ephemeral context, ``get_batch`` + ``batch.validate(suite,
  result_format="SUMMARY")`` on the same check frame the gate validates (after ``check_frame`` +
  ``add_flags``: GX has no cheap cross-table check, so referential checks are flag columns).

Runs alternate and repeat; the ratio is ours ÷ baseline of the medians (goal ≤ 1.3). The size is
fixed: ``scale`` is ignored.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path

ROWS = 1_000_000
BAD_SHARE = 0.005
DEALERS = 2_500
EXTRA_INVENTORY_VINS = 50_000
GOAL_RATIO = 1.3
REPEATS = 3
SEED = 23
WINDOW_END = dt.datetime(2026, 3, 3)
RECENT_COUNTS = (960_000, 1_010_000, 990_000, 1_000_000, 980_000)
BAD_KINDS = ("negative_amount", "null", "orphan_dealer", "future_timestamp", "duplicate_key")


def _vins(start: int, n: int):
    import numpy as np

    return np.char.add("LSVAB2C3", np.char.zfill(np.arange(start, start + n).astype(str), 9))  # 17 chars


def build_batch(rows: int = ROWS, seed: int = SEED):
    """The landed frame, the gate inputs and ``{kind: positions of the bad rows}``."""
    import numpy as np
    import pandas as pd

    from expectations.gate import GateInputs

    rng = np.random.default_rng(seed)
    dealers = np.char.add("D", np.char.zfill(np.arange(1, DEALERS + 1).astype(str), 5))
    vins = _vins(0, rows)
    price = rng.integers(3_000_000, 60_000_000, rows)  # 30k .. 600k CNY, in fen
    day_start = np.datetime64(WINDOW_END - dt.timedelta(days=1), "ns")
    applied = day_start + rng.integers(0, 86_400 * 10**9, rows).astype("timedelta64[ns]")
    df = pd.DataFrame({
        "application_id": pd.array(np.char.add("LA", np.char.zfill(np.arange(rows).astype(str), 10)), dtype="str"),
        "dealer_id": pd.array(dealers[rng.integers(0, DEALERS, rows)], dtype="str"),
        "vin": pd.array(vins, dtype="str"),
        "purchase_price_fen": price,
        "appraised_value_fen": (price * rng.uniform(0.8, 1.1, rows)).astype("int64"),
        "requested_fen": (price * rng.uniform(0.3, 0.8, rows)).astype("int64"),
        "term_days": rng.choice(np.array([30, 60, 90]), rows),
        "applied_at": applied,
        "updated_at": applied + np.timedelta64(5, "m"),
    })

    # 0.5 % bad rows, one fault each, on distinct rows spread over the whole frame
    n_bad = int(rows * BAD_SHARE)
    per_kind = n_bad // len(BAD_KINDS)
    picked = rng.choice(rows, n_bad, replace=False)
    bad = {kind: np.sort(picked[i * per_kind:(i + 1) * per_kind]) for i, kind in enumerate(BAD_KINDS)}
    df.loc[bad["negative_amount"], "requested_fen"] = -df.loc[bad["negative_amount"], "requested_fen"]
    half = per_kind // 2
    df.loc[bad["null"][:half], "dealer_id"] = None
    df.loc[bad["null"][half:], "applied_at"] = pd.NaT
    df.loc[bad["orphan_dealer"], "dealer_id"] = "D99999"
    df.loc[bad["future_timestamp"], "applied_at"] = pd.Timestamp(WINDOW_END) + pd.Timedelta(days=3)
    first, second = bad["duplicate_key"][0::2], bad["duplicate_key"][1::2]
    df.loc[second, "application_id"] = df.loc[first, "application_id"].to_numpy()

    inputs = GateInputs(
        window_end=WINDOW_END,
        parent_keys={
            "dealers.dealer_id": pd.Index(dealers, dtype="str"),
            "inventory.vin": pd.Index(np.concatenate([vins, _vins(rows, EXTRA_INVENTORY_VINS)]), dtype="str"),
        },
        recent_counts=RECENT_COUNTS,
    )
    return df, inputs, bad


def _baseline_runner(contract, frame, params):
    """A bare GX validation of the gate's suite on ``frame`` (its own ephemeral context)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from expectations.gx_runner import build_expectations
    from expectations.rules import batch_checks, row_checks

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    bd = ctx.data_sources.add_pandas("bench").add_dataframe_asset("loan_applications") \
        .add_batch_definition_whole_dataframe("batch")
    suite = ctx.suites.add(gx.ExpectationSuite(
        name="bare", expectations=build_expectations(contract, row_checks(contract) + batch_checks(contract))))

    def validate():
        batch = bd.get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(suite, result_format="SUMMARY", expectation_parameters=params)

    return validate


def _breakdown(df, contract, inputs, validator) -> dict:
    """One more gate run with its stages timed (same code path: the stages are wrapped)."""
    import expectations.gate as gate

    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    originals = gate.check_frame, gate.add_flags, validator.validate
    gate.check_frame = timed("coercion_s", gate.check_frame)
    gate.add_flags = timed("flags_s", gate.add_flags)
    validator.validate = timed("gx_s", validator.validate)
    try:
        t0 = time.perf_counter()
        gate.run_gate(df, contract, inputs, validator, "bench-breakdown")
        total = time.perf_counter() - t0
    finally:
        gate.check_frame, gate.add_flags = originals[:2]
        del validator.validate  # back to the class method
    spent["masks_split_s"] = total - sum(spent.values())
    spent["total_s"] = total
    return {k: round(v, 2) for k, v in spent.items()}


def run(scale: str, workdir: Path) -> dict:
    import pandas as pd

    from expectations.frames import add_flags, check_frame
    from expectations.gate import run_gate, volume_params
    from expectations.gx_runner import GxValidator
    from sources.contract import table

    contract = table("dealer", "loan_applications")
    t0 = time.perf_counter()
    df, inputs, bad = build_batch()
    build_s = time.perf_counter() - t0
    bad_index = df.index[sorted(i for rows in bad.values() for i in rows)]
    n_bad = len(bad_index)

    validator = GxValidator()  # ephemeral: no Data Docs
    small, small_inputs, _ = build_batch(rows=2_000, seed=SEED + 1)
    run_gate(small, contract, small_inputs, validator, "bench-warmup")

    frame, _ = check_frame(df, contract)
    frame = add_flags(frame, contract, inputs.parent_keys, inputs.used_vins)
    params = {"window_end": pd.Timestamp(inputs.window_end).to_pydatetime(),
              **volume_params(inputs.recent_counts, inputs.append_only)}
    baseline = _baseline_runner(contract, frame, params)
    baseline()  # warm-up of the baseline's own context

    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    outcome = bare = None
    for i in range(REPEATS):
        for side in (("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")):
            t0 = time.perf_counter()
            if side == "ours":
                outcome = run_gate(df, contract, inputs, validator, f"bench-{i}")
            else:
                bare = baseline()
            times[side].append(time.perf_counter() - t0)

    quarantined = len(outcome.quarantined)
    if quarantined != n_bad or not outcome.quarantined.index.equals(bad_index):
        raise AssertionError(f"the gate quarantined {quarantined} rows, {n_bad} bad rows were injected")
    if outcome.blocked or len(outcome.accepted) + quarantined != len(df):
        raise AssertionError(f"blocked={outcome.blocked}, accepted {len(outcome.accepted)} + "
                             f"quarantined {quarantined} != {len(df)}")
    gx_failed = sorted(r.expectation_config.meta["check"] for r in bare.results if not r.success)
    gate_failed = sorted({f.check.split(":")[0] if f.check.startswith("type:") else f.check
                          for f in outcome.failures})
    if gx_failed != gate_failed:
        raise AssertionError(f"bare GX failed {gx_failed}, the gate reported {gate_failed}")

    breakdown = _breakdown(df, contract, inputs, validator)
    med = {side: statistics.median(v) for side, v in times.items()}
    ratio = med["ours"] / med["baseline"]
    return {
        "rows": len(df),
        "bad_rows": n_bad,
        "bad_rows_by_kind": {k: len(v) for k, v in bad.items()},
        "quarantined": quarantined,
        "failed_checks": gate_failed,
        "build_frame_s": round(build_s, 1),
        "ours_s": [round(t, 2) for t in times["ours"]],
        "baseline_s": [round(t, 2) for t in times["baseline"]],
        "ours_median_s": round(med["ours"], 2),
        "baseline_median_s": round(med["baseline"], 2),
        "ours_breakdown_s": breakdown,
        "baseline": "GX get_batch + batch.validate(suite, SUMMARY) on the gate's prepared check frame",
        "ratio_vs_bare_gx": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio <= GOAL_RATIO,
        "summary": (f"gate on {len(df):,} loan applications ({n_bad:,} bad rows, all quarantined): "
                    f"{med['ours']:.2f} s end to end vs {med['baseline']:.2f} s for a bare GX validation of "
                    f"the same suite on the prepared frame = {ratio:.2f}× (goal ≤ {GOAL_RATIO}); "
                    f"coercion {breakdown['coercion_s']} s, flags {breakdown['flags_s']} s, "
                    f"GX {breakdown['gx_s']} s, masks+split {breakdown['masks_split_s']} s"),
    }
