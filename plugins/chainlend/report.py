"""The run report: ``report.json`` and a readable ``report.md`` beside it.

Sections are added by the stages that own them; ``ingest`` is built from the warehouse's batch
log. See the README for every key.
"""

from __future__ import annotations

import json
from pathlib import Path

from chainlend.ingest import LANDED
from chainlend.systems import Warehouse
from sources.contract import TABLES
from sources.contract import table as contract_table


def ingest_section(warehouse: Warehouse) -> dict:
    """``{source: {table: {"extracted", "accepted", "quarantined", "batches", "blocked"}}}``.

    ``extracted`` counts rows landed from the source, ``accepted`` rows the quality gate
    published, ``quarantined`` rows it held back (a blocked batch quarantines all its rows);
    ``blocked`` lists the batches that did not publish, with the failing checks.
    """
    batches = warehouse.read_batches()
    gates = warehouse.read_table(warehouse.gate_results)
    section: dict = {}
    for source, tables in TABLES.items():
        section[source] = {}
        for contract in tables:
            mine = batches[(batches.source == source) & (batches.table_name == contract.name)]
            landed = mine[mine.status == LANDED]
            gated = gates[(gates.source == source) & (gates.table_name == contract.name)]
            section[source][contract.name] = {
                "extracted": int(landed.rows_extracted.sum()),
                "accepted": int(gated.published.sum()),
                "quarantined": int(gated.quarantined.sum()),
                "batches": int(len(landed)),
                "blocked": [
                    {"business_date": str(r.business_date),
                     "detail": "; ".join(f"{f['check']}: {f['detail']}" for f in json.loads(r.failures)
                                         if f["severity"] == "batch")}
                    for r in gated[gated.blocked.astype(bool)].itertuples()
                ],
            }
    return section


def quality_section(warehouse: Warehouse, data_docs_index: str | None) -> dict:
    """Batches validated and blocked, rows quarantined (per table and reason), alerts sent."""
    gates = warehouse.read_table(warehouse.gate_results)
    q = warehouse.read_table(warehouse.quarantine)
    per_table: dict[str, dict] = {}
    for r in q.itertuples():
        entry = per_table.setdefault(f"{r.source}.{r.table_name}", {"rows": 0, "reasons": {}})
        entry["rows"] += 1
        for reason in r.reasons.split(";"):
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
    reasons: dict[str, int] = {}
    for entry in per_table.values():
        for reason, n in entry["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    return {
        "batches_validated": int(len(gates)),
        "batches_blocked": int(gates.blocked.astype(bool).sum()),
        "rows_quarantined": int(len(q)),
        "rows_quarantined_open": int((q.status == "open").sum()),
        "rows_replayed": int((q.status == "resolved").sum()),
        "rows_quarantined_by_table": dict(sorted(per_table.items())),
        "rows_quarantined_by_reason": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "alerts_sent": int(len(warehouse.read_table(warehouse.alerts))),
        "data_docs_index": data_docs_index,
    }


def models_section() -> dict:
    """``{family: {"champion_version", "oot_auc", "ks", "psi", "oracle_auc", "scorecard_auc", ...}}``
    read back from the MLflow registry (the champion's version tags), so it reports what serves."""
    import json as _json

    from mlflow.exceptions import MlflowException

    from chainlend import model_ops
    from models.governance import CHALLENGER, CHAMPION

    reg = model_ops.registry()
    section: dict = {}
    for fam in model_ops.FAMILY_NAMES:
        try:
            champion = reg.version(fam, CHAMPION)
        except MlflowException as exc:
            raise RuntimeError(f"cannot read the registry for {fam}: {exc}") from exc
        entry: dict = {"champion_version": champion, "challenger_version": reg.version(fam, CHALLENGER)}
        if champion is not None:
            tags = reg.tags(fam, champion)
            oot = _json.loads(tags["oot_metrics"])
            oracle = tags.get("oracle_auc", "")
            entry.update({
                "algorithm": tags["algorithm"], "as_of": tags["as_of"],
                "oot_auc": oot["auc"], "ks": oot["ks"], "psi": oot["score_psi"],
                "calibration_ratio": oot["calibration_ratio"],
                "oracle_auc": float(oracle) if oracle[:1].isdigit() else None,
                "scorecard_auc": float(tags["scorecard_oot_auc"]) if tags.get("scorecard_oot_auc") else None,
                "oot_window": _json.loads(tags["data_window"])["oot"],
            })
        section[fam] = entry
    return section


