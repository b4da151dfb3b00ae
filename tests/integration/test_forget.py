"""`tailor forget`: a person with web, app and email identities disappears from every file
under the storage root — events, quarantine, identity, traits and the per-person tables the
real jobs build (features, profiles, recommendations) — locally and on the S3-compatible
server; everyone else is untouched; the request is audited whatever happens, applied whole or
not at all, and every recommender version is tagged stale so none can serve again."""
import hashlib
import hmac
import io
import json
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from features.privacy import suppression_token
from jobs import (build_features, build_profiles, forget_users, ingest_events,
                  train_recommender)
from jobs.config import load_config
from jobs.forget_users import forget, parse_subjects
from jobs.resolve_identities import resolve
from jobs.runtime import JobError, execute
from jobs.storage import Storage, StorageError, upload_folder
from tests.conftest import REPO, S3_BUCKET, s3_overrides
from tests.integration.test_ingest_job import write_dump
from training import registry

KEY = "tailor-test-key"  # conf/test.yaml's demo key
ALICE = {"user_id": "alice-7f3", "cookie": "cookie-a1b2", "device": "ios-dev-9c8d",
         "email": "Alice.Liddell@Example.org", "phone": "+44 20 7946 0111"}
YES = {"personalization": True, "analytics": True}


def digest(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


ALICE_HASHES = [digest("alice.liddell@example.org"), digest("+442079460111")]
ALICE_SECRETS = [ALICE["user_id"], ALICE["cookie"], ALICE["device"], "Alice.Liddell",
                 "alice.liddell", "Liddell", "7946 0111", "442079460111", *ALICE_HASHES]
# Every table the real jobs write Alice into, and how many of her rows each holds.
ALICE_ROWS = {"events": 5, "identity": 5, "quarantine": 1, "traits": 2, "profiles": 1,
              "features/rfm": 1, "features/behaviour": 1, "features/embeddings/persons": 1}
TABLES = ["events", "features/behaviour", "features/cohorts", "features/embeddings/items",
          "features/embeddings/persons", "features/rfm", "identity", "profiles", "quarantine",
          "recommendations", "recommendations/similar_items", "traits"]


def dump_records() -> list:
    t = "2024-03-0{}T10:00:00Z"
    alice = [
        {"event_id": "a1", "event_type": "page_view", "timestamp": t.format(1),
         "anonymous_id": ALICE["cookie"], "consent": YES},
        {"event_id": "a2", "event_type": "view_item", "timestamp": t.format(2), "anonymous_id": ALICE["cookie"],
         "user_id": ALICE["user_id"], "item_id": "x", "email": ALICE["email"], "consent": YES},
        {"export": "app_session", "event_id": "a3", "started_at": t.format(3), "device_id": ALICE["device"],
         "customer_id": ALICE["user_id"]},
        {"export": "email_click", "event_id": "a4", "sent_at": t.format(4), "recipient": ALICE["email"],
         "campaign_id": "c1", "phone": ALICE["phone"]},
        {"event_id": "a5", "event_type": "purchase", "timestamp": t.format(5), "user_id": ALICE["user_id"],
         "item_id": "x", "price": 5, "consent": YES},
        {"type": "identify", "messageId": "id-alice", "userId": ALICE["user_id"],
         "anonymousId": ALICE["cookie"], "timestamp": t.format(2),
         "traits": {"email": ALICE["email"], "name": "Alice Liddell", "age": 31, "gender": "f"}},
        '{"event_type": "page_view", "user_id": "alice-7f3", "timestamp": "not a time"}',
    ]
    others = [{"event_id": f"b{i}-{n}", "event_type": kind, "timestamp": t.format(n + 1),
               "user_id": f"bob-{i}", "anonymous_id": f"cookie-b{i}", "item_id": item, "price": 3,
               "consent": YES}
              for i in range(6)
              for n, (kind, item) in enumerate([("view_item", "y"), ("purchase", "y"),
                                                ("view_item", "xyz"[i % 3]), ("view_item", "w")])]
    others.append({"type": "identify", "messageId": "id-bob", "userId": "bob-1",
                   "timestamp": t.format(2), "traits": {"age": 40}})
    return alice + others + ['{"broken": ']


CRM = ("customer_id,email,birth_date,gender,city,postcode,country,signup_date,marketing_opt_in,"
       "updated_at\n"
       f"{ALICE['user_id']},{ALICE['email']},,female,Oxford,,GB,,yes,2024-03-01T00:00:00Z\n"
       "bob-2,bob2@example.net,,male,Leeds,,GB,,no,2024-03-01T00:00:00Z\n")


def all_text_under_local(root: Path) -> dict[str, str]:
    files = {}
    for path in root.rglob("*"):
        if path.is_file():
            files[str(path)] = _text(path.name, path.read_bytes())
    return files


def all_text_under_s3(endpoint: str, prefix: str) -> dict[str, str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    files = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=S3_BUCKET, Key=obj["Key"])["Body"].read()
            files[obj["Key"]] = _text(obj["Key"], body)
    return files


def _text(name: str, data: bytes) -> str:
    if name.endswith(".parquet"):
        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    return data.decode("utf-8", errors="replace")


def parquet_tables(root: Path) -> list[str]:
    """Every Parquet data set under a local root (partition folders stripped), as names."""
    folders = {path.parent.relative_to(root) for path in root.rglob("*.parquet")}
    return sorted({"/".join(p for p in folder.parts if "=" not in p) for folder in folders})


def rows(spark, root_uri: str, table: str) -> Counter:
    return Counter(json.dumps(row.asDict(recursive=True), sort_keys=True, default=str)
                   for row in spark.read.parquet(f"{root_uri}/{table}").collect())


def forget_config(s3_server, home: Path, root: str, mlflow_server: str, tag: str):
    return load_config(REPO / "conf" / "test.yaml", [
        *s3_overrides(s3_server), f"storage.root={root}", f"mlflow.tracking_uri={mlflow_server}",
        f"mlflow.experiment=forget-{tag}", f"training.registry.model_name=forget-{tag}",
        "training.model=popularity"], environ={**os.environ, "TAILOR_TEST_ROOT": str(home)})


@pytest.fixture(scope="module")
def built(spark, s3_server, mlflow_server, tmp_path_factory):
    """A small root built once by the real jobs: ingest (events, quarantine, traits from an
    identify call and a CRM export), identities, features, profiles and a trained recommender
    (batch recommendations and one registered version). Tests work on copies of it."""
    home = tmp_path_factory.mktemp("forget-built")
    dump = write_dump(home / "in", dump_records())
    (dump / "crm-customers.csv").write_text(CRM)
    tag = uuid.uuid4().hex[:8]
    config = forget_config(s3_server, home, str(home / "root"), mlflow_server, tag)
    execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(dump)), spark=spark)
    execute("resolve_identities", config, resolve, spark=spark)
    execute("build_features", config, build_features.build, spark=spark)
    execute("build_profiles", config, build_profiles.build, spark=spark)
    trained = execute("train_recommender", config, train_recommender.train, spark=spark)
    assert trained["model_version"] == "1"
    return {"root": home / "root", "tag": tag, "tables": parquet_tables(home / "root")}


