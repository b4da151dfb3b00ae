"""The ingest job end to end on a local root: reconciliation, merge, idempotence, locking,
failure safety and no raw PII anywhere in what it writes."""
import gzip
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import ingest_events
from jobs.runtime import execute
from jobs.storage import StorageError
from tests.conftest import tailor

EMAILS = ["ann.smith@example.com", "bob@shop.test"]
PHONES = ["+1 (555) 010-1234", "555-010-9876"]

GOOD = [
    {"event_id": "f1", "event_type": "view_item", "timestamp": "2024-03-01T10:00:00Z",
     "user_id": "u1", "email": EMAILS[0], "item_id": "a"},
    {"event_id": "f2", "event_type": "page_view", "timestamp": 1709373600, "anonymous_id": "d1",
     "phone": PHONES[0]},
    {"event": "purchase", "event_id": "g1", "timestamp": "2024-03-02T12:00:00+02:00",
     "user_id": "u1", "phone": PHONES[1], "email": EMAILS[1],
     "ecommerce": {"currency": "USD", "items": [{"item_id": "a", "price": 5, "quantity": 2},
                                                {"item_id": "b", "price": 7}]}},
    {"event": "addToCart", "event_id": "ua1", "timestamp": 1709287200000, "anonymous_id": "d1",
     "ecommerce": {"currencyCode": "EUR", "add": {"products": [{"id": "c", "price": "3"}]}}},
    {"export": "email_click", "sent_at": "2024-03-03T08:00:00Z", "recipient": EMAILS[0],
     "campaign_id": "spring"},
]
BAD = [  # (raw line, reason)
    ('{"event_type": "page_view", "email": "' + EMAILS[1] + '", "time', "malformed_json"),
    (json.dumps({"event_type": "warp", "timestamp": "2024-03-01T00:00:00Z", "user_id": "u"}),
     "unknown_event_type"),
    (json.dumps({"event_type": "page_view", "user_id": "u", "phone": PHONES[0]}), "missing_field"),
    (json.dumps({"event_type": "page_view", "user_id": "u", "timestamp": "soon"}),
     "unparseable_timestamp"),
    (json.dumps({"event_type": "page_view", "user_id": "u", "timestamp": "2199-01-01T00:00:00Z"}),
     "future_timestamp"),
    (json.dumps({"event_type": "page_view", "timestamp": "2024-03-01T00:00:00Z"}), "missing_identifier"),
    (json.dumps({"event_type": "purchase", "timestamp": "2024-03-01T00:00:00Z", "user_id": "u",
                 "item_id": "a", "price": "cheap"}), "bad_type"),
    (json.dumps({"event_type": "purchase", "timestamp": "2024-03-01T00:00:00Z", "user_id": "u",
                 "item_id": "a", "quantity": -1}), "negative_value"),
]


