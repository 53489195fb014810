"""Post-loan monitoring at the edge: repayments into the ledger, early-warning levels and their
actions, the watchlist and its digest e-mail, and model monitoring with a retrain trigger.

Each step writes one partition per business date (``as_of`` = the business date; data published
through that date), so a retry or a re-run replaces its own rows:

- :func:`post_repayments`: a repaid order loan that the bank disbursed gets the entry
  ``repay:loan:<application_id>`` (debit nostro, credit the dealer's receivable, at the principal
  paid out); a supplier-credit instruction is settled by the OEM's payment of the financed
  payables at the credit term (``repay:sc:…``). Entry keys are unique in the ledger.
- :func:`early_warning`: the rules of :mod:`lending.early_warning` on published data, the
  ``post_loan_behaviour`` champion's PD of every outstanding loan, a level per borrower and the
  actions that :mod:`chainlend.lending_ops` (approval) and :mod:`chainlend.disbursement_ops`
  (posting) obey through ``credit_controls``; the watchlist keeps the history.
- :func:`send_digest`: one e-mail per business date to credit operations (a retry or re-run
  sends nothing: the ``alerts`` table records it), listing new and escalated borrowers by their
  record key (the warehouse holds names and phones only as pseudonyms, :mod:`chainlend.pseudonym`;
  the officer looks the key up in the dealer platform or the ERP).
- :func:`monitor_models`: PSI of each champion's score and of every feature against its training
  window (bands 0.10 / 0.25), AUC once labels have matured; a retrain is requested when the score
  shifts significantly (PSI > 0.25) or when matured AUC falls below the OOT AUC by more than 0.05.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from chainlend.lending_ops import SUPPLIER_CREDIT_TERM_DAYS, LendingOpsError, champion
from chainlend.systems import Warehouse, insert_rows
from sources.contract import table as contract_table

log = logging.getLogger(__name__)

DEALER_FRAMES = ("dealer.dealers", "dealer.inventory", "dealer.sales", "dealer.floor_audits",
                 "dealer.loan_applications", "dealer.loan_repayments")
# the ERP tables and columns the supplier rules (lending.early_warning) and the supplier features
# (features.supplier) use: the others are not read (parts, supplier links, vehicle models, orders
# and line-off events are used by neither; a missing one raises the FeatureError naming it)
ERP_COLUMNS: dict[str, tuple[str, ...]] = {
    "erp.suppliers": ("supplier_id", "tier", "onboarded_on"),
    "erp.bom": ("model_id", "part_id", "supplier_id", "quantity", "unit_price_fen"),
    "erp.sub_bom": ("parent_part_id", "supplier_id", "quantity", "unit_price_fen"),
    "erp.production": ("model_id", "produced_at", "updated_at"),
    "erp.goods_receipts": ("receipt_id", "supplier_id", "part_id", "quantity", "amount_fen", "received_at",
                           "updated_at"),
    "erp.payables": ("payable_id", "receipt_id", "supplier_id", "amount_fen", "due_on", "confirmation_status",
                     "confirmed_at", "updated_at"),
    "erp.credit_memos": ("supplier_id", "amount_fen", "issued_at", "updated_at"),
    "erp.supplier_repayments": ("payable_id", "supplier_id", "due_on", "paid_at", "updated_at"),
}
ERP_FRAMES = tuple(ERP_COLUMNS)
DEFAULT_CREDIT_OPS = ["credit-ops@bank.example"]
FAMILIES = ("dealer_pd", "supplier_pd", "post_loan_behaviour")
# retrain triggers (the PSI bands are models.metrics.PSI_INVESTIGATE / PSI_SIGNIFICANT). Feature
# PSI is reported per feature and band for investigation but does not trigger a retrain by
# itself: some features drift by construction (tenure, history length) while the score holds.
RETRAIN_AUC_DROP = 0.05
# no new request while the family's newest version was trained on data this recent (the weekly
# run and a pending request cover it; requesting again every day would retrain in a loop)
RETRAIN_COOLDOWN_DAYS = 14  # matured AUC below the version's OOT AUC by more than this
MIN_MATURED_BADS = 5
BASELINE_SAMPLE = 50_000
DEALER_MONITOR_DAYS = 30  # the dealer_pd population: applications of the last 30 days


def _read_frames(w: Warehouse, names: tuple[str, ...] = DEALER_FRAMES + ERP_FRAMES) -> dict:
    """The published dealer and ERP tables monitoring reads (``names``: those of them), only the
    columns the builders and rules use (:data:`features.dealer.DEALER_COLUMNS`, :data:`ERP_COLUMNS`)."""
    from features.dealer import DEALER_COLUMNS

    columns = {**{k: DEALER_COLUMNS[k] for k in DEALER_FRAMES}, **ERP_COLUMNS}
    return w.read_frames(names, columns={k: columns[k] for k in names})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _replace_partition(conn, table: sa.Table, as_of: dt.date, frame: pd.DataFrame, const: dict | None = None) -> None:
    """Replace the ``as_of`` rows of ``table`` by ``frame``'s; ``const``: columns equal on every
    row, bound once (not per row: ~1 s for a day's ~900,000 behaviour scores)."""
    conn.execute(sa.delete(table).where(table.c.as_of == as_of))
    if not const:
        insert_rows(conn, table, frame)
        return
    from chainlend.bulk import bulk_insert, plain_columns

    cols = [str(c) for c in frame.columns]
    missing = [c.name for c in table.c if c.name not in cols and c.name not in const]
    if missing:
        raise ValueError(f"{table.name}: no value for column(s) {missing}")
    if len(frame):
        bulk_insert(conn, table, plain_columns(frame, cols), const)


# --------------------------------------------------------------------------------------------
# repayments into the ledger


def post_repayments(business_date: dt.date, warehouse: Warehouse | None = None) -> dict:
    """Post the repayments known through ``business_date`` that the ledger does not have yet:
    one entry ``repay:<idempotency key>`` per instruction (debit nostro, credit the receivable)."""
    from features.frames import positions
    from lending.disbursement import NOSTRO, check_entries, repayment_entries

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    t = w.lending
    pi, le, acc = t["payment_instructions"], t["ledger_entries"], t["ledger_accounts"]
    as_of = pd.Timestamp(business_date + dt.timedelta(days=1))
    # the two reads (each a reader process on SQLite) run side by side
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="post-repayments-read") as pool:
        reading = pool.submit(w.read_frames, ("dealer.loan_repayments",), columns={"dealer.loan_repayments": (
            "application_id", "paid_at", "updated_at")})
        ins = w.read_query(sa.select(pi.c.instruction_id, pi.c.idempotency_key, pi.c.kind, pi.c.borrower_type,
                                     pi.c.borrower_id, pi.c.amount_fen, pi.c.source_batch))
        rep = reading.result()["dealer.loan_repayments"]
    known = rep[(rep.updated_at < as_of) & (rep.paid_at < as_of)]
    loans = ins[ins.kind == "dealer_loan"].copy()
    loans["application_id"] = loans.idempotency_key.str.removeprefix("loan:")
    # membership by Arrow's hash lookup (Series.isin on Arrow strings builds a Python list of the set)
    repaid = loans[positions(known.application_id, loans.application_id) >= 0]
    sc = ins[ins.kind == "supplier_credit"].copy()
    batch_day = pd.to_datetime(sc.source_batch.str.slice(3, 11), format="%Y%m%d")
    settled = sc[batch_day + pd.Timedelta(days=SUPPLIER_CREDIT_TERM_DAYS) < as_of]
    due = pd.concat([repaid, settled], ignore_index=True)
    due["entry_id"] = "repay:" + due.idempotency_key
    due = due[~due.entry_id.isin(_posted_entries(w, due.entry_id.tolist()))]
    if due.empty:
        return {"repayments_posted": 0, "amount_fen": 0}
    entries = repayment_entries(due[["entry_id", "borrower_type", "borrower_id", "amount_fen"]])
    check_entries(entries)
    entries["instruction_id"] = due.instruction_id.to_numpy(dtype=object)
    entries["posted_at"] = _now()
    delta = entries[entries.credit_account != NOSTRO].groupby("credit_account").amount_fen.sum()
    with w.engine.begin() as conn:
        insert_rows(conn, le, entries)  # plain tuples, in this order (entry_no follows it)
        conn.execute(sa.update(acc).where(acc.c.account == sa.bindparam("a")).values(
            balance_fen=acc.c.balance_fen - sa.bindparam("d"), updated_at=_now()),
            [{"a": a, "d": int(d)} for a, d in delta.items()])
    return {"repayments_posted": int(len(due)), "amount_fen": int(due.amount_fen.sum()),
            "loans": int((due.kind == "dealer_loan").sum()), "supplier_settlements": int((due.kind != "dealer_loan").sum())}


