"""The warehouse tables of credit operations: decisions, the review queue, supplier credits.

Every table has a business primary key, so a retried or re-run task upserts instead of adding:
``loan_decisions`` by application id, ``review_queue`` by application id, ``supplier_credits``
by ``credit_id`` (VIN + supplier), ``supplier_credit_splits`` by (split, BOM line, sub-BOM
line), ``line_off_exceptions`` by event id, ``credit_batch_events`` by event id (which
micro-batch took the event).

Supplier-credit lineage (see :mod:`lending.cascade`): the BOM and sub-BOM lines behind a credit
are the same for every vehicle of one model and BOM, so they are stored once per *split*
(``supplier_credit_splits``: one row per line, keyed by ``split_id`` = model + structure hash +
supplier, content-addressed, written once, never changed) and each credit names its split
(``supplier_credits.split_id``). The view ``supplier_credit_lines`` joins them back into the
columns the table of that name had (one row per credit × line: credit_id, bom_line_id,
sub_bom_line_id, line_value_fen, batch_id), so its readers are unchanged; at reference scale
that is ~80,000 split rows instead of ~12 M line rows a day. A warehouse of the earlier layout
(a ``supplier_credit_lines`` table, no ``split_id`` column) must be migrated by hand
(``create_all`` does not alter existing tables; allocation refuses to run on it). A development
copy whose old lineage may go: ``DROP TABLE supplier_credit_lines; ALTER TABLE supplier_credits
ADD COLUMN split_id VARCHAR(160) NOT NULL DEFAULT ''`` (then ``create_all`` adds the splits table
and the view; old credits name no split). Keeping the old lineage means building one split per
distinct (model, supplier, lines) of the old rows and setting each credit's split_id: not
automated yet. ``credit_controls`` holds the early-warning actions per borrower
(frozen, limit cut) that approval and disbursement obey.

Disbursement (see :mod:`lending.disbursement`): ``payment_instructions`` (integer key
``instruction_no``; unique idempotency key, so a loan ``loan:<application>`` gets at most one
instruction), ``instruction_items`` (the credits of supplier instructions; a credit belongs to at
most one instruction), ``ledger_entries`` (one row per balanced entry: debit account, credit
account, one positive amount; unique entry id; immutable: database triggers refuse UPDATE and
DELETE on SQLite, PostgreSQL and MariaDB; a correction is a reversing entry), the view
``ledger_postings`` (the two legs of every entry, one row each, for readers), ``ledger_accounts``
(running balance of each borrower's receivable, the row the posting-time limit check locks),
``borrower_limits``, ``payment_holds`` (payable items not posted and why), ``payment_outbox`` (what
the payment rail reads, keyed by its instruction's number) and ``disbursement_leases`` (the fencing
token of each writer).

Indexes on the posting path are the ones the guarantees need (the unique idempotency key, the
unique entry id, the primary keys) plus the outbox's pending rows: per loan instruction SQLite
inserts into six B-trees (the instruction row and its key, the entry row and its id, the outbox
row and its pending index; all but the two business keys appended at the end), where one row
per posting with text keys took 11–13. Reports and the reconciliation scan instead
(``make bench``, entry ``ledger``).
"""

from __future__ import annotations

import sqlalchemy as sa