def copy_of(built, where: str, s3_server, mlflow_server, tmp_path):
    """(config, root URI, scan) for a fresh copy of the built root, locally or on S3."""
    if where == "s3":
        root = f"s3a://{S3_BUCKET}/forget-{uuid.uuid4().hex[:8]}"
        config = forget_config(s3_server, tmp_path, root, mlflow_server, built["tag"])
        upload_folder(built["root"], root, config)
        return config, root, lambda: all_text_under_s3(s3_server, root.split("/", 3)[3])
    shutil.copytree(built["root"], tmp_path / "root")
    config = forget_config(s3_server, tmp_path, str(tmp_path / "root"), mlflow_server, built["tag"])
    return config, "file://" + str(tmp_path / "root"), lambda: all_text_under_local(tmp_path / "root")


def audit_lines(scan, job: str) -> list[dict]:
    lines = [json.loads(line) for path, text in scan().items()
             if "/audit/" in path and path.endswith(".jsonl") for line in text.splitlines()]
    return [line for line in lines if line["job"] == job]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_forget_removes_every_trace(spark, built, s3_server, mlflow_server, tmp_path, where):
    config, root_uri, scan = copy_of(built, where, s3_server, mlflow_server, tmp_path)
    tables = built["tables"]
    assert tables == TABLES
    before = {table: rows(spark, root_uri, table) for table in tables}
    assert any(ALICE["user_id"] in text for text in scan().values())  # present before
    alice_recommended = sum(ALICE["user_id"] in row for row in before["recommendations"])
    assert alice_recommended > 0

    counts = execute("forget_users", config, lambda job: forget(
        job, [{"email": " alice.liddell@example.ORG "}], "forget-test"), spark=spark)

    assert counts["persons"] == 1 and counts["identifiers"] == 5 and counts["unknown_subjects"] == 0
    removed = counts["rows_removed"]
    assert set(removed) == set(tables)  # every Parquet table under the root was checked
    assert {t: n for t, n in removed.items() if n} == {**ALICE_ROWS,
                                                      "recommendations": alice_recommended}
    for table in tables:  # only Alice's rows went, exactly as many as counted
        after = rows(spark, root_uri, table)
        assert not after - before[table], f"{table} gained rows"
        assert sum(before[table].values()) - sum(after.values()) == removed[table], table
    for path, text in scan().items():
        for secret in ALICE_SECRETS:
            assert secret not in text, f"{secret!r} still in {path}"

    files = scan()
    suppression = [json.loads(line) for path, text in files.items()
                   if "/suppression/forget-" in path and path.endswith(".jsonl")
                   for line in text.splitlines()]
    assert {s["token"] for s in suppression} == {
        suppression_token("user_id", ALICE["user_id"], KEY),
        suppression_token("anonymous_id", ALICE["cookie"], KEY),
        suppression_token("anonymous_id", ALICE["device"], KEY),
        suppression_token("email_hash", ALICE_HASHES[0], KEY),
        suppression_token("phone_hash", ALICE_HASHES[1], KEY)}
    (line,) = audit_lines(scan, "forget_users")
    assert set(line) == {"job", "run_id", "request_id", "status", "error", "started_at",
                         "duration_s", "config_digest", "inputs", "outputs", "counts"}
    assert (line["request_id"], line["status"], line["error"]) == ("forget-test", "succeeded", None)
    assert line["counts"] == counts and len(line["config_digest"]) >= 12
    assert sorted(line["inputs"]) == sorted(f"{root_uri}/{t}" for t in tables)
    assert f"{root_uri}/suppression/forget-test.jsonl" in line["outputs"]
    assert {f"{root_uri}/{t.split('/')[0] if t.startswith('recommendations') else t}"
            for t, n in removed.items() if n} <= set(line["outputs"])

    client = MlflowClient(mlflow_server, mlflow_server)
    (version,) = client.search_model_versions(f"name = '{config.training.registry.model_name}'")
    assert registry.stale_reason(version) == "forget request forget-test"  # the first forget's