def _posted_entries(w: Warehouse, entry_ids: list[str]) -> set[str]:
    """Those of ``entry_ids`` the ledger has (by its unique entry id, 5,000 a statement). Plain
    DBAPI statements: SQLAlchemy's expanding ``IN`` names and processes one bind parameter per
    id, most of the time of looking up the ~50,000 ids of a day."""
    from chainlend.bulk import where_in

    with w.engine.connect() as conn:
        return {r[0] for r in where_in(conn, w.lending["ledger_entries"], "entry_id", entry_ids)}


# --------------------------------------------------------------------------------------------
# early warning


DOUBLE_FINANCING_COLUMNS = ("dealer_id", "requested_fen", "applied_at")


def duplicate_vins(w: Warehouse) -> pd.DataFrame:
    """Double-financing attempts the quality gate caught: ``vin, dealer_id, detected_at``.

    A loan application quarantined as a duplicate VIN (``unique_vin``) counts when it differs
    from another application for the same VIN (published or quarantined) in dealer, requested
    amount or application time: a second loan asked for a car already pledged. A copy that
    differs only in its key is a technical duplicate (the system re-sent a row): the data owner
    gets the quality alert, the dealer no early warning. ``detected_at`` is the source's
    ``updated_at`` of the quarantined row (business time; the quarantine's own timestamp is
    processing time, which a back-fill can put anywhere)."""
    q = w.quarantine
    with w.engine.connect() as conn:
        rows = conn.execute(sa.select(q.c.row_json).where(
            q.c.source == "dealer", q.c.table_name == "loan_applications", q.c.reasons.like("%unique_vin%"))).all()
    cols = ["vin", "dealer_id", "detected_at"]
    quarantined = pd.DataFrame([json.loads(r) for (r,) in rows])
    if quarantined.empty or not {"vin", *DOUBLE_FINANCING_COLUMNS, "updated_at", "application_id"} <= set(
            quarantined.columns):
        return pd.DataFrame(columns=cols)
    quarantined = quarantined.dropna(subset=["vin", "dealer_id", "updated_at"])
    pub = w.published(contract_table("dealer", "loan_applications"))
    vins = quarantined.vin.astype(str).unique().tolist()
    with w.engine.connect() as conn:
        published = pd.concat([pd.read_sql(sa.select(pub.c.application_id, pub.c.vin, *[
            pub.c[c] for c in DOUBLE_FINANCING_COLUMNS]).where(pub.c.vin.in_(vins[i:i + 5_000])), conn)
            for i in range(0, len(vins), 5_000)] or [pd.DataFrame()], ignore_index=True)
    every = pd.concat([quarantined[["application_id", "vin", *DOUBLE_FINANCING_COLUMNS]], published],
                      ignore_index=True).astype(str).drop_duplicates()
    # per VIN: how many distinct (dealer, amount, time) versions its applications have
    versions = every.drop_duplicates(["vin", *DOUBLE_FINANCING_COLUMNS]).groupby("vin").size()
    flagged = quarantined[quarantined.vin.astype(str).map(versions).fillna(0).to_numpy() >= 2]
    return pd.DataFrame({"vin": flagged.vin.astype(str), "dealer_id": flagged.dealer_id.astype(str),
                         "detected_at": pd.to_datetime(flagged.updated_at)}, columns=cols).reset_index(drop=True)