MONEY = sa.BigInteger
ID = sa.String(64)
SPLIT_ID = sa.String(160)  # model id (64) + ':' + 16 hex + ':' + supplier id (64)


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
        sa.Column("decided_at", sa.DateTime, nullable=False),
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
        sa.Column("allocated_at", sa.DateTime, nullable=False),
        sa.Column("split_id", SPLIT_ID, nullable=False),  # its lineage: supplier_credit_splits
        sa.Index("ix_supplier_credits_batch", "batch_id"),
        sa.Index("ix_supplier_credits_supplier", "supplier_id"),
    )
    # a re-run finds the stored credits of its vehicles: on SQLite by a range of the credit_id key
    # ('<vin>:' ≤ credit_id < '<vin>;'), elsewhere (collations need not order ':' before ';') by an
    # index on vin; an index SQLite would update for each of ~1.8 M credits a day
    sa.event.listen(t["supplier_credits"], "after_create", sa.DDL(
        "CREATE INDEX ix_supplier_credits_vin ON supplier_credits (vin)").execute_if(dialect=("postgresql", "mysql")))
    t["supplier_credit_splits"] = sa.Table(
        "supplier_credit_splits", metadata,
        sa.Column("split_id", SPLIT_ID, primary_key=True),  # <model>:<structure hash>:<supplier>
        sa.Column("bom_line_id", ID, primary_key=True),
        sa.Column("sub_bom_line_id", ID, primary_key=True),  # '' for the tier-1 line itself
        sa.Column("model_id", ID, nullable=False),
        sa.Column("structure_hash", sa.String(64), nullable=False),  # sha256 of the model's lineage
        sa.Column("supplier_id", ID, nullable=False),
        sa.Column("line_value_fen", MONEY, nullable=False),
    )
    t["supplier_credit_lines"] = _credit_lines_view(t["supplier_credits"], t["supplier_credit_splits"])
    t["line_off_exceptions"] = sa.Table(
        "line_off_exceptions", metadata,
        sa.Column("event_id", ID, primary_key=True),
        sa.Column("batch_id", ID, nullable=False),
        sa.Column("vin", ID, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    _disbursement(metadata, t)
    _monitoring(metadata, t)
    return t


def _monitoring(metadata: sa.MetaData, t: dict[str, sa.Table]) -> None:
    """Post-loan monitoring, one partition per business date (a re-run replaces its date):
    signals, the watchlist history, DPD buckets and roll rates, behaviour scores, model checks."""
    bt, bid = (lambda: sa.Column("borrower_type", sa.String(16), primary_key=True),
               lambda: sa.Column("borrower_id", ID, primary_key=True))
    t["ew_signals"] = sa.Table(
        "ew_signals", metadata,
        sa.Column("as_of", sa.Date, primary_key=True), bt(), bid(),
        sa.Column("rule", sa.String(64), primary_key=True),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("config_version", sa.String(32), nullable=False),
    )
    t["watchlist"] = sa.Table(
        "watchlist", metadata,
        sa.Column("as_of", sa.Date, primary_key=True), bt(), bid(),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("previous_level", sa.String(16), nullable=False),
        sa.Column("change", sa.String(16), nullable=False),  # new | escalated | unchanged | improved | cleared
        sa.Column("rules", sa.Text, nullable=False),
        sa.Column("actions", sa.Text, nullable=False),
        sa.Column("config_version", sa.String(32), nullable=False),
    )
    t["dpd_buckets"] = sa.Table(
        "dpd_buckets", metadata,
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("bucket", sa.String(16), primary_key=True),
        sa.Column("loans", sa.BigInteger, nullable=False),
        sa.Column("outstanding_fen", MONEY, nullable=False),
    )
    t["roll_rates"] = sa.Table(
        "roll_rates", metadata,
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("from_bucket", sa.String(16), primary_key=True),
        sa.Column("to_bucket", sa.String(16), primary_key=True),
        sa.Column("share", sa.Float, nullable=False),
    )
    t["behaviour_scores"] = sa.Table(
        "behaviour_scores", metadata,
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("application_id", ID, primary_key=True),
        sa.Column("dealer_id", ID, nullable=False),
        sa.Column("pd", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(16), nullable=False),
    )
    t["model_monitoring"] = sa.Table(
        "model_monitoring", metadata,
        sa.Column("as_of", sa.Date, primary_key=True),
        sa.Column("family", sa.String(32), primary_key=True),
        sa.Column("metric", sa.String(128), primary_key=True),  # score_psi | psi:<feature> | auc_matured
        sa.Column("model_version", sa.String(16), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("band", sa.String(16), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    )


_IMMUTABLE = {
    "sqlite": ("CREATE TRIGGER IF NOT EXISTS {t}_no_{op} BEFORE {OP} ON {t} "
               "BEGIN SELECT RAISE(ABORT, '{t} are immutable: correct with a reversing entry'); END"),
    "postgresql": ("CREATE OR REPLACE FUNCTION chainlend_immutable() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' are immutable: correct with a reversing entry'; "
                   "END $$; "
                   "CREATE TRIGGER {t}_no_{op} BEFORE {OP} ON {t} FOR EACH ROW EXECUTE FUNCTION chainlend_immutable()"),
    "mysql": ("CREATE TRIGGER {t}_no_{op} BEFORE {OP} ON {t} FOR EACH ROW "
              "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{t} are immutable: correct with a reversing entry'"),
}


def _immutable(table: sa.Table) -> None:
    for dialect, ddl in _IMMUTABLE.items():
        for op in ("update", "delete"):
            sa.event.listen(table, "after_create", sa.DDL(
                ddl.format(t=table.name, op=op, OP=op.upper())).execute_if(dialect=dialect))


# the postings (legs) of the entries: the debit leg then the credit leg of each entry, with the
# columns ledger_postings had as a table (posting_id: 2 × entry_no − 1 for the debit leg, 2 × entry_no
# for the credit leg); the same SQL on SQLite, PostgreSQL and MariaDB
_POSTINGS_VIEW = (
    "CREATE VIEW ledger_postings AS "
    "SELECT 2 * entry_no - 1 AS posting_id, entry_id, instruction_id, debit_account AS account, borrower_type, "
    "borrower_id, amount_fen AS debit_fen, 0 AS credit_fen, posted_at FROM ledger_entries "
    "UNION ALL "
    "SELECT 2 * entry_no AS posting_id, entry_id, instruction_id, credit_account AS account, borrower_type, "
    "borrower_id, 0 AS debit_fen, amount_fen AS credit_fen, posted_at FROM ledger_entries")


def _postings_view(entries: sa.Table) -> sa.Table:
    """``ledger_postings``, a view on ``entries`` created and dropped with it; the returned table
    object (in a metadata of its own, so ``create_all`` leaves it alone) is for reading."""
    sa.event.listen(entries, "after_create", sa.DDL(_POSTINGS_VIEW))
    sa.event.listen(entries, "before_drop", sa.DDL("DROP VIEW IF EXISTS ledger_postings"))
    return sa.Table(
        "ledger_postings", sa.MetaData(),
        sa.Column("posting_id", sa.BigInteger, primary_key=True),
        sa.Column("entry_id", sa.String(200)),
        sa.Column("instruction_id", ID),
        sa.Column("account", sa.String(128)),
        sa.Column("borrower_type", sa.String(16)),
        sa.Column("borrower_id", ID),
        sa.Column("debit_fen", MONEY),
        sa.Column("credit_fen", MONEY),
        sa.Column("posted_at", sa.DateTime),
    )


# the lineage of each credit with the columns supplier_credit_lines had as a table: the lines of its
# split (sub_bom_line_id NULL for a tier-1 line, stored as '' so it can be part of the split's key);
# the same SQL on SQLite, PostgreSQL and MariaDB
_CREDIT_LINES_VIEW = (
    "CREATE VIEW supplier_credit_lines AS "
    "SELECT c.credit_id, s.bom_line_id, NULLIF(s.sub_bom_line_id, '') AS sub_bom_line_id, s.line_value_fen, "
    "c.batch_id FROM supplier_credits c JOIN supplier_credit_splits s ON s.split_id = c.split_id")


def _credit_lines_view(credits: sa.Table, splits: sa.Table) -> sa.Table:
    """``supplier_credit_lines``, a view on ``credits`` and ``splits``, created once both exist
    (after whichever of them is created last) and dropped with either; the returned table object
    (in a metadata of its own, so ``create_all`` leaves it alone) is for reading."""

    def both_exist_and_no_view(ddl, target, bind, **kw) -> bool:
        inspector = sa.inspect(bind)
        return (inspector.has_table(credits.name) and inspector.has_table(splits.name)
                and "supplier_credit_lines" not in inspector.get_view_names())

    for table in (credits, splits):
        sa.event.listen(table, "after_create", sa.DDL(_CREDIT_LINES_VIEW).execute_if(
            callable_=both_exist_and_no_view))
        sa.event.listen(table, "before_drop", sa.DDL("DROP VIEW IF EXISTS supplier_credit_lines"))
    return sa.Table(
        "supplier_credit_lines", sa.MetaData(),
        sa.Column("credit_id", sa.String(128)),
        sa.Column("bom_line_id", ID),
        sa.Column("sub_bom_line_id", ID),
        sa.Column("line_value_fen", MONEY),
        sa.Column("batch_id", ID),
    )


# integer surrogate keys: on SQLite an INTEGER PRIMARY KEY is the rowid (rows appended in key order)
SERIAL = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _disbursement(metadata: sa.MetaData, t: dict[str, sa.Table]) -> None:
    t["payment_instructions"] = sa.Table(
        "payment_instructions", metadata,
        # allocated by the poster: max + 1 under SQLite's write lock, the sequence elsewhere
        sa.Column("instruction_no", SERIAL, sa.Sequence("payment_instruction_no"), primary_key=True,
                  autoincrement=False),
        sa.Column("instruction_id", ID, nullable=False),  # what the rail sees: a hash of the key (not indexed)
        sa.Column("idempotency_key", sa.String(160), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),  # dealer_loan | supplier_credit
        sa.Column("borrower_type", sa.String(16), nullable=False),
        sa.Column("borrower_id", ID, nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sa.Column("source_batch", ID, nullable=False),  # decision batch or credit micro-batch
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_payment_instructions_key"),
        sa.CheckConstraint("amount_fen > 0", name="ck_instruction_amount_positive"),
    )
    t["instruction_items"] = sa.Table(  # the credits of supplier instructions (a loan is its instruction)
        "instruction_items", metadata,
        sa.Column("item_key", sa.String(160), primary_key=True),  # credit:<credit_id>
        sa.Column("instruction_id", ID, nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sqlite_with_rowid=False,  # one B-tree: the key is the row
    )
    entries = sa.Table(
        "ledger_entries", metadata,
        sa.Column("entry_no", SERIAL, primary_key=True, autoincrement=True),  # posting order
        sa.Column("entry_id", sa.String(200), nullable=False),  # disb:<key> | repay:<key> | rev:<entry>
        sa.Column("instruction_id", ID, nullable=True),
        sa.Column("debit_account", sa.String(128), nullable=False),
        sa.Column("credit_account", sa.String(128), nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sa.Column("borrower_type", sa.String(16), nullable=False),
        sa.Column("borrower_id", ID, nullable=False),
        sa.Column("posted_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("entry_id", name="uq_ledger_entries_entry"),
        sa.CheckConstraint("amount_fen > 0", name="ck_entry_amount_positive"),
        sa.CheckConstraint("debit_account <> credit_account", name="ck_entry_two_accounts"),
    )
    _immutable(entries)
    t["ledger_entries"] = entries
    t["ledger_postings"] = _postings_view(entries)
    t["ledger_accounts"] = sa.Table(
        "ledger_accounts", metadata,
        sa.Column("account", sa.String(128), primary_key=True),
        sa.Column("borrower_type", sa.String(16), nullable=False),
        sa.Column("borrower_id", ID, nullable=False),
        sa.Column("balance_fen", MONEY, nullable=False),  # debits − credits of its postings
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    t["borrower_limits"] = sa.Table(
        "borrower_limits", metadata,
        sa.Column("borrower_type", sa.String(16), primary_key=True),
        sa.Column("borrower_id", ID, primary_key=True),
        sa.Column("limit_fen", MONEY, nullable=False),  # before an early-warning limit cut
        sa.Column("source", sa.String(64), nullable=False),  # policy or model version it came from
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    t["payment_holds"] = sa.Table(
        "payment_holds", metadata,
        sa.Column("item_key", sa.String(160), primary_key=True),
        sa.Column("borrower_type", sa.String(16), nullable=False),
        sa.Column("borrower_id", ID, nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),  # frozen | over_limit
        sa.Column("source_batch", ID, nullable=False),  # keeps its batch in later runs' scope
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("checked_at", sa.DateTime, nullable=False),
    )
    outbox = sa.Table(
        "payment_outbox", metadata,
        sa.Column("instruction_no", SERIAL, primary_key=True, autoincrement=False),  # its instruction's
        sa.Column("instruction_id", ID, nullable=False),
        sa.Column("idempotency_key", sa.String(160), nullable=False),
        sa.Column("payee_type", sa.String(16), nullable=False),
        sa.Column("payee_id", ID, nullable=False),
        sa.Column("amount_fen", MONEY, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # pending | accepted | rejected
        sa.Column("rail_reference", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("sent_at", sa.DateTime, nullable=True),
    )
    pending = outbox.c.status == "pending"  # what send_outbox reads; partial where the database can
    sa.Index("ix_payment_outbox_pending", outbox.c.status, sqlite_where=pending, postgresql_where=pending)
    t["payment_outbox"] = outbox
    t["disbursement_leases"] = sa.Table(
        "disbursement_leases", metadata,
        sa.Column("scope", sa.String(255), primary_key=True),
        sa.Column("fence", sa.BigInteger, nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
    )
