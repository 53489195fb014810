"""Scan what the pipeline wrote for the raw personal identifiers of a simulated world.

The identifiers are every value of the contract's personal columns (``pii=True``) in the
simulator's source databases. The scanners read databases table by table through SQL, files
as text (parquet through pandas, HTML also unescaped) and e-mails part by part (bodies are
MIME-encoded on the wire), and return what they found where, so a test can assert an empty
result and, with a planted value, that each scanner does look where it should.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from email.message import Message
from pathlib import Path

import sqlalchemy as sa

from chainlend.pseudonym import pii_columns
from sources.contract import TABLES

MIN_CHARS = 5  # shorter values (none in the simulator) would match by chance
BOUNDED_BELOW = 8  # values shorter than this only match as whole words ("Li Na" not in "Li Nan")


def raw_identifiers(source_urls: dict[str, str]) -> set[str]:
    """Every value of a personal column in the source databases (``{"erp": url, "dealer": url}``)."""
    found: set[str] = set()
    for source, url in source_urls.items():
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            for contract in TABLES[source]:
                cols = pii_columns(contract)
                if not cols:
                    continue
                query = sa.select(*[sa.column(c) for c in cols]).select_from(sa.table(contract.name))
                for row in conn.execute(query):
                    found.update(str(v).strip() for v in row if v is not None and len(str(v).strip()) >= MIN_CHARS)
        engine.dispose()
    return found


class Matcher:
    """Finds any of ``values`` in a text."""

    def __init__(self, values: Iterable[str]):
        self.values = sorted(set(values), key=lambda v: (-len(v), v))
        if not self.values:
            raise ValueError("nothing to scan for: the world has no personal values")
        parts = [re.escape(v) if len(v) >= BOUNDED_BELOW else rf"(?<![0-9A-Za-z]){re.escape(v)}(?![0-9A-Za-z])"
                 for v in self.values]
        self.pattern = re.compile("|".join(parts))

    def find(self, text: str) -> set[str]:
        found = {m.group(0) for m in self.pattern.finditer(text)}
        unescaped = html.unescape(text)
        if unescaped != text:
            found |= {m.group(0) for m in self.pattern.finditer(unescaped)}
        return found


def scan_database(url: str, matcher: Matcher) -> dict[str, set[str]]:
    """``{table: values found}`` over every row of every table of the database at ``url``."""
    engine = sa.create_engine(url)
    hits: dict[str, set[str]] = {}
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                found: set[str] = set()
                for row in conn.execute(sa.select(table)):
                    found |= matcher.find("\x1f".join("" if v is None else _text(v) for v in row))
                if found:
                    hits[table.name] = found
    finally:
        engine.dispose()
    return hits


def scan_files(root: Path, matcher: Matcher) -> dict[str, set[str]]:
    """``{relative path: values found}`` over every file under ``root``."""
    hits: dict[str, set[str]] = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        found = matcher.find(file_text(path))
        if found:
            hits[str(path.relative_to(root))] = found
    return hits


def file_text(path: Path) -> str:
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_csv(index=False)
    return path.read_bytes().decode("utf-8", errors="ignore")


def scan_messages(messages: Iterable[Message], matcher: Matcher) -> dict[str, set[str]]:
    """``{subject: values found}`` over the headers and decoded parts of each e-mail."""
    hits: dict[str, set[str]] = {}
    for msg in messages:
        texts = [f"{k}: {v}" for k, v in msg.items()]
        for part in msg.walk():
            if part.is_multipart():
                continue
            payload = part.get_payload(decode=True) or b""
            texts.append(payload.decode(part.get_content_charset() or "utf-8", errors="ignore"))
        found = matcher.find("\n".join(texts))
        if found:
            hits[str(msg["Subject"])] = found
    return hits


def _text(value) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="ignore")
    return str(value)