def test_a_nested_table_keeps_its_rows_when_its_parent_is_rewritten(spark, built, s3_server,
                                                                       mlflow_server, tmp_path):
    config, root_uri, _ = copy_of(built, "local", s3_server, mlflow_server, tmp_path)
    similar = rows(spark, root_uri, "recommendations/similar_items")
    execute("forget_users", config, lambda job: forget(job, [{"user_id": ALICE["user_id"]}],
                                                       "forget-nested"), spark=spark)
    assert rows(spark, root_uri, "recommendations/similar_items") == similar


def test_a_failed_swap_puts_every_table_back(spark, built, s3_server, mlflow_server, tmp_path,
                                             monkeypatch):
    config, root_uri, scan = copy_of(built, "local", s3_server, mlflow_server, tmp_path)
    before = {table: rows(spark, root_uri, table) for table in built["tables"]}
    stage = Storage.stage

    def losing_the_staged_identity(self, uri, write, run_id):
        staged = stage(self, uri, write, run_id)
        if uri.endswith("/identity"):  # events (first in the swap) will have moved in by then
            self.delete(staged, recursive=True)
        return staged

    monkeypatch.setattr(Storage, "stage", losing_the_staged_identity)
    with pytest.raises(StorageError, match="could not move the new .*/identity into place"):
        execute("forget_users", config, lambda job: forget(
            job, [{"user_id": ALICE["user_id"]}], "forget-broken"), spark=spark)

    assert {table: rows(spark, root_uri, table) for table in built["tables"]} == before
    leftovers = [p for p in scan() if "/_staging/" in p or "/_retired/" in p]
    assert leftovers == []
    (line,) = audit_lines(scan, "forget_users")
    assert (line["request_id"], line["status"], line["counts"]) == ("forget-broken", "failed", {})
    assert "identity into place" in line["error"]


def test_a_malformed_request_is_audited_and_changes_nothing(spark, built, s3_server,
                                                             mlflow_server, tmp_path):
    config, root_uri, scan = copy_of(built, "local", s3_server, mlflow_server, tmp_path)
    before = scan()
    subjects = tmp_path / "subjects.jsonl"
    subjects.write_text('{"user_id": "alice-7f3"}\n{"user_id": \n')

    result = CliRunner().invoke(forget_users.main, [
        "--conf", str(REPO / "conf" / "test.yaml"), "--set", f"storage.root={root_uri}",
        "--set", f"mlflow.tracking_uri={mlflow_server}", "--subjects", str(subjects)],
        env={"TAILOR_TEST_ROOT": str(tmp_path)})

    assert result.exit_code == 1 and "line 2: not valid JSON; nothing was deleted" in result.output
    after = scan()
    (line,) = audit_lines(scan, "forget_users")
    assert line["status"] == "failed" and line["request_id"].startswith("forget-")
    assert "line 2: not valid JSON" in line["error"] and line["counts"] == {}
    assert {p: t for p, t in after.items() if "/audit/" not in p} == \
        {p: t for p, t in before.items() if "/audit/" not in p}


