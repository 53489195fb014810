"""Coercion of a landed batch to its contract types, and the flag columns of cross-row checks.

Everything here is vectorised pandas; a value that cannot be read as its contract type becomes
null in the check frame and is flagged as a ``type:<col>`` failure (never an exception).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sources.contract import Column, Table

TYPES_OK = "_types_ok"
VIN_OK = "_vin_ok"
INT64_LIMIT = 2**63 - 1
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


def fk_flag(column: str) -> str:
    return f"_fk_{column}"


def _blank_mask(s: pd.Series) -> pd.Series:
    """Empty or whitespace-only strings (vectorised; other values are not blank)."""
    if not (s.dtype == object or pd.api.types.is_string_dtype(s.dtype)):
        return pd.Series(False, index=s.index)
    arr = _arrow_strings(s)
    if arr is not None:  # Arrow strings: strip only those that can be blank
        maybe = np.flatnonzero(_maybe_blank(arr))
        blank = np.zeros(len(s), dtype=bool)
        if len(maybe):
            blank[maybe] = (s.iloc[maybe].str.strip() == "").fillna(False).to_numpy(dtype=bool)
        return pd.Series(blank, index=s.index)
    if pd.api.types.infer_dtype(s, skipna=True) not in ("string", "mixed", "mixed-integer", "empty"):
        return pd.Series(False, index=s.index)
    text = s.where(s.map(lambda v: isinstance(v, str), na_action="ignore").fillna(False).astype(bool)) if pd.api.types.infer_dtype(s, skipna=True) != "string" else s
    return (text.str.strip() == "").fillna(False).astype(bool)


def _maybe_blank(arr) -> np.ndarray:
    """The non-null strings of ``arr`` (Arrow) that are empty or start with a byte that is not
    printable ASCII: every whitespace character, ASCII or not, is among those."""
    offsets, lengths = _offsets(arr)
    maybe = lengths == 0
    full = np.flatnonzero(~maybe)
    if len(full):
        first = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[full]]
        maybe[full] = (first <= 0x20) | (first >= 0x7F)
    if arr.null_count:
        maybe &= arr.is_valid().to_numpy(zero_copy_only=False)
    return maybe


def coerce_column(s: pd.Series, col: Column) -> pd.Series:
    """``s`` as the check frame holds it: numbers float64, times datetime64[ns], bools bool/None,
    strings str (anything else becomes null)."""
    if col.type in ("int", "float"):
        if pd.api.types.is_bool_dtype(s.dtype):
            return pd.Series(np.nan, index=s.index)
        if pd.api.types.is_numeric_dtype(s.dtype):
            out = s.astype("float64")
        else:
            out = pd.to_numeric(s.map(_number, na_action="ignore"), errors="coerce").astype("float64")
        if col.type == "int" and not (isinstance(s.dtype, np.dtype) and s.dtype.kind == "i"):
            # (a signed numpy integer is always a whole number within the int64 range)
            bad = out.notna() & ((out != np.floor(out)) | (out.abs() > INT64_LIMIT) | ~np.isfinite(out))
            out = out.mask(bad)
        elif col.type == "float":
            out = out.mask(~np.isfinite(out.fillna(0)))
        return out
    if col.type in ("ts", "date"):
        if pd.api.types.is_datetime64_any_dtype(s.dtype):
            out = s
            if getattr(out.dt, "tz", None) is not None:
                out = out.dt.tz_convert("UTC").dt.tz_localize(None)
            return _as_ns(out)
        return _as_ns(pd.to_datetime(s.map(_time_text, na_action="ignore"), errors="coerce", format="mixed"))
    if col.type == "bool":
        if pd.api.types.is_bool_dtype(s.dtype):
            return s.astype(object)
        return s.map(_boolean, na_action="ignore").astype(object)
    # str: blanks are missing values, non-strings are type failures
    if pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        out = s if pd.api.types.is_string_dtype(s.dtype) else s.astype("str")
    else:
        out = s.where(s.map(lambda v: isinstance(v, str), na_action="ignore").fillna(False).astype(bool)).astype("str")
    blank = _blank_mask(out)
    return out.mask(blank) if blank.any() else out


def _as_ns(out: pd.Series) -> pd.Series:
    """Naive datetimes as datetime64[ns]; a time outside its range (years 1677-2262) becomes null."""
    if out.dtype != "datetime64[ns]":
        outside = (out < pd.Timestamp.min) | (out > pd.Timestamp.max)
        if outside.any():
            out = out.mask(outside)
    return out.astype("datetime64[ns]")


def _number(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float | np.integer | np.floating):
        return v
    if isinstance(v, str):
        return v.strip() or None
    return None


def _time_text(v):
    import datetime as dt

    if isinstance(v, dt.datetime | dt.date | pd.Timestamp):
        ts = pd.Timestamp(v)
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    if isinstance(v, str) and v.strip()[:1].isdigit():  # not "now"/"today": no clock reads here
        try:
            ts = pd.Timestamp(v.strip())
        except (ValueError, OverflowError):
            return None
        return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    return None


def _boolean(v):
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        t = v.strip().lower()
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
    return None


def check_frame(df: pd.DataFrame, contract: Table) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """The frame the checks see, and ``{column: mask}`` of values that failed type coercion.

    Contract columns missing from ``df`` stay missing (the schema check blocks the batch);
    unexpected columns are kept by name only (all null: their values are never read, and GX
    hashes every column, which raises on e.g. undecodable bytes) so the schema check can name them.
    """
    out = {}
    type_fail: dict[str, pd.Series] = {}
    for col in contract.columns:
        if col.name not in df.columns:
            continue
        raw = df[col.name]
        if isinstance(raw.dtype, pd.CategoricalDtype):
            raw = raw.astype(object)  # judge the values, not the categories
        coerced = coerce_column(raw, col)
        # a failure is a value (not null, not blank) that coercion turned into null; only the
        # rows coercion nulled can be one, so blanks are looked for among those alone
        fail = coerced.isna().to_numpy() & raw.notna().to_numpy()
        if fail.any():
            at = np.flatnonzero(fail)
            fail[at] = ~_blank_mask(raw.iloc[at]).to_numpy(dtype=bool)
            if fail.any():
                type_fail[col.name] = pd.Series(fail, index=df.index)
        out[col.name] = coerced
    frame = pd.DataFrame(out, index=df.index)
    for name in df.columns:  # unexpected columns go to GX by name only: the schema check names them
        if str(name) not in frame.columns:
            frame[str(name)] = pd.Series(np.nan, index=df.index)
    ok = pd.Series(True, index=df.index)
    for fail in type_fail.values():
        ok &= ~fail
    frame[TYPES_OK] = ok
    return frame, type_fail


# -- fixed-width string ids ----------------------------------------------------------------------
# Keys, VINs and ids are fixed-length strings. Their UTF-8 bytes, zero-padded to whole 64-bit
# words, hash to one int64 each, and a pandas int64 hash table finds 1M VINs among 1.05M in about
# half the time of Arrow's string hash table (0.15 s vs 0.31 s). A hash is only a candidate: every
# match is confirmed on the words themselves, so a collision never makes two different values equal.
FIXED_WIDTH_MAX = 64  # bytes; longer values take the string hash tables
FIXED_WIDTH_MIN_KEYS = 50_000  # below this (measured 20k-100k) Arrow's hash table is faster
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _arrow_strings(values):
    """``values`` (a Series or an Arrow array) as one Arrow string array, or None."""
    import pyarrow as pa

    if isinstance(values, pd.Series):
        values = getattr(values.array, "_pa_array", None)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array) or not (pa.types.is_string(values.type)
                                                or pa.types.is_large_string(values.type)):
        return None
    return values


def _offsets(arr) -> tuple[np.ndarray, np.ndarray]:
    """The start of each value of ``arr`` (an Arrow string array) in its data buffer, and its
    length in bytes (int64; the starts have one more entry, the end of the last value)."""
    import pyarrow as pa

    off_type = np.dtype(np.int64 if pa.types.is_large_string(arr.type) else np.int32)
    offsets = np.frombuffer(arr.buffers()[1], dtype=off_type, count=len(arr) + 1,
                            offset=arr.offset * off_type.itemsize).astype(np.int64, copy=False)
    return offsets, np.diff(offsets)


def _fixed_width_words(arr, width: int | None = None, *, mixed: bool = False):
    """``(rows, words, width)``: the positions of the non-null values of ``arr`` (an Arrow string
    array) that are ``width`` bytes long, and their bytes as ``(len(rows), w)`` uint64 words.

    ``width=None`` takes the length of the first non-null value; then, unless ``mixed``, every
    non-null value must have it. None when there is no such width (all null, empty strings,
    longer than :data:`FIXED_WIDTH_MAX`, or mixed lengths)."""
    import pyarrow as pa

    n = len(arr)
    offsets, lengths = _offsets(arr)
    valid = arr.is_valid().to_numpy(zero_copy_only=False) if arr.null_count else None
    if width is None:
        present = lengths if valid is None else lengths[valid]
        if len(present) == 0 or not (mixed or (present == present[0]).all()):
            return None
        width = int(present[0])
    if not 0 < width <= FIXED_WIDTH_MAX:
        return None
    sel = lengths == width
    if valid is not None:
        sel &= valid
    rows = np.flatnonzero(sel)
    if len(rows) == 0:
        return rows, np.zeros((0, -(-width // 8)), dtype=np.uint64), width
    if len(rows) < n:  # only these values: Arrow packs them into one array of that width
        arr = arr.filter(pa.array(sel))
        offsets, _ = _offsets(arr)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    block = data[offsets[0]:offsets[0] + width * len(rows)].reshape(len(rows), width)  # contiguous
    padded = np.zeros((len(rows), -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = block
    return rows, padded.view(np.uint64), width


def _hash_words(words: np.ndarray) -> np.ndarray:
    """One int64 per row of ``words``; injective when a row is one word (each step of the mix is
    a bijection of the 64-bit integers)."""
    h = np.full(len(words), _MIX[0])
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= _MIX[1]
        h ^= h >> np.uint64(31)
    h *= _MIX[2]
    h ^= h >> np.uint64(29)
    return h.view(np.int64)


def _fixed_width_positions(arr, key_arr) -> np.ndarray | None:
    """:func:`key_positions` of the Arrow string arrays ``arr`` in ``key_arr`` when the keys are
    of one width (a position is the row of the first equal key); None if they are not, or if two
    different keys share a hash."""
    keys = _fixed_width_words(key_arr)
    if keys is None:
        return None
    key_rows, key_words, width = keys
    key_hash = _hash_words(key_words)
    index = pd.Index(key_hash)
    if not index.is_unique:  # repeated keys: keep the first row of each hash, if all are equal
        first = ~index.duplicated(keep="first")
        index = pd.Index(key_hash[first])
        if not (key_words[first][index.get_indexer(key_hash)] == key_words).all():
            return None  # two different keys share a hash
        key_rows, key_words = key_rows[first], key_words[first]
    rows, words, _ = _fixed_width_words(arr, width)  # values of another width are no keys
    at = index.get_indexer(_hash_words(words))
    hit = at >= 0
    at[~hit] = 0
    if words.shape[1] > 1:  # confirm: a value that is not a key may share a key's hash
        matched = key_words.take(at, axis=0)
        for j in range(words.shape[1]):
            hit &= matched[:, j] == words[:, j]
    found = np.where(hit, key_rows.take(at), -1)
    if len(rows) == len(arr):
        return found
    pos = np.full(len(arr), -1, dtype=np.int64)
    pos[rows] = found
    return pos


def key_positions(values: pd.Series, keys) -> np.ndarray:
    """The position of each value among the distinct ``keys`` (-1: not a key, or null). Equal
    values get equal positions, so the result doubles as integer codes of the values that are
    keys. Many fixed-width string keys go through int64 hashes (:func:`_fixed_width_positions`),
    other strings through Arrow's hash table (10x faster than pandas for large string key sets)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = pa.array(values.array) if not hasattr(values.array, "_pa_array") else values.array._pa_array
        key_arr = pa.array(pd.Series(keys).astype(values.dtype).array).cast(arr.type)
        if len(key_arr) >= FIXED_WIDTH_MIN_KEYS:
            strings, key_strings = _arrow_strings(arr), _arrow_strings(key_arr)
            if strings is not None and key_strings is not None:
                pos = _fixed_width_positions(strings, key_strings)
                if pos is not None:
                    return pos
        pos = pc.index_in(arr, value_set=key_arr)
        pos = pc.if_else(pc.is_null(arr), None, pos)  # a null is never a key
        return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        uniq = pd.Index(pd.unique(pd.Series(keys, dtype=object).dropna()))
        pos = uniq.get_indexer(values.astype(object)).astype(np.int64)
        pos[values.isna().to_numpy()] = -1
        return pos


