"""The business date of a run, resolved in one place.

Order: an explicit ``business_date`` param (``YYYY-MM-DD``), else the run's logical date, else
the time the run started (Airflow 3 manual runs may have no logical date). Pure code downstream
receives this date as ``as_of`` and never calls ``now()``.
"""

from __future__ import annotations

import datetime as dt


class BusinessDateError(ValueError):
    """The business date param is not a valid ISO date."""


def resolve_business_date(
    param: str | dt.date | None,
    logical_date: dt.datetime | None,
    run_after: dt.datetime | None,
) -> dt.date:
    if param not in (None, ""):
        if isinstance(param, dt.date):
            return param
        try:
            return dt.date.fromisoformat(str(param))
        except ValueError as exc:
            raise BusinessDateError(f"business_date param must be YYYY-MM-DD, got {param!r}") from exc
    if logical_date is not None:
        return logical_date.date()
    if run_after is not None:
        return run_after.date()
    raise BusinessDateError("no business_date param, logical date or run time to resolve a business date from")


def business_date_from_context(context) -> dt.date:
    """Resolve the business date from an Airflow task context."""
    params = context.get("params") or {}
    dag_run = context.get("dag_run")
    return resolve_business_date(
        params.get("business_date"),
        context.get("logical_date"),
        getattr(dag_run, "run_after", None),
    )
