"""Canonical events -> the small tables the recommender trains on, computed in Spark.

Training runs on one machine, so Spark's job is to shrink what gets collected to pandas for
``training.interactions.build_interactions``: one row per (person, item, event type, UTC day)
instead of one per event, with ``event_count`` events in it, so repeated views or purchases of
an item add up to more confidence. A row's ``event_time`` is its latest event, which keeps
decay and the time split exact to the day, and ``value`` its latest rating;
``build_interactions`` counts only a person's latest rating of an item (a new rating replaces
the old one rather than adding to it).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

INTERACTION_COLUMNS = ["person_id", "item_id", "event_type", "event_time", "value", "event_count"]

_SECONDS_PER_DAY = 86_400


def as_of_end(day: date) -> datetime:
    """"As of DATE" includes that whole day: events strictly before the next midnight (UTC)."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc)


def item_interactions(events: DataFrame) -> DataFrame:
    """Per (person_id, item_id, event_type, UTC day): ``event_count`` events, the latest
    event_time and, for rated events, the latest properties['rating'] as ``value`` (null where
    there is none or it isn't a number)."""
    rating = F.col("properties")["rating"].try_cast("double")
    day = F.floor(F.unix_seconds("event_time") / _SECONDS_PER_DAY)
    return (events.where(F.col("item_id").isNotNull())
            .groupBy("person_id", "item_id", "event_type", day.alias("day"))
            .agg(F.max("event_time").alias("event_time"),
                 F.max_by(rating, F.when(rating.isNotNull(), F.col("event_time"))).alias("value"),
                 F.count(F.lit(1)).alias("event_count"))
            .select(*INTERACTION_COLUMNS))


def fingerprint(events: DataFrame) -> tuple[int, int]:
    """(row count, XOR of a 64-bit hash per event): order-independent, changes with any row."""
    row = events.agg(
        F.count(F.lit(1)).alias("n"),
        F.bit_xor(F.xxhash64("event_id", "event_type", "event_time", "person_id", "item_id",
                             F.to_json("properties"))).alias("x")).first()
    return int(row["n"]), int(row["x"] or 0)