def duplicated_all(values: pd.Series) -> np.ndarray:
    """``values.notna() & values.duplicated(keep=False)``: every copy of a repeated value.

    String values of the first value's width are compared through int64 hashes, and only the
    rows whose hash repeats are compared as strings; values of other widths as strings."""
    arr = _arrow_strings(values)
    fixed = _fixed_width_words(arr, mixed=True) if arr is not None else None
    if fixed is None:
        return (values.notna() & values.duplicated(keep=False)).to_numpy(dtype=bool)
    rows, words, _ = fixed
    out = np.zeros(len(values), dtype=bool)
    maybe = rows[pd.Series(_hash_words(words)).duplicated(keep=False).to_numpy()]
    if words.shape[1] > 1 and len(maybe):  # equal hashes: compare the strings themselves
        maybe = maybe[values.iloc[maybe].duplicated(keep=False).to_numpy(dtype=bool)]
    out[maybe] = True
    other = values.notna().to_numpy(dtype=bool, copy=True)
    other[rows] = False  # values of other widths (never equal to one of ``rows``)
    if other.any():
        at = np.flatnonzero(other)
        out[at] = values.iloc[at].duplicated(keep=False).to_numpy(dtype=bool)
    return out


def isin(values: pd.Series, keys) -> pd.Series:
    """``values.isin(keys)`` for non-null values (nulls are never in), through Arrow."""
    return pd.Series(key_positions(values, keys) >= 0, index=values.index)


