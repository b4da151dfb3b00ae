"""RFM and the BTYD fields: CDNOW against an independent pandas computation of the lifetimes
definitions, and hand-made cases for the as-of day, quintile edges, ties and segments."""
import json
from datetime import date, datetime, time, timedelta, timezone

import pandas as pd
import pytest
from pyspark.sql import functions as F

from features.rfm import SEGMENTS, rfm_features, segment_of
from jobs.datasets import cdnow_records
from tests.conftest import REPO

CDNOW = REPO.parent / "shared" / "datasets" / "cdnow"
PURCHASES = "person_id string, event_type string, event_time timestamp, revenue double"
SEGMENT_NAMES = {"Champions", "Loyal", "Potential Loyalist", "New", "Promising", "Need Attention",
                 "About to Sleep", "At Risk", "Cannot Lose Them", "Hibernating", "Lost"}


def lifetimes_summary(as_of: date) -> pd.DataFrame:
    """lifetimes' summary_data_from_transaction_data(freq="D", monetary_value_col=...) on the raw
    CDNOW file, written out in pandas: per customer, the purchase days up to `as_of`."""
    raw = pd.read_csv(CDNOW / "CDNOW_sample.txt", sep=r"\s+", header=None, dtype={2: str},
                      names=["original", "customer", "date", "cds", "dollars"])
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    raw = raw[raw["date"] <= pd.Timestamp(as_of)]
    days = raw.groupby(["customer", "date"], as_index=False)["dollars"].sum()
    first = days.groupby("customer")["date"].transform("min")
    summary = days.groupby("customer").agg(first=("date", "min"), last=("date", "max"),
                                           periods=("date", "size"), total=("dollars", "sum"))
    summary["frequency"] = summary["periods"] - 1
    summary["recency"] = (summary["last"] - summary["first"]).dt.days
    summary["T"] = (pd.Timestamp(as_of) - summary["first"]).dt.days
    summary["monetary_value"] = (days[days["date"] > first].groupby("customer")["dollars"].mean()
                                 .reindex(summary.index).fillna(0.0))
    summary.index = summary.index.astype(str)
    return summary


@pytest.fixture(scope="module")
def cdnow(spark):
    """CDNOW as the importer writes it, as the canonical purchase events ingest makes of it
    (ingest itself is tested on the same file in tests/integration/test_sample_and_datasets.py)."""
    records = [json.loads(line) for line in cdnow_records(CDNOW)]
    rows = [(r["user_id"], r["event_type"], datetime.fromisoformat(r["timestamp"]), r["revenue"])
            for r in records]
    return spark.createDataFrame(rows, PURCHASES).cache()


@pytest.mark.parametrize("as_of", [date(1998, 6, 30), date(1997, 12, 12)])
def test_cdnow_btyd_fields_equal_the_lifetimes_definitions(cdnow, as_of):
    expected = lifetimes_summary(as_of)
    got = rfm_features(cdnow, as_of).toPandas().set_index("person_id").loc[expected.index]
    assert len(got) == len(expected)
    assert (got["btyd_frequency"] == expected["frequency"]).all()
    assert (got["btyd_recency"] == expected["recency"]).all()
    assert (got["btyd_T"] == expected["T"]).all()
    assert got["btyd_monetary_value"].to_numpy() == pytest.approx(
        expected["monetary_value"].to_numpy(), rel=1e-9, abs=1e-9)
    assert (got["frequency"] == expected["periods"]).all()
    assert (got["recency_days"] == (pd.Timestamp(as_of) - expected["last"]).dt.days).all()
    assert got["monetary_total"].to_numpy() == pytest.approx(expected["total"].to_numpy(), rel=1e-9)
    on_the_day = got["last_purchase_day"] == as_of
    assert on_the_day.any() and (got.loc[on_the_day, "recency_days"] == 0).all()