def _live_loans(frames: dict, as_of: dt.date) -> pd.DataFrame:
    """The performing book the behaviour model scores: outstanding loans not yet
    ``DEALER_GRACE_DAYS`` past due (the population it was trained on; later ones are in default)."""
    from features.definitions import DEALER_GRACE_DAYS
    from lending.early_warning import loan_dpd

    loans = loan_dpd(frames, as_of)
    return loans[loans.dpd < DEALER_GRACE_DAYS].reset_index(drop=True)


def _pd_only(model, X: pd.DataFrame) -> np.ndarray:
    """PDs from a pyfunc ``PdModel`` without the per-row contributions (reason codes are not
    needed for monitoring, and SHAP is most of the scoring time)."""
    return model.unwrap_python_model().candidate.predict_pd(X)


def _previous_levels(w: Warehouse, as_of: dt.date) -> pd.DataFrame:
    """Each borrower's level after the latest earlier run (absent: green)."""
    wl = w.lending["watchlist"]
    with w.engine.connect() as conn:
        hist = pd.read_sql(sa.select(wl.c.as_of, wl.c.borrower_type, wl.c.borrower_id, wl.c.level).where(
            wl.c.as_of < as_of), conn)
    if hist.empty:
        return pd.DataFrame(columns=["borrower_type", "borrower_id", "level"])
    hist = hist.sort_values("as_of").groupby(["borrower_type", "borrower_id"], as_index=False).last()
    return hist[["borrower_type", "borrower_id", "level"]]


BEHAVIOUR_FOLDER = "monitoring"  # under the var folder: the day's behaviour features and PDs


@dataclass(frozen=True)
class Behaviour:
    """The performing book's ``post_loan_behaviour`` features and champion PDs as
    :func:`early_warning` scored them (rows in the order of ``_live_loans``)."""

    version: str
    features: pd.DataFrame  # float64, the columns feature_names("post_loan_behaviour")
    pds: np.ndarray


def _behaviour_path(business_date: dt.date) -> Path:
    from chainlend import settings

    return settings.var_dir() / BEHAVIOUR_FOLDER / f"behaviour_{business_date:%Y%m%d}.parquet"


def _write_behaviour(business_date: dt.date, version: str, X: pd.DataFrame, pds: np.ndarray) -> Path:
    """Hand the day's behaviour features and PDs to :func:`monitor_models` through a Parquet file
    (XCom carries only its path): the book, its features and the champion's scores are the same
    in both tasks, and computing them is a large part of each. The files of other dates are
    removed (a run needs only its own; a re-run of a date rewrites it)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(X.assign(pd=np.asarray(pds, dtype=np.float64)), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"model_version": version.encode()})
    return _write_side(_behaviour_path(business_date), "behaviour", table)


def _write_side(path: Path, stem: str, table) -> Path:
    """Write the Arrow ``table`` to ``path`` atomically (a reader sees the whole file or none) and
    remove the files ``<stem>_*.parquet`` of other dates beside it."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    for old in path.parent.glob(f"{stem}_*.parquet"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


# the populations monitor_models measures, besides the behaviour book: the features of the
# dealer_pd and supplier_pd populations and the matured labels (early_warning's side files)
POPULATION_FAMILIES = ("dealer_pd", "supplier_pd")
LABELS = "labels"


@dataclass(frozen=True)
class Populations:
    """What :func:`monitor_models` computes from the published tables, as :func:`early_warning`
    computed it from the same tables: each family's current population (float64, the columns
    ``feature_names(family)``) and the matured labels (bad 1/0 by application id)."""

    features: dict[str, pd.DataFrame]
    labels: pd.Series


def _population_path(name: str, business_date: dt.date) -> Path:
    from chainlend import settings

    return settings.var_dir() / BEHAVIOUR_FOLDER / f"{name}_{business_date:%Y%m%d}.parquet"


def _write_populations(business_date: dt.date, features: dict[str, pd.DataFrame], labels: pd.Series) -> dict:
    """Hand :func:`monitor_models` the dealer_pd and supplier_pd populations' features and the
    matured labels through Parquet files (XCom carries their paths): they are the same in both
    tasks, and reading the published tables again for them was most of monitor_models' time.
    The files of other dates are removed. Returns ``{name: path}``."""
    import pyarrow as pa

    paths = {family: str(_write_side(_population_path(family, business_date), family,
                                     pa.Table.from_pandas(features[family], preserve_index=False)))
             for family in POPULATION_FAMILIES}
    frame = pd.DataFrame({"application_id": labels.index.to_numpy(dtype=object),
                          "bad": labels.to_numpy(dtype=np.int64)})
    paths[LABELS] = str(_write_side(_population_path(LABELS, business_date), LABELS,
                                    pa.Table.from_pandas(frame, preserve_index=False)))
    return paths