def _duplicated_first(values: pd.Series, positions: np.ndarray | None) -> np.ndarray:
    """``values.duplicated(keep="first")``; ``positions`` (from :func:`key_positions`, if at hand)
    spares hashing the strings again: equal values have equal positions."""
    if positions is None:
        return values.duplicated(keep="first").to_numpy(dtype=bool)
    codes = positions.copy()
    other = (codes < 0) & values.notna().to_numpy()  # values that are not keys: code them apart
    if other.any():
        codes[other] = codes.max(initial=-1) + 1 + pd.factorize(values[other])[0]
    return pd.Series(codes).duplicated(keep="first").to_numpy(dtype=bool)


def add_flags(frame: pd.DataFrame, contract: Table, parent_keys: dict[str, pd.Index],
              used_vins: pd.Series | None) -> pd.DataFrame:
    """Flag columns for the checks that look across rows or tables (True = passes).

    ``parent_keys["table.column"]`` holds the keys a foreign key may point at; ``used_vins``
    maps VINs already published by other keys (index VIN, value key).
    """
    positions: dict[str, np.ndarray] = {}  # column -> key positions of its values
    for fk in contract.foreign_keys:
        if fk.column not in frame.columns:
            continue
        keys = parent_keys.get(f"{fk.table}.{fk.ref_column}")
        if keys is None:
            raise KeyError(f"no parent keys given for {fk.table}.{fk.ref_column}")
        values = frame[fk.column]
        positions[fk.column] = key_positions(values, keys)
        frame[fk_flag(fk.column)] = values.isna().to_numpy() | (positions[fk.column] >= 0)
    if contract.unique_vin and contract.key != "vin" and "vin" in frame.columns:
        vin = frame["vin"]
        ok = vin.isna() | ~_duplicated_first(vin, positions.get("vin"))
        if used_vins is not None and len(used_vins):
            owner = vin.map(used_vins)
            ok &= owner.isna() | (owner == frame.get(contract.key))
        frame[VIN_OK] = ok
    return frame
