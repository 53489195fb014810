"""Pseudonymisation of personal data: a keyed HMAC-SHA256 token for every ``pii=True`` column.

The contract (``sources/contract.py``) marks the columns that identify people or firms: supplier
name, registration number (unified social credit code) and contact phone in the ERP; dealer name,
owner name, owner's resident ID number and phone on the dealer platform. Decisions, as a bank's
data team would take them (README, "Personal data and secrets"):

- **Where.** At the warehouse boundary: :func:`chainlend.ingest.extract_load` replaces those
  columns in every row *before* it is written to a landing table, so the warehouse never holds a
  raw identifier. Landing and published tables, the quarantine (``row_json``), gate results,
  Great Expectations validation results and Data Docs, features, training datasets, MLflow, task
  logs and e-mails all see tokens only. Raw values stay in the systems of record (ERP, dealer
  platform); an operator who must know who ``D000042`` is looks the record key (``dealer_id``,
  ``supplier_id``, not personal data: platform-assigned) up there. No lookup table is kept, so
  the warehouse cannot re-identify anyone.
- **Token.** ``p_`` + the first 32 hex digits (128 bits) of
  ``HMAC-SHA256(key, "<source>.<table>.<column>" NUL canonical value)``. Collisions: for *n*
  distinct values of one column the probability of any collision is about n² / 2¹²⁹ — 1.5e-23
  for a hundred million values — so tokens keep equality and joins exact (a repeated owner ID
  number across dealerships still shows as the same token). 34 characters fit every ``str``
  column (255).
- **Column-scoped.** The input starts with the column's identity, so one value gets a different
  token in another column (an owner's name and a dealership named after them do not link, a
  phone number does not link dealers to suppliers). Equal values within a column stay equal
  across days and runs, because the key is stable.
- **Canonical value.** Unicode NFKC and surrounding whitespace stripped, so cosmetic variants
  (full-width digits, a trailing space) get one token. ``None`` and blank strings are kept as
  they are: they identify no one, and the gate's ``not_null`` check must still see them missing.
- **Key.** The Airflow Variable ``chainlend_pii_hmac_secret`` — a hex string of at least 32 random
  bytes — resolved through Airflow's secrets chain (a configured secrets backend such as Vault
  or AWS Secrets Manager, then ``AIRFLOW_VAR_CHAINLEND_PII_HMAC_SECRET``, then the metadata DB).
  Its name contains ``secret``, so Airflow redacts it in task logs and hides it in the UI; it is
  also registered with the masker explicitly. Missing or malformed: :class:`PseudonymKeyError`,
  never a default key. Only the ``land_<table>`` tasks of tables with personal columns read it.
  Whoever holds the key can test guesses (every phone number), so it is as sensitive as the data.
- **Embedded profile.** :func:`embedded_secrets_backend` (called by
  ``settings.apply_embedded_defaults``) creates ``var/secrets/variables.json`` once — mode 0600 in
  a 0700 folder, a random key — and points Airflow's own ``LocalFilesystemBackend`` at it, unless
  a secrets backend or the variable is configured already. The key persists across runs
  (``chainlend demo`` keeps ``var/secrets``); ``make clean`` removes it together with the
  warehouse whose tokens it made.
- **Rotation.** A new key changes every token; rotating means re-landing the warehouse from the
  sources with the new key, never mixing tokens of two keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import unicodedata
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sources.contract import Table

PII_KEY_VARIABLE = "chainlend_pii_hmac_secret"
PII_KEY_ENV = f"AIRFLOW_VAR_{PII_KEY_VARIABLE.upper()}"
TOKEN_PREFIX = "p_"
TOKEN_HEX_DIGITS = 32  # 128 bits: see the collision estimate in the module docstring
MIN_KEY_BYTES = 32
LOCAL_BACKEND = "airflow.secrets.local_filesystem.LocalFilesystemBackend"
SECRETS_FILE = Path("secrets") / "variables.json"  # under the embedded profile's var/


class PseudonymKeyError(RuntimeError):
    """The pseudonymisation key is missing or malformed; the message says where it is looked up."""


def generate_key() -> str:
    """A new random key in the form the Variable holds (64 hex digits)."""
    return secrets.token_hex(MIN_KEY_BYTES)


def parse_key(text: str, *, origin: str = PII_KEY_VARIABLE) -> bytes:
    """The key bytes of a hex string; raises :class:`PseudonymKeyError` naming ``origin``."""
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise PseudonymKeyError(f"{origin} must be a hex string (e.g. from `python -c 'import secrets; "
                                f"print(secrets.token_hex(32))'`); got {len(text)} characters that are "
                                "not hex") from None
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(f"{origin} must hold at least {MIN_KEY_BYTES} bytes "
                                f"({2 * MIN_KEY_BYTES} hex digits); got {len(key)} bytes")
    return key


def column_scope(contract: Table, column: str) -> str:
    """``"<source>.<table>.<column>"``: the domain a column's tokens live in."""
    return f"{contract.source}.{contract.name}.{column}"