def _read_populations(paths: dict) -> Populations:
    """The files of :func:`_write_populations`."""
    import pyarrow.parquet as pq

    missing = [p for p in (paths.get(n) for n in (*POPULATION_FAMILIES, LABELS)) if p is None or not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"the population file(s) {missing} of early_warning are missing (given {paths}); "
                                f"re-run early_warning for this business date")
    features = {family: pq.read_table(paths[family]).to_pandas() for family in POPULATION_FAMILIES}
    lab = pq.read_table(paths[LABELS]).to_pandas()
    labels = pd.Series(lab["bad"].to_numpy(dtype=np.int64), index=lab["application_id"].to_numpy(dtype=object))
    return Populations(features, labels)


def _recent_applications(frames: dict, as_of: dt.date) -> pd.DataFrame:
    """The dealer_pd population at ``as_of``: the applications known and applied in the last
    ``DEALER_MONITOR_DAYS`` days (each once)."""
    day = pd.Timestamp(as_of)
    apps = frames["dealer.loan_applications"]
    recent = apps[(apps.updated_at < day) & (apps.applied_at < day)
                  & (apps.applied_at >= day - pd.Timedelta(days=DEALER_MONITOR_DAYS))]
    return recent.drop_duplicates("application_id")


class _SharedPanel:
    """One dealer panel for the behaviour book's features and the dealer_pd population's, when
    both start on the same day (each builder sums a panel's weights along the days from its first
    day: a panel started on another day could differ in the last bits of a float feature, so
    otherwise each gets its own, as before). Building the panel (sales, stock, loans, audits of
    every dealer on every day, and the VIN join of inventory and sales) is most of the time of
    either; the features read from it are the same (a later last day changes no earlier day)."""

    def __init__(self, frames: dict, as_of: dt.date):
        from features.panel import day_numbers

        self._frames = frames
        self.recent = _recent_applications(frames, as_of)  # the dealer_pd population
        applied = day_numbers(self.recent["applied_at"])
        # application_features' own panel spans the applied days
        self.dealer_pd_days = (int(applied.min()), int(applied.max())) if len(applied) else None
        self.panel = None

    def __call__(self, lo: int, hi: int):
        """The behaviour book's panel (``post_loan_features``' ``make_panel``), reaching the
        dealer_pd days too when it starts on their first day."""
        from features.dealer import DealerPanel, Loans, dealer_index

        if self.dealer_pd_days is not None and self.dealer_pd_days[0] == lo:
            hi = max(hi, self.dealer_pd_days[1])
        self.panel = DealerPanel(self._frames, lo, hi, loans=Loans.build(self._frames, dealer_index(self._frames)[0]))
        return self.panel

    def for_dealer_pd(self):
        """The panel when it starts on the dealer_pd population's first day and reaches its last
        (else None: application_features builds its own)."""
        p, days = self.panel, self.dealer_pd_days
        return p if p is not None and days is not None and p.grid.first == days[0] and p.grid.last >= days[1] else None


def _population_features(family: str, frames: dict, as_of: dt.date, shared: _SharedPanel | None = None) -> pd.DataFrame:
    """The features (float64, ``feature_names(family)``, rows from 0) of the population the
    ``family`` champion scores at ``as_of``: dealer_pd the applications of the last
    ``DEALER_MONITOR_DAYS`` days, supplier_pd every supplier. ``shared``: the behaviour book's
    panel, read for dealer_pd when it starts on the same day (:class:`_SharedPanel`)."""
    from features.definitions import feature_names

    names = list(feature_names(family))
    if family == "dealer_pd":
        from features.dealer import application_features

        if shared is None:
            feats = application_features(frames, _recent_applications(frames, as_of))
        else:
            feats = application_features(frames, shared.recent, panel=shared.for_dealer_pd())
    elif family == "supplier_pd":
        from features.supplier import supplier_features

        ids = frames["erp.suppliers"].supplier_id.astype(str).tolist()
        feats = supplier_features(frames, ids, [as_of])
    else:
        raise ValueError(f"no population builder for family {family!r}")
    return feats[names].astype("float64").reset_index(drop=True)


def _read_behaviour(path: str, version: str) -> Behaviour | None:
    """The file of :func:`_write_behaviour`; None (logged) when it was scored by another version
    than the champion ``version`` now (promoted in between: the caller scores the book again)."""
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise FileNotFoundError(f"the behaviour file {path} of early_warning is missing; re-run early_warning "
                                f"for this business date")
    table = pq.read_table(path)
    written = (table.schema.metadata or {}).get(b"model_version", b"").decode()
    if written != version:
        log.warning("behaviour file %s was scored by post_loan_behaviour v%s, the champion is v%s now: "
                    "scoring the book again", path, written, version)
        return None
    frame = table.to_pandas()
    return Behaviour(written, frame.drop(columns="pd"), frame["pd"].to_numpy(dtype=np.float64))


def early_warning(business_date: dt.date, warehouse: Warehouse | None = None) -> dict:
    """Signals, levels, actions and the watchlist for ``business_date``."""
    from features.dealer import shared_loans

    with shared_loans():  # the loan book of the frames is built once for the rules and features
        return _early_warning(business_date, warehouse)


