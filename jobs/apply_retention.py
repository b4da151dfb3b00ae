"""Delete events and quarantine records older than `retention.days`, and report what went.

    spark-submit jobs/apply_retention.py [--conf conf/ENV.yaml] [--set retention.days=N …]
    tailor retention [--conf …] [--set …]

With `retention.days` unset (the default) nothing is deleted. An event is kept while its
event_date is no more than `days` days before today (UTC): with days=30 on 2024-03-31,
2024-03-01 is kept and 2024-02-29 goes. Quarantine records age from when they were quarantined.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datetime import date, datetime, time, timedelta, timezone

import click

from jobs.config import TailorConfig
from jobs.runtime import JobRun, config_options, execute, report_errors

PARTITION_PREFIX = "event_date="


def oldest_kept_day(today: date, days: int) -> date:
    """The first day retention keeps: `days` whole days back from today."""
    return today - timedelta(days=days)


def apply_retention(job: JobRun, now: datetime | None = None) -> dict:
    from pyspark.sql import functions as F

    days = job.config.retention.days
    events_uri, quarantine_uri = job.storage.uri("events"), job.storage.uri("quarantine")
    job.inputs = job.outputs = [events_uri, quarantine_uri]
    if days is None:
        job.say("retention.days is not set: nothing deleted")
        return {"events_deleted": 0, "quarantine_deleted": 0}
    now = now or datetime.now(timezone.utc)
    first_kept = oldest_kept_day(now.date(), days)

    expired = [name for name in job.storage.subfolders(events_uri)
               if name.startswith(PARTITION_PREFIX)
               and date.fromisoformat(name[len(PARTITION_PREFIX):]) < first_kept]
    events_deleted = 0
    for name in expired:
        partition = job.storage.uri("events", name)
        events_deleted += job.spark.read.parquet(partition).count()
        job.storage.delete(partition, recursive=True)

    quarantine_deleted = 0
    if job.storage.has_parquet(quarantine_uri):
        cutoff = datetime.combine(first_kept, time.min)
        quarantine = job.spark.read.parquet(quarantine_uri)
        quarantine_deleted = quarantine.where(F.col("quarantined_at") < F.lit(cutoff)).count()
        if quarantine_deleted:
            kept = quarantine.where(F.col("quarantined_at") >= F.lit(cutoff))
            job.storage.replace(quarantine_uri, lambda uri: kept.write.parquet(uri), job.run_id)

    job.say(f"kept data from {first_kept} on: deleted {events_deleted} events in "
            f"{len(expired)} day partitions and {quarantine_deleted} quarantine records")
    return {"retention_days": days, "first_kept_day": first_kept.isoformat(),
            "events_deleted": events_deleted, "event_partitions_deleted": len(expired),
            "quarantine_deleted": quarantine_deleted}


@click.command("retention")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Delete events and quarantine records older than retention.days."""
    execute("apply_retention", config, apply_retention)


if __name__ == "__main__":
    main()
