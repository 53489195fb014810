"""train_risk_models end to end: simulated history → ingestion DAGs → training DAG under Airflow
(``dag.test()``) → a real MLflow registry (SQLite store) → the promotion gate, the audit table and
maker/checker approval through the CLI."""

from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction

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
        assert tags["oracle_kind"].startswith("conditional oracle: true PD given the simulator state at the snapshot")
        assert float(tags["oracle_auc_unconditional"]) > 0.5
    # at application the two oracles are one; after drawdown the simulator's state (no repayment
    # yet, the car sold or not) says more than the loan's true PD at application
    dealer, post = reg.tags("dealer_pd", "1"), reg.tags("post_loan_behaviour", "1")
    assert dealer["oracle_auc"] == dealer["oracle_auc_unconditional"]
    assert float(post["oracle_auc"]) > float(post["oracle_auc_unconditional"]) + 0.05


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



def test_champion_is_loaded_once_per_process_and_predicts_as_mlflow_loads_it(trained):
    import mlflow.pyfunc
    import pandas as pd

    from chainlend import lending_ops, model_ops
    from features.definitions import feature_names

    reg = model_ops.registry()
    v1, m1 = lending_ops.champion("dealer_pd")
    v2, m2 = lending_ops.champion("dealer_pd")
    assert v1 == v2 == reg.version("dealer_pd", "champion") and m1 is m2  # cached by registry/family/version
    assert lending_ops.champion("post_loan_behaviour")[1] is not m1
    tags = reg.tags("dealer_pd", v1)
    frame = pd.read_parquet(tags["dataset_path"]).head(300)[feature_names("dealer_pd")]
    pd.testing.assert_frame_equal(m1.predict(frame), mlflow.pyfunc.load_model(f"models:/dealer_pd/{v1}").predict(frame))

def test_validation_pack_logged_with_gate_and_oracle(trained):
    from chainlend import model_ops

    mlf = model_ops.client()
    mv = mlf.get_model_version("dealer_pd", "1")
    local = mlf.download_artifacts(mv.run_id, "validation")
    md = open(f"{local}/validation_pack.md").read()
    for needle in ("OOT", "oracle", "scorecard", "PSI", "Monitoring", "passed"):
        assert needle.lower() in md.lower(), needle
    assert "conditional oracle: true PD given the simulator state at the snapshot" in md
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


def test_mlflow_datasets_and_warehouse_hold_no_raw_identifier(trained):
    """Personal data (issue 7): the MLflow store (params, tags, metrics, registered versions and
    their tags), the run artifacts (validation packs, plots, models, input examples), the training
    datasets and every warehouse table hold none of the world's raw names, phones or ID numbers."""
    import pii_scan

    from chainlend import settings

    urls, tmp = trained["urls"], trained["tmp"]
    matcher = pii_scan.Matcher(pii_scan.raw_identifiers({"erp": urls["erp"], "dealer": urls["dealer"]}))
    artifacts = tmp / "artifacts"
    datasets = settings.var_dir() / "models" / "datasets"
    assert any(artifacts.rglob("validation_pack.md")) and any(datasets.rglob("*.parquet"))
    hits = {"mlflow store": pii_scan.scan_database(f"sqlite:///{tmp / 'mlflow.db'}", matcher),
            "artifacts": pii_scan.scan_files(artifacts, matcher),
            "datasets": pii_scan.scan_files(datasets, matcher),
            "warehouse": pii_scan.scan_database(urls["warehouse"], matcher)}
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}


# ------------------------------------------------------------------------------------------------
# credit operations on the same world: approve_dealer_loans and allocate_supplier_credit under
# Airflow, against the warehouse the ingestion DAGs filled


def _decisions(urls):
    import pandas as pd
    import sqlalchemy as sa

    e = sa.create_engine(urls["warehouse"])
    with e.connect() as conn:
        df = pd.read_sql(sa.text("SELECT * FROM loan_decisions ORDER BY application_id"), conn)
    e.dispose()
    return df


