"""Experiment outcomes per person: first exposure, then conversions within a window after it.

A person counts in the variant of their first exposure to the experiment (exposures are
`exposure` events whose properties carry experiment_id and variant); a conversion counts when
it is a `conversion_event` strictly after that first exposure and at most `window_hours` after
it, so what happened before the person saw the variant is never credited to it. People exposed
to more than one variant (a changed salt, an identity merge) are flagged, and the analysis
leaves them out rather than guess.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

def first_exposures(events: DataFrame, experiment_id: str) -> DataFrame:
    """(person_id, variant, exposed_at, variants_seen): one row per exposed person."""
    exposures = events.where((F.col("event_type") == "exposure")
                             & (F.col("properties")["experiment_id"] == experiment_id)
                             & F.col("person_id").isNotNull())
    variant = F.col("properties")["variant"]
    return exposures.groupBy("person_id").agg(
        F.min_by(variant, F.struct("event_time", "event_id")).alias("variant"),
        F.min("event_time").alias("exposed_at"),
        F.countDistinct(variant).alias("variants_seen"))


def person_outcomes(events: DataFrame, experiment_id: str, conversion_event: str,
                    window_hours: float, observed_until: float) -> DataFrame:
    """Each exposed person's variant, whether and how often they converted in the window, and
    `window_open`: their window had not closed by `observed_until` (epoch seconds of the latest
    event)."""
    window_seconds = float(window_hours) * 3600.0
    first = first_exposures(events, experiment_id)
    conversions = (events.where(F.col("event_type") == conversion_event)
                   .select(F.col("person_id").alias("_person"),
                           F.col("event_time").cast("double").alias("_converted_at"))
                   .dropDuplicates())
    start = F.col("exposed_at").cast("double")
    in_window = ((F.col("_person") == F.col("person_id")) & (F.col("_converted_at") > start)
                 & (F.col("_converted_at") <= start + F.lit(window_seconds)))
    return (first.join(conversions, in_window, "left")
            .groupBy("person_id", "variant", "exposed_at", "variants_seen")
            .agg(F.count("_converted_at").alias("conversions"))
            .select("person_id", "variant", "exposed_at", "variants_seen",
                    (F.col("conversions") > 0).alias("converted"), "conversions",
                    (start + F.lit(window_seconds) > F.lit(float(observed_until))).alias("window_open")))


def variant_counts(outcomes: DataFrame) -> DataFrame:
    """Per variant: people, people converted, conversions and people with an open window
    (people seen in several variants left out)."""
    return (outcomes.where(F.col("variants_seen") == 1).groupBy("variant")
            .agg(F.count("*").alias("people"),
                 F.sum(F.col("converted").cast("long")).alias("converted"),
                 F.sum("conversions").alias("conversions"),
                 F.sum(F.col("window_open").cast("long")).alias("window_open")))
