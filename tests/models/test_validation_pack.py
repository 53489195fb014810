"""Plots write real PNGs; the validation pack renders every section and escapes its text."""

from __future__ import annotations

import dataclasses
import html
import re

import numpy as np
import pandas as pd
import pytest

from models import metrics, plots
from models.metrics import MetricError
from models.validation_pack import PackError, ValidationPack, render_html, render_markdown, write_pack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = [
    "Data window",
    "Features",
    "Out-of-time results per candidate",
    "Chosen model",
    "Stability by period",
    "Population stability (PSI)",
    "Benchmark against the WOE scorecard",
    "Oracle AUC",
    "Promotion gate",
    "Monitoring plan",
]


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(7)
    n = 3_000
    true_pd = 1 / (1 + np.exp(-(rng.normal(size=n) * 1.2 - 2.5)))
    y = (rng.uniform(size=n) < true_pd).astype(int)
    p = np.clip(true_pd * np.exp(rng.normal(0, 0.3, size=n)), 0, 1)
    period = np.array(["2024-10", "2024-11", "2024-12"])[np.arange(n) % 3]
    return y, p, true_pd, period


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 1_000
    assert data.startswith(PNG_MAGIC)


def test_plots_write_non_empty_pngs(tmp_path, scored):
    y, p, _, _ = scored
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(30)]
    written = [
        plots.roc_ks(y, p, tmp_path / "roc_ks.png"),
        plots.calibration(y, p, tmp_path / "calibration.png"),
        plots.psi_bars(pd.Series({"score": 0.02, "dpd_max": 0.14, "stock_age": 0.31}), tmp_path / "psi.png"),
        plots.shap_summary(
            rng.normal(size=(200, 31)), names, tmp_path / "nested" / "shap.png", max_features=10
        ),
    ]
    for path in written:
        assert path.parent.is_dir()
        assert_png(path)


def test_plots_close_their_figures(tmp_path, scored):
    import matplotlib
    import matplotlib.pyplot as plt

    y, p, _, _ = scored
    assert matplotlib.get_backend().lower() == "agg"
    before = len(plt.get_fignums())
    plots.roc_ks(y, p, tmp_path / "a.png")
    plots.calibration(y, p, tmp_path / "b.png")
    assert len(plt.get_fignums()) == before


def test_plots_reject_bad_inputs(tmp_path):
    with pytest.raises(MetricError, match="single class"):
        plots.roc_ks([0, 0], [0.1, 0.2], tmp_path / "x.png")
    with pytest.raises(MetricError, match="empty"):
        plots.psi_bars(pd.Series(dtype=float), tmp_path / "x.png")
    with pytest.raises(MetricError, match="columns for 2 feature"):
        plots.shap_summary(np.zeros((3, 5)), ["a", "b"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.fixture
def pack(tmp_path, scored) -> ValidationPack:
    y, p, true_pd, period = scored
    scorecard = np.clip(p + np.random.default_rng(1).normal(0, 0.05, size=len(p)), 0, 1)
    candidates = {
        # as read back from MLflow, where every metric is a float
        "lightgbm": {k: float(v) for k, v in metrics.evaluate(y, p).as_dict().items()},
        "xgboost": metrics.evaluate(y, np.clip(p * 1.1, 0, 1)).as_dict(),
    }
    development = np.random.default_rng(2).permutation(p)
    fpsi = pd.Series({"dealer_sales_90d": 0.03, "stock_age_days": 0.17, "<script>alert(1)</script>": 0.4})
    plot_files = {
        "roc_ks": plots.roc_ks(y, p, tmp_path / "roc_ks.png").name,
        "calibration": plots.calibration(y, p, tmp_path / "calibration.png").name,
        "psi": plots.psi_bars(fpsi, tmp_path / "psi.png").name,
    }
    return ValidationPack(
        family="dealer_pd",
        version="7",
        model_name="dealer_order_loan_pd",
        algorithm="lightgbm",
        data_window={
            "train": {"start": "2023-01-01", "end": "2024-06-30", "rows": 20_000, "bads": 900},
            "validation": {"start": "2024-07-01", "end": "2024-09-30", "rows": 4_000, "bads": 190},
            "oot": {"start": "2024-10-01", "end": "2024-12-31", "rows": len(y), "bads": int(y.sum())},
        },
        features=[
            ("dealer_sales_90d", "Vehicles sold in the last 90 days", "count", "dealer platform"),
            ("stock_age_days", "Mean age of the financed stock <b>bold</b> & co", "days", "risk | data"),
        ],
        candidates=candidates,
        chosen="lightgbm",
        oot=candidates["lightgbm"],
        stability=metrics.stability(y, p, period),
        feature_psi=fpsi,
        score_psi=metrics.psi(development, p),
        scorecard_auc=metrics.auc(y, scorecard),
        oracle_auc=metrics.auc(y, true_pd),
        gate={"decision": "promote", "reasons": ["OOT AUC within margin of champion", "score PSI < 0.25"]},
        monitoring_plan=[
            "Monthly score PSI; investigate at 0.10, retrain at 0.25",
            "OOT AUC once labels arrive",
        ],
        plots=plot_files,
        parameters={"num_leaves": 31, "learning_rate": 0.05},
        git_commit="5b25c55",
    )


def test_markdown_has_every_section(pack):
    text = render_markdown(pack)
    assert text.startswith("# Validation pack: dealer_order_loan_pd (version 7)")
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    for section in SECTIONS:
        assert section in headings
    assert "| lightgbm (chosen) | 3,000 |" in text
    assert "risk \\| data" in text  # a pipe inside a cell does not break the table
    assert "![roc_ks](roc_ks.png)" in text
    assert "Decision: promote" in text
    assert "significant" in text and "investigate" in text and "stable" in text
    assert f"{pack.oracle_auc:.4f}" in text and f"{pack.oot['auc']:.4f}" in text
    assert f"{pack.scorecard_auc:.4f}" in text
    for month in ("2024-10", "2024-11", "2024-12"):
        assert month in text


def test_html_has_every_section_and_escapes_text(pack, tmp_path):
    page = render_html(pack)
    assert page.startswith("<!DOCTYPE html>")
    headings = [html.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]
    for section in SECTIONS:
        assert section in headings
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page
    assert "<link" not in page and "http" not in page  # self-contained
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(sources) == sorted(pack.plots.values())
    for src in sources:
        assert (tmp_path / src).is_file()

    paths = write_pack(pack, tmp_path)
    assert paths["html"].read_text(encoding="utf-8") == page
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(pack)


def test_missing_oracle_gate_and_scorecard_are_stated(pack):
    unavailable = dataclasses.replace(pack, oracle_auc=None, gate=None, version=None, scorecard_auc=None)
    text = render_markdown(unavailable)
    assert "Oracle AUC unavailable" in text
    assert "No WOE scorecard benchmark" in text
    assert "has not been evaluated" in text
    assert "(unregistered)" in text
    assert "Oracle AUC unavailable" in render_html(unavailable)


def test_oracle_is_labelled_conditional_with_the_unconditional_one_beside_it(pack):
    both = dataclasses.replace(pack, oracle_auc_unconditional=0.61)
    text = render_markdown(both)
    assert f"| conditional oracle: true PD given the simulator state at the snapshot | {pack.oracle_auc:.4f} |" in text
    assert "| unconditional oracle: true PD at origination (not a ceiling after it) | 0.6100 |" in text
    unavailable = dataclasses.replace(both, oracle_auc=None, oracle_note="Conditional oracle unavailable: too long")
    text = render_markdown(unavailable)
    assert "Conditional oracle unavailable: too long" in text and "| 0.6100 |" in text


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"chosen": "catboost"}, "not among the candidates"),
        ({"data_window": {"train": {}, "validation": {}}}, "lacks the samples"),
        ({"oot": {"ks": 0.3}}, "'auc'"),
        ({"gate": {"decision": "promote"}}, "'reasons'"),
        ({"plots": {"roc": "../elsewhere.png"}}, "relative"),
        ({"plots": {"roc": "/tmp/roc.png"}}, "relative"),
        ({"features": [("only", "three", "fields")]}, "name, description, unit, owner"),
    ],
)
def test_inconsistent_pack_is_rejected(pack, change, match):
    with pytest.raises(PackError, match=match):
        dataclasses.replace(pack, **change)


