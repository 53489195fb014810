"""The warehouse tables of credit operations: decisions, the review queue, supplier credits.

Every table has a business primary key, so a retried or re-run task upserts instead of adding:
``loan_decisions`` by application id, ``review_queue`` by application id, ``supplier_credits``
by ``credit_id`` (VIN + supplier), ``supplier_credit_lines`` by (credit, BOM line, sub-BOM
line), ``line_off_exceptions`` by event id, ``credit_batch_events`` by event id (which
micro-batch took the event). ``credit_controls`` holds the early-warning actions per borrower
(frozen, limit cut) that approval and disbursement obey.
"""

from __future__ import annotations

import sqlalchemy as sa

MONEY = sa.BigInteger
ID = sa.String(64)


def define(metadata: sa.MetaData) -> dict[str, sa.Table]:
    t = {}
    t["loan_decisions"] = sa.Table(
        "loan_decisions", metadata,
        sa.Column("application_id", ID, primary_key=True),
        sa.Column("decision_batch", ID, nullable=False),  # approve.<business date>
        sa.Column("dealer_id", ID, nullable=False),
        sa.Column("vin", ID, nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sa.Column("requested_fen", MONEY, nullable=False),
        sa.Column("term_days", sa.Integer, nullable=False),
        sa.Column("pd", sa.Float, nullable=False),
        sa.Column("band", sa.String(8), nullable=False),
        sa.Column("el_fen", MONEY, nullable=False),
        sa.Column("reason_codes", sa.Text, nullable=False),
        sa.Column("reason_text_en", sa.Text, nullable=False),
        sa.Column("reason_text_zh", sa.Text, nullable=False),
        sa.Column("model_version", sa.String(16), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("feature_hash", sa.String(64), nullable=False),
        sa.Index("ix_loan_decisions_batch", "decision_batch"),
        sa.Index("ix_loan_decisions_dealer", "dealer_id"),
        sa.Index("ix_loan_decisions_vin", "vin"),
    )
    t["review_queue"] = sa.Table(
        "review_queue", metadata,
        sa.Column("application_id", ID, primary_key=True),
        sa.Column("dealer_id", ID, nullable=False),
        sa.Column("proposed_amount_fen", MONEY, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # pending | approved | declined
        sa.Column("amount_fen", MONEY, nullable=True),  # what the officer approved
        sa.Column("officer", sa.String(255), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("queued_at", sa.DateTime, nullable=False),
        sa.Column("decided_at", sa.DateTime, nullable=True),
    )
    t["credit_controls"] = sa.Table(
        "credit_controls", metadata,
        sa.Column("borrower_type", sa.String(16), primary_key=True),  # dealer | supplier
        sa.Column("borrower_id", ID, primary_key=True),
        sa.Column("frozen", sa.Boolean, nullable=False),
        sa.Column("limit_cut", sa.Float, nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("since", sa.Date, nullable=False),
    )
    t["credit_batch_events"] = sa.Table(
        "credit_batch_events", metadata,
        sa.Column("event_id", ID, primary_key=True),
        sa.Column("batch_id", ID, nullable=False),
        sa.Index("ix_credit_batch_events_batch", "batch_id"),
    )
    t["supplier_credits"] = sa.Table(
        "supplier_credits", metadata,
        sa.Column("credit_id", sa.String(128), primary_key=True),
        sa.Column("batch_id", ID, nullable=False),
        sa.Column("event_id", ID, nullable=False),
        sa.Column("vin", ID, nullable=False),
        sa.Column("model_id", ID, nullable=False),
        sa.Column("supplier_id", ID, nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("share_fen", MONEY, nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sa.Column("capped_fen", MONEY, nullable=False),
        sa.Column("capped_by", sa.String(16), nullable=True),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("line_off_on", sa.Date, nullable=False),
        sa.Index("ix_supplier_credits_batch", "batch_id"),
        sa.Index("ix_supplier_credits_supplier", "supplier_id"),
    )
    t["supplier_credit_lines"] = sa.Table(
        "supplier_credit_lines", metadata,
        sa.Column("credit_id", sa.String(128), nullable=False),
        sa.Column("bom_line_id", ID, nullable=False),
        sa.Column("sub_bom_line_id", ID, nullable=True),
        sa.Column("line_value_fen", MONEY, nullable=False),
        sa.Column("batch_id", ID, nullable=False),
        sa.Index("ix_supplier_credit_lines_batch", "batch_id"),
        sa.Index("ix_supplier_credit_lines_credit", "credit_id"),
    )
    t["line_off_exceptions"] = sa.Table(
        "line_off_exceptions", metadata,
        sa.Column("event_id", ID, primary_key=True),
        sa.Column("batch_id", ID, nullable=False),
        sa.Column("vin", ID, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    return t
