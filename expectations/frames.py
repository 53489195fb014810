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
    if isinstance(v, str) and v.strip():
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
        was_value = raw.notna() & ~_blank_mask(raw)
        fail = was_value & coerced.isna()
        if fail.any():
            type_fail[col.name] = fail
        out[col.name] = coerced
    frame = pd.DataFrame(out, index=df.index)
    for name in df.columns:
        if name not in frame.columns and not name.startswith("_"):
            frame[name] = pd.Series(np.nan, index=df.index)
    ok = pd.Series(True, index=df.index)
    for fail in type_fail.values():
        ok &= ~fail
    frame[TYPES_OK] = ok
    return frame, type_fail



def isin(values: pd.Series, keys) -> pd.Series:
    """``values.isin(keys)``, through Arrow's hash set (10x faster for large string key sets)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(values) == 0:
        return pd.Series(False, index=values.index, dtype=bool)
    try:
        arr = pa.array(values.array) if not hasattr(values.array, "_pa_array") else values.array._pa_array
        key_arr = pa.array(pd.Series(keys).astype(values.dtype).array)
        hit = pc.is_in(arr, value_set=key_arr.cast(arr.type))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        return values.isin(keys)
    return pd.Series(hit.to_numpy(zero_copy_only=False), index=values.index).fillna(False).astype(bool)


def add_flags(frame: pd.DataFrame, contract: Table, parent_keys: dict[str, pd.Index],
              used_vins: pd.Series | None) -> pd.DataFrame:
    """Flag columns for the checks that look across rows or tables (True = passes).

    ``parent_keys["table.column"]`` holds the keys a foreign key may point at; ``used_vins``
    maps VINs already published by other keys (index VIN, value key).
    """
    for fk in contract.foreign_keys:
        if fk.column not in frame.columns:
            continue
        keys = parent_keys.get(f"{fk.table}.{fk.ref_column}")
        if keys is None:
            raise KeyError(f"no parent keys given for {fk.table}.{fk.ref_column}")
        values = frame[fk.column]
        frame[fk_flag(fk.column)] = values.isna() | isin(values, keys)
    if contract.unique_vin and contract.key != "vin" and "vin" in frame.columns:
        vin = frame["vin"]
        ok = vin.isna() | ~vin.duplicated(keep="first")
        if used_vins is not None and len(used_vins):
            owner = vin.map(used_vins)
            ok &= owner.isna() | (owner == frame.get(contract.key))
        frame[VIN_OK] = ok
    return frame
