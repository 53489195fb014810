"""train_risk_models end to end: simulated history → ingestion DAGs → training DAG under Airflow
(``dag.test()``) → a real MLflow registry (SQLite store) → the promotion gate, the audit table and
maker/checker approval through the CLI."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from sources.simulator import FaultRates, Simulator

# business days (~220 calendar days): 60 days of feature burn-in, then cohorts of 30-90 day loans
# whose 30-day grace window has closed
HISTORY = 160
START = dt.date(2025, 7, 7)
FAMILIES = ["dealer_pd", "post_loan_behaviour"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, airflow_db):
    """One simulated history, ingested, and a first training run of two families."""
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("train")
    urls = {n: f"sqlite:///{tmp / f'{n}.db'}" for n in ("erp", "dealer", "sim", "warehouse")}
    for conn_id, name in (("erp_default", "erp"), ("dealer_default", "dealer"), ("warehouse_default", "warehouse")):
        mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                  json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": urls[name]}}))
    mp.setenv("CHAINLEND_SIM_URL", urls["sim"])
    mp.setenv("CHAINLEND_MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("CHAINLEND_MLFLOW_ARTIFACT_ROOT", (tmp / "artifacts").as_uri())
    mp.setenv("CHAINLEND_MODEL_APPROVAL", "auto")
    mp.setenv("CHAINLEND_GIT_COMMIT", "test-commit")
    sim = Simulator(urls["erp"], urls["dealer"], urls["sim"])
    sim.init(seed=11, scale="small", faults=FaultRates.none(), start=START)
    (*_, last) = sim.advance(HISTORY)
    sim.dispose()

    from chainlend.runtime import load_dag, run_dag, task_states
    from chainlend.systems import Warehouse

    Warehouse.from_url(urls["warehouse"]).create_all()
    for dag_id in ("ingest_erp", "ingest_dealer"):
        states = task_states(run_dag(load_dag(dag_id), last))
        assert set(states.values()) == {"success"}, states
    dag = load_dag("train_risk_models")
    run = run_dag(dag, last, conf={"families": FAMILIES})
    yield {"dag": dag, "run": run, "states": task_states(run), "last": last, "urls": urls, "tmp": tmp}
    mp.undo()


def test_dag_registers_and_promotes_first_champions(trained):
    from chainlend import model_ops

    states = trained["states"]
    assert states["build_dataset_supplier_pd"] == "skipped"
    for fam in FAMILIES:
        assert states[f"train_{fam}"] == "success" and states[f"gate_{fam}"] == "success", states
    reg = model_ops.registry()
    audit = model_ops.audit_rows()
    for fam in FAMILIES:
        v = reg.version(fam, "champion")
        assert v == reg.version(fam, "challenger") == "1", reg.tags(fam, "1").get("gate")
        tags = reg.tags(fam, v)
        assert tags["git_commit"] == "test-commit"
        assert json.loads(tags["features"]) and json.loads(tags["params"])
        window = json.loads(tags["data_window"])
        assert window["train"]["end"] < window["validation"]["start"] <= window["validation"]["end"] \
            < window["oot"]["start"]
        assert tags["gate.outcome"] == "promoted"
        assert any(k.startswith("alias.champion.set.") for k in tags)
        rows = audit[audit.family == fam]
        assert list(zip(rows.alias, rows.action)) == [("challenger", "set"), ("champion", "set")]
        assert rows.iloc[1].actor == "gate (automatic)" and "first champion" in rows.iloc[1].reason
        oot = json.loads(tags["oot_metrics"])
        assert 0.6 < oot["auc"] <= 1.0 and float(tags["oracle_auc"]) > 0.5


def test_champion_serves_pd_in_unit_interval_with_reasons(trained):
    import mlflow.pyfunc
    import pandas as pd

    from chainlend import model_ops
    from features.definitions import feature_names

    model_ops.client()
    reg = model_ops.registry()
    tags = reg.tags("dealer_pd", reg.version("dealer_pd", "champion"))
    frame = pd.read_parquet(tags["dataset_path"]).head(500)
    model = mlflow.pyfunc.load_model("models:/dealer_pd@champion")
    out = model.predict(frame[feature_names("dealer_pd")])
    assert len(out) == 500
    assert out["pd"].between(0.0, 1.0).all() and out["pd"].nunique() > 10
    assert out["reason_1"].notna().mean() > 0.5
    assert set(out["reason_1"].dropna()) <= set(feature_names("dealer_pd"))


def test_validation_pack_logged_with_gate_and_oracle(trained):
    from chainlend import model_ops

    mlf = model_ops.client()
    mv = mlf.get_model_version("dealer_pd", "1")
    local = mlf.download_artifacts(mv.run_id, "validation")
    md = open(f"{local}/validation_pack.md").read()
    for needle in ("OOT", "oracle", "scorecard", "PSI", "Monitoring", "passed"):
        assert needle.lower() in md.lower(), needle
    for png in ("roc_ks.png", "calibration.png", "psi.png", "shap_summary.png"):
        assert open(f"{local}/{png}", "rb").read(4) == b"\x89PNG"


def test_worse_challenger_is_refused_and_champion_unchanged(trained):
    from chainlend import model_ops
    from chainlend.model_ops import build_dataset, gate, train
    from models.trainers import TrainConfig

    fam = "dealer_pd"
    reg = model_ops.registry()
    before = reg.version(fam, "champion")
    pointer = build_dataset(fam, trained["last"] + dt.timedelta(days=1))
    weak = TrainConfig(num_boost_round=1, learning_rate=0.01, num_leaves=2, max_depth=1, early_stopping_rounds=1)
    t = train(fam, pointer, cfg=weak, maker="tester")
    result = gate(fam, t)
    assert result["outcome"] == "refused"
    assert any("worse than the champion" in r for r in result["reasons"]), result["reasons"]
    assert reg.version(fam, "champion") == before
    assert reg.version(fam, "challenger") == t["version"]
    last = model_ops.audit_rows(fam).iloc[-1]
    assert (last.action, last.version, last.previous_version) == ("refused", t["version"], before)
    # the CLI refuses to approve it, naming the gate's reasons, with a non-zero exit
    from chainlend.cli import main

    assert main(["models", "approve", fam, t["version"], "--by", "Checker Zhang"]) == 1
    assert reg.version(fam, "champion") == before


def test_maker_checker_approval_moves_champion_and_audits(trained, monkeypatch, capsys):
    from chainlend import model_ops
    from chainlend.cli import main
    from chainlend.model_ops import build_dataset, gate, train

    monkeypatch.setenv("CHAINLEND_MODEL_APPROVAL", "required")
    fam = "post_loan_behaviour"
    reg = model_ops.registry()
    before = reg.version(fam, "champion")
    pointer = build_dataset(fam, trained["last"] + dt.timedelta(days=1))
    t = train(fam, pointer, maker="Maker Li")
    result = gate(fam, t)
    assert result["outcome"] == "pending_approval", result
    assert reg.version(fam, "champion") == before
    assert main(["models", "approve", fam, t["version"], "--by", "maker li"]) == 1
    assert "maker/checker" in capsys.readouterr().err
    assert main(["models", "approve", fam, t["version"], "--by", "Checker Zhang"]) == 0
    assert reg.version(fam, "champion") == t["version"]
    last = model_ops.audit_rows(fam).iloc[-1]
    assert (last.alias, last.action, last.actor, last.previous_version) == ("champion", "set", "Checker Zhang", before)
    assert json.loads(last.metrics)["auc"] > 0.6
    tags = reg.tags(fam, t["version"])
    assert tags["approval"] == "approved by Checker Zhang"


def test_retried_training_task_registers_nothing_new(trained):
    from chainlend import model_ops
    from chainlend.model_ops import build_dataset, train
    from models.trainers import TrainConfig

    fam = "dealer_pd"
    pointer = build_dataset(fam, trained["last"] + dt.timedelta(days=1))
    quick = TrainConfig(num_boost_round=20, early_stopping_rounds=None)
    first = train(fam, pointer, training_key="run-x", cfg=quick)
    again = train(fam, pointer, training_key="run-x", cfg=quick)
    assert again["version"] == first["version"]
    mlf = model_ops.client()
    keyed = [str(v.version) for v in mlf.search_model_versions(f"name = '{fam}'")
             if v.tags.get("training_key") == f"run-x|{pointer['path']}"]
    assert keyed == [first["version"]]
    assert np.isfinite(first["oot_auc"])