def test_write_pack_refuses_missing_plots(pack, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(PackError, match="not in"):
        write_pack(pack, other)


def test_plots_are_placed_by_name_or_file_stem(pack, tmp_path):
    plots.shap_summary(np.ones((4, 2)), ["a", "b"], tmp_path / "shap_summary.png")
    plots.psi_bars(pd.Series({"a": 0.3}), tmp_path / "lift.png")
    named = dataclasses.replace(
        pack,
        plots={
            "ROC and KS": "roc_ks.png",
            "Calibration": "calibration.png",
            "Feature PSI": "psi.png",
            "SHAP summary": "shap_summary.png",
            "Lift": "lift.png",
        },
    )
    text = render_markdown(named)
    sections = dict(re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S))
    assert "![ROC and KS](roc_ks.png)" in sections["Chosen model"]
    assert "![SHAP summary](shap_summary.png)" in sections["Chosen model"]
    assert "![Feature PSI](psi.png)" in sections["Population stability (PSI)"]
    assert "![Lift](lift.png)" in sections["Other plots"]
    assert sorted(re.findall(r'<img src="([^"]+)"', render_html(named))) == sorted(named.plots.values())


def test_stability_read_back_from_csv_renders_its_periods(pack, tmp_path):
    pack.stability.to_csv(tmp_path / "stability.csv", index=False)
    round_trip = dataclasses.replace(pack, stability=pd.read_csv(tmp_path / "stability.csv"))
    text = render_markdown(round_trip)
    assert "| period | n | bads |" in text
    assert "| 2024-10 |" in text


def test_validation_held_out_by_entity_and_unseen_oot_rows_are_stated(pack):
    window = {k: dict(v) for k, v in pack.data_window.items()}
    window["train"].update(entities=520, held_out_by="supplier_id")
    window["validation"].update(entities=180, held_out_by="supplier_id")
    grouped = dataclasses.replace(pack, data_window=window, oot_unseen_rows={"rows": 2017, "bads": 18},
                                  oot_unseen={pack.chosen: {"auc": 0.8179, "ks": 0.61}, "scorecard": {"auc": 0.8022}})
    text = render_markdown(grouped)
    assert "Validation is held out by supplier_id" in text and "sends 180 of them to validation and 520" in text
    assert "(2017 rows, 18 bads)" in text
    assert f"| {pack.chosen} (chosen) | 0.8179 |" in text and "| scorecard | 0.8022 |" in text
    plain = render_markdown(pack)
    assert "held out by" not in plain and "no bad training row" not in plain


def test_the_reason_for_the_choice_is_stated(pack):
    why = "scorecard chosen: catboost has the best validation AUC ..., +0.0012 against the scorecard's 0.7049"
    text = render_markdown(dataclasses.replace(pack, choice=why))
    assert f"Choice on the validation sample: {why}." in text
    assert "Choice on the validation sample" not in render_markdown(pack)
    assert html.escape(why) in render_html(dataclasses.replace(pack, choice=why))
