"""``python -m bench [--scale reference] [--only NAME …]``: run the benchmarks, write the report."""

from __future__ import annotations

import argparse
import json
import time

from chainlend import settings

BENCHES = {
    "dag_parse": "parse_bench",
    "ingest": "ingest_bench",
    "gate": "gate_bench",
    "train": "train_bench",
    "ledger": "ledger_bench",
    "monitor": "monitor_bench",
    "daily_cycle": "daily_cycle_bench",
}


def main() -> int:
    settings.apply_embedded_defaults()
    import importlib

    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--scale", default="reference", help="simulator scale for the data benchmarks")
    p.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these benchmarks")
    args = p.parse_args()
    names = [n for n in BENCHES if not args.only or n in args.only]
    benches = {n: importlib.import_module(f"bench.{BENCHES[n]}").run for n in names}

    out = settings.var_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for name, fn in benches.items():
        t0 = time.perf_counter()
        print(f"[bench] {name} …", flush=True)
        report[name] = fn(scale=args.scale, workdir=out / f"work-{name}")
        report[name]["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report[name], indent=2), flush=True)
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True))
    (out / "report.md").write_text(render(report))
    print(f"[bench] report: {report_path} and {out / 'report.md'}")
    return 0


def render(report: dict) -> str:
    lines = ["# chainlend benchmark report", "",
             "Ratios are ours ÷ the native baseline, measured in the same run (lower is better for "
             "time ratios).", ""]
    for name, section in report.items():
        lines += [f"## {name}", ""]
        if "summary" in section:
            lines += [section["summary"], ""]
        lines += ["```json", json.dumps(section, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
