"""The model factory at the edge: datasets from the warehouse, MLflow runs, registry, gate, audit.

The three steps of ``train_risk_models`` per family, each a function a task calls:

1. :func:`build_dataset`: published warehouse tables → the family's point-in-time dataset
   (:mod:`features`) → a parquet file under ``var/models/datasets/`` (XCom carries its path);
2. :func:`train`: the out-of-time split and the candidates (:mod:`models.training`), one MLflow
   run with parameters, metrics, plots and the pyfunc model, registered as a new version with
   its data window, feature list, parameters and git commit, alias ``challenger``;
3. :func:`gate`: the challenger against the ``champion`` on the same OOT window
   (:mod:`models.governance`): promoted, waiting for a named approval (maker/checker), or
   refused with the reasons. The validation pack is rendered with the decision and logged to
   the run.

Every alias decision is written to the warehouse table ``model_alias_audit`` and to version
tags. :func:`approve` is the checker's side (``chainlend models approve``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chainlend import settings
from chainlend.systems import Warehouse

log = logging.getLogger(__name__)

DEALER_TABLES = ("dealer.dealers", "dealer.inventory", "dealer.sales", "dealer.floor_audits",
                 "dealer.loan_applications", "dealer.loan_repayments")
SUPPLIER_TABLES = ("erp.suppliers", "erp.supplier_links", "erp.parts", "erp.vehicle_models", "erp.bom",
                   "erp.sub_bom", "erp.production", "erp.goods_receipts", "erp.payables", "erp.credit_memos",
                   "erp.supplier_repayments")
SYSTEM_ACTOR = "train_risk_models"
# The first days of any history are the features' burn-in: 90- and 180-day windows are still
# filling and no loan has matured to show repayment behaviour, so observations dated (by the
# split date) within WARMUP_DAYS of the first one are left out; otherwise the early train
# window sees a different world from the OOT window (a score PSI > 0.25 on the same process).
WARMUP_DAYS = 60
# Suppliers are observed weekly: defaults are rare (a few percent a year), weekly snapshots give
# the model every supplier-week before a default instead of one month-end row.
SUPPLIER_SNAPSHOT_DAYS = 7
MONITORING_PLAN = {
    "dealer_pd": [
        "daily: PSI of the score and of every feature against this version's training window "
        "(0.10 investigate, 0.25 significant → retrain trigger) in monitor_post_loan",
        "monthly: OOT AUC/KS and calibration on loans whose 30-day grace window has closed",
        "approval mix by PD band and override rate in the manual review queue",
    ],
    "supplier_pd": [
        "daily: PSI of the score and features; dilution and overdue rules in monitor_post_loan",
        "quarterly: AUC and calibration once 60+ DPD outcomes mature (label horizon 12 months)",
    ],
    "post_loan_behaviour": [
        "daily: the score of every outstanding loan feeds the warning level; PSI of score and features",
        "monthly: AUC of the behaviour score on loans that reached their due date + 30 days",
    ],
}


class ModelOpsError(RuntimeError):
    """A model-factory step cannot proceed; the message names the family, version and cause."""


@dataclass(frozen=True)
class Family:
    name: str
    tables: tuple[str, ...]
    build: Callable  # (frames, as_of) -> labelled dataset
    key: str  # the observation's business key column
    oracle: str  # "application" | "loan_snapshot" | "supplier_snapshot": what an observation is (see _oracle)
    split_on: str = "obs_date"  # the date the out-of-time split uses
    # the entity whose default labels several observations (validation held out by it, see
    # models.training), or None for a split of validation by date
    group_on: str | None = None


def _build(module: str, fn: str, **kwargs) -> Callable:
    """The dataset builder ``features.<module>.<fn>``, imported when called (pandas-heavy)."""
    def build(frames, as_of):
        import importlib

        extra = {k: v() if callable(v) else v for k, v in kwargs.items()}
        return getattr(importlib.import_module(f"features.{module}"), fn)(frames, as_of, **extra)
    return build


def _mature(build: Callable, horizon: Callable[[], int]) -> Callable:
    """Keep only observations whose whole label horizon has elapsed by ``as_of``: a snapshot
    still inside its horizon is known only if it already went bad, and keeping it would make the
    latest (OOT) window all-bad (selection on the outcome)."""
    def mature(frames, as_of):
        import pandas as pd

        df = build(frames, as_of)
        end = pd.to_datetime(df["obs_date"]) + pd.Timedelta(days=horizon())
        return df[end <= pd.Timestamp(as_of)].reset_index(drop=True)
    return mature


def _cohorts(build: Callable) -> Callable:
    """Add ``drawdown_date`` (obs_date - days_since_drawdown) to a loan-snapshot dataset."""
    def with_cohort(frames, as_of):
        import pandas as pd

        df = build(frames, as_of)
        df["drawdown_date"] = pd.to_datetime(df["obs_date"]) - pd.to_timedelta(df["days_since_drawdown"], unit="D")
        return df
    return with_cohort


def _families() -> dict[str, Family]:
    return {
        "dealer_pd": Family("dealer_pd", DEALER_TABLES, _build("dealer", "dealer_pd_dataset"),
                            "application_id", "application"),
        "supplier_pd": Family("supplier_pd", SUPPLIER_TABLES,
                              _mature(_build("supplier", "supplier_pd_dataset", horizon_days=supplier_horizon_days,
                                             snapshot_every_days=SUPPLIER_SNAPSHOT_DAYS), supplier_horizon_days),
                              "supplier_id", "supplier_snapshot", group_on="supplier_id"),
        "post_loan_behaviour": Family("post_loan_behaviour", DEALER_TABLES, _cohorts(_build("post_loan",
                                      "post_loan_dataset")), "application_id", "loan_snapshot",
                                      split_on="drawdown_date"),
    }


FAMILY_NAMES = ("dealer_pd", "supplier_pd", "post_loan_behaviour")


def supplier_horizon_days() -> int:
    """The supplier label horizon: ``$CHAINLEND_SUPPLIER_HORIZON_DAYS`` or 365 (DOMAIN: 60+ DPD
    within 12 months). A shorter horizon is for histories shorter than a year (the demo)."""
    from features.definitions import SUPPLIER_HORIZON_DAYS

    raw = os.environ.get("CHAINLEND_SUPPLIER_HORIZON_DAYS")
    if raw is None:
        return SUPPLIER_HORIZON_DAYS
    days = int(raw)
    if not 30 <= days <= 730:
        raise ModelOpsError(f"CHAINLEND_SUPPLIER_HORIZON_DAYS must be in [30, 730], got {days}")
    return days


def family(name: str) -> Family:
    fams = _families()
    if name not in fams:
        raise ModelOpsError(f"unknown model family {name!r}; expected one of {sorted(fams)}")
    return fams[name]


# --------------------------------------------------------------------------------------------
# MLflow plumbing


def client():
    """An ``MlflowClient`` on the configured tracking/registry URI (also set as mlflow's default)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in task logs
    # the model pins its requirements explicitly; the project's uv.lock is not part of the model
    os.environ.setdefault("MLFLOW_LOG_UV_FILES", "false")
    import mlflow

    uri = settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlf, family_name: str) -> str:
    """The family's experiment, created with an explicit artifact location (MLflow 3 would
    otherwise put artifacts under the working directory)."""
    name = f"chainlend-{family_name}"
    exp = mlf.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = settings.mlflow_artifact_root().rstrip("/")
    return mlf.create_experiment(name, artifact_location=f"{root}/{family_name}")


