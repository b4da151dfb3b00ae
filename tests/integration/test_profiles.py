"""Profiles and the catalogue end to end: Segment calls, a CRM CSV and an item feed through
the ingest job, identity across an anonymous device and a later login, most-recent-wins
precedence, consent, forget, and a new catalogue item recommended as a new arrival."""
import json
from datetime import date, datetime
from pathlib import Path

import pytest

from jobs import build_catalogue, build_profiles, ingest_events, resolve_identities
from jobs.forget_users import forget
from jobs.runtime import execute
from tests.integration.test_ingest_job import strings_in, write_dump
from tests.integration.test_train_recommender import (tracked_config,  # noqa: F401 (a fixture)
                                                      train, two_tastes, write_events)

CONSENT = {"consent": {"categoryPreferences": {"personalization": True, "analytics": True}}}


def t(day: int, hour: int = 10) -> str:
    return f"2024-03-{day:02d}T{hour:02d}:00:00Z"


SEGMENT = [
    # dana: traits from her phone before she logs in (anonymous only)
    {"type": "identify", "messageId": "id-dana", "anonymousId": "anon-dana", "timestamp": t(1, 9),
     "traits": {"age": 30, "gender": "F", "email": "Dana.Doe@Example.com", "name": "Dana Doe",
                "address": {"city": "Leeds", "postalCode": "LS1 4AP", "country": "GB"},
                "createdAt": "2023-05-01T10:00:00Z", "loyalty_tier": "gold"},
     "context": {"device": {"type": "ios"}, "os": {"name": "iOS"}, "locale": "en-GB",
                 "location": {"city": "York"}, **CONSENT}, "integrations": {"All": False}},
    {"type": "page", "messageId": "pg-dana", "anonymousId": "anon-dana", "name": "Home",
     "timestamp": t(1, 10), "properties": {"url": "https://shop.test/"}, "context": CONSENT},
    # the later login: track with both ids
    {"type": "track", "event": "Product Viewed", "messageId": "tr-dana", "userId": "dana",
     "anonymousId": "anon-dana", "timestamp": t(2), "context": CONSENT,
     "properties": {"product_id": "shoe-1", "name": "Runner", "price": "59.0", "category": "shoes"}},
    {"type": "track", "event": "Order Completed", "messageId": "oc-dana", "userId": "dana",
     "timestamp": t(3), "context": CONSENT,
     "properties": {"order_id": "o1", "currency": "GBP", "products": [
         {"product_id": "shoe-1", "price": 45, "quantity": 1},
         {"product_id": "sock-1", "price": 5, "quantity": 2}]}},
    {"type": "screen", "messageId": "sc-erin", "userId": "erin", "name": "Cart", "timestamp": t(3),
     "context": {"device": {"type": "android"}, "os": {"name": "Android"}, **CONSENT}},
    {"type": "identify", "messageId": "id-erin", "userId": "erin", "timestamp": t(2),
     "traits": {"birthday": "1999-03-10", "marketing_opt_in": True}, "context": CONSENT},
    # gil: only an identify call links his device to his login
    {"type": "page", "messageId": "pg-gil", "anonymousId": "anon-gil", "timestamp": t(1, 8),
     "context": CONSENT},
    {"type": "track", "event": "Products Searched", "messageId": "se-gil", "userId": "gil",
     "timestamp": t(4), "properties": {"query": "boots"}, "context": CONSENT},
    {"type": "identify", "messageId": "id-gil", "userId": "gil", "anonymousId": "anon-gil",
     "timestamp": t(4, 11), "traits": {"gender": "m"}},
]
SEGMENT_BAD = [  # (record, reason)
    ({"type": "identify", "messageId": "bad-1", "userId": "x", "timestamp": t(2),
      "traits": {"shoe_size": 9}}, "unknown_trait"),
    ({"type": "identify", "messageId": "bad-2", "userId": "x", "timestamp": t(2),
      "traits": {"age": 130}}, "impossible_age"),
    ({"type": "identify", "messageId": "bad-3", "userId": "x", "timestamp": t(2),
      "traits": {"birthday": "31/02/later"}}, "unparseable_date"),
    ({"type": "group", "messageId": "bad-4", "userId": "x", "groupId": "g", "timestamp": t(2)},
     "unsupported_call"),
    ({"type": "track", "event": "Rocket Launched", "messageId": "bad-5", "userId": "x",
      "timestamp": t(2)}, "unknown_event_type"),
]
CRM = """customer_id,email,birth_date,gender,city,postcode,country,signup_date,marketing_opt_in,updated_at
dana,dana.doe@example.com,,female,Bradford,BD1 1AA,GB,2023-04-01,yes,2024-03-05T00:00:00Z
dana,,,female,Hull,HU1 1AA,GB,,no,2024-02-01T00:00:00Z
frank,frank@example.com,1980-01-01,m,Leeds,LS2 7AB,GB,2022-01-01,yes,2024-03-01T00:00:00Z
,nobody@example.com,1980-01-01,f,Leeds,LS2 7AB,GB,2022-01-01,yes,2024-03-01T00:00:00Z
hal,,1890-01-01,m,Leeds,,GB,,,2024-03-01T00:00:00Z
ida,,,f,Leeds,,GB,someday,,2024-03-01T00:00:00Z
"""
CRM_BAD = {"missing_customer_id": 1, "impossible_age": 1, "unparseable_date": 1}
FEED = """item_id,name,category,brand,price,sale_price,release_date,in_stock
shoe-1,Runner,shoes,Acme,60,45,2024-01-10,true
shoe-new,Trail,shoes,Acme,80,,2024-03-04,true
,Nameless,shoes,Acme,10,,2024-01-01,true
boot-1,Boot,shoes,Acme,90,,soon,true
"""


