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
    if pd.api.types.infer_dtype(s, skipna=True) not in ("string", "mixed", "mixed-integer", "empty"):
        return pd.Series(False, index=s.index)
    text = s.where(s.map(lambda v: isinstance(v, str), na_action="ignore").fillna(False).astype(bool)) if pd.api.types.infer_dtype(s, skipna=True) != "string" else s
    return (text.str.strip() == "").fillna(False).astype(bool)


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
        if col.type == "int":
            bad = out.notna() & ((out != np.floor(out)) | (out.abs() > INT64_LIMIT) | ~np.isfinite(out))
            out = out.mask(bad)
        else:
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



def key_positions(values: pd.Series, keys) -> np.ndarray:
    """The position of each value among the distinct ``keys`` (-1: not a key, or null), through
    Arrow's hash table (10x faster than pandas for large string key sets). Equal values get equal
    positions, so the result doubles as integer codes of the values that are keys."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = pa.array(values.array) if not hasattr(values.array, "_pa_array") else values.array._pa_array
        key_arr = pa.array(pd.Series(keys).astype(values.dtype).array)
        pos = pc.index_in(arr, value_set=key_arr.cast(arr.type))
        pos = pc.if_else(pc.is_null(arr), None, pos)  # a null is never a key
        return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        uniq = pd.Index(pd.unique(pd.Series(keys, dtype=object).dropna()))
        pos = uniq.get_indexer(values.astype(object)).astype(np.int64)
        pos[values.isna().to_numpy()] = -1
        return pos


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