def approval_section(warehouse: Warehouse) -> dict:
    """``decided``, ``approved``, ``reduced``, ``review``, ``declined``, ``amount_fen`` (approved and
    reduced amounts) and ``top_reasons`` (the ten most frequent reason codes with their counts)."""
    import pandas as pd
    import sqlalchemy as sa

    d = warehouse.lending["loan_decisions"]
    with warehouse.engine.connect() as conn:
        df = pd.read_sql(sa.select(d.c.decision, d.c.amount_fen, d.c.reason_codes), conn)
    counts = df.decision.value_counts()
    reasons = pd.Series([c for codes in df.reason_codes for c in json.loads(codes)], dtype=object)
    return {
        "decided": int(len(df)),
        **{k: int(counts.get(k, 0)) for k in ("approved", "reduced", "review", "declined")},
        "amount_fen": int(df.amount_fen[df.decision.isin(["approved", "reduced"])].sum()),
        "top_reasons": {k: int(v) for k, v in reasons.value_counts().head(10).items()},
    }


def supplier_credit_section(warehouse: Warehouse) -> dict:
    """``line_offs_verified`` (events that created credits), ``line_offs_unverified`` (events in the
    exceptions table), ``allocations`` (credits), ``amount_fen``, ``suppliers_capped``."""
    import sqlalchemy as sa

    t = warehouse.lending
    c, x = t["supplier_credits"], t["line_off_exceptions"]
    with warehouse.engine.connect() as conn:
        verified = conn.execute(sa.select(sa.func.count(sa.distinct(c.c.event_id)))).scalar()
        unverified = conn.execute(sa.select(sa.func.count()).select_from(x)).scalar()
        allocations, amount = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(c.c.amount_fen), 0))
                                           ).one()
        capped = conn.execute(sa.select(sa.func.count(sa.distinct(c.c.supplier_id))).where(c.c.capped_fen > 0)).scalar()
        by_reason = dict(conn.execute(sa.select(x.c.reason, sa.func.count()).group_by(x.c.reason)).all())
    return {"line_offs_verified": int(verified), "line_offs_unverified": int(unverified),
            "allocations": int(allocations), "amount_fen": int(amount), "suppliers_capped": int(capped),
            "exceptions_by_reason": {k: int(v) for k, v in sorted(by_reason.items())}}


def disbursement_section(warehouse: Warehouse, rail_totals: dict | None = None) -> dict:
    """``instructions``, ``amount_fen``, ``postings`` (legs: two per ledger entry), ``balanced``
    (every ledger entry's debits equal its credits, summed over the ``ledger_postings`` view),
    ``reconciled`` (a full reconciliation now: decisions = instructions = postings = outbox),
    ``held`` per reason, ``outbox`` per status, ``repayments_posted`` and the rail's own count of
    payments."""
    import datetime as dt

    import sqlalchemy as sa

    from chainlend.disbursement_ops import EVERYTHING, reconcile_ledger
    from lending.disbursement import ReconciliationError

    t = warehouse.lending
    i, e, p = t["payment_instructions"], t["ledger_entries"], t["ledger_postings"]
    h, o = t["payment_holds"], t["payment_outbox"]
    with warehouse.engine.connect() as conn:
        n, amount = conn.execute(sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(i.c.amount_fen), 0))).one()
        postings = conn.execute(sa.select(sa.func.count()).select_from(p)).scalar()
        unbalanced = conn.execute(sa.select(sa.func.count()).select_from(
            sa.select(p.c.entry_id).group_by(p.c.entry_id).having(
                sa.func.sum(p.c.debit_fen) != sa.func.sum(p.c.credit_fen)).subquery())).scalar()
        held = dict(conn.execute(sa.select(h.c.reason, sa.func.count()).group_by(h.c.reason)).all())
        outbox = dict(conn.execute(sa.select(o.c.status, sa.func.count()).group_by(o.c.status)).all())
        repaid = conn.execute(sa.select(sa.func.count()).where(e.c.entry_id.like("repay:%"))).scalar()
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    try:
        reconcile_ledger(dt.datetime(9999, 12, 31), now, warehouse, scope=EVERYTHING)
        reconciled, differences = True, []
    except ReconciliationError as exc:
        reconciled, differences = False, [str(exc)]
    return {"instructions": int(n), "amount_fen": int(amount), "postings": int(postings),
            "balanced": unbalanced == 0, "reconciled": reconciled, "differences": differences,
            "held": {k: int(v) for k, v in sorted(held.items())},
            "outbox": {k: int(v) for k, v in sorted(outbox.items())}, "repayments_posted": int(repaid),
            "rail": rail_totals}


