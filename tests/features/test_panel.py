"""The panel engine against hand-built rows and a brute-force reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.panel import NEVER, Grid, day_numbers, known_day, ratio

D0 = 20_000  # a day number (2024-10-04)


def brute(grid: Grid, entity, start, end, weights, how: str) -> np.ndarray:
    out = np.full((grid.n, grid.days), 0.0 if how == "sum" else np.nan)
    for e, s, t, w in zip(entity, start, end, weights):
        for j, day in enumerate(grid.day_axis()):
            if e >= 0 and s <= day < t:
                if how == "sum":
                    out[e, j] += w
                else:
                    out[e, j] = w if np.isnan(out[e, j]) else max(out[e, j], w)
    return out


@pytest.mark.parametrize(("event", "updated", "window", "counted_on"), [
    (D0, D0, 3, [D0 + 1, D0 + 2, D0 + 3]),  # known the next morning, counted for 3 days
    (D0, D0 + 2, 3, [D0 + 3]),  # written two days late: counted only from its known day
    (D0, D0 + 5, 3, []),  # known after its window closed: never counted
    (D0 - 10, D0 - 10, 30, [D0 + k for k in range(0, 21)]),  # started before the grid
    (D0 + 19, D0 + 19, 30, [D0 + 20]),  # the grid ends before the window does
])
def test_window_counts_a_row_from_its_known_day_to_the_end_of_its_window(event, updated, window, counted_on):
    grid = Grid.spanning(2, D0, D0 + 20)
    ev, up = np.array([event]), np.array([updated])
    panel = grid.window_sum(np.array([1]), ev, known_day(ev, up), window)
    assert panel[0].sum() == 0
    assert [int(d) for d in grid.day_axis()[panel[1] == 1]] == counted_on


@pytest.mark.parametrize(("start", "end", "active"), [
    (D0 + 2, D0 + 5, [D0 + 2, D0 + 3, D0 + 4]),  # half-open: closed on its end day
    (D0 + 5, D0 + 2, []),  # closing row known before the opening row: never active
    (D0 - 3, D0 + 1, [D0]),
    (D0 + 8, NEVER, [D0 + 8, D0 + 9]),
])
def test_interval_is_active_from_start_to_the_day_before_end(start, end, active):
    grid = Grid.spanning(1, D0, D0 + 9)
    panel = grid.interval_sum(np.array([0]), np.array([start]), np.array([end]))
    assert [int(d) for d in grid.day_axis()[panel[0] == 1]] == active
    top = grid.interval_max(np.array([0]), np.array([start]), np.array([end]), np.array([7.0]))
    assert [int(d) for d in grid.day_axis()[top[0] == 7.0]] == active
    assert np.isnan(top[0][top[0] != 7.0]).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("days", [1, 2, 7, 33, 64])
def test_sum_and_max_match_a_brute_force_reference(seed, days):
    rng = np.random.default_rng(seed)
    grid = Grid.spanning(3, D0, D0 + days - 1)
    n = 40
    entity = rng.integers(-1, 3, n)
    start = D0 + rng.integers(-5, days + 5, n)
    end = start + rng.integers(-2, days + 3, n)
    weights = np.round(rng.normal(size=n), 3)
    weights[rng.random(n) < 0.1] = np.nan
    reference = brute(grid, entity, start, end, np.nan_to_num(weights), "sum")
    reference_nan_skipped = brute(grid, entity[~np.isnan(weights)], start[~np.isnan(weights)],
                                  end[~np.isnan(weights)], weights[~np.isnan(weights)], "sum")
    np.testing.assert_allclose(grid.interval_sum(entity, start, end, weights), reference_nan_skipped, atol=1e-9)
    np.testing.assert_allclose(grid.interval_sum(entity, start, end), brute(grid, entity, start, end,
                                                                            np.ones(n), "sum"))
    assert reference.shape == (3, days)
    ok = ~np.isnan(weights)
    np.testing.assert_array_equal(grid.interval_max(entity, start, end, weights),
                                  brute(grid, entity[ok], start[ok], end[ok], weights[ok], "max"))


def test_at_reads_entity_day_pairs_and_refuses_days_off_the_grid():
    grid = Grid.spanning(2, D0, D0 + 3)
    panel = np.arange(8, dtype=float).reshape(2, 4)
    np.testing.assert_array_equal(grid.at(panel, np.array([0, 1, -1]), np.array([D0, D0 + 3, D0])), [0, 7, np.nan])
    with pytest.raises(ValueError, match="outside the grid"):
        grid.at(panel, np.array([0]), np.array([D0 + 4]))


def test_day_numbers_accepts_dates_and_timestamps_and_refuses_missing_values():
    values = pd.Series([pd.Timestamp("1970-01-02 23:59:59"), pd.Timestamp("2024-10-04")])
    np.testing.assert_array_equal(day_numbers(values), [1, D0])
    np.testing.assert_array_equal(day_numbers(pd.Series([pd.Timestamp("2024-10-04").date()])), [D0])
    with pytest.raises(ValueError, match="missing"):
        day_numbers(pd.Series([pd.NaT, pd.Timestamp("2024-10-04")]))


def test_ratio_is_nan_where_undefined():
    np.testing.assert_array_equal(ratio(np.array([1.0, 0.0, 2.0]), np.array([2.0, 0.0, 0.0])), [0.5, np.nan, np.nan])