def _early_warning(business_date: dt.date, warehouse: Warehouse | None) -> dict:
    from features.definitions import feature_names
    from features.post_loan import post_loan_features
    from lending import early_warning as ew

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    t = w.lending
    as_of = business_date + dt.timedelta(days=1)
    cfg = ew.EW_CONFIG_V1
    # the champion is loaded while two reader processes read the published tables; the ERP
    # tables are small and come first: the supplier rules and the supplier_pd population are
    # computed while the dealer tables are still being read
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="early-warning-read") as pool:
        dealer_reading = pool.submit(_read_frames, w, DEALER_FRAMES)
        erp_reading = pool.submit(_read_frames, w, ERP_FRAMES)
        version, model = champion("post_loan_behaviour")
        erp = erp_reading.result()
        supplier_signals = ew.supplier_signals(erp, as_of, cfg)
        supplier_population = _population_features("supplier_pd", erp, as_of)
        frames = {**dealer_reading.result(), **erp}
    loans = _live_loans(frames, as_of)
    scored = pd.DataFrame(columns=["application_id", "dealer_id", "pd"])  # as_of, model_version: constants
    shared = _SharedPanel(frames, as_of)
    # the champion scores the book (native code, the GIL released) while the dealer rules and
    # populations are computed
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="early-warning-score") as pool:
        if len(loans):
            feats = post_loan_features(frames, pd.DataFrame({"application_id": loans.application_id.to_numpy(),
                                                             "as_of": pd.Timestamp(as_of)}), indexed=False,
                                       make_panel=shared)
            X = feats[feature_names("post_loan_behaviour")].astype("float64")
            scoring = pool.submit(_pd_only, model, X)
        else:
            X = pd.DataFrame(columns=list(feature_names("post_loan_behaviour")), dtype="float64")
            scoring = None
        populations = {"dealer_pd": _population_features("dealer_pd", frames, as_of, shared),
                       "supplier_pd": supplier_population}
        labels = _matured_labels(frames, pd.Timestamp(as_of))
        dealer_signals = ew.dealer_signals(frames, as_of, cfg, duplicate_vins=duplicate_vins(w))
        pds = scoring.result() if scoring is not None else np.zeros(0)
    if len(loans):
        scored = pd.DataFrame({"application_id": loans.application_id.to_numpy(),
                               "dealer_id": loans.dealer_id.to_numpy(), "pd": pds})
    behaviour_file = _write_behaviour(business_date, str(version), X, pds)
    population_files = _write_populations(business_date, populations, labels)
    # a dealer's behaviour score: the exposure-weighted mean PD of its performing loans (the
    # expected bad share of its book)
    weight = loans.outstanding_fen.astype(float).to_numpy() if len(scored) else np.zeros(0)
    wsum = pd.Series(weight, index=scored.index).groupby(scored.dealer_id).sum()
    wpd = pd.Series(weight * scored.pd.to_numpy(dtype=float), index=scored.index).groupby(scored.dealer_id).sum()
    scores = (wpd / wsum).rename("score").reset_index().rename(columns={"dealer_id": "borrower_id"}).assign(
        borrower_type="dealer")
    signals = pd.concat([
        dealer_signals,
        supplier_signals,
        ew.score_signals(scores[["borrower_type", "borrower_id", "score"]], cfg),
    ], ignore_index=True)
    borrowers = pd.concat([
        pd.DataFrame({"borrower_type": "dealer", "borrower_id": frames["dealer.dealers"].dealer_id.astype(str)}),
        pd.DataFrame({"borrower_type": "supplier", "borrower_id": frames["erp.suppliers"].supplier_id.astype(str)}),
    ], ignore_index=True)
    levels = ew.combine(signals, borrowers, cfg)
    previous = _previous_levels(w, business_date)
    changed = ew.changes(previous, levels)
    prev_level = previous.set_index(["borrower_type", "borrower_id"]).level
    key = pd.MultiIndex.from_frame(levels[["borrower_type", "borrower_id"]])
    levels["previous_level"] = pd.Series(prev_level.reindex(key).to_numpy(), index=levels.index).fillna("green")
    change = changed.set_index(["borrower_type", "borrower_id"])["change"]
    levels["change"] = pd.Series(change.reindex(key).to_numpy(), index=levels.index)
    other = pd.Series(np.where(levels.level == levels.previous_level, "unchanged",
                               np.where(levels.level == "green", "cleared", "improved")), index=levels.index)
    levels["change"] = levels.change.where(levels.change.notna(), other)
    # the watchlist keeps the non-green names and everyone whose level moved (cleared included)
    wl = levels[(levels.level != "green") | (levels.previous_level != "green")]
    watch = pd.DataFrame({"as_of": business_date, "borrower_type": wl.borrower_type, "borrower_id": wl.borrower_id,
                          "level": wl.level, "previous_level": wl.previous_level, "change": wl.change,
                          "rules": wl.rules.fillna(""), "actions": wl.actions.fillna(""),
                          "config_version": cfg.version})
    sig = signals.assign(as_of=business_date, config_version=cfg.version)[
        ["as_of", "borrower_type", "borrower_id", "rule", "level", "value", "threshold", "detail", "config_version"]]
    buckets = loans.groupby("bucket").agg(loans=("application_id", "size"), outstanding_fen=("outstanding_fen", "sum"))
    buckets = buckets.reset_index().assign(as_of=business_date)
    rolls = ew.roll_rates(frames, as_of, prior=as_of - dt.timedelta(days=30))
    rolls = (rolls.stack().rename("share").reset_index().set_axis(["from_bucket", "to_bucket", "share"], axis=1)
             .assign(as_of=business_date)) if len(rolls) else pd.DataFrame(
        columns=["as_of", "from_bucket", "to_bucket", "share"])
    controls = _controls(w, levels[levels.level != "green"], business_date)
    with w.engine.begin() as conn:
        _replace_partition(conn, t["ew_signals"], business_date, sig)
        _replace_partition(conn, t["watchlist"], business_date, watch)
        _replace_partition(conn, t["dpd_buckets"], business_date, buckets)
        _replace_partition(conn, t["roll_rates"], business_date, rolls)
        _replace_partition(conn, t["behaviour_scores"], business_date, scored,
                           const={"as_of": business_date, "model_version": str(version)})
        conn.execute(sa.delete(t["credit_controls"]))
        if len(controls):
            conn.execute(t["credit_controls"].insert(), controls.to_dict("records"))
    counts = levels.level.value_counts()
    return {"as_of": business_date.isoformat(), "config_version": cfg.version,
            "levels": {lv: int(counts.get(lv, 0)) for lv in ("green", "yellow", "orange", "red")},
            "rules_fired": {str(k): int(v) for k, v in signals.rule.value_counts().sort_index().items()},
            "new": int((watch.change == "new").sum()), "escalated": int((watch.change == "escalated").sum()),
            "loans_scored": int(len(scored)), "post_loan_version": str(version),
            "behaviour_file": str(behaviour_file), "population_files": population_files}


