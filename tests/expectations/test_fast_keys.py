"""The fast paths of the gate's key checks agree with plain pandas: fixed-width string keys
hashed to int64 (with a byte comparison behind every hash match) for foreign keys and duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from expectations.frames import FIXED_WIDTH_MIN_KEYS, duplicated_all, isin, key_positions


def _vins(rng, n: int) -> np.ndarray:
    return np.char.add("LSV", np.char.zfill(rng.integers(0, 10**13, n).astype(str), 14))  # 17 chars


@pytest.mark.parametrize("seed", [1, 2])
def test_fixed_width_foreign_keys_match_pandas(seed):
    rng = np.random.default_rng(seed)
    keys = pd.unique(_vins(rng, FIXED_WIDTH_MIN_KEYS + 5_000))
    values = np.concatenate([rng.choice(keys, 20_000), _vins(rng, 3_000), ["SHORT", "", "LSV" + "9" * 14]])
    s = pd.Series(values, dtype="str")
    s[rng.integers(0, len(s), 50)] = None  # nulls are never keys
    got = isin(s, keys).to_numpy()
    want = (s.notna() & s.isin(set(keys))).to_numpy()
    assert (got == want).all() and got.sum() > 19_000 and (~got).sum() > 2_900
    pos = key_positions(s, keys)
    hit = pos >= 0
    assert (np.asarray(keys, dtype=object)[pos[hit]] == s[hit].to_numpy(dtype=object)).all()


def test_duplicated_all_matches_pandas_with_mixed_widths_and_nulls():
    rng = np.random.default_rng(3)
    base = _vins(rng, 30_000)
    values = np.concatenate([base, rng.choice(base, 500), ["A1", "A1", "A12", "", ""]])
    s = pd.Series(values, dtype="str")
    s[rng.integers(0, len(s), 40)] = None
    got = duplicated_all(s)
    want = (s.notna() & s.duplicated(keep=False)).to_numpy()
    assert (got == want).all() and got.sum() >= 900
