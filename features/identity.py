"""Who an event belongs to: `person_id`, from identity resolution where it has run.

Where identity/ has not been written yet, person_id falls back to the logged-in user_id, else
the anonymous_id (DESIGN.md), so every later stage can key on person_id from day one.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def with_person_id(events: DataFrame) -> DataFrame:
    """Events with `person_id` (fallback: user_id, else anonymous_id)."""
    return events.withColumn("person_id", F.coalesce("user_id", "anonymous_id"))
