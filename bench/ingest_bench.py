"""Extract-load throughput at one simulated day vs a bare ``pandas.read_sql`` + bulk insert.

Both sides move the same rows (every source table's window for the day, initial load
included) from the same SQLite sources into a fresh SQLite warehouse; the baseline is
``pd.read_sql(query)`` then ``df.to_sql(..., chunksize=50_000)`` per table, ours is
:func:`chainlend.ingest.extract_load` (streaming chunks, batch lineage, batch log, one
transaction per table). Runs alternate and repeat; the ratio is ours ÷ baseline of the medians
(goal ≤ 1.2).
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import time
from pathlib import Path

GOAL_RATIO = 1.2
REPEATS = 3
SEED = 11
START = dt.date(2026, 3, 2)


def _ours(erp, dealer, wh_url: str, day: dt.date) -> int:
    from chainlend.ingest import extract_load
    from chainlend.pseudonym import Pseudonymiser
    from chainlend.systems import Warehouse

    warehouse = Warehouse.from_url(wh_url)
    pseudonymiser = Pseudonymiser.from_secrets()  # personal columns are tokenised on the way in
    rows = 0
    for src in (erp, dealer):
        for contract in src.tables:
            rows += extract_load(src, warehouse, contract, day, "bench", pseudonymiser=pseudonymiser).rows
    warehouse.engine.dispose()
    return rows


def _baseline(erp, dealer, wh_url: str, day: dt.date) -> int:
    import pandas as pd
    import sqlalchemy as sa

    from chainlend.ingest import window_end_for
    from sources.sql import make_engine

    wh = make_engine(wh_url)
    end = window_end_for(day)
    rows = 0
    for src in (erp, dealer):
        for contract in src.tables:
            cols = ", ".join(contract.column_names)
            query = sa.text(f"SELECT {cols} FROM {contract.name} WHERE updated_at < :end")
            with src.engine.connect() as conn:
                df = pd.read_sql(query, conn, params={"end": end})
            df.to_sql(f"base_{contract.source}_{contract.name}", wh, if_exists="append", index=False,
                      chunksize=50_000)
            rows += len(df)
    wh.dispose()
    return rows


def run(scale: str, workdir: Path) -> dict:
    from chainlend.systems import DealerSource, ErpSource
    from sources.simulator import FaultRates, Simulator

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    urls = {n: f"sqlite:///{workdir / f'{n}.db'}" for n in ("erp", "dealer", "sim")}
    t0 = time.perf_counter()
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=SEED, scale=scale, faults=FaultRates.none(), start=START)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (day,) = sim.advance(1)
    day_s = time.perf_counter() - t0
    erp, dealer = ErpSource.from_url(urls["erp"]), DealerSource.from_url(urls["dealer"])

    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    rows: dict[str, int] = {}
    for i in range(REPEATS):
        order = ("ours", "baseline") if i % 2 == 0 else ("baseline", "ours")
        for side in order:
            wh_path = workdir / f"wh-{side}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{wh_path}{suffix}").unlink(missing_ok=True)
            fn = _ours if side == "ours" else _baseline
            t0 = time.perf_counter()
            rows[side] = fn(erp, dealer, f"sqlite:///{wh_path}", day)
            times[side].append(time.perf_counter() - t0)
    if rows["ours"] != rows["baseline"]:
        raise AssertionError(f"the two sides moved different row counts: {rows}")
    med = {side: statistics.median(v) for side, v in times.items()}
    ratio = med["ours"] / med["baseline"]
    return {
        "scale": scale,
        "rows": rows["ours"],
        "simulate_init_s": round(init_s, 1),
        "simulate_day_s": round(day_s, 1),
        "ours_s": [round(t, 2) for t in times["ours"]],
        "baseline_s": [round(t, 2) for t in times["baseline"]],
        "ours_rows_per_s": round(rows["ours"] / med["ours"]),
        "baseline_rows_per_s": round(rows["baseline"] / med["baseline"]),
        "ratio_vs_read_sql_to_sql": round(ratio, 3),
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio <= GOAL_RATIO,
        "summary": (f"{rows['ours']:,} rows (one {scale}-scale day incl. initial load): "
                    f"{rows['ours'] / med['ours']:,.0f} rows/s, {ratio:.2f}× the time of bare "
                    f"pandas.read_sql + to_sql (goal ≤ {GOAL_RATIO})"),
    }