def registry():
    from models.registry import Registry

    return Registry(client())


def git_commit() -> str:
    """The code version of a training run: ``$CHAINLEND_GIT_COMMIT`` or ``git rev-parse HEAD``."""
    if os.environ.get("CHAINLEND_GIT_COMMIT"):
        return os.environ["CHAINLEND_GIT_COMMIT"]
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=settings.PROJECT_ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise ModelOpsError("cannot tell the code version: not a git checkout and CHAINLEND_GIT_COMMIT is not "
                            f"set ({out.stderr.strip()})")
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=settings.PROJECT_ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def audit(warehouse: Warehouse, change) -> None:
    with warehouse.engine.begin() as conn:
        conn.execute(warehouse.model_audit.insert().values(**change.as_row()))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


# --------------------------------------------------------------------------------------------
# 1. dataset


def dataset_path(family_name: str, as_of: dt.date) -> Path:
    return settings.var_dir() / "models" / "datasets" / family_name / f"{as_of:%Y%m%d}.parquet"


def build_dataset(family_name: str, as_of: dt.date, warehouse: Warehouse | None = None) -> dict:
    """Build and store the family's labelled dataset as of ``as_of`` (midnight); returns a pointer."""
    fam = family(family_name)
    warehouse = warehouse or Warehouse.from_conn()
    frames = warehouse.read_frames(fam.tables)
    df = fam.build(frames, as_of)
    if not df.empty:
        import pandas as pd

        split = pd.to_datetime(df[fam.split_on])
        df = df[split >= split.min() + pd.Timedelta(days=WARMUP_DAYS)].reset_index(drop=True)
    if df.empty:
        raise ModelOpsError(f"{family_name}: no labelled observations as of {as_of}; the published tables "
                            f"{list(fam.tables)} hold {[len(f) for f in frames.values()]} rows")
    path = dataset_path(family_name, as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)
    return {"family": family_name, "as_of": as_of.isoformat(), "path": str(path), "rows": int(len(df)),
            "bads": int(df["label"].sum())}


