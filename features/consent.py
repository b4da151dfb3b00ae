"""Which events may feed personalization.

Only events recorded with personalization consent feed per-person outputs (features,
segments, recommenders); analytics-only consent may feed aggregates such as cohorts.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def personalization_events(events: DataFrame) -> DataFrame:
    """Events whose person had personalization consent at the event's time."""
    return events.where(F.col("consent_personalization"))


def analytics_events(events: DataFrame) -> DataFrame:
    """Events that may feed aggregate (not per-person) tables."""
    return events.where(F.col("consent_analytics"))
