"""Which events may feed personalization, from each person's consent over time.

A person's consent changes only through explicit signals: `consent_update` events and any
record that carried its own consent block. An event without a block takes the state in force
at its time (the latest signal at or before it); before a person's first signal it keeps its
own flags, which ingest filled from the configured default. Ingest marks such rows with the
`consent_defaulted` property (the comma-separated flags, "personalization" and/or "analytics",
that took the default); rows without the marker count as signals. Conflicting signals at one
instant resolve to the more restrictive one, so an event is never used on the strength of a
grant sent in the same instant as a withdrawal.

On top of that, a person whose latest state withdraws personalization is left out of
per-person outputs altogether, so a withdrawal takes effect everywhere at the next run.
Analytics-only consent may feed aggregate tables (cohorts) but never per-person outputs.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

CONSENT_UPDATE = "consent_update"
# The `properties` key ingest sets on rows whose consent flags came from config, not the record.
DEFAULTED_PROPERTY = "consent_defaulted"
FLAGS = {"personalization": "consent_personalization", "analytics": "consent_analytics"}
_STATE_COLUMNS = ["effective_personalization", "effective_analytics", "currently_personalization"]


def _person_key(events: DataFrame):
    """person_id where identity has been applied, else the DESIGN.md fallback."""
    if "person_id" in events.columns:
        return F.col("person_id")
    return F.coalesce("user_id", "anonymous_id")


def _signal(events: DataFrame, flag: str):
    """The row's flag where the record expressed it, else null."""
    column = F.col(FLAGS[flag])
    if "properties" not in events.columns:
        return column
    defaulted = F.split(F.coalesce(F.col("properties")[DEFAULTED_PROPERTY], F.lit("")), ",")
    return F.when(~F.array_contains(defaulted, flag), column)


def with_effective_consent(events: DataFrame) -> DataFrame:
    """Events with `effective_personalization`, `effective_analytics` (at the event's time) and
    `currently_personalization` (the person's latest state)."""
    person = _person_key(events)
    timeline = Window.partitionBy(person).orderBy("event_time", "event_id")
    in_time = timeline.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    instant = (Window.partitionBy(person).orderBy("event_time")
               .rangeBetween(Window.currentRow, Window.currentRow))
    whole_history = in_time.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)

    with_state = events
    for flag, column in FLAGS.items():
        # min over booleans: one withdrawal among the instant's signals makes it a withdrawal
        signal_at_instant = F.min(_signal(events, flag)).over(instant)
        in_force = F.last(signal_at_instant, ignorenulls=True).over(in_time)
        with_state = with_state.withColumn(f"effective_{flag}", F.coalesce(in_force, F.col(column)))
    return with_state.withColumn(
        "currently_personalization",
        F.last("effective_personalization").over(whole_history))


def personalization_events(events: DataFrame) -> DataFrame:
    """Behavioural events that may feed per-person outputs (features, segments, recommenders)."""
    checked = with_effective_consent(events)
    return (checked.where(F.col("effective_personalization") & F.col("currently_personalization")
                          & (F.col("event_type") != CONSENT_UPDATE))
            .drop(*_STATE_COLUMNS))


def analytics_events(events: DataFrame) -> DataFrame:
    """Behavioural events that may feed aggregate (not per-person) tables."""
    checked = with_effective_consent(events)
    return (checked.where(F.col("effective_analytics") & (F.col("event_type") != CONSENT_UPDATE))
            .drop(*_STATE_COLUMNS))


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