def write_dump(folder: Path, records: list, name="dump.jsonl.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    with gzip.open(folder / name, "wt") as out:
        out.write("\n".join(lines) + "\n")
    return folder


def ingest(spark, config, input_path) -> dict:
    return execute("ingest_events", config,
                   lambda job: ingest_events.ingest(job, str(input_path)), spark=spark)


def event_ids(spark, config) -> list[str]:
    rows = spark.read.parquet(config.storage.root + "/events").select("event_id").collect()
    return sorted(r.event_id for r in rows)


@pytest.fixture
def config(make_config, tmp_path):
    return make_config(f"storage.root={tmp_path}/root")


def test_mixed_dump_reconciles_and_good_records_all_land(spark, config, tmp_path):
    dump = write_dump(tmp_path / "in", GOOD + [GOOD[0]] + [line for line, _ in BAD])
    counts = ingest(spark, config, dump)
    assert counts["raw_records"] == len(GOOD) + 1 + len(BAD)
    assert counts["accepted"] == len(GOOD)
    assert counts["event_rows_written"] == len(GOOD) + 1  # g1 has two items
    assert counts["duplicates"] == counts["duplicates_in_dump"] == 1
    assert counts["quarantined"] == len(BAD)
    assert counts["raw_records"] == counts["accepted"] + counts["quarantined"] + counts["duplicates"]
    ids = event_ids(spark, config)
    assert {"f1", "f2", "g1:0", "g1:1", "ua1:0"} <= set(ids) and len(ids) == 6
    quarantine = spark.read.parquet(config.storage.root + "/quarantine").collect()
    assert sorted(q.reason for q in quarantine) == sorted(reason for _, reason in BAD)
    assert all(q.source_file.endswith("in/dump.jsonl.gz") for q in quarantine)
    audit = list(Path(config.storage.root, "audit").rglob("*.jsonl"))
    (line,) = [json.loads(p.read_text()) for p in audit]
    assert line["status"] == "succeeded" and line["counts"]["accepted"] == len(GOOD)


def test_reingest_changes_nothing_and_a_later_dump_adds_only_new(spark, config, tmp_path):
    first = write_dump(tmp_path / "day1", GOOD + [BAD[0][0]])
    ingest(spark, config, first)
    before = event_ids(spark, config)
    again = ingest(spark, config, first)
    assert again["accepted"] == 0 and again["already_ingested"] == len(GOOD)
    assert event_ids(spark, config) == before
    assert spark.read.parquet(config.storage.root + "/quarantine").count() == 1

    later = {"event_id": "f3", "event_type": "page_view", "timestamp": "2024-03-01T23:00:00Z",
             "user_id": "u9"}  # same date as earlier events: its partition gains one row
    second = write_dump(tmp_path / "day2", [GOOD[1], later])
    counts = ingest(spark, config, second)
    assert (counts["accepted"], counts["already_ingested"]) == (1, 1)
    assert event_ids(spark, config) == sorted(before + ["f3"])


def test_locked_root_is_refused_and_nothing_written(spark, config, tmp_path):
    root = Path(config.storage.root)
    root.mkdir(parents=True)
    (root / "_lock").write_text(json.dumps({"job": "train_recommender", "run_id": "r1",
                                            "host": os.uname().nodename, "pid": os.getpid()}))
    with pytest.raises(StorageError, match="is locked by train_recommender"):
        ingest(spark, config, write_dump(tmp_path / "in", GOOD))
    assert sorted(p.name for p in root.iterdir()) == ["_lock"]


def test_stale_lock_of_a_dead_process_is_taken_over(spark, config, tmp_path):
    root = Path(config.storage.root)
    root.mkdir(parents=True)
    (root / "_lock").write_text(json.dumps({"job": "ingest_events", "host": os.uname().nodename,
                                            "pid": 2 ** 22 + 12345}))
    assert ingest(spark, config, write_dump(tmp_path / "in", GOOD))["accepted"] == len(GOOD)
    assert not (root / "_lock").exists()


def test_failed_run_leaves_previous_output_readable(spark, config, tmp_path, monkeypatch):
    ingest(spark, config, write_dump(tmp_path / "day1", GOOD))
    before = event_ids(spark, config)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingest_events, "to_canonical", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        ingest(spark, config, write_dump(tmp_path / "day2", [{**GOOD[0], "event_id": "new"}]))
    assert event_ids(spark, config) == before
    assert not Path(config.storage.root, "_lock").exists()
    statuses = sorted(json.loads(p.read_text())["status"]
                      for p in Path(config.storage.root, "audit").rglob("*.jsonl"))
    assert statuses == ["failed", "succeeded"]


def test_empty_input_folder_says_so_and_succeeds(spark, config, tmp_path):
    (tmp_path / "empty").mkdir()
    assert ingest(spark, config, tmp_path / "empty")["raw_records"] == 0


def strings_in(path: Path) -> str:
    """Everything a file holds as text: Parquet cells decoded, other files as raw bytes."""
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=str)
    return path.read_bytes().decode("utf-8", errors="replace")


def test_no_output_file_contains_raw_email_or_phone(spark, config, tmp_path):
    ingest(spark, config, write_dump(tmp_path / "in", GOOD + [line for line, _ in BAD]))
    files = [p for p in Path(config.storage.root).rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    digits = [p.replace(" ", "").replace("(", "").replace(")", "").replace("-", "") for p in PHONES]
    for path in files:
        text = strings_in(path)
        for secret in EMAILS + PHONES + digits + ["010-1234", "010-9876"]:
            assert secret not in text, f"{secret} found in {path}"


def test_bad_config_is_one_line_nonzero_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    result = tailor("ingest", "--input", str(tmp_path), "--set", f"storage.root={root}",
                    "--set", "storage.s3.path_style=true")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config error: storage.s3.path_style: unknown key"
    assert not root.exists()


def test_missing_pii_key_is_refused_before_spark_starts(tmp_path):
    conf = tmp_path / "prod.yaml"
    conf.write_text(f"storage:\n  root: {tmp_path}/root\n")
    result = tailor("ingest", "--conf", str(conf), "--input", str(tmp_path),
                    env={"TAILOR_PII_KEY": ""})
    assert result.returncode == 2
    assert "TAILOR_PII_KEY" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "root").exists()