AS_OF = date(2024, 3, 31)
# person: (purchases as (days before AS_OF, revenue)), expected (recency, frequency, total,
# btyd_frequency, btyd_recency, btyd_T, btyd_monetary_value, r, f, m, segment).
# Edges over these ten people: recency 1.8/3.6/5.4/7.2, frequency 1/1/2/3.2, money 10/10/60/140.
CASES = {
    "a": ([(0, 10.0)], (0, 1, 10.0, 0, 0, 0, 0.0, 5, 1, 1, "New")),
    "b": ([(d, 50.0) for d in range(1, 11)], (1, 10, 500.0, 9, 9, 10, 50.0, 5, 5, 5, "Champions")),
    "c": ([(2, 10.0), (2, None)], (2, 1, 10.0, 0, 0, 2, 0.0, 4, 1, 1, "Promising")),
    "d": ([(5, 20.0), (5, 10.0), (3, 30.0)], (3, 2, 60.0, 1, 2, 5, 30.0, 4, 3, 3, "Loyal")),
    "e": ([(4, 10.0)], (4, 1, 10.0, 0, 0, 4, 0.0, 3, 1, 1, "About to Sleep")),
    "f": ([(9, 40.0), (7, 30.0), (5, 30.0)], (5, 3, 100.0, 2, 4, 9, 30.0, 3, 4, 4, "Loyal")),
    "g": ([(6, 10.0)], (6, 1, 10.0, 0, 0, 6, 0.0, 2, 1, 1, "Hibernating")),
    "h": ([(d, 75.0) for d in (10, 9, 8, 7)], (7, 4, 300.0, 3, 3, 10, 75.0, 2, 5, 5, "Cannot Lose Them")),
    "i": ([(20, 30.0), (8, 30.0)], (8, 2, 60.0, 1, 12, 20, 30.0, 1, 3, 3, "At Risk")),
    "j": ([(9, 10.0)], (9, 1, 10.0, 0, 0, 9, 0.0, 1, 1, 1, "Lost")),
}
FIELDS = ["recency_days", "frequency", "monetary_total", "btyd_frequency", "btyd_recency",
          "btyd_T", "btyd_monetary_value", "r_score", "f_score", "m_score", "rfm_segment"]


def at(days_before: int, clock: time = time(23, 59, 59)) -> datetime:
    return datetime.combine(AS_OF - timedelta(days=days_before), clock, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def hand_made(spark):
    rows = [(person, "purchase", at(days), revenue)
            for person, (purchases, _) in CASES.items() for days, revenue in purchases]
    rows += [
        ("a", "purchase", at(-1, time(0)), 999.0),  # the day after the as-of day: not counted
        ("k", "view_item", at(1), None),  # never bought: no row
        (None, "purchase", at(1), 5.0),  # nobody's: no row
    ]
    events = spark.createDataFrame(rows, PURCHASES)
    return {row.person_id: row for row in rfm_features(events, AS_OF).collect()}


def test_one_row_per_purchasing_person(hand_made):
    assert sorted(hand_made) == sorted(CASES)


@pytest.mark.parametrize("person", sorted(CASES))
def test_fields_scores_and_segment(hand_made, person):
    row = hand_made[person]
    assert tuple(row[field] for field in FIELDS) == pytest.approx(CASES[person][1])
    assert row["monetary_avg"] == pytest.approx(row["monetary_total"] / row["frequency"])


def test_equal_values_score_equal(spark):
    events = spark.createDataFrame([(p, "purchase", at(3), 10.0) for p in "xyz"], PURCHASES)
    scores = {(r.r_score, r.f_score, r.m_score, r.rfm_segment)
              for r in rfm_features(events, AS_OF).collect()}
    assert scores == {(1, 1, 1, "Lost")}


def test_segment_table_is_complete_and_looked_up_cell_by_cell(spark):
    assert {name for row in SEGMENTS.values() for name in row} == SEGMENT_NAMES
    cells = spark.createDataFrame([(r, fm) for r in range(1, 6) for fm in range(1, 6)], "r int, fm int")
    looked_up = {(row.r, row.fm): row.segment for row in
                 cells.select("r", "fm", segment_of(F.col("r"), F.col("fm")).alias("segment")).collect()}
    assert looked_up == {(r, fm): SEGMENTS[r][fm - 1] for r in range(1, 6) for fm in range(1, 6)}