def test_a_stale_champion_is_replaced_and_never_brought_back(mlflow_server):
    client, name = MlflowClient(mlflow_server, mlflow_server), f"stale-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)

    def new_version() -> str:
        return str(client.create_model_version(name, f"s3://{S3_BUCKET}/models/{name}").version)

    registry.make_champion(client, name, new_version())
    registry.make_champion(client, name, new_version())  # 2 replaces 1
    assert registry.mark_stale(client, name, "forget request forget-x") == ["1", "2"]
    assert registry.mark_stale(client, name, "forget request forget-y") == []  # reason kept

    with pytest.raises(registry.RegistryError, match="version 1, is stale .forget request forget-x."):
        registry.rollback(client, name)
    with pytest.raises(registry.RegistryError, match="version 1 is stale"):
        registry.make_champion(client, name, "1")

    champion = registry.current_champion(client, name)
    decision = registry.decide(0.1, 0.5, champion_version=str(champion.version),
                               champion_stale=registry.stale_reason(champion))
    assert decision.as_dict("ndcg_at_10")["champion_stale"] == "forget request forget-x"
    fresh = new_version()
    registry.apply_decision(client, name, fresh, decision, "ndcg_at_10")
    assert registry.aliases(client, name)["champion"] == fresh == "3"
    assert client.get_model_version(name, fresh).tags["champion_stale"] == "forget request forget-x"
    with pytest.raises(registry.RegistryError, match="version 2, is stale"):
        registry.rollback(client, name)
    assert registry.aliases(client, name)["champion"] == "3"


def test_unknown_subject_is_reported_not_an_error(spark, make_config, tmp_path):
    config = make_config(f"storage.root={tmp_path}/root")
    execute("ingest_events", config, lambda job: ingest_events.ingest(
        job, str(write_dump(tmp_path / "in", dump_records()))), spark=spark)
    counts = execute("forget_users", config, lambda job: forget(
        job, [{"user_id": "nobody"}], "forget-unknown"), spark=spark)
    assert counts["unknown_subjects"] == 1 and "rows_removed" not in counts


@pytest.mark.parametrize("lines, message", [
    (['{"user_id": "a"}', '{"user_id": '], "line 2: not valid JSON"),
    (['{"name": "a"}'], "line 1: expected one of"),
    (['{"email": ""}'], "line 1: expected one of"),
    (['{"user_id": "a", "email": "b"}'], "line 1: expected one of"),
    ([""], "no subjects given"),
])
def test_malformed_subject_file_is_refused_whole(lines, message):
    with pytest.raises(JobError, match=message):
        parse_subjects(lines)


def test_withdrawn_consent_suppresses_every_identifier_until_consent_returns(spark, make_config, tmp_path):
    config = make_config(f"storage.root={tmp_path / 'root'}")
    t = "2024-03-0{}T10:00:00Z"
    yes, no = {"personalization": True, "analytics": True}, {"personalization": False, "analytics": True}
    carol = [
        {"event_id": "c1", "event_type": "view_item", "timestamp": t.format(1), "user_id": "carol",
         "anonymous_id": "carol-phone", "item_id": "x", "consent": yes},
        {"event_id": "c2", "event_type": "consent_update", "timestamp": t.format(2),
         "anonymous_id": "carol-phone", "consent": no},
    ]
    dave = [{"event_id": "d1", "event_type": "purchase", "timestamp": t.format(1), "user_id": "dave",
             "item_id": "y", "price": 2, "consent": yes}]
    never = [{"event_id": "n1", "event_type": "view_item", "timestamp": t.format(1), "user_id": "nina",
              "item_id": "y", "consent": no}]

    def run(records, name):
        execute("ingest_events", config, lambda job: ingest_events.ingest(
            job, str(write_dump(tmp_path / name, records))), spark=spark)
        counts = execute("resolve_identities", config, resolve, spark=spark)
        listed = (tmp_path / "root" / "suppression" / "consent_withdrawn.jsonl").read_text().splitlines()
        return counts, {json.loads(line)["token"] for line in listed}

    counts, tokens = run(carol + dave + never, "first")
    assert counts["withdrawn_consent_identifiers"] == 2
    assert tokens == {suppression_token("user_id", "carol", KEY),
                      suppression_token("anonymous_id", "carol-phone", KEY)}

    back = [{"event_id": "c3", "event_type": "consent_update", "timestamp": t.format(3),
             "user_id": "carol", "consent": yes}]
    counts, tokens = run(back, "second")
    assert counts["withdrawn_consent_identifiers"] == 0 and tokens == set()
