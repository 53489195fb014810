"""The panel engine: values of many entities on every calendar day, from intervals of rows.

Days are integers (days since 1970-01-01, see :func:`day_numbers`). A *panel* is a float array
of shape ``(entities, days)`` over a :class:`Grid`: cell ``[e, j]`` holds a value for entity
``e`` as of midnight at the start of day ``grid.first + j``.

Every point-in-time feature is built from one primitive: a row is *active* for the as-of days
of a half-open interval ``[start, end)``. Summing the weights of the active rows of an entity is
done with a difference array: ``+w`` at ``start``, ``-w`` at ``end``, one ``bincount`` over all
rows and a ``cumsum`` along the days (no loop over dates or entities). The maximum over the
active rows uses a segment tree over the days (each interval is split into O(log days) aligned
blocks, ``np.maximum.at`` per level, then every day reads its ancestors).

A transactional row with event day ``ev`` whose change timestamp falls on day ``upd`` is known
from day ``known = max(ev + 1, upd + 1)`` (:func:`known_day`); in a window of ``w`` days it is
counted for the as-of days ``[known, ev + w]``, i.e. the interval ``[known, ev + w + 1)``
(:meth:`Grid.window_sum`). A state (a car on the lot, a loan overdue now) is an interval from
the day its opening row is known to the day its closing row is known.

Intervals may start before the grid or end after it; they are clipped, so a row that opened
before the first grid day is counted on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NEVER = np.iinfo(np.int64).max // 4  # an interval end that is never reached
_EPOCH = np.datetime64("1970-01-01", "D")


def day_numbers(values) -> np.ndarray:
    """Days since 1970-01-01 (int64) of dates or timestamps (the day a timestamp falls on).

    Accepts a Series/array of datetime64, ``datetime.date`` or ISO strings. Missing values raise
    ``ValueError``: callers drop or fill them first.
    """
    ts = pd.to_datetime(values if isinstance(values, pd.Series) else pd.Series(values))
    if ts.isna().any():
        raise ValueError(f"{int(ts.isna().sum())} missing date(s) in {getattr(values, 'name', 'values')!r}")
    return (ts.to_numpy().astype("datetime64[D]") - _EPOCH).astype(np.int64)


def known_day(event_day: np.ndarray, updated_day: np.ndarray) -> np.ndarray:
    """The first as-of day a row is known on: after its event day and after the day it was written."""
    return np.maximum(np.asarray(event_day) + 1, np.asarray(updated_day) + 1)


@dataclass(frozen=True)
class Grid:
    """``n`` entities × the calendar days ``first .. first + days - 1``."""

    n: int
    first: int
    days: int

    def __post_init__(self) -> None:
        if self.n < 0 or self.days < 1:
            raise ValueError(f"a grid needs n >= 0 entities and >= 1 day, got n={self.n}, days={self.days}")

    @classmethod
    def spanning(cls, n: int, day_lo: int, day_hi: int) -> Grid:
        """The grid of ``n`` entities over the days ``day_lo .. day_hi`` (inclusive)."""
        return cls(int(n), int(day_lo), int(day_hi) - int(day_lo) + 1)

    @property
    def last(self) -> int:
        return self.first + self.days - 1

    def _clip(self, day: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(day, dtype=np.int64) - self.first, 0, self.days)

    def _rows(self, entity, start, end, weights=None):
        entity = np.asarray(entity, dtype=np.int64)
        s, e = self._clip(start), self._clip(end)
        keep = (s < e) & (entity >= 0)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)
        if w is not None:
            keep &= ~np.isnan(w)
            w = w[keep]
        return entity[keep], s[keep], e[keep], w

    def interval_sum(self, entity, start, end, weights=None) -> np.ndarray:
        """Σ weights (or the number of rows) of the rows active on each day: ``start <= day < end``.

        ``entity`` holds entity positions (rows with a negative position are ignored), ``start``
        and ``end`` day numbers. NaN weights are ignored.
        """
        ent, s, e, w = self._rows(entity, start, end, weights)
        width = self.days + 1
        size = self.n * width
        ones = np.ones(len(ent)) if w is None else w
        diff = (np.bincount(ent * width + s, weights=ones, minlength=size)
                - np.bincount(ent * width + e, weights=ones, minlength=size))
        return np.cumsum(diff.reshape(self.n, width), axis=1)[:, : self.days]

    def window_sum(self, entity, event_day, known, window: int, weights=None) -> np.ndarray:
        """Σ weights of the rows whose event day is in the ``window`` days before each as-of day
        (``day - window <= event_day < day``), counting a row only from its ``known`` day."""
        event_day = np.asarray(event_day, dtype=np.int64)
        return self.interval_sum(entity, np.maximum(known, event_day + 1), event_day + int(window) + 1, weights)

    def cumulative_sum(self, entity, known, weights=None) -> np.ndarray:
        """Σ weights of every row known on each day (no window)."""
        known = np.asarray(known, dtype=np.int64)
        return self.interval_sum(entity, known, np.full(len(known), NEVER), weights)

    def interval_max(self, entity, start, end, values) -> np.ndarray:
        """The largest value of the rows active on each day (NaN where none is active)."""
        ent, s, e, v = self._rows(entity, start, end, values)
        levels = max(1, int(np.ceil(np.log2(self.days + 1))) + 1)
        trees = []
        for _ in range(levels):
            width = (self.days >> len(trees)) + 1
            tree = np.full(self.n * width, -np.inf)
            odd = (s & 1) == 1
            take = odd & (s < e)
            np.maximum.at(tree, ent[take] * width + s[take], v[take])
            s = np.where(take, s + 1, s)
            odd = (e & 1) == 1
            take = odd & (s < e)
            np.maximum.at(tree, ent[take] * width + e[take] - 1, v[take])
            e = np.where(take, e - 1, e)
            trees.append(tree.reshape(self.n, width))
            s, e = s >> 1, e >> 1
            live = s < e
            ent, s, e, v = ent[live], s[live], e[live], v[live]
            if not len(ent) and len(trees) > 0:
                break
        out = np.full((self.n, self.days), -np.inf)
        cols = np.arange(self.days)
        for level, tree in enumerate(trees):
            np.maximum(out, tree[:, cols >> level], out=out)
        out[np.isneginf(out)] = np.nan
        return out

    def at(self, panel: np.ndarray, entity, day) -> np.ndarray:
        """Panel values of (entity, day) pairs; every day must lie on the grid."""
        entity = np.asarray(entity, dtype=np.int64)
        j = np.asarray(day, dtype=np.int64) - self.first
        if len(j) and (j.min() < 0 or j.max() >= self.days):
            raise ValueError(f"days outside the grid {self.first}..{self.last}: {j.min() + self.first}.."
                             f"{j.max() + self.first}")
        out = panel[np.clip(entity, 0, None), j].astype(np.float64)
        out[entity < 0] = np.nan
        return out

    def day_axis(self) -> np.ndarray:
        """The day number of every grid column."""
        return np.arange(self.first, self.first + self.days, dtype=np.int64)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0 (undefined, not zero)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out