def early_warning_section(warehouse: Warehouse) -> dict:
    """The latest run's ``levels`` (borrowers per level) and ``rules_fired`` (borrowers per rule),
    ``alerts_sent`` (digest e-mails), ``retrains_triggered`` (monitoring runs that requested a
    retrain), ``watchlist_days`` and the latest ``model_monitoring`` summary per family."""
    import pandas as pd
    import sqlalchemy as sa

    t = warehouse.lending
    wl, sig, mm, ctl = t["watchlist"], t["ew_signals"], t["model_monitoring"], t["credit_controls"]
    with warehouse.engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(wl.c.as_of))).scalar()
        last_sig = conn.execute(sa.select(sa.func.max(sig.c.as_of))).scalar()
        levels = dict(conn.execute(sa.select(ctl.c.level, sa.func.count()).group_by(ctl.c.level)).all())
        fired = dict(conn.execute(sa.select(sig.c.rule, sa.func.count()).where(sig.c.as_of == last_sig)
                                  .group_by(sig.c.rule)).all()) if last_sig else {}
        fired_total = dict(conn.execute(sa.select(sig.c.rule, sa.func.count()).group_by(sig.c.rule)).all())
        digests = conn.execute(sa.select(sa.func.count()).select_from(warehouse.alerts).where(
            warehouse.alerts.c.kind == "ew_digest")).scalar()
        retrains = conn.execute(sa.select(sa.func.count(sa.distinct(mm.c.as_of))).where(
            mm.c.metric == "retrain", mm.c.value > 0)).scalar()
        days = conn.execute(sa.select(sa.func.count(sa.distinct(sig.c.as_of)))).scalar()
        mon = pd.read_sql(sa.select(mm).where(mm.c.as_of == sa.select(sa.func.max(mm.c.as_of)).scalar_subquery(),
                                              mm.c.metric == "score_psi"), conn)
        dealers = conn.execute(sa.select(sa.func.count()).select_from(
            warehouse.published(contract_table("dealer", "dealers")))).scalar()
        suppliers = conn.execute(sa.select(sa.func.count()).select_from(
            warehouse.published(contract_table("erp", "suppliers")))).scalar()
    flagged = sum(levels.values())
    return {
        "as_of": str(last) if last else None,
        "levels": {"green": int(dealers + suppliers - flagged),
                   **{lv: int(levels.get(lv, 0)) for lv in ("yellow", "orange", "red")}},
        "rules_fired": {k: int(v) for k, v in sorted(fired.items())},
        "rules_fired_all_days": {k: int(v) for k, v in sorted(fired_total.items())},
        "alerts_sent": int(digests), "retrains_triggered": int(retrains), "monitoring_days": int(days),
        "model_monitoring": {r.family: {"score_psi": r.value, "band": r.band} for r in mon.itertuples()},
    }