def test_approve_dealer_loans_decides_every_published_application(trained):
    import pandas as pd
    import sqlalchemy as sa

    from chainlend import model_ops
    from chainlend.runtime import load_dag, run_dag, task_states

    dag = load_dag("approve_dealer_loans")
    states = task_states(run_dag(dag, trained["last"]))
    assert set(states.values()) == {"success"}, states
    df = _decisions(trained["urls"])
    e = sa.create_engine(trained["urls"]["warehouse"])
    with e.connect() as conn:
        # the last 7 days' applications (older ones are history from before the bank connected)
        apps = conn.execute(sa.text(
            "SELECT COUNT(*) FROM published_dealer_loan_applications WHERE applied_at >= :s AND applied_at < :e"),
            {"s": trained["last"] - dt.timedelta(days=7), "e": trained["last"] + dt.timedelta(days=1)}).scalar()
        blocked = set(conn.execute(sa.text(
            "SELECT dealer_id FROM published_dealer_dealers WHERE status = 'blocked'")).scalars())
        queued = pd.read_sql(sa.text("SELECT * FROM review_queue"), conn)
    assert len(df) == apps > 1000
    assert set(df.decision) <= {"approved", "reduced", "review", "declined"}
    assert df.model_version.eq(model_ops.registry().version("dealer_pd", "champion")).all()
    assert df.feature_hash.str.fullmatch(r"[0-9a-f]{64}").all()
    not_approved = df[df.decision != "approved"]
    assert not_approved.reason_codes.map(lambda c: len(json.loads(c)) >= 1).all()
    assert (df.amount_fen <= df.requested_fen).all() and (df.amount_fen[df.decision == "declined"] == 0).all()
    if blocked:
        mine = df[df.dealer_id.isin(blocked)]
        assert len(mine) and mine.decision.eq("declined").all()
        assert mine.reason_codes.str.contains('"R01"').all()
    assert set(queued.application_id) == set(df.application_id[df.decision == "review"])
    # a re-run of the same batch gives byte-identical decisions
    run_dag(dag, trained["last"])
    assert _decisions(trained["urls"]).to_csv(index=False) == df.to_csv(index=False)


def test_frozen_dealer_is_declined_and_review_cli(trained, capsys):
    import sqlalchemy as sa

    from chainlend.cli import main
    from chainlend.lending_ops import approve_batch

    df = _decisions(trained["urls"])
    dealer = df[df.decision == "approved"].dealer_id.value_counts().index[0]
    e = sa.create_engine(trained["urls"]["warehouse"])
    with e.begin() as conn:
        conn.execute(sa.text("INSERT INTO credit_controls VALUES ('dealer', :d, 1, 1.0, 'red', 'test', :s)"),
                     {"d": dealer, "s": trained["last"]})
    approve_batch(trained["last"])
    after = _decisions(trained["urls"])
    mine = after[after.dealer_id == dealer]
    assert mine.decision.eq("declined").all() and mine.reason_codes.str.contains('"R05"').all()
    with e.begin() as conn:
        conn.execute(sa.text("DELETE FROM credit_controls"))
    review = after[after.decision == "review"]
    if len(review) >= 2:
        a, b = review.application_id.iloc[0], review.application_id.iloc[1]
        assert main(["review", "approve", a, "--by", "Officer Wang"]) == 0
        assert main(["review", "approve", a, "--by", "Officer Wang"]) == 1
        assert "already approved" in capsys.readouterr().err
        assert main(["review", "decline", b, "--by", "Officer Wang"]) == 1  # no reason given
        assert main(["review", "decline", b, "--by", "Officer Wang", "--reason", "audit finding"]) == 0


