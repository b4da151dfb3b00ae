"""Parsing and normalization of every input shape, and every quarantine reason."""
import hashlib
import hmac
import json
from datetime import datetime, timezone

import pytest
from pyspark.sql import functions as F

from features.events import (IngestParams, check_records, dedupe_records, quarantine_rows,
                             repeated_event_ids, to_canonical)
from features.privacy import hmac_sha256_hex, mask_pii_text, normalize_phone
from jobs.config import load_config
from jobs.ingest_events import ingest_params

KEY = "unit-test-key"
NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)
ENVELOPE = {"timestamp": "2024-03-01T10:00:00+01:00", "user_id": "u1"}


@pytest.fixture(scope="module")
def params():
    params = ingest_params(load_config(environ={"TAILOR_PII_KEY": KEY}), NOW)
    assert params.pii_key == KEY
    return params


def record_id(record) -> str:
    """The event_id the ingest gives a record: its own, else the SHA-256 of its raw text."""
    if isinstance(record, dict) and "event_id" in record:
        return record["event_id"]
    line = record if isinstance(record, str) else json.dumps(record)
    return hashlib.sha256(line.encode()).hexdigest()


def run(spark, params, *records, source="dump.jsonl"):
    """(checked rows, canonical rows) for raw records (dicts or raw text), in one Spark pass."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    raw = spark.createDataFrame([(line, source) for line in lines], "raw string, source_file string")
    checked = check_records(raw, params).cache()
    rows = to_canonical(dedupe_records(checked), params).orderBy("event_id").collect()
    return checked, rows


class Batch:
    """All of a module's cases through the pipeline at once: building the plan is the slow
    part on a small machine, so each parametrized case looks its answer up here."""

    def __init__(self, spark, params, records):
        checked, rows = run(spark, params, *records)
        self.reasons = {r.event_id: (r.reason, r.reason_detail) for r in checked.collect()}
        self.rows: dict[str, list] = {}
        for row in rows:
            self.rows.setdefault(row._record_id, []).append(row)

    def reason(self, record):
        return self.reasons[record_id(record)]

    def canonical(self, record):
        return self.rows[record_id(record)]


def expected_hmac(value: str) -> str:
    return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_flat_event(spark, params):
    _, rows = run(spark, params, {
        "event_id": "e1", "event_type": "rate", "timestamp": 881250949, "user_id": "196",
        "item_id": "242", "consent": {"personalization": True, "analytics": False},
        "properties": {"rating": "3"}, "referrer": "news"})
    (row,) = rows
    assert (row.event_id, row.event_type, row.item_id, row.user_id) == ("e1", "rate", "242", "196")
    assert row.event_time == datetime(1997, 12, 4, 15, 55, 49)
    assert (row.consent_personalization, row.consent_analytics) == (True, False)
    assert row.properties == {"rating": "3", "referrer": "news"}
    assert row.channel == "web"


def test_ga4_purchase_explodes_items_and_derives_revenue(spark, params):
    _, rows = run(spark, params, {
        **ENVELOPE, "event": "purchase", "event_id": "g1", "email": " Ann@Example.COM ",
        "ecommerce": {"currency": "usd", "value": 35.0, "transaction_id": "T1", "items": [
            {"item_id": "a", "item_name": "Shirt", "price": 10.0, "quantity": 3,
             "item_category": "apparel", "item_brand": "Acme", "discount": 2.0},
            {"item_id": "b", "price": "5"}]}})
    assert [r.event_id for r in rows] == ["g1:0", "g1:1"]
    first, second = rows
    assert (first.category, first.brand, first.price, first.quantity) == ("apparel", "Acme", 10.0, 3)
    assert (first.revenue, first.discount, first.currency) == (30.0, 2.0, "USD")
    assert (second.quantity, second.revenue) == (1, 5.0)
    assert first.event_time == datetime(2024, 3, 1, 9, 0)
    assert first.email_hash == expected_hmac("ann@example.com")
    assert first.properties == {"value": "35.0", "transaction_id": "T1",
                                "consent_defaulted": "personalization,analytics"}


UA_ACTIONS = [("detail", "view_item"), ("add", "add_to_cart"), ("remove", "remove_from_cart"),
              ("checkout", "begin_checkout"), ("purchase", "purchase")]


def ua_push(action: str) -> dict:
    block = {"products": [{"id": "p1", "name": "Lamp", "price": "20.00", "category": "home",
                           "quantity": 2, "coupon": "SPRING"}]}
    if action == "purchase":
        block["actionField"] = {"id": "T9", "revenue": "40.00"}
    return {"event": "gtm.ua", "event_id": f"ua-{action}", "timestamp": 1709287200000,
            "anonymous_id": "d1", "ecommerce": {"currencyCode": "EUR", action: block}}


@pytest.fixture(scope="module")
def ua_batch(spark, params):
    return Batch(spark, params, [ua_push(action) for action, _ in UA_ACTIONS])


@pytest.mark.parametrize("action, event_type", UA_ACTIONS)
def test_universal_analytics_actions(ua_batch, action, event_type):
    (row,) = ua_batch.canonical(ua_push(action))
    assert (row.event_type, row.item_id, row.item_name, row.category) == (event_type, "p1", "Lamp", "home")
    assert (row.price, row.quantity, row.currency) == (20.0, 2, "EUR")
    assert row.revenue == (40.0 if action == "purchase" else None)
    assert row.properties["coupon"] == "SPRING"
    assert row.event_time == datetime(2024, 3, 1, 10, 0)
    if action == "purchase":
        assert row.properties["transaction_id_ua"] == "T9"


EXPORTS = [
    ({"export": "web_browse", "ts": "2024-03-01T09:58:12Z", "cookie_id": "c9", "page_type": "product",
      "sku": "s1", "dwell_seconds": 41}, "view_item", "web",
     lambda r: r.anonymous_id == "c9" and r.item_id == "s1" and r.properties["dwell_seconds"] == "41"),
    ({"export": "web_browse", "ts": "2024-03-01T09:58:12Z", "customer_id": "u7", "page_type": "home"},
     "page_view", "web", lambda r: r.user_id == "u7"),
    ({"export": "app_session", "started_at": 1709287200, "device_id": "dev1", "duration_s": 30},
     "app_open", "app", lambda r: r.anonymous_id == "dev1" and r.properties["duration_s"] == "30"),
    ({"export": "email_click", "sent_at": "2024-03-01T09:00:00-05:00", "recipient": "B@x.org",
      "campaign_id": "spring"}, "email_click", "email",
     lambda r: r.email_hash == expected_hmac("b@x.org") and r.event_time == datetime(2024, 3, 1, 14)),
    ({"export": "email_open", "sent_at": "2024-03-01T09:00:00Z", "customer_id": "u1"},
     "email_open", "email", lambda r: r.user_id == "u1"),
]


@pytest.fixture(scope="module")
def export_batch(spark, params):
    return Batch(spark, params, [case[0] for case in EXPORTS])


@pytest.mark.parametrize("record, event_type, channel, check", EXPORTS)
def test_per_channel_exports(export_batch, record, event_type, channel, check):
    (row,) = export_batch.canonical(record)
    assert (row.event_type, row.channel) == (event_type, channel)
    assert check(row)


def test_event_name_aliases_and_epoch_seconds(spark, params):
    _, rows = run(spark, params, {"event": "addToCart", "timestamp": "1709287200", "user_id": "u",
                                  "item_id": "i"},
                  {"event": "pageview", "timestamp": 1709287200.5, "user_id": "u"})
    assert sorted(r.event_type for r in rows) == ["add_to_cart", "page_view"]


def test_consent_defaults_come_from_params_and_are_marked(spark):
    params = IngestParams(pii_key=KEY, now=NOW, event_types=("page_view",), item_event_types=(),
                          default_personalization=True, default_analytics=False)
    _, rows = run(spark, params, {**ENVELOPE, "event_id": "none", "event_type": "page_view"},
                  {**ENVELOPE, "event_id": "half", "event_type": "page_view",
                   "consent": {"personalization": False}},
                  {**ENVELOPE, "event_id": "both", "event_type": "page_view",
                   "consent": {"personalization": True, "analytics": True},
                   "consent_defaulted": "personalization"})  # a sender cannot set the marker
    by_id = {row.event_id: row for row in rows}
    assert (by_id["none"].consent_personalization, by_id["none"].consent_analytics) == (True, False)
    assert by_id["none"].properties == {"consent_defaulted": "personalization,analytics"}
    assert (by_id["half"].consent_personalization, by_id["half"].consent_analytics) == (False, False)
    assert by_id["half"].properties == {"consent_defaulted": "analytics"}
    assert by_id["both"].properties == {}


REJECTED = [
    ('{"event_type": "page_view", "user_id": ', "malformed_json", "not a JSON object"),
    ("[1, 2, 3]", "malformed_json", "not a JSON object"),
    ({"timestamp": "2024-03-01T10:00:00Z", "user_id": "u"}, "missing_field", "event_type"),
    ({**ENVELOPE, "event_type": "teleport"}, "unknown_event_type", "teleport"),
    ({"event_type": "page_view", "user_id": "u"}, "missing_field", "timestamp"),
    ({"event_type": "page_view", "user_id": "u", "timestamp": "last tuesday"},
     "unparseable_timestamp", "last tuesday"),
    ({"event_type": "page_view", "user_id": "u", "timestamp": "2099-01-01T00:00:00Z"},
     "future_timestamp", "2099-01-01T00:00:00Z"),
    ({"event_type": "page_view", "timestamp": "2024-03-01T10:00:00Z"}, "missing_identifier", None),
    ({"event_type": "page_view", "timestamp": "2024-03-01T10:00:00Z", "phone": "12"},
     "missing_identifier", None),
    ({**ENVELOPE, "event_type": "purchase"}, "missing_field", "item_id"),
    ({**ENVELOPE, "event": "purchase", "ecommerce": {"items": [{"item_id": "a"}, {"price": 3}]}},
     "missing_field", "item_id"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "price": "abc"}, "bad_type", "price"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "quantity": "two"}, "bad_type", "quantity"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "revenue": "lots"}, "bad_type", "revenue"),
    ({**ENVELOPE, "event_type": "page_view", "consent": {"personalization": "maybe"}},
     "bad_type", "consent"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "price": -1}, "negative_value", "price"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "quantity": -2},
     "negative_value", "quantity"),
    ({**ENVELOPE, "event": "purchase", "ecommerce": {"items": [{"item_id": "a", "price": -5}]}},
     "negative_value", "price"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "discount": "half"}, "bad_type", "discount"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "revenue": -3}, "negative_value", "revenue"),
    ({**ENVELOPE, "event_type": "purchase", "item_id": "a", "discount": -1}, "negative_value", "discount"),
    # the first problem in check order wins across items: any bad type before any negative value
    ({**ENVELOPE, "event": "purchase", "ecommerce": {"items": [
        {"item_id": "a", "price": -5}, {"item_id": "b", "quantity": "x"}]}}, "bad_type", "quantity"),
    ({**ENVELOPE, "event": "purchase", "ecommerce": {"items": [
        {"price": 2}, {"item_id": "b", "discount": -1}]}}, "negative_value", "discount"),
]
JUST_BEFORE_THE_SKEW = {"event_type": "page_view", "user_id": "u", "timestamp": "2025-01-01T00:04:00Z"}


@pytest.fixture(scope="module")
def rejected_batch(spark, params):
    return Batch(spark, params, [case[0] for case in REJECTED] + [JUST_BEFORE_THE_SKEW])


@pytest.mark.parametrize("record, reason, detail", REJECTED)
def test_every_quarantine_reason(rejected_batch, record, reason, detail):
    assert rejected_batch.reason(record) == (reason, detail)


def test_timestamp_inside_the_future_skew_is_accepted(rejected_batch):
    assert rejected_batch.reason(JUST_BEFORE_THE_SKEW) == (None, None)


def test_duplicates_are_removed_before_items_explode(spark, params):
    record = {**ENVELOPE, "event_id": "dup", "event": "purchase",
              "ecommerce": {"items": [{"item_id": "a"}, {"item_id": "b"}]}}
    checked, rows = run(spark, params, record, record)
    assert checked.count() == 2
    assert [r.event_id for r in rows] == ["dup:0", "dup:1"]


def test_broadcast_dedupe_keeps_the_same_record_as_the_window(spark, params):
    """Only records sharing an id are shuffled when their ids are broadcast; the copy kept
    (first by source file, then by a hash of the raw text) is the one the window keeps."""
    def record(event_id, source_tag):
        return {**ENVELOPE, "event_id": event_id, "event_type": "page_view", "tag": source_tag}

    raw = spark.createDataFrame(
        [(json.dumps(record("a", "late")), "b.jsonl"), (json.dumps(record("a", "early")), "a.jsonl"),
         (json.dumps(record("b", "only")), "b.jsonl"), (json.dumps(record("c", "x")), "a.jsonl"),
         (json.dumps(record("c", "y")), "a.jsonl"), ("not json", "a.jsonl")],
        "raw string, source_file string")
    checked = check_records(raw, params).cache()
    repeated = repeated_event_ids(checked)
    assert sorted(r.event_id for r in repeated.collect()) == ["a", "c"]

    def kept(frame):
        return sorted((r.event_id, r.properties["tag"]) for r in to_canonical(frame, params).collect())

    assert kept(dedupe_records(checked, repeated)) == kept(dedupe_records(checked))
    assert dict(kept(dedupe_records(checked)))["a"] == "early"


def test_records_without_event_id_get_a_stable_hash(spark, params):
    record = json.dumps({**ENVELOPE, "event_type": "page_view"})
    _, first = run(spark, params, record)
    _, again = run(spark, params, record)
    assert first[0].event_id == again[0].event_id == hashlib.sha256(record.encode()).hexdigest()


def test_quarantine_masks_pii_and_keeps_source(spark, params):
    bad = ('{"event_type": "page_view", "email": "jane.doe@example.com", "phone": "+1 (555) 010-1234",'
           ' "note": "call +44 20 7946 0958 or mail j@x.io", "ti')
    checked, _ = run(spark, params, bad, source="s3a://b/raw/x.jsonl")
    (row,) = quarantine_rows(checked).collect()
    assert row.reason == "malformed_json" and row.source_file == "s3a://b/raw/x.jsonl"
    for secret in ("jane.doe", "example.com", "555", "7946", "j@x.io"):
        assert secret not in row.raw
    assert row.event_id is None


def test_hmac_matches_python_hmac_for_short_and_long_keys(spark):
    for key in ("k", "x" * 100):
        df = spark.createDataFrame([("ann@example.com",)], "v string")
        got = df.select(hmac_sha256_hex(F.col("v"), key)).first()[0]
        assert got == hmac.new(key.encode(), b"ann@example.com", hashlib.sha256).hexdigest()


@pytest.mark.parametrize("raw, e164", [
    ("+1 (555) 010-1234", "+15550101234"), ("555-010-1234", "+15550101234"),
    ("0044 20 7946 0958", "+442079460958"), ("020 7946 0958", "+1207946095" + "8"),
    ("12", None)])
def test_phone_normalization(spark, raw, e164):
    df = spark.createDataFrame([(raw,)], "v string")
    assert df.select(normalize_phone(F.col("v"), "1")).first()[0] == e164


def test_mask_pii_text(spark):
    df = spark.createDataFrame([('{"email": "weird value", "x": "a@b.co"}',)], "v string")
    assert df.select(mask_pii_text(F.col("v"))).first()[0] == '{"email": "***", "x": "***@***"}'
