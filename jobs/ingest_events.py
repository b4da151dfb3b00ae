"""Ingest raw event dumps into events/ (merged by event_id) and quarantine/ (with reasons).

    spark-submit jobs/ingest_events.py [--conf conf/ENV.yaml] [--set k=v …] --input URI
    tailor ingest [--conf …] [--set …] --input URI

Beside events the input may hold records of other kinds, each merged into its own table:
Segment `identify` calls and CRM exports (files matching `profiles.crm_exports`) into traits/,
item feeds (files matching `catalogue.feeds`) into item_feed/. Segment `track`/`page`/`screen`
calls are events. The run summary reconciles exactly, for events (its top-level counts), per
kind and in total: raw records = accepted + quarantined + duplicates, where duplicates are
repeats of an id inside the dump plus records already stored.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datetime import datetime, timezone
from fnmatch import fnmatch

import click

from features.events import (CANONICAL_COLUMNS, IngestParams, check_records, dedupe_records,
                             quarantine_rows, repeated_event_ids, to_canonical)
from jobs.config import ConfigError, FeedConfig, TailorConfig
from jobs.runtime import JobError, JobRun, config_options, execute, report_errors
from jobs.storage import resolve_uri

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
CSV_SUFFIXES = (".csv", ".csv.gz")
CRM_SPECIAL_COLUMNS = ("customer_id", "email", "phone", "updated_at", "consent_personalization")
# Up to this many repeated event_ids are broadcast, so only their records are shuffled to pick
# one of each (a few MB of ids); a dump with more goes through the window as a whole.
BROADCAST_REPEATED_IDS = 200_000


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


def trait_params(config: TailorConfig, now: datetime):
    """Trait-record settings; refuses CRM column mappings to traits that do not exist."""
    from features.profiles import STANDARD_TRAITS, TraitParams

    known = set(STANDARD_TRAITS) | set(config.profiles.custom_traits) | set(CRM_SPECIAL_COLUMNS)
    for export in config.profiles.crm_exports:
        unknown = sorted((set(export.columns) | set(export.constants)) - known)
        if unknown or "customer_id" not in export.columns:
            raise ConfigError(f"profiles.crm_exports.{export.name}: " + (
                f"unknown trait {', '.join(unknown)} (add it to profiles.custom_traits)"
                if unknown else "columns must map customer_id"))
    return TraitParams(
        pii_key=config.pii.effective_key(), now=now,
        custom_traits=dict(config.profiles.custom_traits),
        ignored_traits=tuple(config.profiles.ignored_traits),
        max_future_skew_minutes=config.ingest.max_future_skew_minutes,
        default_phone_country_code=config.pii.default_phone_country_code)


def feed_files(config: TailorConfig, files: list[str]) -> dict[str, list[tuple[str, FeedConfig]]]:
    """Files recognised by name as CRM exports or item feeds: {"crm"|"catalogue": [(file, feed)]}."""
    found: dict[str, list] = {"crm": [], "catalogue": []}
    for kind, feeds in (("crm", config.profiles.crm_exports), ("catalogue", config.catalogue.feeds)):
        for path in files:
            feed = next((f for f in feeds if fnmatch(path.rsplit("/", 1)[-1], f.match)), None)
            if feed is not None:
                found[kind].append((path, feed))
    return found


def read_feed(job: JobRun, paths: list[str], feed: FeedConfig):
    """Feed files as (raw JSON text of the row, source_file, `_m` the row as a text map,
    modified_at); CSV columns are read as text, JSON lines and Parquet as they are."""
    from pyspark.sql import functions as F

    frames = []
    for path in paths:
        lower = path.lower()
        if lower.endswith(CSV_SUFFIXES):
            table = job.spark.read.csv(path, header=True, sep=feed.csv_delimiter,
                                       inferSchema=False, mode="PERMISSIVE")
        elif lower.endswith(PARQUET_SUFFIXES):
            table = job.spark.read.parquet(path)
        elif lower.endswith(JSON_SUFFIXES):
            text = job.spark.read.text(path)
            frames.append(text.where(F.trim("value") != "").select(
                F.col("value").alias("raw"), F.col("_metadata.file_path").alias("source_file"),
                F.col("_metadata.file_modification_time").alias("modified_at")))
            continue
        else:
            raise JobError(f"unsupported {feed.name} file {path} (expected CSV, JSON lines or Parquet)")
        frames.append(table.select(
            F.to_json(F.struct(*[F.col(f"`{c}`").cast("string").alias(c) for c in table.columns]))
            .alias("raw"), F.col("_metadata.file_path").alias("source_file"),
            F.col("_metadata.file_modification_time").alias("modified_at")))
    rows = frames[0]
    for frame in frames[1:]:
        rows = rows.unionByName(frame)
    return rows.withColumn("_m", F.from_json("raw", "map<string,string>"))


def read_raw(job: JobRun, input_uri: str, skip: frozenset[str] = frozenset()):
    """All raw records under `input_uri` as (raw JSON text, source_file); None if no files.

    Parquet rows are turned into JSON text so every shape takes the same path. Blank lines
    in JSON-lines files are not records and are not counted. Files in `skip` (feeds, read on
    their own) are left out.
    """
    from pyspark.sql import functions as F

    files = [f for f in job.storage.list_files(input_uri) if f not in skip]
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
    """The job body: read, check, quarantine, de-duplicate, merge each kind into its table."""
    from pyspark.sql import functions as F

    from features.segment_spec import route_segment

    now = now or datetime.now(timezone.utc)
    params = ingest_params(job.config, now)
    traits = trait_params(job.config, now)
    input_uri = resolve_uri(input_uri)
    job.inputs = [input_uri]
    job.outputs = [job.storage.uri("events"), job.storage.uri("quarantine")]

    feeds = feed_files(job.config, job.storage.list_files(input_uri))
    raw = read_raw(job, input_uri, frozenset(path for found in feeds.values() for path, _ in found))
    if raw is None and not any(feeds.values()):
        job.say(f"no input files under {input_uri}: nothing to ingest")
        return {"raw_records": 0, "accepted": 0, "quarantined": 0, "duplicates": 0}

    by_kind: dict[str, dict] = {}
    if raw is not None:
        routed = route_segment(raw)
        by_kind["events"] = _ingest_event_records(
            job, routed.where(F.col("kind") == "event").select("raw", "source_file"), params, now)
        identify = _ingest_identify(job, routed.where(F.col("kind") != "event"), traits, now)
        if identify["raw_records"]:
            by_kind["identify"] = identify
    for path_feeds, kind in ((feeds["crm"], "crm"), (feeds["catalogue"], "catalogue")):
        for feed in {feed.name: feed for _, feed in path_feeds}.values():
            paths = [path for path, f in path_feeds if f.name == feed.name]
            rows = read_feed(job, paths, feed)
            by_kind[f"{kind}:{feed.name}"] = (_ingest_crm(job, rows, feed, traits, now)
                                              if kind == "crm" else
                                              _ingest_catalogue(job, rows, feed, now))
    counts = _totals(by_kind)
    _print_summary(job, counts)
    return counts


def _totals(by_kind: dict[str, dict]) -> dict:
    """The summary: the events' counts at the top (as before other kinds existed), each kind's
    under `by_kind` and their sum under `total`, every one reconciled."""
    numbers = ("raw_records", "accepted", "quarantined", "duplicates", "duplicates_in_dump",
               "already_ingested")
    no_events = {**dict.fromkeys(numbers + ("event_rows_written",), 0), "quarantined_by_reason": {}}
    total: dict = {name: sum(kind[name] for kind in by_kind.values()) for name in numbers}
    reasons: dict[str, int] = {}
    for kind in by_kind.values():
        for reason, count in kind["quarantined_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    total["quarantined_by_reason"] = dict(sorted(reasons.items()))
    for name, kind in [("total", total), *by_kind.items()]:
        if kind["raw_records"] != kind["accepted"] + kind["quarantined"] + kind["duplicates"]:
            raise JobError(f"ingest summary does not reconcile ({name}): {kind}")
    return {**by_kind.get("events", no_events), "total": total, "by_kind": by_kind}


def _append_quarantine(job: JobRun, quarantine, now: datetime) -> None:
    from pyspark.sql import functions as F

    quarantine_uri = job.storage.uri("quarantine")
    known_quarantine = _existing(job, quarantine_uri, "quarantine_id")
    if known_quarantine is not None:
        quarantine = quarantine.join(known_quarantine, "quarantine_id", "left_anti")
    (quarantine.withColumn("run_id", F.lit(job.run_id))
     .withColumn("quarantined_at", F.lit(now).cast("timestamp"))
     .write.mode("append").parquet(quarantine_uri))


def _ingest_event_records(job: JobRun, raw, params: IngestParams, now: datetime) -> dict:
    """Events: check, quarantine, de-duplicate, merge into events/ by event_id."""
    from pyspark import StorageLevel
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    events_uri = job.storage.uri("events")
    # Read twice (quarantine, events) and as large as the dump: cached on local disk, which the
    # OS page cache serves, instead of being kept on the heap.
    checked = check_records(raw, params).withColumn(
        "raw", F.when(F.col("reason").isNotNull(), F.col("raw"))  # keep text only where needed
    ).persist(StorageLevel.DISK_ONLY)
    repeated = None
    try:
        by_reason = {row["reason"]: row["count"] for row in checked.groupBy("reason").count().collect()}
        raw_records = sum(by_reason.values())
        valid_records = by_reason.pop(None, 0)
        quarantined = sum(by_reason.values())
        _append_quarantine(job, quarantine_rows(checked), now)

        # Counted while the write runs (Observation), not by extra passes over the data.
        in_dump, written = Observation("in_dump"), Observation("written")
        record_count = F.count_if("_first_of_record").alias("records")
        repeated = repeated_event_ids(checked).persist(StorageLevel.MEMORY_AND_DISK)
        small = repeated.count() <= BROADCAST_REPEATED_IDS
        rows = to_canonical(dedupe_records(checked, repeated if small else None), params
                            ).observe(in_dump, record_count)
        known_events = _existing(job, events_uri, "event_id")
        if known_events is not None:
            rows = rows.join(known_events, "event_id", "left_anti")
        rows = rows.observe(written, F.count("*").alias("rows"), record_count)
        (rows.select(*CANONICAL_COLUMNS, "event_date")
         .write.mode("append").partitionBy("event_date").parquet(events_uri))
        totals, distinct_records = written.get, in_dump.get["records"]
    finally:
        for frame in (checked, repeated):
            if frame is not None:
                frame.unpersist()

    accepted = totals["records"]
    return {
        "raw_records": raw_records,
        "accepted": accepted,
        "event_rows_written": totals["rows"],
        "quarantined": quarantined,
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "duplicates": valid_records - accepted,
        "duplicates_in_dump": valid_records - distinct_records,
        "already_ingested": distinct_records - accepted,
    }


def _merge_records(job: JobRun, checked, table: str, stored, now: datetime) -> dict:
    """Records of a non-event kind (`checked` has record_id and reason): quarantine the
    rejected, merge `stored(checked)` (one row per record_id) into `table` by record_id."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    uri = job.storage.uri(table)
    checked = checked.withColumn("event_id", F.col("record_id")).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {row["reason"]: row["count"] for row in checked.groupBy("reason").count().collect()}
        raw_records = sum(by_reason.values())
        valid_records = by_reason.pop(None, 0)
        if by_reason:
            _append_quarantine(job, quarantine_rows(checked), now)
        rows = stored(checked)
        distinct_records = rows.count() if valid_records else 0
        known = _existing(job, uri, "record_id")
        if known is not None:
            rows = rows.join(known, "record_id", "left_anti")
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            accepted = rows.count() if valid_records else 0
            if accepted:
                rows.write.mode("append").parquet(uri)
                job.outputs.append(uri)
        finally:
            rows.unpersist()
    finally:
        checked.unpersist()
    return {"raw_records": raw_records, "accepted": accepted,
            "quarantined": sum(by_reason.values()),
            "quarantined_by_reason": dict(sorted(by_reason.items())),
            "duplicates": valid_records - accepted,
            "duplicates_in_dump": valid_records - distinct_records,
            "already_ingested": distinct_records - accepted}