# --------------------------------------------------------------------------------------------
# 2. train and register


@dataclass(frozen=True)
class OracleScores:
    """The simulator's truth on a family's observations (see :func:`_oracle`)."""

    label: str  # what ``pd`` is, for the validation pack
    pd: object  # np.ndarray: the conditional oracle per observation, or None (``note`` says why)
    unconditional: object  # np.ndarray: the borrower's true PD at origination / before the snapshot
    note: str | None = None


def _oracle(fam: Family, df) -> OracleScores | None:
    """The simulator's truth per observation, or None outside a simulation.

    ``pd`` is the *conditional oracle*: P(label = 1 | the simulator's state at the observation's
    snapshot), the ceiling of any model scored then (:mod:`sources.sim_oracle`):

    - ``dealer_pd`` (an application): the loan's true PD, from which its default is drawn that
      day: at origination the unconditional true PD *is* the conditional oracle;
    - ``post_loan_behaviour`` (an outstanding loan on a Monday): Bayes on the loan's true PD and
      what has happened by then (not repaid yet, car sold or not and when), in closed form; a
      loan repaid before the snapshot is 0, or 1 if a data fault lost its repayment row;
    - ``supplier_pd`` (a supplier on a snapshot date): 1 or 0 for a supplier already defaulted
      (its unpaid instalments decide the label), otherwise the probability that it defaults early
      enough within the horizon, by Monte Carlo over its future latent risk and pay days (fixed
      seed). Defined for horizons up to 90 days (``note`` says why otherwise; ``pd`` is None).

    ``unconditional`` is the true PD at origination (a loan's) or on the business day before the
    snapshot (a supplier's 12-month PD): kept as an extra metric, it is not a ceiling after
    origination.
    """
    import pandas as pd

    sim_url = os.environ.get("CHAINLEND_SIM_URL")
    if not sim_url:
        return None
    from features.definitions import (
        SUPPLIER_BAD_DPD,
        SUPPLIER_BAD_MIN_COUNT,
        SUPPLIER_BAD_SHARE,
        SUPPLIER_BAD_WINDOW,
    )
    from models.validation_pack import CONDITIONAL_ORACLE
    from sources.sim_oracle import SupplierLabel
    from sources.simulator import OracleUnavailable, Simulator

    sim = Simulator(sim_url, sim_url, sim_url)
    try:
        if fam.oracle in ("application", "loan_snapshot"):
            o = sim.oracle_loans()[["application_id", "true_pd"]]
            uncond = df[["application_id"]].merge(o, on="application_id", how="left")["true_pd"].to_numpy()
            if fam.oracle == "application":
                return OracleScores(f"{CONDITIONAL_ORACLE} (the application: the loan's own true PD)", uncond, uncond)
            snaps = df[["application_id", "obs_date"]].reset_index(drop=True)
            return OracleScores(CONDITIONAL_ORACLE, sim.conditional_oracle_loans(snaps), uncond)
        o = sim.oracle_pd()
        o = o[o["borrower_type"] == "supplier"].rename(columns={"borrower_id": "supplier_id"})
        o["as_of"] = pd.to_datetime(o["as_of"]).astype("datetime64[ns]")
        left = df[["supplier_id", "obs_date"]].reset_index(drop=True).reset_index()
        left["obs_date"] = (pd.to_datetime(left["obs_date"]) - pd.Timedelta(days=1)).astype("datetime64[ns]")
        merged = pd.merge_asof(left.sort_values("obs_date"), o.sort_values("as_of"), left_on="obs_date",
                               right_on="as_of", by="supplier_id", direction="backward")
        uncond = merged.sort_values("index")["true_pd"].to_numpy()
        label = SupplierLabel(supplier_horizon_days(), SUPPLIER_BAD_DPD, SUPPLIER_BAD_WINDOW, SUPPLIER_BAD_SHARE,
                              SUPPLIER_BAD_MIN_COUNT)
        snaps = df[["supplier_id", "obs_date"]].reset_index(drop=True)
        try:
            cond = sim.conditional_oracle_suppliers(snaps, label)
        except OracleUnavailable as exc:
            log.warning("%s: no conditional oracle: %s", fam.name, exc)
            return OracleScores(CONDITIONAL_ORACLE, None, uncond, note=f"Conditional oracle unavailable: {exc}.")
        return OracleScores(CONDITIONAL_ORACLE, cond, uncond)
    finally:
        sim.dispose()


