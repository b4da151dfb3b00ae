"""RFM per purchasing person, with the BTYD fields of customer-lifetime-value models.

The unit of purchase is the purchase *day* (UTC), as in the `lifetimes` package's
`summary_data_from_transaction_data(..., freq="D")`, so several orders on one day count once:

* `recency_days`: days from the last purchase day to the as-of day; `frequency`: distinct
  purchase days; `monetary_total`: revenue; `monetary_avg`: revenue per purchase day.
* `btyd_frequency`: repeat purchase days (distinct purchase days - 1);
  `btyd_recency`: days from the first to the last purchase day;
  `btyd_T`: days from the first purchase day to the as-of day;
  `btyd_monetary_value`: mean of the per-day totals after the first purchase day (0 without
  repeats).

"As of DATE" includes that whole day. Scores are 1-5 by the quintile edges (20/40/60/80th
percentiles, linearly interpolated) of the purchasing people: a value scores 1 plus the number
of edges it beats (recency: is below; frequency and money: is above), so equal values always
get equal scores, and a column where everyone is equal scores 1 throughout.
"""
from __future__ import annotations

from datetime import date

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

QUINTILE_EDGES = (0.2, 0.4, 0.6, 0.8)

# rfm_segment by r_score (rows) and fm_score = (f_score + m_score) div 2 (columns 1..5).
SEGMENTS = {
    5: ("New", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"),
    4: ("Promising", "Potential Loyalist", "Loyal", "Loyal", "Champions"),
    3: ("About to Sleep", "About to Sleep", "Need Attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At Risk", "At Risk", "Cannot Lose Them"),
    1: ("Lost", "Lost", "At Risk", "Cannot Lose Them", "Cannot Lose Them"),
}

RFM_COLUMNS = [
    "person_id", "first_purchase_day", "last_purchase_day", "recency_days", "frequency",
    "monetary_total", "monetary_avg", "btyd_frequency", "btyd_recency", "btyd_T",
    "btyd_monetary_value", "r_score", "f_score", "m_score", "rfm_segment",
]


def purchase_days(events: DataFrame, as_of: date) -> DataFrame:
    """(person_id, day, day_total): one row per person and UTC day with a purchase, to `as_of`."""
    day = F.to_date("event_time")
    purchases = (events.where((F.col("event_type") == "purchase") & F.col("person_id").isNotNull()
                              & (day <= F.lit(as_of)))
                 .select("person_id", day.alias("day"),
                         F.coalesce("revenue", F.lit(0.0)).alias("revenue")))
    # Few people buy twice on a day, so summing each day before a shuffle saves little: one
    # shuffle by person serves both this aggregate and rfm_values' per-person one.
    return (purchases.repartition("person_id").groupBy("person_id", "day")
            .agg(F.sum("revenue").alias("day_total")))


def rfm_values(events: DataFrame, as_of: date) -> DataFrame:
    """The unscored RFM and BTYD columns, one row per person with a purchase up to `as_of`."""
    as_of_day = F.lit(as_of)
    per_person = purchase_days(events, as_of).groupBy("person_id").agg(
        F.min("day").alias("first_purchase_day"),
        F.max("day").alias("last_purchase_day"),
        F.count("*").alias("frequency"),
        F.sum("day_total").alias("monetary_total"),
        F.min_by("day_total", "day").alias("_first_day_total"))
    repeats = F.col("frequency") - 1
    return per_person.select(
        "person_id", "first_purchase_day", "last_purchase_day",
        F.datediff(as_of_day, "last_purchase_day").alias("recency_days"),
        "frequency", "monetary_total",
        (F.col("monetary_total") / F.col("frequency")).alias("monetary_avg"),
        repeats.alias("btyd_frequency"),
        F.datediff("last_purchase_day", "first_purchase_day").alias("btyd_recency"),
        F.datediff(as_of_day, "first_purchase_day").alias("btyd_T"),
        F.when(repeats > 0, (F.col("monetary_total") - F.col("_first_day_total")) / repeats)
        .otherwise(F.lit(0.0)).alias("btyd_monetary_value"))


def _score(value: Column, edges: Column, higher_is_better: bool) -> Column:
    beaten = [(value > edges[i]) if higher_is_better else (value < edges[i])
              for i in range(len(QUINTILE_EDGES))]
    return sum((b.cast("int") for b in beaten), F.lit(1))


def segment_of(r_score: Column, fm_score: Column) -> Column:
    """The SEGMENTS cell for (r_score, fm_score)."""
    cells = [(F.lit(f"{r}{fm}"), F.lit(name)) for r, row in SEGMENTS.items()
             for fm, name in enumerate(row, start=1)]
    lookup = F.create_map(*[part for cell in cells for part in cell])
    return lookup[F.concat(r_score.cast("string"), fm_score.cast("string"))]


def score_rfm(values: DataFrame) -> DataFrame:
    """`values` with r/f/m quintile scores and rfm_segment (the edges come from `values` itself)."""
    edges = values.agg(*[F.percentile(name, list(QUINTILE_EDGES)).alias(f"_{name}_edges")
                         for name in ("recency_days", "frequency", "monetary_total")])
    scored = values.crossJoin(F.broadcast(edges)).select(
        *values.columns,
        _score(F.col("recency_days"), F.col("_recency_days_edges"), False).alias("r_score"),
        _score(F.col("frequency"), F.col("_frequency_edges"), True).alias("f_score"),
        _score(F.col("monetary_total"), F.col("_monetary_total_edges"), True).alias("m_score"))
    fm_score = F.floor((F.col("f_score") + F.col("m_score")) / 2).cast("int")
    return scored.withColumn("rfm_segment", segment_of(F.col("r_score"), fm_score)).select(*RFM_COLUMNS)


def rfm_features(events: DataFrame, as_of: date) -> DataFrame:
    """RFM_COLUMNS for every person with a purchase up to and including the day `as_of`.

    `events` are canonical events with person_id, already limited to the consent they need.
    """
    return score_rfm(rfm_values(events, as_of))
