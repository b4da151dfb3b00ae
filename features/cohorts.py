"""Monthly retention cohorts: who came back, by the month they were first active.

An aggregate (no per-person rows leave this module), so analytics consent is enough. A person
belongs to the cohort of the UTC month of their first event; `active_people` counts the cohort's
people with at least one event in the month `months_since` months later, and `retention_rate`
divides it by the cohort's size. Every month from the cohort's own up to the as-of month has a
row, zero when nobody came back.
"""
from __future__ import annotations

from datetime import date

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

COHORT_COLUMNS = ["cohort_month", "months_since", "cohort_size", "active_people", "retention_rate"]


def cohort_retention(events: DataFrame, as_of: date) -> DataFrame:
    """COHORT_COLUMNS for the events up to and including the day `as_of` (needs person_id)."""
    active = (events.where(F.col("person_id").isNotNull() & (F.to_date("event_time") <= F.lit(as_of)))
              .select("person_id", F.trunc(F.to_date("event_time"), "month").alias("month"))
              .distinct()
              .withColumn("cohort_month", F.min("month").over(Window.partitionBy("person_id"))))
    counts = (active.groupBy("cohort_month", F.months_between("month", "cohort_month")
                             .cast("int").alias("months_since"))
              .agg(F.count("*").alias("active_people")))
    last_month = F.trunc(F.lit(as_of), "month")
    grid = (counts.where(F.col("months_since") == 0)
            .select("cohort_month", F.col("active_people").alias("cohort_size"),
                    F.explode(F.sequence(F.lit(0), F.months_between(last_month, "cohort_month")
                                         .cast("int"))).alias("months_since")))
    return (grid.join(counts, ["cohort_month", "months_since"], "left")
            .select("cohort_month", "months_since", "cohort_size",
                    F.coalesce("active_people", F.lit(0)).alias("active_people"),
                    (F.coalesce("active_people", F.lit(0)) / F.col("cohort_size"))
                    .alias("retention_rate"))
            .orderBy("cohort_month", "months_since"))


def retention_heatmap(table: pd.DataFrame):
    """A cohort × months-since heatmap of retention_rate (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = table.pivot(index="cohort_month", columns="months_since", values="retention_rate")
    sizes = table.groupby("cohort_month")["cohort_size"].first()
    figure, axes = plt.subplots(figsize=(1.2 + 0.6 * max(len(grid.columns), 4),
                                         1.2 + 0.4 * max(len(grid), 3)))
    image = axes.imshow(grid.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for row, column in zip(*(~grid.isna()).to_numpy().nonzero()):
        value = grid.iat[row, column]
        axes.text(column, row, f"{value:.0%}", ha="center", va="center", fontsize=7,
                  color="white" if value < 0.5 else "black")
    axes.set_xticks(range(len(grid.columns)), [str(c) for c in grid.columns])
    axes.set_yticks(range(len(grid)), [f"{pd.Timestamp(m):%Y-%m} (n={sizes[m]})" for m in grid.index])
    axes.set_xlabel("months since first activity")
    axes.set_title("Retention by first-activity month")
    figure.colorbar(image, ax=axes, label="retention rate")
    figure.tight_layout()
    return figure