def _oracle_auc(family_name: str, y, scores) -> float | None:
    import numpy as np

    from models.metrics import auc

    if scores is None:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    missing = int(np.isnan(scores).sum())
    if missing:
        raise ModelOpsError(f"{family_name}: the simulator has no true PD for {missing} OOT rows")
    return float(auc(y, scores))


def train(family_name: str, pointer: dict, *, maker: str = SYSTEM_ACTOR, cfg=None,
          training_key: str | None = None) -> dict:
    """Train the family on the dataset at ``pointer['path']``, log one MLflow run, register the
    chosen model as a new version with alias ``challenger``; returns a pointer to the version.

    ``training_key`` (e.g. the DAG run id) makes a retry idempotent: when a version with the same
    key and dataset is registered already, its pointer is returned and nothing is trained."""
    import mlflow
    import pandas as pd

    from features.definitions import FEATURES, feature_names
    from models import plots
    from models.governance import CHALLENGER
    from models.serving import log_pd_model
    from models.trainers import TrainConfig
    from models.training import fit_family

    fam = family(family_name)
    key = f"{training_key}|{pointer['path']}" if training_key else None
    if key is not None:
        done = _registered_with_key(family_name, key)
        if done is not None:
            return done
    cfg = cfg or TrainConfig()
    df = pd.read_parquet(pointer["path"])
    names = feature_names(family_name)
    result = fit_family(df, names, cfg, split_on=fam.split_on, group_on=fam.group_on)
    oot_df = df[result.split.oot]
    y_oot = oot_df["label"].to_numpy()
    oracle = _oracle(fam, oot_df)
    oracle_auc = _oracle_auc(family_name, y_oot, oracle.pd) if oracle is not None else None
    oracle_uncond = _oracle_auc(family_name, y_oot, oracle.unconditional) if oracle is not None else None
    mlf = client()
    exp = experiment_id(mlf, family_name)
    commit = git_commit()
    model = result.model
    window = result.split.window
    with mlflow.start_run(experiment_id=exp, run_name=f"{family_name} as of {pointer['as_of']}") as run:
        mlflow.set_tags({"family": family_name, "as_of": pointer["as_of"], "git_commit": commit,
                         "trained_by": maker, "chosen_algorithm": result.chosen, "choice": result.choice})
        mlflow.log_params({"algorithm": result.chosen, "seed": cfg.seed, "threads": cfg.threads,
                           "features": len(names), "dataset": pointer["path"],
                           **{f"window.{p}.{k}": v for p, w in window.items() for k, v in w.items()},
                           **{f"param.{k}": v for k, v in sorted(model.params.items())}})
        for algo, ev in result.oot.items():
            mlflow.log_metrics({f"oot.{algo}.{k}": float(v) for k, v in ev.items() if v is not None})
            mlflow.log_metrics({f"validation.{algo}.{k}": float(v) for k, v in result.validation[algo].items()
                                if v is not None})
        for algo, ev in result.oot_unseen.items():
            if ev is not None:
                mlflow.log_metrics({f"oot_unseen.{algo}.{k}": float(v) for k, v in ev.items() if v is not None})
        oot = result.oot_metrics()
        mlflow.log_metrics({f"oot.{k}": float(v) for k, v in oot.items() if v is not None})
        if oracle_auc is not None:
            mlflow.log_metric("oot.oracle_auc", oracle_auc)
        if oracle_uncond is not None:
            mlflow.log_metric("oot.oracle_auc_unconditional", oracle_uncond)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            X_oot = oot_df[names].astype("float64")
            sample = X_oot.iloc[: min(len(X_oot), 5_000)]
            plots.roc_ks(y_oot, result.oot_pd, t / "roc_ks.png")
            plots.calibration(y_oot, result.oot_pd, t / "calibration.png")
            plots.psi_bars(result.feature_psi, t / "psi.png")
            plots.shap_summary(model.contributions(sample), names, t / "shap_summary.png")
            result.stability.to_csv(t / "stability.csv", index=False)
            result.feature_psi.rename("psi").to_csv(t / "feature_psi.csv")
            mlflow.log_artifacts(tmp, artifact_path="validation")
        info = log_pd_model(model, name="model", input_example=oot_df[names].astype("float64").head(5))
        run_id = run.info.run_id
    features_doc = [{"name": f.name, "unit": f.unit} for f in FEATURES[family_name]]
    reg = registry()
    version = reg.register(family_name, info.model_uri, run_id=run_id, model_id=info.model_id, tags={
        "family": family_name, "algorithm": result.chosen, "choice": result.choice, "as_of": pointer["as_of"],
        "data_window": window, "features": [f["name"] for f in features_doc],
        "params": model.params, "git_commit": commit, "trained_by": maker,
        "dataset_path": pointer["path"], "split_on": fam.split_on,
        **({"held_out_by": fam.group_on, "oot_unseen_rows": result.oot_unseen_rows} if fam.group_on else {}),
        "oot_metrics": {k: _round(v) for k, v in oot.items()},
        "scorecard_oot_auc": _round(result.oot["scorecard"]["auc"]) if "scorecard" in result.oot else None,
        "oracle_auc": _round(oracle_auc) if oracle_auc is not None else (
            "n/a (no simulator)" if oracle is None else f"n/a ({oracle.note})"),
        "oracle_kind": oracle.label if oracle is not None else "n/a (no simulator)",
        "oracle_auc_unconditional": _round(oracle_uncond) if oracle_uncond is not None else "n/a (no simulator)",
        **({"training_key": key} if key else {}),
    })
    change = reg.set_alias(family_name, CHALLENGER, version, actor=maker,
                           reason=f"newest candidate of run {run_id} ({result.chosen})",
                           metrics={k: _round(v) for k, v in oot.items()}, at=_now())
    audit(Warehouse.from_conn(), change)
    return {"family": family_name, "version": version, "run_id": run_id, "as_of": pointer["as_of"],
            "dataset": pointer["path"], "algorithm": result.chosen, "oot_auc": _round(oot["auc"]),
            "oracle_auc": _round(oracle_auc) if oracle_auc is not None else None,
            "oracle_auc_unconditional": _round(oracle_uncond) if oracle_uncond is not None else None}


