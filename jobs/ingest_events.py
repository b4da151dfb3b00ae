"""Ingest raw event dumps into events/ (merged by event_id) and quarantine/ (with reasons).

    spark-submit jobs/ingest_events.py [--conf conf/ENV.yaml] [--set k=v …] --input URI
    tailor ingest [--conf …] [--set …] --input URI

The run summary reconciles exactly: raw records = accepted + quarantined + duplicates, where
duplicates are repeats of an event_id inside the dump plus records already in events/.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datetime import datetime, timezone

import click

from features.events import (CANONICAL_COLUMNS, IngestParams, check_records, dedupe_records,
                             quarantine_rows, to_canonical)
from jobs.config import TailorConfig
from jobs.runtime import JobError, JobRun, config_options, execute, report_errors
from jobs.storage import resolve_uri

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)


def ingest_params(config: TailorConfig, now: datetime) -> IngestParams:
    return IngestParams(
        pii_key=config.pii.effective_key(),
        now=now,
        event_types=tuple(config.ingest.event_types),
        item_event_types=tuple(config.ingest.item_event_types),
        event_aliases=dict(config.ingest.event_aliases),
        max_future_skew_minutes=config.ingest.max_future_skew_minutes,
        default_personalization=config.consent.default_personalization,
        default_analytics=config.consent.default_analytics,
        default_phone_country_code=config.pii.default_phone_country_code,
    )


def read_raw(job: JobRun, input_uri: str):
    """All raw records under `input_uri` as (raw JSON text, source_file); None if no files.

    Parquet rows are turned into JSON text so every shape takes the same path. Blank lines
    in JSON-lines files are not records and are not counted.
    """
    from pyspark.sql import functions as F

    files = job.storage.list_files(input_uri)
    unsupported = [f for f in files if not f.lower().endswith(JSON_SUFFIXES + PARQUET_SUFFIXES)]
    if unsupported:
        raise JobError(f"unsupported input file {unsupported[0]} (expected "
                       f"{', '.join(JSON_SUFFIXES + PARQUET_SUFFIXES)})")
    frames = []
    json_files = [f for f in files if f.lower().endswith(JSON_SUFFIXES)]
    if json_files:
        text = job.spark.read.text(json_files)
        frames.append(text.where(F.trim("value") != "").select(
            F.col("value").alias("raw"), F.col("_metadata.file_path").alias("source_file")))
    for parquet_file in (f for f in files if f.lower().endswith(PARQUET_SUFFIXES)):
        table = job.spark.read.parquet(parquet_file)
        frames.append(table.select(F.to_json(F.struct(*table.columns)).alias("raw"),
                                   F.lit(parquet_file).alias("source_file")))
    if not frames:
        return None
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame)
    return raw


def _existing(job: JobRun, uri: str, column: str):
    return job.spark.read.parquet(uri).select(column) if job.storage.has_parquet(uri) else None


def ingest(job: JobRun, input_uri: str, now: datetime | None = None) -> dict:
    """The job body: read, check, quarantine, de-duplicate, merge into events/."""
    from pyspark import StorageLevel
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    now = now or datetime.now(timezone.utc)
    params = ingest_params(job.config, now)
    input_uri = resolve_uri(input_uri)
    events_uri, quarantine_uri = job.storage.uri("events"), job.storage.uri("quarantine")
    job.inputs, job.outputs = [input_uri], [events_uri, quarantine_uri]

    raw = read_raw(job, input_uri)
    if raw is None:
        job.say(f"no input files under {input_uri}: nothing to ingest")
        return {"raw_records": 0, "accepted": 0, "quarantined": 0, "duplicates": 0}

    checked = check_records(raw, params).withColumn(
        "raw", F.when(F.col("reason").isNotNull(), F.col("raw"))  # keep text only where needed
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {row["reason"]: row["count"] for row in checked.groupBy("reason").count().collect()}
        raw_records = sum(by_reason.values())
        valid_records = by_reason.pop(None, 0)
        quarantined = sum(by_reason.values())

        quarantine = quarantine_rows(checked)
        known_quarantine = _existing(job, quarantine_uri, "quarantine_id")
        if known_quarantine is not None:
            quarantine = quarantine.join(known_quarantine, "quarantine_id", "left_anti")
        (quarantine.withColumn("run_id", F.lit(job.run_id))
         .withColumn("quarantined_at", F.lit(now).cast("timestamp"))
         .write.mode("append").parquet(quarantine_uri))

        # Counted while the write runs (Observation), not by extra passes over the data.
        in_dump, written = Observation("in_dump"), Observation("written")
        record_count = F.count_if("_first_of_record").alias("records")
        rows = to_canonical(dedupe_records(checked), params).observe(in_dump, record_count)
        known_events = _existing(job, events_uri, "event_id")
        if known_events is not None:
            rows = rows.join(known_events, "event_id", "left_anti")
        rows = rows.observe(written, F.count("*").alias("rows"), record_count)
        (rows.select(*CANONICAL_COLUMNS, "event_date")
         .write.mode("append").partitionBy("event_date").parquet(events_uri))
        totals, distinct_records = written.get, in_dump.get["records"]
    finally:
        checked.unpersist()

    accepted = totals["records"]
    counts = {
        "raw_records": raw_records,
        "accepted": accepted,
        "event_rows_written": totals["rows"],
        "quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "duplicates": valid_records - accepted,
        "duplicates_in_dump": valid_records - distinct_records,
        "already_ingested": distinct_records - accepted,
    }
    if counts["raw_records"] != accepted + quarantined + counts["duplicates"]:
        raise JobError(f"ingest summary does not reconcile: {counts}")
    _print_summary(job, counts)
    return counts


def _print_summary(job: JobRun, counts: dict) -> None:
    job.say(f"raw records read   {counts['raw_records']:>10}")
    job.say(f"  accepted         {counts['accepted']:>10}  -> {counts['event_rows_written']} event rows")
    job.say(f"  quarantined      {counts['quarantined']:>10}")
    for reason, count in counts["quarantined_by_reason"].items():
        job.say(f"    {reason:<22}{count:>8}")
    job.say(f"  duplicates       {counts['duplicates']:>10}  ({counts['duplicates_in_dump']} in this "
            f"dump, {counts['already_ingested']} already ingested)")
    job.say(f"events: {job.storage.uri('events')}  quarantine: {job.storage.uri('quarantine')}")


@click.command("ingest")
@click.option("--input", "input_uri", required=True,
              help="A raw dump file or a folder of them (path, file:// or s3a://).")
@report_errors
@config_options
def main(config: TailorConfig, input_uri: str) -> None:
    """Ingest raw event dumps into canonical events and quarantine."""
    config.pii.effective_key()  # refuse before Spark starts when there is no PII key
    execute("ingest_events", config, lambda job: ingest(job, input_uri))


if __name__ == "__main__":
    main()
