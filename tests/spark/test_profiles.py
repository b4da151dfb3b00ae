"""Profile transforms on tiny frames: age bands at their edges, most recent value wins (with
its source), trait checks, and behaviour reading release dates and sale prices."""
from datetime import date, datetime, timezone

from pyspark.sql import functions as F

from features.behaviour import BehaviourParams, behaviour_features
from features.catalogue import FeedMapping, feed_records
from features.profiles import (ProfileParams, TraitParams, age_band, build_profiles,
                               check_trait_records, crm_records)

TRAITS_SCHEMA = ("person_id string, record_id string, source string, observed_at timestamp, "
                 "user_id string, anonymous_id string, consent_personalization boolean, "
                 "traits map<string,string>")
EVENTS_SCHEMA = ("person_id string, event_id string, event_type string, event_time timestamp, "
                 "user_id string, anonymous_id string, consent_personalization boolean, "
                 "consent_analytics boolean, properties map<string,string>, item_id string, "
                 "category string, price double, discount double, session_id string, "
                 "channel string")


def ts(day: int) -> datetime:
    return datetime(2024, 3, day, tzinfo=timezone.utc)


def test_age_bands_at_their_edges(spark):
    ages = [None, 0, 17, 18, 24, 25, 34, 35, 44, 45, 54, 55, 64, 65, 120]
    rows = spark.createDataFrame([(a,) for a in ages], "age int").select(
        "age", age_band(F.col("age")).alias("band")).collect()
    assert [r.band for r in rows] == [None, "0-17", "0-17", "18-24", "18-24", "25-34", "25-34",
                                      "35-44", "35-44", "45-54", "45-54", "55-64", "55-64",
                                      "65+", "65+"]


def test_most_recent_value_wins_per_trait_with_its_source(spark):
    traits = spark.createDataFrame([
        ("p1", "r1", "crm:a", ts(1), "u1", None, True, {"city": "Leeds", "age": "40", "gender": "female"}),
        ("p1", "r2", "segment_identify", ts(3), None, "d1", None, {"city": "York"}),
        ("p1", "r3", "crm:a", ts(2), "u1", None, None, {"city": "Hull", "birth_date": "1990-03-06",
                                                         "marketing_opt_in": "false"}),
        ("p2", "r4", "crm:a", ts(2), "u2", None, None, {"city": "Bath"}),  # no consent: no row
    ], TRAITS_SCHEMA)
    events = spark.createDataFrame([
        ("p1", "e1", "page_view", ts(4), "u1", "d1", True, True, {"device_type": "ios"}, None, None,
         None, None, None, "web"),
        ("p1", "e2", "page_view", ts(5), "u1", "d2", True, True, {"device_type": "android"}, None,
         None, None, None, None, "web"),
        ("p1", "e3", "page_view", ts(1), "u1", "d1", True, True, {"device_type": "ios"}, None, None,
         None, None, None, "web"),
    ], EVENTS_SCHEMA)
    rows = build_profiles(traits, events, ProfileParams(as_of=date(2024, 3, 5))).collect()
    assert [r.person_id for r in rows] == ["p1"]
    p1 = rows[0]
    assert p1.city == "York" and p1.trait_sources["city"].source == "segment_identify"
    # the birth date (03-02) is newer than the age (03-01): 33 on 2024-03-05, one day short of 34
    assert (p1.age, p1.age_band) == (33, "25-34") and p1.trait_sources["age"].source == "crm:a"
    assert p1.marketing_opt_in is False and p1.gender == "female"
    assert p1.device_type == "ios"  # the most used device in the events, not the latest
    assert p1.user_id == "u1" and p1.first_seen == datetime(2024, 3, 1)
    assert "birth_date" not in p1.trait_sources


def test_trait_checks_reject_impossible_ages_bad_dates_and_missing_ids(spark):
    params = TraitParams(pii_key="k", now=datetime(2024, 6, 1, tzinfo=timezone.utc),
                         custom_traits={"ltv": "double"})
    rows = spark.createDataFrame([
        ('{"id":"a","age":"-1"}',), ('{"id":"b","age":"121"}',), ('{"id":"c","age":"120"}',),
        ('{"id":"d","dob":"2030-01-01"}',), ('{"id":"e","dob":"March"}',), ('{"age":"30"}',),
        ('{"id":"f","ltv":"lots"}',), ('{"id":"g","ltv":"12.5","age":"0"}',),
    ], "raw string").select("raw", F.lit("f.csv").alias("source_file"),
                            F.from_json("raw", "map<string,string>").alias("_m"),
                            F.lit(datetime(2024, 5, 1)).alias("modified_at"))
    records = crm_records(rows, "crm:t", {"customer_id": "id", "age": "age", "birth_date": "dob",
                                          "ltv": "ltv"})
    checked = {r.raw: (r.reason, r.reason_detail) for r in check_trait_records(records, params).collect()}
    assert [checked[r.raw] for r in rows.collect()] == [
        ("impossible_age", "-1"), ("impossible_age", "121"), (None, None),
        ("impossible_age", "-6"), ("unparseable_date", "birth_date"),
        ("missing_customer_id", None), ("bad_type", "ltv"), (None, None)]


def test_behaviour_uses_catalogue_release_dates_and_sale_prices(spark):
    events = spark.createDataFrame([
        # X is first seen long after its release: not a new arrival once the catalogue says so
        ("p1", "e0", "view_item", ts(1), "u1", None, True, True, {}, "X", "c", 10.0, None, None, "web"),
        ("p1", "e1", "purchase", ts(2), "u1", None, True, True, {}, "X", "c", 10.0, None, None, "web"),
        # Y bought at its sale price: a discounted purchase though the event has no discount
        ("p1", "e2", "purchase", ts(3), "u1", None, True, True, {}, "Y", "c", 8.0, None, None, "web"),
    ], EVENTS_SCHEMA)
    catalogue = spark.createDataFrame([("X", date(2023, 1, 1), None, 10.0), ("Y", None, 8.0, 12.0)],
                                      "item_id string, release_date date, sale_price double, price double")
    params = BehaviourParams(decay_from=ts(5), half_life_days=7.0, new_arrival_days=7,
                             top_categories=2, event_types=("purchase",))
    without = behaviour_features(events, params).first()
    with_catalogue = behaviour_features(events, params, catalogue).first()
    assert (without.new_arrival_purchase_share, without.discounted_purchase_share) == (1.0, 0.0)
    assert (with_catalogue.new_arrival_purchase_share, with_catalogue.discounted_purchase_share) == (0.5, 0.5)


def test_feed_categories_split_on_a_literal_separator(spark):
    rows = spark.createDataFrame([('{"id":"1","genres":"Animation|Children\'s|Comedy","year":"1995"}',)],
                                 "raw string").select(
        "raw", F.lit("items.csv").alias("source_file"),
        F.from_json("raw", "map<string,string>").alias("_m"),
        F.lit(datetime(2024, 5, 1)).alias("modified_at"))
    mapping = FeedMapping(source="feed:ml", columns={"item_id": "id", "categories": "genres",
                                                     "release_date": "year"})
    item = feed_records(rows, mapping).first()
    assert item.categories == ["Animation", "Children's", "Comedy"] and item.category == "Animation"
    assert item.release_date == date(1995, 1, 1) and item.reason is None
