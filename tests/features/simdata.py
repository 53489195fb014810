"""Simulated source data for the feature tests and the benchmark: frames read back from SQLite."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from sources.contract import TABLES
from sources.simulator import FaultRates, Simulator

START = dt.date(2025, 9, 1)


def simulate(folder: Path, *, scale: str, days: int, seed: int = 11) -> Simulator:
    """A fault-free simulation of ``days`` business days in SQLite files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sim = Simulator(*(f"sqlite:///{folder / f'{name}.db'}" for name in ("erp", "dealer", "sim")))
    sim.init(seed=seed, scale=scale, faults=FaultRates.none(), start=START, reset=True)
    sim.advance(days)
    return sim


def read_frames(folder: Path) -> dict[str, pd.DataFrame]:
    """Every source table as a DataFrame keyed ``"<source>.<table>"``; ``ts`` columns datetime64."""
    frames = {}
    for source, tables in TABLES.items():
        engine = sa.create_engine(f"sqlite:///{folder / f'{source}.db'}")
        with engine.connect() as conn:
            for t in tables:
                ts = [c.name for c in t.columns if c.type in ("ts", "date")]
                frames[f"{source}.{t.name}"] = pd.read_sql_table(t.name, conn, parse_dates=ts)
        engine.dispose()
    return frames