def write_inputs(folder: Path) -> Path:
    write_dump(folder, SEGMENT + [record for record, _ in SEGMENT_BAD], name="segment.jsonl.gz")
    (folder / "crm-test.csv").write_text(CRM)
    (folder / "catalogue-test.csv").write_text(FEED)
    return folder


def run(spark, config, name, body):
    return execute(name, config, body, spark=spark)


@pytest.fixture
def config(make_config, tmp_path):
    return make_config(f"storage.root={tmp_path}/root", "profiles.postcode_urban={LS: true, BD: true, BD1: false}",
                       "profiles.custom_traits.loyalty_tier=string")


def test_segment_crm_and_feed_to_profiles_catalogue_and_forget(spark, config, tmp_path):
    root = config.storage.root
    counts = run(spark, config, "ingest_events",
                 lambda job: ingest_events.ingest(job, str(write_inputs(tmp_path / "in"))))
    kinds = counts["by_kind"]
    total = counts["total"]
    assert set(kinds) == {"events", "identify", "crm:crm_customers", "catalogue:catalogue_feed"}
    for kind in kinds.values():
        assert kind["raw_records"] == kind["accepted"] + kind["quarantined"] + kind["duplicates"]
    assert (kinds["events"]["accepted"], kinds["events"]["quarantined"]) == (6, 1)
    assert (kinds["identify"]["accepted"], kinds["identify"]["quarantined"]) == (3, 4)
    assert (kinds["crm:crm_customers"]["accepted"], kinds["crm:crm_customers"]["quarantined"]) == (3, 3)
    assert kinds["crm:crm_customers"]["quarantined_by_reason"] == CRM_BAD
    assert kinds["catalogue:catalogue_feed"]["quarantined_by_reason"] == {
        "missing_field": 1, "unparseable_date": 1}
    assert total["raw_records"] == total["accepted"] + total["quarantined"] + total["duplicates"]
    assert total["raw_records"] == 7 + 7 + 6 + 4 and counts["accepted"] == 6  # top level: events
    quarantine = {q.event_id: q.reason for q in spark.read.parquet(root + "/quarantine").collect()}
    for record, reason in SEGMENT_BAD:
        assert quarantine[record["messageId"]] == reason

    events = {r.event_id: r for r in spark.read.parquet(root + "/events").collect()}
    assert events["tr-dana"].event_type == "view_item" and events["tr-dana"].item_id == "shoe-1"
    assert events["tr-dana"].price == 59.0 and events["tr-dana"].consent_personalization
    assert [events[f"oc-dana:{i}"].item_id for i in (0, 1)] == ["shoe-1", "sock-1"]
    assert events["oc-dana:1"].revenue == 10.0 and events["oc-dana:0"].currency == "GBP"
    assert events["pg-dana"].event_type == "page_view" and events["pg-dana"].channel == "web"
    assert events["sc-erin"].channel == "app" and events["sc-erin"].properties["os"] == "Android"
    assert events["se-gil"].event_type == "search" and events["se-gil"].properties["query"] == "boots"
    assert "integrations" not in json.dumps(events["pg-dana"].properties)

    run(spark, config, "resolve_identities", resolve_identities.resolve)
    built = run(spark, config, "build_profiles", build_profiles.build)
    assert built["as_of"] == "2024-03-05"
    profiles = {p.user_id: p for p in spark.read.parquet(root + "/profiles").collect()}
    assert set(profiles) == {"dana", "erin", "gil"}  # frank: CRM only, no consent given
    dana = profiles["dana"]
    person = {r.identifier: r.person_id for r in spark.read.parquet(root + "/identity")
              .where("identifier_type = 'user_id'").collect()}
    assert dana.person_id == person["dana"]
    assert (dana.age, dana.age_band, dana.gender, dana.country) == (30, "25-34", "female", "GB")
    assert (dana.city, dana.urban) == ("Bradford", False)  # the CRM row of 03-05 beats 03-01 and 02-01
    assert (dana.device_type, dana.os, dana.locale) == ("ios", "iOS", "en-GB")
    assert dana.signup_date == date(2023, 4, 1) and dana.marketing_opt_in is True
    assert dana.loyalty_tier == "gold"
    assert dana.trait_sources["city"].source == "crm:crm_customers"
    assert dana.trait_sources["city"].updated_at == datetime(2024, 3, 5)
    assert dana.trait_sources["age_band"].source == "segment_identify"
    # seen: events and identify calls, not CRM rows (their time is the export's)
    assert dana.first_seen == datetime(2024, 3, 1, 9) and dana.last_seen == datetime(2024, 3, 3, 10)
    erin = profiles["erin"]
    assert (erin.age, erin.age_band, erin.device_type, erin.urban) == (24, "18-24", "android", None)
    gil = profiles["gil"]
    assert gil.gender == "male" and gil.first_seen == datetime(2024, 3, 1, 8)  # anon-gil joined
    columns = spark.read.parquet(root + "/profiles").columns
    assert "birth_date" not in columns and "postcode" not in columns and "email" not in columns

    catalogue_counts = run(spark, config, "build_catalogue", build_catalogue.build)
    assert catalogue_counts["items"] == 3 and catalogue_counts["events_only"] == 1
    items = {r.item_id: r for r in spark.read.parquet(root + "/catalogue").collect()}
    assert items["shoe-1"].sale_price == 45.0 and items["shoe-1"].last_price == 45.0
    assert items["shoe-1"].first_seen == datetime(2024, 3, 2, 10)
    assert items["sock-1"].source == "events" and items["sock-1"].last_price == 5.0
    assert items["shoe-new"].release_date == date(2024, 3, 4) and items["shoe-new"].categories == ["shoes"]

    for path in Path(root).rglob("*.parquet"):
        text = strings_in(path)
        assert "example.com" not in text.lower() and "Dana Doe" not in text

    removed = run(spark, config, "forget_users",
                  lambda job: forget(job, [{"user_id": "dana"}], "forget-dana"))["rows_removed"]
    assert removed["profiles"] == 1 and removed["traits"] == 3
    assert {p.user_id for p in spark.read.parquet(root + "/profiles").collect()} == {"erin", "gil"}


