"""Which events may feed personalization, from each person's consent over time.

A `consent_update` event sets a person's consent from its time on (it sorts before other
events at the same instant); before a person's first update, an event's own consent flags
(its record's consent block, or the configured default) apply. On top of that, a person whose
latest state withdraws personalization is left out of per-person outputs altogether, so a
withdrawal takes effect everywhere at the next run. Analytics-only consent may feed aggregate
tables (cohorts) but never per-person outputs.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

CONSENT_UPDATE = "consent_update"


def _person_key(events: DataFrame):
    """person_id where identity has been applied, else the DESIGN.md fallback."""
    if "person_id" in events.columns:
        return F.col("person_id")
    return F.coalesce("user_id", "anonymous_id")


def with_effective_consent(events: DataFrame) -> DataFrame:
    """Events with `effective_personalization`, `effective_analytics` (at the event's time) and
    `currently_personalization` (the person's latest state)."""
    person = _person_key(events)
    is_update = F.col("event_type") == CONSENT_UPDATE
    in_time = (Window.partitionBy(person).orderBy("event_time", F.when(is_update, 0).otherwise(1), "event_id")
               .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    whole_history = in_time.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)

    def effective(flag: str):
        latest_update = F.last(F.when(is_update, F.col(flag)), ignorenulls=True).over(in_time)
        return F.coalesce(latest_update, F.col(flag))

    with_state = (events.withColumn("effective_personalization", effective("consent_personalization"))
                  .withColumn("effective_analytics", effective("consent_analytics")))
    return with_state.withColumn(
        "currently_personalization",
        F.last("effective_personalization").over(whole_history))


def personalization_events(events: DataFrame) -> DataFrame:
    """Behavioural events that may feed per-person outputs (features, segments, recommenders)."""
    checked = with_effective_consent(events)
    return (checked.where(F.col("effective_personalization") & F.col("currently_personalization")
                          & (F.col("event_type") != CONSENT_UPDATE))
            .drop("effective_personalization", "effective_analytics", "currently_personalization"))


def analytics_events(events: DataFrame) -> DataFrame:
    """Behavioural events that may feed aggregate (not per-person) tables."""
    checked = with_effective_consent(events)
    return (checked.where(F.col("effective_analytics") & (F.col("event_type") != CONSENT_UPDATE))
            .drop("effective_personalization", "effective_analytics", "currently_personalization"))


def withdrawn_persons(events: DataFrame) -> DataFrame:
    """person_id of everyone who once consented to personalization and has withdrawn it (their
    latest state), for the serving suppression list. People who never consented are left out:
    nothing personal about them reaches any output, so there is nothing to suppress."""
    checked = with_effective_consent(events)
    return (checked.groupBy(_person_key(checked).alias("person_id"))
            .agg(F.max(F.col("effective_personalization").cast("int")).alias("ever"),
                 F.first("currently_personalization").alias("now"))
            .where((F.col("ever") == 1) & ~F.col("now"))
            .select("person_id"))
