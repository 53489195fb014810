"""Schedule and defaults shared by every chainlend DAG."""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Param

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# Sources close their business day at 20:00; ingestion runs at 23:00 on business days and the
# run's logical date is the business date it ingests.
BUSINESS_DAYS_2300 = "0 23 * * 1-5"

DEFAULT_ARGS = {
    "owner": "data-engineering",
    "retries": 2,
    # CHAINLEND_RETRY_DELAY_S shortens the wait in tests; read at parse time, no IO
    "retry_delay": dt.timedelta(seconds=float(os.environ.get("CHAINLEND_RETRY_DELAY_S", "60"))),
    "retry_exponential_backoff": True,
}

BUSINESS_DATE_PARAMS = {
    "business_date": Param(
        None, type=["null", "string"], format="date",
        description="Business date to process (YYYY-MM-DD); default: the run's logical date.",
    ),
}

# Weekly model training: Saturday 02:00, after the week's last ingestion (Friday 23:00).
WEEKLY_SAT_0200 = "0 2 * * 6"
# CPU-heavy tasks (training) share one slot: two OpenMP trainings at once run ~3x slower each.
TRAINING_POOL = "training"
