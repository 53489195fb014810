"""Personal data: keyed HMAC pseudonyms (chainlend.pseudonym), the key from Airflow's secrets chain,
and a scan of everything the ingestion writes for the raw identifiers of a simulated world."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import stat

import pytest
import sqlalchemy as sa

from chainlend.pseudonym import (
    LOCAL_BACKEND,
    PII_KEY_ENV,
    PII_KEY_VARIABLE,
    Pseudonymiser,
    PseudonymKeyError,
    column_scope,
    embedded_secrets_backend,
    ensure_key_file,
    parse_key,
    pii_columns,
)
from sources.contract import DEALER, ERP, TABLES, table

KEY_A = "a1" * 32
KEY_B = "b2" * 32
TOKEN = re.compile(r"p_[0-9a-f]{32}")
START = dt.date(2026, 3, 2)


# ------------------------------------------------------------------------------------------------
# the tokens


def test_token_is_hmac_sha256_of_scope_and_value_truncated_to_128_bits():
    p = Pseudonymiser.from_hex(KEY_A)
    expected = hmac.new(bytes.fromhex(KEY_A), b"dealer.dealers.phone\x0013812345678", hashlib.sha256).hexdigest()
    assert p.token("dealer.dealers.phone", "13812345678") == "p_" + expected[:32]
    assert TOKEN.fullmatch(p.token("dealer.dealers.phone", "13812345678"))


def test_tokens_are_deterministic_across_instances():
    a, b = Pseudonymiser.from_hex(KEY_A), Pseudonymiser.from_hex(KEY_A)
    values = ["Wang Li", "13812345678", "110101199001011234", "91310000MA1K4ABC0X"]
    assert [a.token("s", v) for v in values] == [b.token("s", v) for v in values]
    assert len({a.token("s", v) for v in values}) == len(values)


def test_another_key_gives_other_tokens():
    a, b = Pseudonymiser.from_hex(KEY_A), Pseudonymiser.from_hex(KEY_B)
    for v in ("Wang Li", "13812345678", "x"):
        assert a.token("dealer.dealers.owner_name", v) != b.token("dealer.dealers.owner_name", v)


def test_tokens_are_column_scoped():
    p = Pseudonymiser.from_hex(KEY_A)
    dealers, suppliers = table(DEALER, "dealers"), table(ERP, "suppliers")
    same = "Wuhan Jiali Motors"
    assert p.token(column_scope(dealers, "dealer_name"), same) != p.token(column_scope(dealers, "owner_name"), same)
    phone = "13812345678"
    assert p.token(column_scope(dealers, "phone"), phone) != p.token(column_scope(suppliers, "contact_phone"), phone)
    assert column_scope(dealers, "phone") == "dealer.dealers.phone"


@pytest.mark.parametrize("variant", ["13812345678 ", " 13812345678", "１３８１２３４５６７８"])
def test_cosmetic_variants_share_a_token(variant):
    p = Pseudonymiser.from_hex(KEY_A)
    assert p.token("s", variant) == p.token("s", "13812345678")


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_missing_values_stay_missing_for_the_not_null_check(missing):
    assert Pseudonymiser.from_hex(KEY_A).token("s", missing) == missing


def test_rows_tokenise_exactly_the_personal_columns():
    p = Pseudonymiser.from_hex(KEY_A)
    dealers = table(DEALER, "dealers")
    assert pii_columns(dealers) == ("dealer_name", "owner_name", "owner_id_number", "phone")
    assert pii_columns(table(ERP, "suppliers")) == ("supplier_name", "registration_no", "contact_phone")
    assert [t.name for ts in TABLES.values() for t in ts if pii_columns(t)] == ["suppliers", "dealers"]
    row = ("D000001", "Wuhan Jiali Motors", "Wang Li", "110101199001011234", None, "Wuhan", 2,
           dt.date(2020, 1, 1), "active", dt.datetime(2026, 3, 2, 9))
    (out,) = p.rows(dealers, [row])
    pii = {dealers.column_names.index(c) for c in pii_columns(dealers)}
    for i, (before, after) in enumerate(zip(row, out, strict=True)):
        if i in pii and before is not None:
            assert TOKEN.fullmatch(after) and after == p.token(column_scope(dealers, dealers.column_names[i]), before)
        else:
            assert after == before


@pytest.mark.parametrize(("text", "message"), [
    ("not a hex key", "must be a hex string"),
    ("ab" * 16, "at least 32 bytes"),
])
def test_a_malformed_key_is_refused(text, message):
    with pytest.raises(PseudonymKeyError, match=message):
        parse_key(text)
    with pytest.raises(PseudonymKeyError):
        Pseudonymiser(b"short")


def test_the_key_never_shows_in_repr():
    p = Pseudonymiser.from_hex(KEY_A)
    assert KEY_A not in repr(p) and "a1a1" not in repr(p) and str(bytes.fromhex(KEY_A)) not in repr(p)


# ------------------------------------------------------------------------------------------------
# the key: embedded file, secrets backend, production errors


def test_embedded_key_file_is_created_once_private_and_checked(tmp_path):
    path = tmp_path / "var" / "secrets" / "variables.json"
    assert ensure_key_file(path) == path
    first = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(parse_key(json.loads(first)[PII_KEY_VARIABLE])) == 32
    ensure_key_file(path)
    assert path.read_text() == first, "the key must persist across runs"
    assert [p.name for p in path.parent.iterdir()] == ["variables.json"]  # no temporary file left
    path.chmod(0o644)
    with pytest.raises(PseudonymKeyError, match="readable by others"):
        ensure_key_file(path)
    path.chmod(0o600)
    path.write_text('{"something_else": "x"}')
    with pytest.raises(PseudonymKeyError, match=PII_KEY_VARIABLE):
        ensure_key_file(path)


def test_embedded_profile_points_airflow_local_filesystem_backend_at_the_key(tmp_path):
    env: dict[str, str] = {}
    applied = embedded_secrets_backend(env, tmp_path)
    assert env == applied and env["AIRFLOW__SECRETS__BACKEND"] == LOCAL_BACKEND
    assert json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"]) == {
        "variables_file_path": str(tmp_path / "secrets" / "variables.json")}
    # a configured backend or variable wins: nothing is created or changed
    for configured in ({"AIRFLOW__SECRETS__BACKEND": "x.Vault"}, {PII_KEY_ENV: KEY_A}):
        other = tmp_path / "other"
        assert embedded_secrets_backend(dict(configured), other) == {}
        assert not other.exists()


@pytest.fixture
def no_secrets_backend(tmp_path, monkeypatch):
    """Airflow's secrets chain with an empty variables file: the key is nowhere. Both chains are
    rebuilt: the task SDK's (cached per process) and airflow-core's, which the in-process
    Execution API of ``dag.test()`` uses (built once, at import)."""
    import airflow.configuration
    from airflow.sdk.configuration import clear_secrets_backends_cache

    empty = tmp_path / "empty_variables.json"
    empty.write_text("{}")
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKEND_KWARGS", json.dumps({"variables_file_path": str(empty)}))
    monkeypatch.delenv(PII_KEY_ENV, raising=False)
    clear_secrets_backends_cache()
    monkeypatch.setattr(airflow.configuration, "secrets_backend_list",
                        airflow.configuration.initialize_secrets_backends())
    yield
    monkeypatch.undo()
    clear_secrets_backends_cache()


def test_the_key_resolves_through_airflow_secrets_backend():
    from airflow.sdk import Variable

    kwargs = json.loads(os.environ["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    with open(kwargs["variables_file_path"]) as fh:
        stored = json.load(fh)[PII_KEY_VARIABLE]
    assert Variable.get(PII_KEY_VARIABLE) == stored
    assert Pseudonymiser.from_secrets() == Pseudonymiser.from_hex(stored)


def test_a_missing_key_is_a_clear_error_never_a_default(no_secrets_backend, monkeypatch):
    with pytest.raises(PseudonymKeyError, match=rf"{PII_KEY_VARIABLE}.*is not set.*{PII_KEY_ENV}"):
        Pseudonymiser.from_secrets()
    monkeypatch.setenv(PII_KEY_ENV, "0123")
    with pytest.raises(PseudonymKeyError, match="at least 32 bytes"):
        Pseudonymiser.from_secrets()
    monkeypatch.setenv(PII_KEY_ENV, KEY_B)  # the environment is a secrets source too
    assert Pseudonymiser.from_secrets() == Pseudonymiser.from_hex(KEY_B)


def test_ingestion_without_the_key_lands_no_personal_table(no_secrets_backend, airflow_db, sqlite_urls,
                                                           use_connections, capfd):
    from chainlend.runtime import load_dag, run_dag, task_states
    from chainlend.systems import Warehouse
    from sources.simulator import FaultRates, Simulator

    use_connections(erp_default=sqlite_urls["erp"], dealer_default=sqlite_urls["dealer"],
                    warehouse_default=sqlite_urls["warehouse"])
    sim = Simulator(sqlite_urls["erp"], sqlite_urls["dealer"], sqlite_urls["sim"])
    sim.init(seed=2, scale="tiny", faults=FaultRates.none(), start=START)
    (day,) = sim.advance(1)
    sim.dispose()
    states = task_states(run_dag(load_dag("ingest_dealer"), day))
    assert states["land_dealers"] == "failed" and states["publish"] == "upstream_failed", states
    assert states["land_inventory"] == "success"  # no personal column: no key needed
    out = "".join(capfd.readouterr())  # dag.test() in-process: the task's error is on the console
    assert f"PseudonymKeyError: Airflow Variable '{PII_KEY_VARIABLE}' is not set" in out
    warehouse = Warehouse.from_url(sqlite_urls["warehouse"])
    assert "landing_dealer_dealers" not in sa.inspect(warehouse.engine).get_table_names()
    assert len(warehouse.read_landing(table(DEALER, "inventory"))) > 0


def test_extract_load_refuses_a_personal_table_without_a_pseudonymiser(sqlite_urls):
    from chainlend.ingest import PseudonymiserRequired, extract_load
    from chainlend.systems import DealerSource, Warehouse
    from sources.simulator import FaultRates, Simulator

    sim = Simulator(sqlite_urls["erp"], sqlite_urls["dealer"], sqlite_urls["sim"])
    sim.init(seed=2, scale="tiny", faults=FaultRates.none(), start=START)
    (day,) = sim.advance(1)
    sim.dispose()
    with pytest.raises(PseudonymiserRequired, match=r"dealer\.dealers has personal columns"):
        extract_load(DealerSource.from_url(sqlite_urls["dealer"]), Warehouse.from_url(sqlite_urls["warehouse"]),
                     table(DEALER, "dealers"), day, "r1")


# ------------------------------------------------------------------------------------------------
# the scan: ingestion through Airflow's worker path, then every place the data reaches


def _craft_faulty_personal_rows(dealer_url: str, day: dt.date) -> None:
    """On ``day``: a dealer written twice with different phones (a duplicate key: both copies are
    quarantined with their personal columns) and a dealer with no name (``not_null``)."""
    engine = sa.create_engine(dealer_url)
    with engine.begin() as conn:
        template = dict(conn.execute(sa.text("SELECT * FROM dealers ORDER BY dealer_id LIMIT 1")).mappings().one())
        rows = [{**template, "dealer_id": "D_TWICE", "dealer_name": "Jiangxia Ruifeng Used Cars",
                 "owner_name": "Ouyang Xiaoming", "owner_id_number": "420102198807070011", "phone": phone,
                 "updated_at": dt.datetime.combine(day, dt.time(hour))}
                for phone, hour in (("13900001111", 9), ("13900002222", 10))]
        rows.append({**template, "dealer_id": "D_NAMELESS", "dealer_name": None, "owner_name": "Zhuge Mingyuan",
                     "owner_id_number": "420102199001010022", "phone": "13700003333",
                     "updated_at": dt.datetime.combine(day, dt.time(11))})
        for row in rows:
            conn.execute(sa.text(f"INSERT INTO dealers ({', '.join(row)}) VALUES ({', '.join(':' + k for k in row)})"),
                         row)
    engine.dispose()


def test_no_raw_identifier_reaches_warehouse_quality_features_logs_xcom_or_mail(
        worker_path, sqlite_urls, use_connections, mailbox, monkeypatch, tmp_path, capfd):
    import great_expectations  # noqa: F401  (imported once here, inherited by the forked task processes)
    import pandas as pd
    import pii_scan

    from chainlend.systems import Warehouse
    from features.dealer import application_features
    from features.supplier import supplier_features
    from sources.simulator import FaultRates, Simulator

    use_connections(erp_default=sqlite_urls["erp"], dealer_default=sqlite_urls["dealer"],
                    warehouse_default=sqlite_urls["warehouse"])
    gx_dir, docs_dir = tmp_path / "gx", tmp_path / "data_docs"
    monkeypatch.setenv("CHAINLEND_GX_DIR", str(gx_dir))
    monkeypatch.setenv("CHAINLEND_DATA_DOCS_DIR", str(docs_dir))
    sim = Simulator(sqlite_urls["erp"], sqlite_urls["dealer"], sqlite_urls["sim"])
    sim.init(seed=6, scale="tiny", faults=FaultRates(null=0.02, duplicate_key=0.02, orphan_fk=0.02,
                                                     negative_amount=0.02), start=START)
    days = sim.advance(1)
    sim.dispose()
    _craft_faulty_personal_rows(sqlite_urls["dealer"], days[-1])

    runs = []
    for day in days:
        for dag_id in ("ingest_erp", "ingest_dealer"):
            run = worker_path.run(worker_path.load(dag_id), day)
            assert str(run.state) == "success", dag_id
            runs.append(run)

    raw = pii_scan.raw_identifiers({ERP: sqlite_urls["erp"], DEALER: sqlite_urls["dealer"]})
    assert len(raw) > 150 and {"Ouyang Xiaoming", "13900002222", "Zhuge Mingyuan"} <= raw
    matcher = pii_scan.Matcher(raw)

    warehouse = Warehouse.from_url(sqlite_urls["warehouse"])
    frames = warehouse.read_frames([f"{s}.{t.name}" for s, ts in TABLES.items() for t in ts])
    # features computed from the published frames
    apps = frames["dealer.loan_applications"]
    feats = [application_features(frames, apps.drop_duplicates("application_id")),
             supplier_features(frames, frames["erp.suppliers"].supplier_id.unique(), days)]
    assert all(len(f) for f in feats)
    # task logs: the real files the supervisors wrote, at INFO
    logs = {run.dag_id: worker_path.log_files(run) for run in runs}
    assert {d: len(files) for d, files in logs.items()} == {  # every task (land, gate, publish) wrote one
        f"ingest_{src}": 2 * len(TABLES[src]) + 1 for src in (ERP, DEALER)}
    log_files = [p for files in logs.values() for paths in files.values() for p in paths]
    assert any("Done. Returned value was" in p.read_text() for p in log_files)
    mails = mailbox.messages()
    assert len(mails) >= 2 and any("dealer.dealers" in m["Subject"] for m in mails)

    console = "".join(capfd.readouterr())
    hits = {
        "warehouse": pii_scan.scan_database(sqlite_urls["warehouse"], matcher),
        "airflow metadata (XCom, rendered fields, runs)": pii_scan.scan_database(
            os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], matcher),
        "features": {str(i): f for i, f in enumerate(matcher.find(f.to_csv()) for f in feats) if f},
        "task logs": {str(p): f for p in log_files if (f := matcher.find(p.read_text()))},
        "GX results": pii_scan.scan_files(gx_dir, matcher),
        "Data Docs": pii_scan.scan_files(docs_dir, matcher),
        "e-mails": pii_scan.scan_messages(mails, matcher),
        "console": {"stdout+stderr": f} if (f := matcher.find(console)) else {},
    }
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}
    # the warehouse holds tokens where the sources hold identifiers, the quarantine included
    for key, cols in (("dealer.dealers", pii_columns(table(DEALER, "dealers"))),
                      ("erp.suppliers", pii_columns(table(ERP, "suppliers")))):
        values = frames[key][list(cols)].stack()
        assert len(values) > 50 and values.map(lambda v: bool(TOKEN.fullmatch(str(v)))).all(), key
    q = warehouse.read_table(warehouse.quarantine)
    personal_q = q[q.table_name == "dealers"]
    assert {"unique:dealer_id", "not_null:dealer_name"} <= {r for rs in personal_q.reasons for r in rs.split(";")}
    assert any(TOKEN.search(r) for r in personal_q.row_json), "the quarantine keeps the pseudonymised row"
    # nor does the key itself, which the land tasks read from the secrets backend
    with open(json.loads(os.environ["AIRFLOW__SECRETS__BACKEND_KWARGS"])["variables_file_path"]) as fh:
        key = pii_scan.Matcher([json.load(fh)[PII_KEY_VARIABLE]])
    assert not key.find(console) and not [p for p in log_files if key.find(p.read_text())]
    assert not pii_scan.scan_database(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], key)
    assert not pii_scan.scan_database(sqlite_urls["warehouse"], key)

    # ... and each scanner does find an identifier where one is: plant one in every place
    planted = sorted(raw)[0]
    with warehouse.engine.begin() as conn:
        conn.execute(sa.text("UPDATE quarantine SET row_json = :v WHERE quarantine_id = "
                             "(SELECT MIN(quarantine_id) FROM quarantine)"), {"v": json.dumps({"x": planted})})
    (docs_dir / "planted.html").write_text(f"<td>{planted.replace(' ', '&#32;')}</td>")
    log_files[0].write_text(log_files[0].read_text() + json.dumps({"event": f"owner {planted}"}) + "\n")
    from chainlend.mail import Mailer

    Mailer().send(["x@test.example"], "planted", f"<p>{planted}</p>")
    print(f"console {planted}")
    assert pii_scan.scan_database(sqlite_urls["warehouse"], matcher) == {"quarantine": {planted}}
    assert pii_scan.scan_files(docs_dir, matcher) == {"planted.html": {planted}}
    assert matcher.find(log_files[0].read_text()) == {planted}
    assert pii_scan.scan_messages(mailbox.messages(), matcher) == {"planted": {planted}}
    assert matcher.find("".join(capfd.readouterr())) == {planted}
    assert matcher.find(pd.DataFrame({"c": [planted]}).to_csv()) == {planted}
    # the sources themselves hold every identifier: the matcher finds them all there
    found = set().union(*pii_scan.scan_database(sqlite_urls["dealer"], matcher).values(),
                        *pii_scan.scan_database(sqlite_urls["erp"], matcher).values())
    assert found == raw