@pytest.fixture(scope="module")
def supplier_champion(trained):
    """A supplier_pd champion for the credit tests. At this test scale (50 suppliers, ~7 months)
    no supplier defaults, so there is no label to learn from; the model is trained on the real
    point-in-time supplier features with labels drawn (seeded) from the simulator's true PD,
    through the same train() path, and made champion directly (recorded as such)."""
    import pandas as pd

    from chainlend import model_ops
    from chainlend.systems import Warehouse
    from features.supplier import supplier_features

    frames = Warehouse.from_conn().read_frames(model_ops.SUPPLIER_TABLES)
    ids = frames["erp.suppliers"].supplier_id.tolist()
    dates = list(pd.date_range(trained["last"] - dt.timedelta(days=120), trained["last"], freq="7D").date)
    feats = supplier_features(frames, ids, dates).reset_index()
    sim = Simulator(trained["urls"]["sim"], trained["urls"]["sim"], trained["urls"]["sim"])
    oracle = sim.oracle_pd()
    sim.dispose()
    oracle = oracle[oracle.borrower_type == "supplier"].groupby("borrower_id").true_pd.mean()
    rng = np.random.default_rng(5)
    p = np.clip(feats.supplier_id.map(oracle).to_numpy() * 8, 0, 0.9)
    df = feats.rename(columns={"as_of": "obs_date"}).assign(label=(rng.random(len(feats)) < p).astype(int))
    path = trained["tmp"] / "supplier_oracle_labels.parquet"
    df.to_parquet(path, index=False)
    t = model_ops.train("supplier_pd", {"path": str(path), "as_of": trained["last"].isoformat()},
                       maker="test fixture (oracle-drawn labels)")
    model_ops.registry().set_alias("supplier_pd", "champion", t["version"], actor="test fixture",
                                   reason="oracle-drawn labels: no supplier default at test scale",
                                   metrics={}, at=dt.datetime(2026, 1, 1))
    return t["version"]