def write_report(folder: Path, report: dict) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    md_path = folder / "report.md"
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def render_markdown(report: dict) -> str:
    lines = ["# chainlend run report", ""]
    meta = report.get("run", {})
    if meta:
        lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    quality = report.get("quality", {})
    if quality:
        lines += ["## Data quality", "",
                  f"- batches validated: {quality['batches_validated']}, blocked: {quality['batches_blocked']}",
                  f"- rows quarantined: {quality['rows_quarantined']:,} (still open: "
                  f"{quality['rows_quarantined_open']:,}, replayed: {quality['rows_replayed']:,})",
                  f"- alerts sent: {quality['alerts_sent']}",
                  f"- Data Docs: {quality['data_docs_index']}", "",
                  "| reason | rows |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in quality["rows_quarantined_by_reason"].items()]
        lines.append("")
    models = report.get("models", {})
    if models:
        lines += ["## Models (champions)", "",
                  "| family | version | algorithm | OOT AUC | KS | PSI | oracle AUC | scorecard AUC | OOT rows (bad) |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        for fam, e in models.items():
            if e.get("champion_version") is None:
                lines.append(f"| {fam} | none | | | | | | | |")
                continue
            w = e["oot_window"]
            lines.append(f"| {fam} | {e['champion_version']} | {e['algorithm']} | {e['oot_auc']:.4f} | "
                         f"{e['ks']:.4f} | {e['psi']:.4f} | {_fmt(e['oracle_auc'])} | {_fmt(e['scorecard_auc'])} | "
                         f"{w['rows']:,} ({w['bads']:,}) {w['start']}..{w['end']} |")
        lines.append("")
    approval = report.get("approval")
    if approval:
        lines += ["## Order-loan approval", "",
                  f"- decided {approval['decided']:,}: approved {approval['approved']:,}, reduced "
                  f"{approval['reduced']:,}, review {approval['review']:,}, declined {approval['declined']:,}",
                  f"- amount approved: {approval['amount_fen'] / 100:,.2f} CNY",
                  "- top reasons: " + ", ".join(f"{k} ({v:,})" for k, v in approval["top_reasons"].items()), ""]
    credit = report.get("supplier_credit")
    if credit:
        lines += ["## Supplier credit", "",
                  f"- line-offs verified {credit['line_offs_verified']:,}, unverified (exceptions) "
                  f"{credit['line_offs_unverified']:,}",
                  f"- credits {credit['allocations']:,}, amount {credit['amount_fen'] / 100:,.2f} CNY, "
                  f"suppliers capped {credit['suppliers_capped']:,}", ""]
    disb = report.get("disbursement")
    if disb:
        lines += ["## Disbursement", "",
                  f"- instructions {disb['instructions']:,}, amount {disb['amount_fen'] / 100:,.2f} CNY, "
                  f"postings {disb['postings']:,}, repayments posted {disb['repayments_posted']:,}",
                  f"- balanced: {disb['balanced']}, reconciled: {disb['reconciled']}",
                  f"- held: {disb['held'] or 'none'}; outbox: {disb['outbox']}; rail: {disb['rail']}", ""]
    ew = report.get("early_warning")
    if ew:
        lines += ["## Post-loan early warning", "",
                  f"- levels on {ew['as_of']}: " + ", ".join(f"{k} {v:,}" for k, v in ew["levels"].items()),
                  f"- digests sent: {ew['alerts_sent']}, retrains triggered: {ew['retrains_triggered']}",
                  "- rules fired (latest day, borrowers): "
                  + (", ".join(f"{k} ({v:,})" for k, v in ew["rules_fired"].items()) or "none"),
                  "- score PSI vs training window: "
                  + (", ".join(f"{k} {v['score_psi']:.3f} ({v['band']})" for k, v in ew["model_monitoring"].items())
                     or "n/a"), ""]
    ingest = report.get("ingest", {})
    if ingest:
        lines += ["## Ingestion", "", "| source | table | batches | extracted | accepted | quarantined | blocked |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for source, tables in ingest.items():
            for name, t in tables.items():
                blocked = "; ".join(f"{b['business_date']}: {b['detail']}" for b in t["blocked"]) or ""
                lines.append(f"| {source} | {name} | {t['batches']} | {t['extracted']:,} | "
                             f"{t['accepted']:,} | {t['quarantined']:,} | {blocked} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