def _controls(w: Warehouse, flagged: pd.DataFrame, business_date: dt.date) -> pd.DataFrame:
    """``credit_controls`` rows of the non-green borrowers; ``since`` kept while the level holds."""
    c = w.lending["credit_controls"]
    with w.engine.connect() as conn:
        old = pd.read_sql(sa.select(c.c.borrower_type, c.c.borrower_id, c.c.level, c.c.since), conn)
    out = pd.DataFrame({"borrower_type": flagged.borrower_type, "borrower_id": flagged.borrower_id,
                        "frozen": flagged.frozen.astype(bool), "limit_cut": flagged.limit_cut.astype(float),
                        "level": flagged.level, "reason": flagged.rules.fillna(""), "since": business_date})
    if len(old) and len(out):
        m = out.merge(old, on=["borrower_type", "borrower_id"], how="left", suffixes=("", "_old"))
        keep = m.level_old.eq(m.level).to_numpy()
        out.loc[keep, "since"] = pd.to_datetime(m.since_old[keep]).dt.date.to_numpy()
    return out.reset_index(drop=True)


def credit_ops_recipients() -> list[str]:
    """Airflow Variable ``chainlend_credit_ops`` (a JSON list; also ``AIRFLOW_VAR_CHAINLEND_CREDIT_OPS``),
    else :data:`DEFAULT_CREDIT_OPS`."""
    from airflow.sdk import Variable

    raw = Variable.get("chainlend_credit_ops", default=None)
    to = json.loads(raw) if raw else DEFAULT_CREDIT_OPS
    if not to:
        raise ValueError("chainlend_credit_ops is empty: the early-warning digest needs a recipient")
    return list(to)


def send_digest(business_date: dt.date, mailer, recipients: list[str], warehouse: Warehouse | None = None) -> dict:
    """The day's digest to credit operations, once per business date (recorded in ``alerts``)."""
    w = warehouse or Warehouse.from_conn()
    t = w.lending
    a = w.alerts
    key = f"ew.{business_date:%Y%m%d}"
    with w.engine.connect() as conn:
        if conn.execute(sa.select(a.c.batch_id).where(a.c.batch_id == key)).first():
            return {"sent": False, "reason": "already sent for this business date"}
        wl = pd.read_sql(sa.select(t["watchlist"]).where(t["watchlist"].c.as_of == business_date), conn)
        sig = pd.read_sql(sa.select(t["ew_signals"]).where(t["ew_signals"].c.as_of == business_date), conn)
    moved = wl[wl.change.isin(["new", "escalated"])].sort_values(["level", "borrower_type", "borrower_id"])
    order = {"red": 0, "orange": 1, "yellow": 2, "green": 3}
    moved = moved.iloc[np.argsort(moved.level.map(order).to_numpy(), kind="stable")]
    counts = wl[wl.level != "green"].level.value_counts()
    subject = (f"[chainlend] early warning {business_date}: {int((moved.change == 'new').sum())} new, "
               f"{int((moved.change == 'escalated').sum())} escalated, {int(counts.get('red', 0))} red")
    rows = []
    for r in moved.itertuples():
        fired = sig[(sig.borrower_type == r.borrower_type) & (sig.borrower_id == r.borrower_id)]
        detail = "<br>".join(html.escape(f"{s.rule} ({s.level}): {s.detail or ''}") for s in fired.itertuples())
        rows.append(f"<tr><td>{r.borrower_type}</td><td>{html.escape(r.borrower_id)}</td>"
                    f"<td>{r.previous_level} → <b>{r.level}</b></td><td>{r.change}</td><td>{detail}</td>"
                    f"<td>{html.escape(r.actions)}</td></tr>")
    table = ("<table border='1' cellpadding='4'><tr><th>type</th><th>borrower</th>"
             "<th>level</th><th>change</th><th>rules fired</th><th>actions</th></tr>" + "".join(rows) + "</table>"
             if rows else "<p>No new or escalated names today.</p>")
    body = (f"<p>Post-loan early warning for business date <b>{business_date}</b>: watchlist "
            + ", ".join(f"{lv} {int(counts.get(lv, 0))}" for lv in ("red", "orange", "yellow"))
            + ". Red freezes new drawdowns (approval declines, disbursement holds); orange cuts the limit "
              "and asks for a site visit.</p>" + table)
    mailer.send(recipients, subject, body)
    with w.engine.begin() as conn:
        conn.execute(a.insert(), [{"batch_id": key, "kind": "ew_digest", "subject": subject,
                                   "recipients": ",".join(recipients), "sent_at": _now()}])
    return {"sent": True, "subject": subject, "names": int(len(moved))}


# --------------------------------------------------------------------------------------------
# model monitoring


def _matured_labels(frames: dict, as_of: pd.Timestamp) -> pd.Series:
    """bad (1/0) of loans whose due date + grace has passed by ``as_of``, by application id."""
    from features.definitions import DEALER_BAD_DPD, DEALER_GRACE_DAYS

    apps = frames["dealer.loan_applications"]
    apps = apps[(apps.updated_at < as_of) & (apps.applied_at < as_of)]
    due = apps.applied_at.dt.normalize() + pd.to_timedelta(apps.term_days, unit="D")
    horizon = due + pd.Timedelta(days=max(DEALER_GRACE_DAYS, DEALER_BAD_DPD))
    matured = apps[horizon < as_of]
    rep = frames["dealer.loan_repayments"]
    rep = rep[(rep.updated_at < as_of) & (rep.paid_at < as_of)]
    first_paid = rep.groupby("application_id").paid_at.min()
    paid = matured.application_id.map(first_paid)
    mdue = due[matured.index]
    bad = paid.isna() | (paid >= mdue + pd.Timedelta(days=DEALER_BAD_DPD))
    return pd.Series(bad.astype(int).to_numpy(), index=matured.application_id.to_numpy())