def _registered_with_key(family_name: str, key: str) -> dict | None:
    """The pointer of a version already registered under ``key`` (a retried task), or None."""
    from mlflow.exceptions import MlflowException

    mlf = client()
    try:
        mlf.get_registered_model(family_name)
    except MlflowException:
        return None
    for mv in mlf.search_model_versions(f"name = '{family_name}'"):
        if mv.tags.get("training_key") == key:
            tags = mv.tags
            oot = json.loads(tags["oot_metrics"])
            oracle = tags.get("oracle_auc", "")
            uncond = tags.get("oracle_auc_unconditional", "")
            return {"family": family_name, "version": str(mv.version), "run_id": mv.run_id,
                    "as_of": tags["as_of"], "dataset": tags["dataset_path"], "algorithm": tags["algorithm"],
                    "oot_auc": oot["auc"], "oracle_auc": float(oracle) if oracle[:1].isdigit() else None,
                    "oracle_auc_unconditional": float(uncond) if uncond[:1].isdigit() else None}
    return None


def _round(v):
    return None if v is None else round(float(v), 6)


# --------------------------------------------------------------------------------------------
# 3. gate


def _oot_frame(tags: dict):
    import pandas as pd

    df = pd.read_parquet(tags["dataset_path"])
    window = json.loads(tags["data_window"])["oot"]
    d = pd.to_datetime(df[tags.get("split_on", "obs_date")])
    return df[(d >= pd.Timestamp(window["start"])) & (d <= pd.Timestamp(window["end"]))]