def _ingest_identify(job: JobRun, calls, traits, now: datetime) -> dict:
    from features.profiles import check_trait_records, identify_records, trait_rows

    checked = check_trait_records(identify_records(calls, traits), traits)
    return _merge_records(job, checked, "traits", lambda c: trait_rows(c, traits), now)


def _ingest_crm(job: JobRun, rows, feed: FeedConfig, traits, now: datetime) -> dict:
    from features.profiles import check_trait_records, crm_records, trait_rows

    records = crm_records(rows, f"crm:{feed.name}", feed.columns, feed.constants, feed.date_format)
    return _merge_records(job, check_trait_records(records, traits), "traits",
                          lambda c: trait_rows(c, traits), now)


def _ingest_catalogue(job: JobRun, rows, feed, now: datetime) -> dict:
    from features.catalogue import FeedMapping, feed_records, item_rows

    mapping = FeedMapping(source=f"feed:{feed.name}", columns=dict(feed.columns),
                          attributes=tuple(feed.attributes),
                          category_separator=feed.category_separator,
                          date_format=feed.date_format, constants=dict(feed.constants))
    return _merge_records(job, feed_records(rows, mapping), "item_feed", item_rows, now)


def _print_summary(job: JobRun, counts: dict) -> None:
    job.say(f"raw records read   {counts['raw_records']:>10}")
    job.say(f"  accepted         {counts['accepted']:>10}  -> {counts['event_rows_written']} event rows")
    job.say(f"  quarantined      {counts['quarantined']:>10}")
    for reason, count in counts["quarantined_by_reason"].items():
        job.say(f"    {reason:<22}{count:>8}")
    job.say(f"  duplicates       {counts['duplicates']:>10}  ({counts['duplicates_in_dump']} in this "
            f"dump, {counts['already_ingested']} already ingested)")
    for kind, kind_counts in counts["by_kind"].items():
        if kind != "events":
            job.say(f"{kind}: {kind_counts['raw_records']} records, accepted "
                    f"{kind_counts['accepted']}, quarantined {kind_counts['quarantined']} "
                    f"{kind_counts['quarantined_by_reason'] or ''}, duplicates "
                    f"{kind_counts['duplicates']}")
    job.say(f"events: {job.storage.uri('events')}  quarantine: {job.storage.uri('quarantine')}")


@click.command("ingest")
@click.option("--input", "input_uri", required=True,
              help="A raw dump file or a folder of them (path, file:// or s3a://).")
@report_errors
@config_options
def main(config: TailorConfig, input_uri: str) -> None:
    """Ingest raw event dumps into canonical events and quarantine."""
    config.pii.effective_key()  # refuse before Spark starts when there is no PII key
    trait_params(config, datetime.now(timezone.utc))  # and when a CRM mapping names no trait
    execute("ingest_events", config, lambda job: ingest(job, input_uri))


if __name__ == "__main__":
    main()
