"""Build catalogue/ (one row per item) from item_feed/ and the events.

    spark-submit jobs/build_catalogue.py [--conf conf/ENV.yaml] [--set k=v …]
    tailor catalogue [--conf …] [--set …]

A job of its own rather than part of `tailor profiles`: items need neither identity nor
consent (every event may say what an item is), and features and training read the catalogue
without waiting for person-level work. catalogue/ is replaced whole.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click

from jobs.config import TailorConfig
from jobs.runtime import JobRun, config_options, execute, report_errors

EVENTS_SCHEMA = ("item_id string, item_name string, category string, brand string, "
                 "price double, event_time timestamp")


def build(job: JobRun) -> dict:
    from pyspark.sql import functions as F

    from features.catalogue import CATALOGUE_COLUMNS, build_catalogue

    events_uri, feed_uri = job.storage.uri("events"), job.storage.uri("item_feed")
    target = job.storage.uri("catalogue")
    has_events, has_feed = job.storage.has_parquet(events_uri), job.storage.has_parquet(feed_uri)
    if not (has_events or has_feed):
        job.say("no events or item feeds yet: nothing to build the catalogue from")
        return {"built": False, "reason": "no events or item feeds yet"}
    job.inputs = [uri for uri, found in ((events_uri, has_events), (feed_uri, has_feed)) if found]
    job.outputs = [target]
    events = (job.spark.read.parquet(events_uri) if has_events
              else job.spark.createDataFrame([], EVENTS_SCHEMA))
    feed = job.spark.read.parquet(feed_uri) if has_feed else None
    catalogue = build_catalogue(feed, events).select(*CATALOGUE_COLUMNS)
    job.storage.replace(target, lambda uri: catalogue.coalesce(1).write.parquet(uri), job.run_id)
    row = job.spark.read.parquet(target).agg(
        F.count("*").alias("items"),
        F.count(F.when(F.col("source") != "events", 1)).alias("from_feeds"),
        F.count(F.when(F.col("source") == "events", 1)).alias("events_only"),
        F.count("release_date").alias("with_release_date"),
        F.count("sale_price").alias("with_sale_price")).first()
    counts = {"built": True, **row.asDict()}
    job.say(f"catalogue: {counts['items']} items ({counts['from_feeds']} from feeds, "
            f"{counts['events_only']} seen only in events)")
    return counts


@click.command("catalogue")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Build the item catalogue from item feeds and events (catalogue/)."""
    execute("build_catalogue", config, build)


if __name__ == "__main__":
    main()