def _current_population(family: str, frames: dict, as_of: dt.date) -> pd.DataFrame:
    """The features of the population the ``family`` champion scores now."""
    from features.definitions import feature_names

    if family == "post_loan_behaviour":
        from features.post_loan import post_loan_features

        loans = _live_loans(frames, as_of)
        feats = post_loan_features(frames, pd.DataFrame({"application_id": loans.application_id.to_numpy(),
                                                         "as_of": pd.Timestamp(as_of)}), indexed=False)
        return feats[feature_names(family)]
    return _population_features(family, frames, as_of)


def _past_scores(family: str, w: Warehouse, among: pd.Index | None = None) -> pd.Series:
    """The scores the family gave before, by application id (matched to matured labels for AUC);
    the behaviour scores of the loans ``among`` only (see :func:`_first_behaviour_scores`)."""
    if family == "dealer_pd":
        ld = w.lending["loan_decisions"]
        return w.read_query(sa.select(ld.c.application_id, ld.c.pd)).set_index("application_id").pd
    if family == "post_loan_behaviour":
        return _first_behaviour_scores(w, among)
    return pd.Series(dtype=float)  # supplier labels mature after the 12-month horizon


def _first_behaviour_scores(w: Warehouse, among: pd.Index | None = None) -> pd.Series:
    """The earliest behaviour score of each loan, by application id; ``among``: of those loans
    only (the matured ones: the history holds a score per loan and day, most of them of loans
    whose label has not matured yet, and ordering them all by date was most of the time)."""
    from features.frames import positions

    bs = w.lending["behaviour_scores"]
    past = w.read_query(sa.select(bs.c.application_id, bs.c.as_of, bs.c.pd))
    if among is not None:
        past = past[positions(among, past.application_id) >= 0]
    # as_of: datetime.date objects; sorted as datetime64, ~30x faster
    return past.iloc[np.argsort(pd.to_datetime(past.as_of).to_numpy(), kind="stable")].groupby(
        "application_id").pd.first()


def retrain_thresholds(environ: dict[str, str] | None = None) -> tuple[float, int]:
    """(score PSI above which a retrain is requested, cooldown days): ``CHAINLEND_RETRAIN_SCORE_PSI``
    (default 0.25, the significant band) and ``CHAINLEND_RETRAIN_COOLDOWN_DAYS`` (default 14)."""
    import os

    from models.metrics import PSI_SIGNIFICANT

    env = os.environ if environ is None else environ
    try:
        psi_limit = float(env.get("CHAINLEND_RETRAIN_SCORE_PSI", PSI_SIGNIFICANT))
        cooldown = int(env.get("CHAINLEND_RETRAIN_COOLDOWN_DAYS", RETRAIN_COOLDOWN_DAYS))
    except ValueError as exc:
        raise ValueError(f"CHAINLEND_RETRAIN_SCORE_PSI must be a number and CHAINLEND_RETRAIN_COOLDOWN_DAYS an "
                         f"integer: {exc}") from exc
    if psi_limit < 0 or cooldown < 0:
        raise ValueError(f"retrain thresholds must be >= 0, got PSI {psi_limit}, cooldown {cooldown} days")
    return psi_limit, cooldown


def monitor_models(business_date: dt.date, warehouse: Warehouse | None = None,
                   behaviour_file: str | None = None, population_files: dict | None = None) -> dict:
    """PSI of score and features against each champion's training window; matured AUC; retrain.

    ``behaviour_file``: the day's file of :func:`early_warning` (its ``behaviour_file``): the
    ``post_loan_behaviour`` population's features and PDs are taken from it instead of being
    computed again (without it, they are computed here). ``population_files`` (early_warning's
    ``population_files``): likewise the dealer_pd and supplier_pd populations' features and the
    matured labels; with both files the published tables are not read here at all."""
    from features.dealer import shared_loans

    with shared_loans():  # the loan book of the frames is built once for every family
        return _monitor_models(business_date, warehouse, behaviour_file, population_files)


class _LazyFrames:
    """The published tables of :func:`_read_frames`, read on first use (not at all when the
    side files of early_warning hold everything)."""

    def __init__(self, w: Warehouse):
        self._w, self._frames = w, None

    def get(self) -> dict:
        if self._frames is None:
            self._frames = _read_frames(self._w)
        return self._frames


