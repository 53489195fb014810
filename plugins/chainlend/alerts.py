"""Quality alert e-mails to the data owners of a source: one per failing batch, never one per retry.

A batch "fails" when it quarantined rows or was blocked. The mail names source, table and
batch in the subject, lists the failing expectations with counts and a few sample keys, and
links the batch's Data Docs page. Personal data never goes out: sample values are record keys
(not personal), and any value shown from a column the contract marks as personal is masked
(:func:`mask`). The ``alerts`` table (primary key batch + kind) records each mail; a retried or
re-run task finds it and sends nothing.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os

import sqlalchemy as sa

from chainlend.systems import Warehouse

DEFAULT_DATA_OWNERS = {
    "erp": ["erp-data-owner@oem.example"],
    "dealer": ["dealer-data-owner@dealer-platform.example"],
}


def data_owners(source: str) -> list[str]:
    """Recipients for ``source``: Airflow Variable ``chainlend_data_owners`` (JSON
    ``{"erp": [...], "dealer": [...]}``, also settable as ``AIRFLOW_VAR_CHAINLEND_DATA_OWNERS``),
    else :data:`DEFAULT_DATA_OWNERS`."""
    from airflow.sdk import Variable

    raw = Variable.get("chainlend_data_owners", default=None)
    owners = json.loads(raw) if raw else DEFAULT_DATA_OWNERS
    if source not in owners or not owners[source]:
        raise ValueError(f"no data owners configured for source {source!r} in chainlend_data_owners")
    return list(owners[source])


def mask(value: object) -> str:
    """``13812345678`` → ``138****5678``; short values keep only their first character."""
    text = str(value)
    if len(text) <= 4:
        return text[:1] + "*" * (len(text) - 1)
    keep = max(1, len(text) // 4)
    return text[:keep] + "*" * (len(text) - 2 * keep) + text[-keep:]


def compose(summary, business_date: dt.date) -> tuple[str, str, str]:
    """(kind, subject, html body) of the alert for a gate summary."""
    kind = "blocked" if summary.blocked else "quarantine"
    verdict = "BLOCKED" if summary.blocked else f"{summary.quarantined:,} row(s) quarantined"
    subject = f"[chainlend] {summary.source}.{summary.table} batch {summary.batch_id}: {verdict}"
    rows = "".join(
        f"<tr><td>{html.escape(f['check'])}</td><td>{f['severity']}</td><td>{f['count']:,}</td>"
        f"<td>{html.escape(', '.join(_pairs(f)))}</td>"
        f"<td>{html.escape(f['detail'] or '')}</td></tr>"
        for f in summary.failures
    )
    docs = (f'<p>Data Docs: <a href="{html.escape(summary.docs_url)}">{html.escape(summary.docs_url)}</a></p>'
            if summary.docs_url else "<p>Data Docs: not rendered for this batch.</p>")
    action = ("<p>The batch was <b>not published</b>; everything downstream of it waits. Fix the source "
              "and re-run, or see the README (quarantine and replay).</p>" if summary.blocked else
              "<p>The other rows were published. Quarantined rows publish once the source corrects them "
              "(the next run picks the corrected rows up and closes their quarantine records).</p>")
    body = (
        f"<p>Source <b>{summary.source}</b>, table <b>{summary.table}</b>, batch <b>{summary.batch_id}</b> "
        f"(business date {business_date}): {summary.rows_in:,} row(s) in, {summary.published:,} published, "
        f"{summary.quarantined:,} quarantined.</p>"
        "<table border='1' cellpadding='4'><tr><th>expectation</th><th>severity</th><th>rows</th>"
        f"<th>sample keys (value)</th><th>detail</th></tr>{rows}</table>{docs}{action}"
    )
    return kind, subject, body


def _pairs(failure: dict) -> list[str]:
    values = failure.get("sample_values") or []
    if len(values) != len(failure["sample_keys"]):
        return [str(k) for k in failure["sample_keys"]]
    return [f"{k} ({v})" for k, v in zip(failure["sample_keys"], values, strict=True)]


def alert_once(warehouse: Warehouse, mailer, summary, business_date: dt.date, recipients: list[str],
               *, now: dt.datetime | None = None) -> bool:
    """Send the batch's alert unless it was sent already; returns whether a mail went out."""
    if not summary.failures:
        return False
    kind, subject, body = compose(summary, business_date)
    a = warehouse.alerts
    warehouse.metadata.create_all(warehouse.engine, tables=[a], checkfirst=True)
    with warehouse.engine.connect() as conn:
        if conn.execute(sa.select(a.c.batch_id).where(a.c.batch_id == summary.batch_id)).first():
            return False
    mailer.send(recipients, subject, body)
    with warehouse.engine.begin() as conn:
        conn.execute(a.insert(), [{"batch_id": summary.batch_id, "kind": kind, "subject": subject,
                                   "recipients": ",".join(recipients),
                                   "sent_at": now or dt.datetime.now(dt.UTC).replace(tzinfo=None)}])
    return True


def gx_paths() -> tuple[str, str]:
    """(GX project folder, Data Docs folder): ``CHAINLEND_GX_DIR`` / ``CHAINLEND_DATA_DOCS_DIR``,
    default ``var/gx`` and ``var/data_docs``."""
    from chainlend.settings import var_dir

    var = var_dir()
    return (os.environ.get("CHAINLEND_GX_DIR") or str(var / "gx"),
            os.environ.get("CHAINLEND_DATA_DOCS_DIR") or str(var / "data_docs"))