def pii_columns(contract: Table) -> tuple[str, ...]:
    """The contract's personal columns, in column order."""
    return tuple(c.name for c in contract.columns if c.pii)


@dataclass(frozen=True)
class Pseudonymiser:
    """Turns personal values into tokens with one key (the key never shows in ``repr``)."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(f"the pseudonymisation key must hold at least {MIN_KEY_BYTES} bytes, "
                                    f"got {len(self.key)}")

    @classmethod
    def from_hex(cls, text: str) -> Pseudonymiser:
        return cls(parse_key(text))

    @classmethod
    def from_secrets(cls) -> Pseudonymiser:
        """The key from Airflow's secrets chain (Variable ``chainlend_pii_hmac_secret``)."""
        from airflow.sdk import Variable
        from airflow.sdk.log import mask_secret

        raw = Variable.get(PII_KEY_VARIABLE, default=None)
        if raw is None:
            raise PseudonymKeyError(
                f"Airflow Variable {PII_KEY_VARIABLE!r} is not set: personal columns cannot be "
                f"pseudonymised, so nothing is landed. Put a key ({2 * MIN_KEY_BYTES} hex digits) in the "
                f"secrets backend, or in {PII_KEY_ENV}; the embedded profile creates var/{SECRETS_FILE}")
        mask_secret(raw, PII_KEY_VARIABLE)
        return cls(parse_key(raw))

    def token(self, scope: str, value: object) -> object:
        """The token of ``value`` in ``scope``; ``None`` and blank strings are returned unchanged."""
        if value is None:
            return None
        text = unicodedata.normalize("NFKC", str(value)).strip()
        if not text:
            return value
        digest = hmac.new(self.key, scope.encode() + b"\x00" + text.encode("utf-8"), hashlib.sha256)
        return TOKEN_PREFIX + digest.hexdigest()[:TOKEN_HEX_DIGITS]

    def rows(self, contract: Table, rows: Iterable[Sequence]) -> list[tuple]:
        """Rows in the contract's column order with every personal column tokenised."""
        names = contract.column_names
        at = [(names.index(c), column_scope(contract, c)) for c in pii_columns(contract)]
        out = []
        for row in rows:
            values = list(row)
            for i, scope in at:
                values[i] = self.token(scope, values[i])
            out.append(tuple(values))
        return out


def embedded_secrets_backend(env: MutableMapping[str, str], var: Path) -> dict[str, str]:
    """Embedded profile: serve the key from ``var/secrets/variables.json`` through Airflow's
    ``LocalFilesystemBackend`` (creating the file once), unless ``env`` configures a secrets
    backend or the variable already. Sets and returns the environment it applied."""
    if "AIRFLOW__SECRETS__BACKEND" in env or PII_KEY_ENV in env:
        return {}
    path = ensure_key_file(var / SECRETS_FILE)
    applied = {"AIRFLOW__SECRETS__BACKEND": LOCAL_BACKEND,
               "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"variables_file_path": str(path)})}
    env.update(applied)
    return applied


def ensure_key_file(path: Path) -> Path:
    """Create ``path`` (JSON ``{"chainlend_pii_hmac_secret": <new key>}``, mode 0600, folder 0700)
    if it does not exist; check an existing one. Creation is atomic (a hard link of a complete
    temporary file), so two processes starting at once agree on one key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({PII_KEY_VARIABLE: generate_key()}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it first: its key is the key
        finally:
            tmp.unlink()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PseudonymKeyError(f"{path} is readable by others (mode {mode:04o}); it holds the "
                                f"pseudonymisation key: chmod 600 it")
    try:
        stored = json.loads(path.read_text())[PII_KEY_VARIABLE]
    except (ValueError, KeyError, TypeError) as exc:
        raise PseudonymKeyError(f"{path} must be a JSON object with the key {PII_KEY_VARIABLE!r}; "
                                f"it cannot be read ({type(exc).__name__})") from None
    parse_key(stored, origin=f"{PII_KEY_VARIABLE} in {path}")
    return path