def test_allocate_supplier_credit_end_to_end(trained, supplier_champion):
    import pandas as pd
    import sqlalchemy as sa

    from chainlend.runtime import load_dag, run_dag, task_states
    from lending.cascade import CASCADE_POLICY_V1

    dag = load_dag("allocate_supplier_credit")
    conf = {"interval_end": f"{trained['last']}T23:15:00"}
    states = task_states(run_dag(dag, trained["last"], conf=conf))
    assert set(states.values()) == {"success"}, states
    e = sa.create_engine(trained["urls"]["warehouse"])

    def read(sql):
        with e.connect() as conn:
            return pd.read_sql(sa.text(sql), conn)

    credits = read("SELECT * FROM supplier_credits ORDER BY credit_id")
    exceptions = read("SELECT * FROM line_off_exceptions")
    since = dt.datetime.combine(trained["last"], dt.time(23, 15)) - dt.timedelta(days=7)
    events = read(f"SELECT event_id, vin, iot_verified FROM published_erp_line_off_events "
                  f"WHERE line_off_at >= '{since:%Y-%m-%d %H:%M:%S}'")
    assert len(credits) > 1000
    unverified = events[events.iot_verified == 0]
    assert set(unverified.event_id) <= set(exceptions.event_id)
    assert not set(unverified.event_id) & set(credits.event_id)  # an unverified event creates nothing
    assert set(credits.event_id) | set(exceptions.event_id) == set(events.event_id)
    # the shares of each vehicle sum exactly to its financeable value (advance rate x BOM cost)
    bom = read("SELECT model_id, quantity, unit_price_fen FROM published_erp_bom")
    cost = (bom.quantity * bom.unit_price_fen).groupby(bom.model_id).sum()
    per_vin = credits.groupby(["vin", "model_id"]).share_fen.sum().reset_index()
    rate = Fraction(str(CASCADE_POLICY_V1.advance_rate))
    expected = per_vin.model_id.map(cost).map(lambda c: int(c) * rate.numerator // rate.denominator)
    assert (per_vin.share_fen == expected).all(), per_vin.assign(expected=expected)[per_vin.share_fen != expected]
    assert (credits.amount_fen <= credits.share_fen).all() and (credits.amount_fen >= 0).all()
    assert (credits.amount_fen + credits.capped_fen == credits.share_fen).all()
    lines = read("SELECT COUNT(*) AS n, COUNT(DISTINCT credit_id) AS c FROM supplier_credit_lines")
    assert lines.c.iloc[0] == len(credits)
    # re-running the micro-batch creates no new credit and changes none
    run_dag(dag, trained["last"], conf=conf)
    again = read("SELECT * FROM supplier_credits ORDER BY credit_id")
    assert again.to_csv(index=False) == credits.to_csv(index=False)
    # a later micro-batch finds nothing new to allocate
    from chainlend.lending_ops import allocate_batch

    later = allocate_batch(dt.datetime.combine(trained["last"], dt.time(23, 30)))
    assert later["events"] == 0


# ------------------------------------------------------------------------------------------------
# the rest of the daily cycle on the same world: a dealer turns red through the real pipeline
# (a duplicate VIN the quality gate quarantines), then monitor_post_loan, approve_dealer_loans and
# disburse_credit under Airflow. Runs last: it plays one more simulated day.


def _craft_red_dealer(trained, nxt: dt.date) -> tuple[str, str]:
    """In the dealer source on ``nxt``, for a dealer with approved loans not yet paid out: two loan
    applications for one car in its stock, with different amounts and times (a double-financing
    attempt; the gate quarantines both as duplicate VINs), and a clean new application for
    another car. Returns ``(dealer_id, the clean application's id)``."""
    import sqlalchemy as sa

    df = _decisions(trained["urls"])
    dealer = df[df.decision.isin(["approved", "reduced"])].dealer_id.value_counts().index[0]
    src = sa.create_engine(trained["urls"]["dealer"])
    with src.begin() as conn:
        inv = conn.execute(sa.text("SELECT * FROM inventory WHERE dealer_id = :d AND vin NOT IN "
                                   "(SELECT vin FROM loan_applications) ORDER BY vin"), {"d": dealer}).mappings().all()
        assert len(inv) >= 2, "the dealer needs two unfinanced cars in stock"
        template = dict(conn.execute(sa.text("SELECT * FROM loan_applications WHERE dealer_id = :d LIMIT 1"),
                                     {"d": dealer}).mappings().one())

        def apply(car, suffix: str, hour: int, share: float) -> str:
            app = dict(template)
            app.update(application_id=template["application_id"][:-4] + suffix, vin=car["vin"],
                       purchase_price_fen=car["purchase_price_fen"], appraised_value_fen=car["appraised_value_fen"],
                       requested_fen=int(car["appraised_value_fen"] * share) // 100 * 100,
                       applied_at=dt.datetime.combine(nxt, dt.time(hour)),
                       updated_at=dt.datetime.combine(nxt, dt.time(hour, 1)))
            conn.execute(sa.text(f"INSERT INTO loan_applications ({', '.join(app)}) VALUES "
                                 f"({', '.join(':' + k for k in app)})"), app)
            return app["application_id"]

        apply(inv[0], "T001", 9, 0.5)
        apply(inv[0], "T002", 15, 0.6)  # the same car again, later, for more
        clean = apply(inv[1], "T003", 10, 0.5)
    src.dispose()
    return dealer, clean


def test_daily_cycle_red_dealer_monitor_approve_disburse(trained, supplier_champion, mailbox, rail):
    import pandas as pd
    import sqlalchemy as sa

    from chainlend.runtime import load_dag, run_dag, task_states

    last = trained["last"]
    for dag_id, conf in (("approve_dealer_loans", None),
                         ("allocate_supplier_credit", {"interval_end": f"{last}T23:15:00"})):
        assert set(task_states(run_dag(load_dag(dag_id), last, conf=conf)).values()) == {"success"}
    sim = Simulator(trained["urls"]["erp"], trained["urls"]["dealer"], trained["urls"]["sim"])
    (nxt,) = sim.advance(1)
    sim.dispose()
    dealer, app_id = _craft_red_dealer(trained, nxt)
    for dag_id in ("ingest_erp", "ingest_dealer"):
        assert set(task_states(run_dag(load_dag(dag_id), nxt)).values()) == {"success"}

    monitor = load_dag("monitor_post_loan")
    states = task_states(run_dag(monitor, nxt))
    assert {k: v for k, v in states.items() if k not in ("retrain_needed", "request_retrain")} == {
        "post_repayments": "success", "early_warning": "success", "send_digest": "success",
        "monitor_models": "success"}, states
    e = sa.create_engine(trained["urls"]["warehouse"])

    def read(sql, **params):
        with e.connect() as conn:
            return pd.read_sql(sa.text(sql), conn, params=params)

    ctl = read("SELECT * FROM credit_controls WHERE borrower_type = 'dealer' AND borrower_id = :d", d=dealer)
    assert ctl.level.tolist() == ["red"] and bool(ctl.frozen.iloc[0]), ctl
    sig = read("SELECT rule FROM ew_signals WHERE as_of = :a AND borrower_id = :d", a=nxt, d=dealer)
    assert "duplicate_vin" in set(sig.rule)
    watch = read("SELECT * FROM watchlist WHERE as_of = :a", a=nxt)
    assert dealer in set(watch.borrower_id[watch.level == "red"])
    assert len(read("SELECT * FROM behaviour_scores WHERE as_of = :a", a=nxt)) > 100
    mon = read("SELECT * FROM model_monitoring WHERE as_of = :a AND metric = 'score_psi'", a=nxt)
    assert set(mon.family) == {"dealer_pd", "post_loan_behaviour", "supplier_pd"} and mon.value.ge(0).all()
    # the digest: one mail to credit operations naming the red dealer and the rule that fired
    mails = [m for m in mailbox.messages() if "early warning" in m["Subject"]]
    assert len(mails) == 1
    mail = mails[0]
    assert mail["Subject"].startswith(f"[chainlend] early warning {nxt}:") and "credit-ops@bank.example" in mail["To"]
    body = mail.get_body(("html",)).get_content()
    assert dealer in body and "duplicate_vin" in body
    import pii_scan  # no raw name, phone or ID number of the world in any mail (issue 7)

    sources = {"erp": trained["urls"]["erp"], "dealer": trained["urls"]["dealer"]}
    assert pii_scan.scan_messages(mailbox.messages(), pii_scan.Matcher(pii_scan.raw_identifiers(sources))) == {}
    # a re-run of the same business date sends no second digest; with the retrain limits at zero
    # every champion counts as drifting and the run emits the retrain request asset
    mp = pytest.MonkeyPatch()
    mp.setenv("CHAINLEND_RETRAIN_SCORE_PSI", "0")
    mp.setenv("CHAINLEND_RETRAIN_COOLDOWN_DAYS", "0")
    try:
        states = task_states(run_dag(monitor, nxt))
    finally:
        mp.undo()
    assert states["request_retrain"] == "success", states
    assert len([m for m in mailbox.messages() if "early warning" in m["Subject"]]) == 1
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from chainlend.assets import RETRAIN_REQUEST

    with create_session() as session:
        events = session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(
            AssetModel.uri == RETRAIN_REQUEST.uri).count()
    assert events >= 1
    # ... on which train_risk_models is scheduled (as well as weekly)
    condition = load_dag("train_risk_models").timetable.asset_condition
    assert RETRAIN_REQUEST.uri in {a.uri for a in condition.objects}

    # the red dealer's new application is declined (frozen)
    assert set(task_states(run_dag(load_dag("approve_dealer_loans"), nxt)).values()) == {"success"}
    new = read("SELECT decision, reason_codes FROM loan_decisions WHERE application_id = :a", a=app_id)
    assert new.decision.tolist() == ["declined"] and '"R05"' in new.reason_codes.iloc[0]
    # its approved drawdowns are not posted: held while frozen; everyone else's are paid
    conf = {"interval_end": f"{nxt}T23:30:00"}
    states = task_states(run_dag(load_dag("disburse_credit"), nxt, conf=conf))
    assert set(states.values()) == {"success"}, states
    paid = read("SELECT borrower_id, count(*) AS n FROM payment_instructions GROUP BY borrower_id")
    assert dealer not in set(paid.borrower_id) and paid.n.sum() > 100
    held = read("SELECT * FROM payment_holds WHERE borrower_id = :d", d=dealer)
    assert len(held) >= 1 and set(held.reason) == {"frozen"}
    assert rail.totals()["count"] == int(paid.n.sum())
    unbalanced = read("SELECT entry_id FROM ledger_postings GROUP BY entry_id HAVING sum(debit_fen) <> sum(credit_fen)")
    assert unbalanced.empty
    # one ledger entry per instruction (the ledger_postings view above shows its two legs)
    unposted = read("SELECT i.idempotency_key FROM payment_instructions i LEFT JOIN ledger_entries e "
                    "ON e.entry_id = 'disb:' || i.idempotency_key WHERE e.entry_id IS NULL")
    assert unposted.empty
    e.dispose()