def test_new_catalogue_item_is_recommended_as_a_new_arrival_in_its_category(
        spark, tracked_config, tmp_path):
    root = tmp_path / "root"
    write_events(spark, root, two_tastes())  # even people like even items, odd people odd ones
    feed = ["item_id,name,category,release_date"] + [
        f"i{i:02d},Item {i},{'shoes' if i % 2 == 0 else 'books'},2023-01-01" for i in range(20)]
    feed.append("new-shoe,Trail,shoes,2024-03-10")  # released in the data's last month, never seen
    (tmp_path / "feed").mkdir()
    (tmp_path / "feed" / "catalogue-new.csv").write_text("\n".join(feed) + "\n")
    config = tracked_config("training.model=popularity")
    run(spark, config, "ingest_events",
        lambda job: ingest_events.ingest(job, str(tmp_path / "feed")))
    run(spark, config, "build_catalogue", build_catalogue.build)
    assert train(spark, config)["trained"] is True

    recs = spark.read.parquet(str(root / "recommendations")).toPandas()
    new = recs[recs.reason == "new_arrival"]
    assert set(new.item_id) == {"new-shoe"}
    even = {f"u{p:02d}" for p in range(0, 40, 2)}
    assert set(new.person_id) == even  # only the people who like shoes
    assert (new["rank"] == 10).all() and (recs.groupby("person_id").size() == 10).all()
    assert set(recs.loc[recs.reason == "model", "item_id"]) <= {f"i{i:02d}" for i in range(20)}
