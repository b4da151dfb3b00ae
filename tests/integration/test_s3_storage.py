"""Ingest from and to a real S3-compatible server (moto, over HTTP on 127.0.0.1) via s3a://."""
import json
import uuid

import boto3

from jobs import ingest_events
from jobs.runtime import execute
from tests.conftest import S3_BUCKET
from tests.integration.test_ingest_job import BAD, GOOD, write_dump


def test_ingest_from_s3a_to_s3a(spark, make_config, s3_server, tmp_path):
    prefix = f"run-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    dump = write_dump(tmp_path / "in", GOOD + [line for line, _ in BAD])
    s3.upload_file(str(dump / "dump.jsonl.gz"), S3_BUCKET, f"{prefix}/raw/2024-03-01/dump.jsonl.gz")

    root = f"s3a://{S3_BUCKET}/{prefix}/tailor"
    config = make_config(f"storage.root={root}")
    counts = execute("ingest_events", config, lambda job: ingest_events.ingest(
        job, f"s3a://{S3_BUCKET}/{prefix}/raw/"), spark=spark)

    assert (counts["accepted"], counts["quarantined"]) == (len(GOOD), len(BAD))
    events = spark.read.parquet(f"{root}/events")
    assert events.count() == counts["event_rows_written"]
    quarantine = spark.read.parquet(f"{root}/quarantine").collect()
    assert {q.source_file for q in quarantine} == {
        f"s3a://{S3_BUCKET}/{prefix}/raw/2024-03-01/dump.jsonl.gz"}

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{prefix}/tailor/")["Contents"]]
    assert any(k.startswith(f"{prefix}/tailor/events/event_date=") for k in keys)
    assert f"{prefix}/tailor/_lock" not in keys  # released
    (audit_key,) = [k for k in keys if k.startswith(f"{prefix}/tailor/audit/")]
    audit = json.loads(s3.get_object(Bucket=S3_BUCKET, Key=audit_key)["Body"].read())
    assert audit["status"] == "succeeded" and audit["inputs"] == [f"s3a://{S3_BUCKET}/{prefix}/raw"]
