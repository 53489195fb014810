"""``features.frames.positions`` against a plain-Python reference, on both of its Arrow paths
(a hash table of the keys, or of the distinct values probed with the keys) and the object path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.frames import positions


def reference(index, ids) -> np.ndarray:
    """The last position of each id among the keys, -1 for an id not among them or missing."""
    last = {}
    for i, k in enumerate(index):
        last[k] = i
    return np.array([last.get(v, -1) if isinstance(v, str) else -1 for v in ids], dtype=np.int64)


KEYS = st.lists(st.sampled_from([f"K{i:03d}" for i in range(40)] + ["", "ü-key"]), max_size=60)
VALUES = st.lists(st.one_of(st.sampled_from([f"K{i:03d}" for i in range(50)] + ["", "ü-key"]), st.none()),
                  max_size=60)


@settings(max_examples=300, deadline=None)
@given(keys=KEYS, values=VALUES, arrow=st.booleans())
def test_positions_are_the_last_key_position_either_way(keys, values, arrow):
    dtype = pd.StringDtype("pyarrow", na_value=np.nan) if arrow else object
    index = pd.Series(keys, dtype=dtype)
    ids = pd.Series(values, dtype=dtype)
    got = positions(index, ids)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, reference(keys, values))


@pytest.mark.parametrize(("n_keys", "n_values"), [(5000, 300), (300, 5000), (2000, 2000)])
def test_large_and_small_sides_agree_with_the_reference(n_keys, n_values):
    rng = np.random.default_rng(n_keys + n_values)
    keys = [f"VIN{int(x):014d}" for x in rng.permutation(10 * n_keys)[:n_keys]]
    keys[7] = keys[3]  # a repeated key: its last position
    pool = keys + [f"XX{i}" for i in range(50)]
    values = [pool[int(i)] if i % 17 else None for i in rng.integers(0, len(pool), n_values)]
    index = pd.Series(keys, dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    ids = pd.Series(values, dtype=pd.StringDtype("pyarrow", na_value=np.nan))
    np.testing.assert_array_equal(positions(index, ids), reference(keys, values))
    np.testing.assert_array_equal(positions(np.array(keys, dtype=object), np.array(values, dtype=object)),
                                  reference(keys, values))


def test_non_string_keys_use_the_object_path():
    np.testing.assert_array_equal(positions(pd.Index([3, 1, 2]), [2, 5, 3]), [2, -1, 0])