def score_version(family_name: str, version: str, frame):
    """PDs of registered ``version`` on ``frame`` through the pyfunc (one batch call)."""
    import mlflow.pyfunc

    client()
    model = mlflow.pyfunc.load_model(f"models:/{family_name}/{version}")
    return model.predict(frame)["pd"].to_numpy()


def gate(family_name: str, trained: dict, *, policy=None) -> dict:
    """Decide on the challenger ``trained['version']``: promote, wait for approval, or refuse."""
    from models import metrics as m
    from models.governance import CHAMPION, GatePolicy
    from models.governance import gate as decide

    policy = policy or GatePolicy(require_approval=settings.model_approval_required())
    reg = registry()
    version = trained["version"]
    tags = reg.tags(family_name, version)
    if "gate" in tags:  # a retried task: the decision was taken and audited already
        done = json.loads(tags["gate"])
        return {**trained, "gate": done["decision"], "outcome": tags.get("gate.outcome", done["decision"]),
                "reasons": done["reasons"], "champion_before": done.get("champion_version")}
    challenger = json.loads(tags["oot_metrics"])
    champion_version = reg.version(family_name, CHAMPION)
    champion = None
    if champion_version == version:
        raise ModelOpsError(f"{family_name} v{version} is already the champion; nothing to gate")
    if champion_version is not None:
        oot = _oot_frame(tags)
        pd_champ = score_version(family_name, champion_version, oot)
        ev = m.evaluate(oot["label"].to_numpy(), pd_champ).as_dict()
        champion = {**ev, "version": champion_version}
    decision = decide(challenger, champion, policy)
    warehouse = Warehouse.from_conn()
    metrics = {k: challenger[k] for k in ("auc", "ks", "score_psi", "calibration_ratio")}
    if champion is not None:
        metrics["champion_version"] = champion_version
        metrics["champion_auc"] = _round(champion["auc"])
        metrics["champion_ks"] = _round(champion["ks"])
    if not decision.passed:
        change = reg.record(family_name, CHAMPION, version, "refused", actor="gate (automatic)",
                            reason="; ".join(decision.reasons), metrics=metrics, at=_now())
        outcome = "refused"
    elif policy.require_approval:
        reg.tag(family_name, version, "approval", "pending")
        change = reg.record(family_name, CHAMPION, version, "pending", actor="gate (automatic)",
                            reason="passed the gate; waiting for a named approval (maker/checker)",
                            metrics=metrics, at=_now())
        outcome = "pending_approval"
    else:
        change = reg.set_alias(family_name, CHAMPION, version, actor="gate (automatic)",
                               reason=_promotion_reason(champion_version), metrics=metrics, at=_now())
        outcome = "promoted"
    audit(warehouse, change)
    # written last: a retry after this point returns the recorded decision
    reg.tag(family_name, version, "gate.outcome", outcome)
    reg.tag(family_name, version, "gate.decision", decision.decision)
    reg.tag(family_name, version, "gate", {**decision.as_dict(), "champion_version": champion_version})
    log_validation_pack(family_name, version, decision.as_dict())
    return {**trained, "gate": decision.decision, "outcome": outcome, "reasons": list(decision.reasons),
            "champion_before": champion_version}


def _promotion_reason(previous: str | None) -> str:
    if previous is None:
        return "first champion: passed the absolute floors of the gate"
    return f"passed the gate against champion v{previous} on the same OOT window"


def approve(family_name: str, version: str, *, by: str) -> dict:
    """The checker's approval: moves ``champion`` to a version that passed the gate."""
    from models.governance import CHAMPION, GovernanceError, check_approver

    reg = registry()
    tags = reg.tags(family_name, version)
    decision = json.loads(tags["gate"]) if "gate" in tags else None
    if decision is None:
        raise GovernanceError(f"{family_name} v{version} has not been through the gate; run train_risk_models")
    if decision["decision"] != "passed":
        raise GovernanceError(f"{family_name} v{version} was refused by the gate: " + "; ".join(decision["reasons"]))
    approver = check_approver(by, tags.get("trained_by"))
    current = reg.version(family_name, CHAMPION)
    if current == str(version):
        raise GovernanceError(f"{family_name} v{version} is already the champion")
    metrics = {k: decision["challenger"][k] for k in ("auc", "ks", "score_psi", "calibration_ratio")}
    change = reg.set_alias(family_name, CHAMPION, version, actor=approver,
                           reason=f"approved by {approver} (maker/checker); gate passed", metrics=metrics, at=_now())
    reg.tag(family_name, version, "approval", f"approved by {approver}")
    audit(Warehouse.from_conn(), change)
    return {"family": family_name, "version": str(version), "previous": current, "approved_by": approver}


