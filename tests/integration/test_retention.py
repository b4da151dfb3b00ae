"""Retention deletes exactly what is older than retention.days, at the day boundary."""
import json
from datetime import date, datetime, timezone

from jobs import ingest_events
from jobs.apply_retention import apply_retention, oldest_kept_day
from jobs.runtime import execute
from tests.integration.test_ingest_job import write_dump

NOW = datetime(2024, 3, 31, 12, 0, tzinfo=timezone.utc)


def page_view(event_id: str, day: str) -> dict:
    return {"event_id": event_id, "event_type": "page_view", "timestamp": f"{day}T23:59:59Z",
            "user_id": "u1"}


def test_oldest_kept_day():
    assert oldest_kept_day(date(2024, 3, 31), 30) == date(2024, 3, 1)
    assert oldest_kept_day(date(2024, 3, 1), 1) == date(2024, 2, 29)


def test_retention_boundary_days_exactly(spark, make_config, tmp_path):
    config = make_config(f"storage.root={tmp_path}/root", "retention.days=30")
    dump = write_dump(tmp_path / "in", [page_view("old", "2024-02-29"), page_view("edge", "2024-03-01"),
                                        page_view("new", "2024-03-30"), '{"broken'])
    old_bad = write_dump(tmp_path / "in2", ['{"also broken'])
    execute("ingest_events", config, lambda job: ingest_events.ingest(
        job, str(old_bad), now=datetime(2024, 2, 29, 23, 0, tzinfo=timezone.utc)), spark=spark)
    execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(dump), now=NOW),
            spark=spark)

    counts = execute("apply_retention", config, lambda job: apply_retention(job, now=NOW), spark=spark)
    assert (counts["events_deleted"], counts["event_partitions_deleted"]) == (1, 1)
    assert counts["quarantine_deleted"] == 1 and counts["first_kept_day"] == "2024-03-01"
    remaining = sorted(r.event_id for r in spark.read.parquet(config.storage.root + "/events").collect())
    assert remaining == ["edge", "new"]
    assert spark.read.parquet(config.storage.root + "/quarantine").count() == 1
    audit = [json.loads(p.read_text()) for p in (tmp_path / "root" / "audit").rglob("*.jsonl")]
    assert [a["counts"]["events_deleted"] for a in audit if a["job"] == "apply_retention"] == [1]


def test_unset_retention_deletes_nothing(spark, make_config, tmp_path):
    config = make_config(f"storage.root={tmp_path}/root")
    execute("ingest_events", config, lambda job: ingest_events.ingest(
        job, str(write_dump(tmp_path / "in", [page_view("ancient", "1999-01-01")]))), spark=spark)
    counts = execute("apply_retention", config, apply_retention, spark=spark)
    assert counts == {"events_deleted": 0, "quarantine_deleted": 0}
    assert spark.read.parquet(config.storage.root + "/events").count() == 1
