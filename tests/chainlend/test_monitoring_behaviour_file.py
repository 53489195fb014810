"""The behaviour side file early_warning hands to monitor_models (features and PDs of the book)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chainlend import monitoring_ops as mo
from features.definitions import feature_names


@pytest.fixture
def var(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAINLEND_VAR", str(tmp_path))
    return tmp_path


def _book(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame(rng.normal(size=(n, len(feature_names("post_loan_behaviour")))),
                        columns=list(feature_names("post_loan_behaviour")))


def test_round_trip_keeps_features_pds_and_order(var):
    X, pds = _book(50), np.linspace(0.01, 0.9, 50)
    path = mo._write_behaviour(dt.date(2026, 3, 4), "3", X, pds)
    assert path.parent == var / mo.BEHAVIOUR_FOLDER
    got = mo._read_behaviour(str(path), "3")
    pd.testing.assert_frame_equal(got.features, X)
    np.testing.assert_array_equal(got.pds, pds)
    assert got.version == "3"


def test_empty_book_round_trips_as_empty_float_columns(var):
    X = pd.DataFrame(columns=list(feature_names("post_loan_behaviour")), dtype="float64")
    got = mo._read_behaviour(str(mo._write_behaviour(dt.date(2026, 3, 4), "1", X, np.zeros(0))), "1")
    assert got.features.empty and list(got.features.columns) == list(X.columns)
    assert (got.features.dtypes == "float64").all() and len(got.pds) == 0


def test_other_champion_version_is_scored_again(var):
    path = mo._write_behaviour(dt.date(2026, 3, 4), "1", _book(3), np.zeros(3))
    assert mo._read_behaviour(str(path), "2") is None


def test_missing_file_names_its_cause(var):
    with pytest.raises(FileNotFoundError, match="re-run early_warning"):
        mo._read_behaviour(str(var / "nope.parquet"), "1")


def test_a_new_date_removes_the_older_files(var):
    old = mo._write_behaviour(dt.date(2026, 3, 3), "1", _book(2), np.zeros(2))
    new = mo._write_behaviour(dt.date(2026, 3, 4), "1", _book(2), np.zeros(2))
    assert new.exists() and not old.exists()


def _populations(n: int) -> tuple[dict, pd.Series]:
    rng = np.random.default_rng(7)
    feats = {f: pd.DataFrame(rng.normal(size=(n, len(feature_names(f)))), columns=list(feature_names(f)))
             for f in mo.POPULATION_FAMILIES}
    feats["dealer_pd"].iloc[0, 0] = np.nan  # a missing feature stays missing
    labels = pd.Series(rng.integers(0, 2, size=n), index=np.array([f"A{i:04d}" for i in range(n)], dtype=object))
    return feats, labels


def test_populations_round_trip_keeps_features_labels_and_order(var):
    feats, labels = _populations(40)
    paths = mo._write_populations(dt.date(2026, 3, 4), feats, labels)
    assert set(paths) == {*mo.POPULATION_FAMILIES, mo.LABELS}
    got = mo._read_populations(paths)
    for family in mo.POPULATION_FAMILIES:
        pd.testing.assert_frame_equal(got.features[family], feats[family])
    assert got.labels.index.tolist() == labels.index.tolist()
    np.testing.assert_array_equal(got.labels.to_numpy(), labels.to_numpy())


def test_empty_populations_round_trip(var):
    feats = {f: pd.DataFrame(columns=list(feature_names(f)), dtype="float64") for f in mo.POPULATION_FAMILIES}
    got = mo._read_populations(mo._write_populations(dt.date(2026, 3, 4), feats,
                                                     pd.Series(dtype=np.int64, index=pd.Index([], dtype=object))))
    assert all(got.features[f].empty and list(got.features[f].columns) == list(feature_names(f))
               for f in mo.POPULATION_FAMILIES)
    assert got.labels.empty


def test_missing_population_file_names_its_cause(var):
    paths = mo._write_populations(dt.date(2026, 3, 4), *_populations(3))
    paths[mo.LABELS] = str(var / "nope.parquet")
    with pytest.raises(FileNotFoundError, match="re-run early_warning"):
        mo._read_populations(paths)


def test_a_new_date_removes_the_older_population_files(var):
    old = mo._write_populations(dt.date(2026, 3, 3), *_populations(2))
    new = mo._write_populations(dt.date(2026, 3, 4), *_populations(2))
    behaviour = mo._write_behaviour(dt.date(2026, 3, 4), "1", _book(2), np.zeros(2))
    assert all(not Path(p).exists() for p in old.values())
    assert all(Path(p).exists() for p in new.values()) and behaviour.exists()


def test_behaviour_scores_with_constant_columns_store_what_insert_rows_stores(warehouse):
    """early_warning binds as_of and model_version once: the rows must be those of insert_rows."""
    import sqlalchemy as sa

    w, bs = warehouse, warehouse.lending["behaviour_scores"]
    day, other = dt.date(2026, 3, 4), dt.date(2026, 3, 5)
    scored = pd.DataFrame({"application_id": ["A1", "A2", "A3"], "dealer_id": ["D1", "D1", "D2"],
                           "pd": [0.125, 0.5, 1 / 3]})
    with w.engine.begin() as conn:
        mo._replace_partition(conn, bs, day, scored, const={"as_of": day, "model_version": "7"})
        mo._replace_partition(conn, bs, other, scored.assign(as_of=other, model_version="7"))
        mo._replace_partition(conn, bs, day, scored.iloc[:0], const={"as_of": day, "model_version": "7"})
        mo._replace_partition(conn, bs, day, scored, const={"as_of": day, "model_version": "7"})  # a re-run
    with w.engine.connect() as conn:
        rows = conn.execute(sa.select(bs).order_by(bs.c.as_of, bs.c.application_id)).all()
    assert [(r[0], r[1], r[2], r[4]) for r in rows[:3]] == [(day, a, d, "7") for a, d in zip(
        scored.application_id, scored.dealer_id, strict=True)]
    assert [r[3] for r in rows[:3]] == pytest.approx(scored.pd.tolist(), rel=1e-6)  # MariaDB FLOAT: single
    # the same values as insert_rows stores (its partition of the other day)
    assert [tuple(r)[1:] for r in rows[3:]] == [tuple(r)[1:] for r in rows[:3]] and rows[3][0] == other
    with pytest.raises(ValueError, match="model_version"), w.engine.begin() as conn:
        mo._replace_partition(conn, bs, day, scored, const={"as_of": day})


def test_posted_entries_finds_the_ledger_entries_by_id(warehouse):
    import sqlalchemy as sa

    w, le = warehouse, warehouse.lending["ledger_entries"]
    ids = [f"repay:loan:A{i:05d}" for i in range(0, 12_000, 2)]  # more than one statement of 5,000
    with w.engine.begin() as conn:
        conn.execute(le.insert(), [{"entry_id": e, "instruction_id": None, "debit_account": "nostro",
                                    "credit_account": "receivable:dealer:D1", "amount_fen": 1,
                                    "borrower_type": "dealer", "borrower_id": "D1",
                                    "posted_at": dt.datetime(2026, 3, 4)} for e in ids])
    asked = [f"repay:loan:A{i:05d}" for i in range(12_001)] + ["it's 100%"]
    assert mo._posted_entries(w, asked) == set(ids)
    assert mo._posted_entries(w, []) == set()
    with w.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(le)).scalar() == len(ids)
