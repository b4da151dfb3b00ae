"""Canonical events -> the small tables the recommender trains on, computed in Spark.

Training runs on one machine, so Spark's job is to shrink: one row per (person, item, event
type) instead of one per event, which is what gets collected to pandas for
``training.interactions.build_interactions``. Repeats of the same event type on the same item
count once (the latest one sets its time and rating).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

INTERACTION_COLUMNS = ["person_id", "item_id", "event_type", "event_time", "value"]


def as_of_end(day: date) -> datetime:
    """"As of DATE" includes that whole day: events strictly before the next midnight (UTC)."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc)


def item_interactions(events: DataFrame) -> DataFrame:
    """Per (person_id, item_id, event_type): the latest event_time and, for rated events, the
    latest properties['rating'] as ``value`` (null where there is none or it isn't a number)."""
    rating = F.col("properties")["rating"].try_cast("double")
    return (events.where(F.col("item_id").isNotNull())
            .groupBy("person_id", "item_id", "event_type")
            .agg(F.max("event_time").alias("event_time"),
                 F.max_by(rating, F.when(rating.isNotNull(), F.col("event_time"))).alias("value"))
            .select(*INTERACTION_COLUMNS))


def fingerprint(events: DataFrame) -> tuple[int, int]:
    """(row count, XOR of a 64-bit hash per event): order-independent, changes with any row."""
    row = events.agg(
        F.count(F.lit(1)).alias("n"),
        F.bit_xor(F.xxhash64("event_id", "event_type", "event_time", "person_id", "item_id",
                             F.to_json("properties"))).alias("x")).first()
    return int(row["n"]), int(row["x"] or 0)