def log_validation_pack(family_name: str, version: str, gate_result: dict | None) -> str:
    """Render the version's validation pack (Markdown and HTML) into its run's artifacts."""
    import pandas as pd

    from features.definitions import FEATURES
    from models.validation_pack import ValidationPack, render_html, render_markdown

    mlf = client()
    reg = registry()
    tags = reg.tags(family_name, version)
    mv = mlf.get_model_version(family_name, str(version))
    run = mlf.get_run(mv.run_id)
    rm = run.data.metrics
    algos = sorted({k.split(".")[1] for k in rm if k.count(".") == 2 and k.startswith("oot.")})
    candidates = {a: {k.split(".", 2)[2]: v for k, v in rm.items() if k.startswith(f"oot.{a}.")} for a in algos}
    unseen = {a: {k.split(".", 2)[2]: v for k, v in rm.items() if k.startswith(f"oot_unseen.{a}.")} for a in algos}
    unseen = {a: ev for a, ev in unseen.items() if ev}
    oot = json.loads(tags["oot_metrics"])
    local = Path(mlf.download_artifacts(mv.run_id, "validation"))
    stability = pd.read_csv(local / "stability.csv")
    fpsi = pd.read_csv(local / "feature_psi.csv", index_col=0)["psi"]
    oracle = tags.get("oracle_auc")
    uncond = tags.get("oracle_auc_unconditional", "")
    oracle_text = {}
    if oracle and not oracle[0].isdigit() and oracle != "n/a (no simulator)":
        oracle_text["oracle_note"] = oracle[len("n/a ("):-1] if oracle.startswith("n/a (") else oracle
    if tags.get("oracle_kind", "n/a")[:3] != "n/a":
        oracle_text["oracle_label"] = tags["oracle_kind"]
    pack = ValidationPack(
        family=family_name, version=str(version), model_name=family_name, algorithm=tags["algorithm"],
        data_window=json.loads(tags["data_window"]),
        features=[(f.name, f.description, f.unit, f.owner) for f in FEATURES[family_name]],
        candidates=candidates, chosen=tags["algorithm"], oot=oot, stability=stability, feature_psi=fpsi,
        score_psi=float(oot["score_psi"]), scorecard_auc=candidates.get("scorecard", {}).get("auc"),
        oracle_auc=float(oracle) if oracle and oracle[0].isdigit() else None,
        # at origination the two oracles are one: the extra row only where they differ
        oracle_auc_unconditional=float(uncond) if uncond[:1].isdigit() and family(family_name).oracle != "application"
        else None, **oracle_text,
        gate=gate_result, monitoring_plan=MONITORING_PLAN[family_name],
        plots={"ROC and KS": "roc_ks.png", "Calibration": "calibration.png", "Feature PSI": "psi.png",
               "SHAP summary": "shap_summary.png"},
        parameters=json.loads(tags["params"]), git_commit=tags["git_commit"],
        choice=tags.get("choice"), oot_unseen=unseen, oot_unseen_rows=json.loads(tags["oot_unseen_rows"]) if "oot_unseen_rows" in tags else {},
    )
    mlf.log_text(mv.run_id, render_markdown(pack), "validation/validation_pack.md")
    mlf.log_text(mv.run_id, render_html(pack), "validation/validation_pack.html")
    return f"{run.info.artifact_uri}/validation/validation_pack.html"


def audit_rows(family_name: str | None = None):
    import pandas as pd
    import sqlalchemy as sa

    w = Warehouse.from_conn()
    t = w.model_audit
    q = sa.select(t).order_by(t.c.audit_id)
    if family_name:
        q = q.where(t.c.family == family_name)
    with w.engine.connect() as conn:
        return pd.read_sql(q, conn)
