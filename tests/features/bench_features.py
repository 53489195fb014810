"""Benchmark the dataset builders on a simulation and fit a quick LightGBM against the oracle.

Not a test (the simulation takes minutes at "demo" scale). Usage::

    .venv/bin/python -m tests.features.bench_features /tmp/bench-demo demo 150
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from features import dealer_pd_dataset, feature_names, post_loan_dataset, supplier_pd_dataset
from tests.features.simdata import read_frames, simulate


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def out_of_time(ds: pd.DataFrame, family: str, share: float = 0.2) -> tuple[float, pd.DataFrame]:
    import lightgbm as lgb

    dates = np.sort(ds["obs_date"].unique())
    cut = dates[int(len(dates) * (1 - share))]
    train, test = ds[ds["obs_date"] < cut], ds[ds["obs_date"] >= cut]
    names = feature_names(family)
    model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.03, num_leaves=15, min_child_samples=50,
                               subsample=0.8, subsample_freq=1, colsample_bytree=0.8, verbose=-1)
    model.fit(train[names], train["label"])
    return auc(test["label"].to_numpy(), model.predict_proba(test[names])[:, 1]), test


def main(folder: str, scale: str, days: int) -> None:
    path = Path(folder)
    if not (path / "sim.db").exists():
        t = time.perf_counter()
        sim = simulate(path, scale=scale, days=days)
        print(f"simulated {days} business days at {scale!r}: {time.perf_counter() - t:.1f} s")
        sim.dispose()
    t = time.perf_counter()
    frames = read_frames(path)
    print(f"read frames: {time.perf_counter() - t:.1f} s, {sum(len(f) for f in frames.values()):,} rows")
    for key in ("dealer.inventory", "dealer.sales", "dealer.loan_applications", "dealer.loan_repayments",
                "erp.goods_receipts", "erp.payables", "erp.supplier_repayments"):
        print(f"  {key}: {len(frames[key]):,}")
    sim_db = sa.create_engine(f"sqlite:///{path / 'sim.db'}")
    as_of = pd.read_sql("SELECT played_through FROM sim_state", sim_db)["played_through"].iloc[0]
    as_of = pd.Timestamp(as_of).date() + pd.Timedelta(days=1).to_pytimedelta()
    print("as_of", as_of)

    t = time.perf_counter()
    dealer = dealer_pd_dataset(frames, as_of)
    print(f"dealer_pd_dataset: {time.perf_counter() - t:.2f} s, {len(dealer):,} rows, bad rate "
          f"{dealer['label'].mean():.3f}")
    t = time.perf_counter()
    supplier = supplier_pd_dataset(frames, as_of)
    print(f"supplier_pd_dataset: {time.perf_counter() - t:.2f} s, {len(supplier):,} rows, "
          f"{int(supplier['label'].sum())} bad rows, {supplier.loc[supplier['label'] == 1, 'supplier_id'].nunique()} "
          f"bad suppliers (horizon 365)")
    short = supplier_pd_dataset(frames, as_of, snapshot_every_days=7, horizon_days=90)
    print(f"  horizon 90, weekly: {len(short):,} rows, {int(short['label'].sum())} bad rows, "
          f"{short.loc[short['label'] == 1, 'supplier_id'].nunique()} bad suppliers")
    defaulted = pd.read_sql("SELECT idx, defaulted_on FROM sim_suppliers WHERE defaulted_on >= 0", sim_db)
    print(f"  simulator: {len(defaulted)} suppliers defaulted, on {sorted(defaulted['defaulted_on'].tolist())}")
    t = time.perf_counter()
    post = post_loan_dataset(frames, as_of)
    print(f"post_loan_dataset: {time.perf_counter() - t:.2f} s, {len(post):,} rows, bad rate {post['label'].mean():.3f}")

    oracle = pd.read_sql("SELECT application_id, true_pd FROM oracle_loans", sim_db).set_index("application_id")
    model_auc, test = out_of_time(dealer, "dealer_pd")
    oracle_auc = auc(test["label"].to_numpy(), oracle["true_pd"].reindex(test["application_id"]).to_numpy())
    print(f"dealer PD, last 20% of dates ({len(test):,} loans, {int(test['label'].sum())} bad): LightGBM AUC "
          f"{model_auc:.3f}, oracle AUC {oracle_auc:.3f}")
    model_auc, test = out_of_time(post, "post_loan_behaviour")
    print(f"post-loan, last 20% of dates ({len(test):,} rows): LightGBM AUC {model_auc:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
