import datetime as dt

import pytest

from chainlend.dates import BusinessDateError, resolve_business_date

LOGICAL = dt.datetime(2026, 3, 4, 23, 0, tzinfo=dt.UTC)
RUN_AFTER = dt.datetime(2026, 3, 5, 9, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("param", "logical", "run_after", "expected"),
    [
        ("2026-02-27", LOGICAL, RUN_AFTER, dt.date(2026, 2, 27)),
        (dt.date(2026, 2, 27), None, None, dt.date(2026, 2, 27)),
        (None, LOGICAL, RUN_AFTER, dt.date(2026, 3, 4)),
        ("", LOGICAL, None, dt.date(2026, 3, 4)),
        (None, None, RUN_AFTER, dt.date(2026, 3, 5)),
    ],
)
def test_resolution_order(param, logical, run_after, expected):
    assert resolve_business_date(param, logical, run_after) == expected


def test_bad_param_names_the_value():
    with pytest.raises(BusinessDateError, match="'03/04/2026'"):
        resolve_business_date("03/04/2026", LOGICAL, None)


def test_nothing_to_resolve_from():
    with pytest.raises(BusinessDateError, match="no business_date"):
        resolve_business_date(None, None, None)
