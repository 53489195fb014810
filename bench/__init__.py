"""Benchmarks (``make bench``): ratios against named native baselines, measured in one run.

Machines are shared and noisy, so every figure is reported with its baseline from the same run
and repeated; the report is ``var/bench/report.json`` plus a readable ``report.md``.
"""