def _monitor_models(business_date: dt.date, warehouse: Warehouse | None, behaviour_file: str | None,
                    population_files: dict | None) -> dict:
    from chainlend import model_ops
    from features.definitions import feature_names
    from models import metrics as m

    w = warehouse or Warehouse.from_conn()
    w.metadata.create_all(w.engine, checkfirst=True)
    as_of = business_date + dt.timedelta(days=1)
    frames = _LazyFrames(w)
    populations = _read_populations(population_files) if population_files is not None else None
    labels = (populations.labels if populations is not None
              else _matured_labels(frames.get(), pd.Timestamp(as_of)))
    # the past scores (reads of the warehouse in the Arrow reader process) are read while the
    # champions are loaded and the populations scored
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="monitor-past-scores") as pool:
        past = {family: pool.submit(_past_scores, family, w, labels.index) for family in FAMILIES}
        reg = model_ops.registry()
        psi_limit, cooldown = retrain_thresholds()
        rows, summary, retrain = [], {}, []
        for family in FAMILIES:
            try:
                version, model = champion(family)
            except LendingOpsError as exc:
                summary[family] = {"status": str(exc)}
                continue
            tags = reg.tags(family, version)
            window = json.loads(tags["data_window"])["train"]
            base = pd.read_parquet(tags["dataset_path"])
            d = pd.to_datetime(base[tags.get("split_on", "obs_date")])
            base = base[(d >= pd.Timestamp(window["start"])) & (d <= pd.Timestamp(window["end"]))]
            if len(base) > BASELINE_SAMPLE:
                base = base.sample(BASELINE_SAMPLE, random_state=0)
            names = json.loads(tags["features"])  # the champion's own columns (an older version may have fewer)
            shared = (_read_behaviour(behaviour_file, str(version))
                      if family == "post_loan_behaviour" and behaviour_file is not None else None)
            if shared is not None:
                current = shared.features
            elif populations is not None and family in populations.features:
                current = populations.features[family]
            else:
                current = _current_population(family, frames.get(), as_of)
            past_scores = past[family].result()  # matched to the matured labels only
            Xb = base[names].astype("float64").reset_index(drop=True)
            Xc = current[names].astype("float64").reset_index(drop=True)
            if Xc.empty:
                summary[family] = {"status": "no population to score"}
                continue
            # early_warning scored the book with the champion on feature_names(family): the same PDs
            same = shared is not None and names == list(feature_names(family))
            score_psi = m.psi(_pd_only(model, Xb), shared.pds if same else _pd_only(model, Xc))
            fpsi = m.feature_psi(Xb, Xc, names)
            bands = fpsi.map(m.psi_band)
            matured = past_scores.index.intersection(labels.index)
            y = labels[matured]
            auc = None
            if int(y.sum()) >= MIN_MATURED_BADS and int((1 - y).sum()) >= MIN_MATURED_BADS:
                auc = float(m.auc(y.to_numpy(), past_scores[matured].to_numpy()))
            oot_auc = float(json.loads(tags["oot_metrics"])["auc"])
            reasons = []
            if score_psi > psi_limit:
                reasons.append(f"score PSI {score_psi:.3f} > {psi_limit}")
            if auc is not None and auc < oot_auc - RETRAIN_AUC_DROP:
                reasons.append(f"matured AUC {auc:.3f} < OOT AUC {oot_auc:.3f} − {RETRAIN_AUC_DROP}")
            newest = reg.version(family, "challenger") or version
            trained_on = dt.date.fromisoformat(reg.tags(family, newest)["as_of"][:10])
            if reasons and (business_date - trained_on).days < cooldown:
                # a version trained on recent data exists: the drift is recorded, the request waits
                reasons = [f"{r} (no request: v{newest} was trained on data to {trained_on}, "
                           f"within {cooldown} days)" for r in reasons]
                requested = False
            else:
                requested = bool(reasons)
            if requested:
                retrain.append(family)
            rows.append({"family": family, "metric": "score_psi", "model_version": str(version), "value": score_psi,
                         "band": m.psi_band(score_psi), "detail": None})
            rows += [{"family": family, "metric": f"psi:{n}", "model_version": str(version), "value": float(v),
                      "band": bands[n], "detail": None} for n, v in fpsi.items()]
            rows.append({"family": family, "metric": "auc_matured", "model_version": str(version), "value": auc,
                         "band": None, "detail": f"{len(matured)} matured loans, {int(y.sum())} bad" if len(matured)
                         else "labels not matured yet"})
            rows.append({"family": family, "metric": "retrain", "model_version": str(version),
                         "value": float(requested), "band": None, "detail": "; ".join(reasons) or None})
            summary[family] = {"version": str(version), "score_psi": round(score_psi, 4), "band": m.psi_band(score_psi),
                               "features_significant": int((bands == "significant").sum()),
                               "features_investigate": int((bands == "investigate").sum()),
                               "auc_matured": None if auc is None else round(auc, 4), "drift": reasons,
                               "retrain_requested": requested}
            _log_monitoring_run(family, str(version), business_date, score_psi, fpsi, auc)
    frame = pd.DataFrame(rows, columns=["family", "metric", "model_version", "value", "band", "detail"])
    with w.engine.begin() as conn:
        _replace_partition(conn, w.lending["model_monitoring"], business_date, frame.assign(as_of=business_date))
    return {"as_of": business_date.isoformat(), "families": summary, "retrain": retrain}


def _log_monitoring_run(family: str, version: str, business_date: dt.date, score_psi: float, fpsi: pd.Series,
                        auc: float | None) -> None:
    """An MLflow run in experiment ``monitoring`` with the PSI metrics and a PSI bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chainlend import model_ops

    mlf = model_ops.client()
    exp = model_ops.experiment_id(mlf, "monitoring")
    run = mlf.create_run(exp, run_name=f"{family} v{version} {business_date}",
                         tags={"family": family, "model_version": version, "as_of": business_date.isoformat()})
    rid = run.info.run_id
    mlf.log_metric(rid, "score_psi", score_psi)
    if auc is not None:
        mlf.log_metric(rid, "auc_matured", auc)
    top = fpsi.sort_values(ascending=True).tail(20)
    fig, ax = plt.subplots(figsize=(7, max(3, 0.3 * len(top))))
    ax.barh(top.index, top.to_numpy(), color=["#c0392b" if v > 0.25 else "#e67e22" if v > 0.10 else "#27ae60"
                                              for v in top.to_numpy()])
    for x in (0.10, 0.25):
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(f"{family} v{version}: feature PSI vs training window ({business_date}); score PSI {score_psi:.3f}")
    ax.set_xlabel("PSI")
    fig.tight_layout()
    mlf.log_figure(rid, fig, "psi_features.png")
    plt.close(fig)
    mlf.set_terminated(rid)
