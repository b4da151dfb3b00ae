"""`tailor forget`: a person with web, app and email identities disappears from every file
under the storage root, locally and on the S3-compatible server; everyone else is untouched."""
import hashlib
import hmac
import io
import json
import uuid
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from features.privacy import suppression_token
from jobs import ingest_events
from jobs.forget_users import forget, parse_subjects
from jobs.resolve_identities import resolve
from jobs.runtime import JobError, execute
from tests.conftest import S3_BUCKET
from tests.integration.test_ingest_job import write_dump

KEY = "tailor-test-key"  # conf/test.yaml's demo key
ALICE = {"user_id": "alice-7f3", "cookie": "cookie-a1b2", "device": "ios-dev-9c8d",
         "email": "Alice.Liddell@Example.org", "phone": "+44 20 7946 0111"}


def digest(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


ALICE_HASHES = [digest("alice.liddell@example.org"), digest("+442079460111")]
ALICE_SECRETS = [ALICE["user_id"], ALICE["cookie"], ALICE["device"], "Alice.Liddell",
                 "alice.liddell", "7946 0111", "442079460111", *ALICE_HASHES]


def dump_records() -> list:
    t = "2024-03-0{}T10:00:00Z"
    alice = [
        {"event_id": "a1", "event_type": "page_view", "timestamp": t.format(1), "anonymous_id": ALICE["cookie"]},
        {"event_id": "a2", "event_type": "view_item", "timestamp": t.format(2), "anonymous_id": ALICE["cookie"],
         "user_id": ALICE["user_id"], "item_id": "x", "email": ALICE["email"]},
        {"export": "app_session", "event_id": "a3", "started_at": t.format(3), "device_id": ALICE["device"],
         "customer_id": ALICE["user_id"]},
        {"export": "email_click", "event_id": "a4", "sent_at": t.format(4), "recipient": ALICE["email"],
         "campaign_id": "c1", "phone": ALICE["phone"]},
        '{"event_type": "page_view", "user_id": "alice-7f3", "timestamp": "not a time"}',
    ]
    others = [{"event_id": f"b{i}", "event_type": "purchase", "timestamp": t.format(i % 5 + 1),
               "user_id": f"bob-{i}", "anonymous_id": f"cookie-b{i}", "item_id": "y", "price": 3}
              for i in range(6)]
    return alice + others + ['{"broken": ']


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


def person_table(spark, root: str) -> None:
    """A stand-in per-person output (as features/ and segments/ write them)."""
    rows = [("p-a", ALICE["user_id"], 1.0), ("p-b", "bob-1", 2.0)]
    spark.createDataFrame(rows, "person_id string, user_id string, score double").write.parquet(
        root + "/segments/rules")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_forget_removes_every_trace(spark, make_config, s3_server, tmp_path, where):
    root = (f"s3a://{S3_BUCKET}/forget-{uuid.uuid4().hex[:8]}" if where == "s3"
            else str(tmp_path / "root"))
    config = make_config(f"storage.root={root}")
    execute("ingest_events", config, lambda job: ingest_events.ingest(
        job, str(write_dump(tmp_path / "in", dump_records()))), spark=spark)
    execute("resolve_identities", config, resolve, spark=spark)
    person_table(spark, config.storage.root)
    root_uri = config.storage.root if where == "s3" else "file://" + root
    events_before = spark.read.parquet(root_uri + "/events").where("user_id like 'bob-%'").count()

    scan = (lambda: all_text_under_s3(s3_server, root.split("/", 3)[3])) if where == "s3" else \
        (lambda: all_text_under_local(Path(root)))
    assert any(ALICE["user_id"] in text for text in scan().values())  # present before

    counts = execute("forget_users", config, lambda job: forget(
        job, [{"email": " alice.liddell@example.ORG "}], "forget-test"), spark=spark)

    assert counts["persons"] == 1 and counts["identifiers"] == 5 and counts["unknown_subjects"] == 0
    assert counts["rows_removed"] == {"events": 4, "identity": 5, "quarantine": 1, "segments/rules": 1}
    for path, text in scan().items():
        for secret in ALICE_SECRETS:
            assert secret not in text, f"{secret!r} still in {path}"
    assert spark.read.parquet(root_uri + "/events").where("user_id like 'bob-%'").count() == events_before
    assert spark.read.parquet(root_uri + "/segments/rules").count() == 1
    assert spark.read.parquet(root_uri + "/quarantine").count() == 1  # the other malformed record

    files = {path: text for path, text in scan().items() if path.endswith(".jsonl")}
    suppression = [json.loads(line) for path, text in files.items() if "/suppression/" in path
                   for line in text.splitlines()]
    assert {s["token"] for s in suppression} == {
        suppression_token("user_id", ALICE["user_id"], KEY),
        suppression_token("anonymous_id", ALICE["cookie"], KEY),
        suppression_token("anonymous_id", ALICE["device"], KEY),
        suppression_token("email_hash", ALICE_HASHES[0], KEY),
        suppression_token("phone_hash", ALICE_HASHES[1], KEY)}
    audit = [json.loads(line) for path, text in files.items() if "/audit/" in path
             for line in text.splitlines() if '"forget_users"' in line]
    assert [a["counts"]["rows_removed"] for a in audit] == [counts["rows_removed"]]
    assert audit[0]["counts"]["request_id"] == "forget-test"


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
def test_malformed_subject_file_changes_nothing(lines, message):
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
