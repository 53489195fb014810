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


def ingest_section(warehouse: Warehouse) -> dict:
    """``{source: {table: {"extracted", "accepted", "quarantined", "batches", "blocked"}}}``.

    ``accepted`` counts landed rows and ``quarantined`` is 0 until the data-quality gate
    (issue 3) splits batches; ``blocked`` lists batches refused for schema drift.
    """
    batches = warehouse.read_batches()
    section: dict = {}
    for source, tables in TABLES.items():
        section[source] = {}
        for contract in tables:
            mine = batches[(batches.source == source) & (batches.table_name == contract.name)]
            landed = mine[mine.status == LANDED]
            extracted = int(landed.rows_extracted.sum())
            section[source][contract.name] = {
                "extracted": extracted,
                "accepted": extracted,
                "quarantined": 0,
                "batches": int(len(landed)),
                "blocked": [
                    {"business_date": str(r.business_date), "status": r.status, "detail": r.detail}
                    for r in mine[mine.status != LANDED].itertuples()
                ],
            }
    return section


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
