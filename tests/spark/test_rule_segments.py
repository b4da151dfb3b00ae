"""Rule segments: window boundaries (47h59m in, 48h01m out), one event per step (a repeated
step type needs two events), the same item for the item steps (`same_item`), counts in a
window, a feature rule with an absence condition and a profile-trait rule (from a hand-written
profiles/ Parquet) — in one Spark evaluation; unknown fields, event types and keys refused at
load."""
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from features.rule_segments import RuleError, evaluate_rule, known_fields, parse_rules
from jobs.config import load_config
from tests.conftest import REPO

CONFIG = load_config(REPO / "conf" / "test.yaml")
EVENT_TYPES = CONFIG.ingest.event_types
ITEM_EVENT_TYPES = CONFIG.ingest.item_event_types
FIELDS = known_fields(EVENT_TYPES, CONFIG.features.channels, ["loyalty_tier"],
                      CONFIG.features.device_types)
AS_OF = datetime(2024, 6, 30, 12, 0, tzinfo=timezone.utc)
T = AS_OF - timedelta(days=5)
H = timedelta(hours=1)
MIN = timedelta(minutes=1)
RULES = {"rules": {
    "browse_cart_email_48h": {"when": [
        {"sequence": ["view_item", "add_to_cart", "email_click"], "within": "48h"}]},
    "cart_it_email_48h": {"when": [
        {"sequence": ["view_item", "add_to_cart", "email_click"], "within": "48h", "same_item": True}]},
    "viewed_twice_1h": {"when": [{"sequence": ["view_item", "view_item"], "within": "1h"}]},
    "frequent_buyers_90d": {"when": [{"count": "purchase", "at_least": 3, "in_last": "90d"}]},
    "champions_gone_quiet": {"when": [
        {"field": "rfm.rfm_segment", "equals": "Champions"},
        {"count": "purchase", "at_most": 0, "in_last": "30d"}]},
    "urban_25_34": {"when": [{"field": "profile.age_band", "equals": "25-34"},
                             {"field": "profile.urban", "equals": True}]},
}}


def events_rows():
    """(person_id, event_type, event_time, item_id): item events are on item "A" unless said
    otherwise, the others on no item."""
    rows = [
        # in: the click 47h59m after the view
        ("in", "view_item", T), ("in", "add_to_cart", T + H), ("in", "email_click", T + 47 * H + timedelta(minutes=59)),
        # out: 48h01m
        ("out", "view_item", T), ("out", "add_to_cart", T + H), ("out", "email_click", T + 48 * H + timedelta(minutes=1)),
        # viewed A, put B in the cart: in the plain sequence, out with same_item
        ("other_item", "view_item", T), ("other_item", "add_to_cart", T + H, "B"),
        ("other_item", "email_click", T + 2 * H),
        # viewed A and B, put B in the cart: B's view and cart make it
        ("both_items", "view_item", T, "B"), ("both_items", "view_item", T + H),
        ("both_items", "add_to_cart", T + 2 * H, "B"), ("both_items", "email_click", T + 3 * H),
        # viewed twice within 1h: one view is not two; two views at the same instant are
        ("one_view", "view_item", T), ("two_views", "view_item", T), ("two_views", "view_item", T + 59 * MIN),
        ("same_instant", "view_item", T), ("same_instant", "view_item", T),
        ("views_apart", "view_item", T), ("views_apart", "view_item", T + 61 * MIN),
        # out: the steps in the wrong order
        ("order", "email_click", T), ("order", "view_item", T + H), ("order", "add_to_cart", T + 2 * H),
        # in: a later view restarts the clock (49h after the first view, 39h after the second)
        ("restart", "view_item", T), ("restart", "view_item", T + 10 * H),
        ("restart", "add_to_cart", T + 40 * H), ("restart", "email_click", T + 49 * H),
        # 3 purchases in 90 days, and one of 3 just outside
        ("buy3", "purchase", AS_OF - timedelta(days=89)), ("buy3", "purchase", AS_OF - timedelta(days=10)),
        ("buy3", "purchase", AS_OF - timedelta(days=1)),
        ("buy3old", "purchase", AS_OF - timedelta(days=90, minutes=1)),
        ("buy3old", "purchase", AS_OF - timedelta(days=10)), ("buy3old", "purchase", AS_OF - timedelta(days=1)),
        # champions: quiet for 40 days, bought 5 days ago; a quiet Loyal
        ("champ_quiet", "purchase", AS_OF - timedelta(days=40)), ("champ_quiet", "page_view", AS_OF - H),
        ("champ_recent", "purchase", AS_OF - timedelta(days=5)),
        ("loyal_quiet", "page_view", AS_OF - H),
        # profiles: consented people (they have events)
        ("young_urban", "page_view", AS_OF - H), ("young_rural", "page_view", AS_OF - H),
        # after the as-of time: ignored
        ("late", "purchase", AS_OF + H), ("late", "purchase", AS_OF + 2 * H), ("late", "purchase", AS_OF + 3 * H),
    ]
    return [(*row, "A" if row[1] in ITEM_EVENT_TYPES else None) if len(row) == 3 else row
            for row in rows]


def test_rule_segments_in_spark(spark, tmp_path):
    events = spark.createDataFrame(events_rows(), "person_id string, event_type string, "
                                                  "event_time timestamp, item_id string")
    people = events.select("person_id").distinct()
    rfm = spark.createDataFrame([("champ_quiet", "Champions"), ("champ_recent", "Champions"),
                                 ("loyal_quiet", "Loyal")], "person_id string, rfm_segment string")
    pd.DataFrame({"person_id": ["young_urban", "young_rural", "no_events"],
                  "age_band": ["25-34", "25-34", "25-34"], "urban": [True, False, True],
                  "age": [30, 31, 29]}).to_parquet(tmp_path / "profiles.parquet")
    profiles = spark.read.parquet(str(tmp_path / "profiles.parquet"))
    rules = parse_rules(RULES, EVENT_TYPES, FIELDS, ITEM_EVENT_TYPES)
    union = None
    for rule in rules:
        found = evaluate_rule(rule, events, people, {"rfm": rfm, "profile": profiles}, AS_OF)
        union = found if union is None else union.unionByName(found)
    got = union.toPandas()
    members = {name: set(group["person_id"]) for name, group in got.groupby("rule_segment")}
    since = {(r.rule_segment, r.person_id): pd.Timestamp(r.since).tz_localize("UTC")
             if pd.Timestamp(r.since).tzinfo is None else pd.Timestamp(r.since) for r in got.itertuples()}

    assert members["browse_cart_email_48h"] == {"in", "restart", "other_item", "both_items"}
    assert since["browse_cart_email_48h", "in"] == T + 47 * H + timedelta(minutes=59)
    assert members["cart_it_email_48h"] == {"in", "restart", "both_items"}
    assert since["cart_it_email_48h", "both_items"] == T + 3 * H
    # one_view, in, out, …: a single view is not two; views_apart and restart: over the hour;
    # both_items: B's view and A's view an hour apart, the bound included
    assert members["viewed_twice_1h"] == {"two_views", "same_instant", "both_items"}
    assert since["viewed_twice_1h", "two_views"] == T + 59 * MIN
    assert members["frequent_buyers_90d"] == {"buy3"}
    assert since["frequent_buyers_90d", "buy3"] == AS_OF - timedelta(days=1)  # the 3rd in the window
    assert members["champions_gone_quiet"] == {"champ_quiet"}
    # out of bounds since the window emptied: the last purchase + 30 days
    assert since["champions_gone_quiet", "champ_quiet"] == AS_OF - timedelta(days=10)
    assert members["urban_25_34"] == {"young_urban"}  # "no_events" has no consented events
    assert since["urban_25_34", "young_urban"] == AS_OF


@pytest.mark.parametrize("rule, message", [
    ({"when": [{"field": "rfm.rfm_segmnt", "equals": "Champions"}]}, "unknown field 'rfm.rfm_segmnt'"),
    ({"when": [{"field": "profile.shoe_size", "at_least": 40}]}, "unknown field 'profile.shoe_size'"),
    ({"when": [{"count": "purchased", "at_least": 3}]}, "unknown event type 'purchased'"),
    ({"when": [{"sequence": ["view_item", "add_to_basket"], "within": "2h"}]},
     "unknown event type 'add_to_basket'"),
    ({"when": [{"count": "purchase", "at_least": 3, "in_the_last": "90d"}]}, "unknown key 'in_the_last'"),
    ({"when": [{"sequence": ["view_item", "purchase"], "within": "two days"}]}, "duration 'two days'"),
    ({"when": [{"field": "rfm.frequency"}]}, "needs exactly one of"),
    ({"when": [{"sequence": ["view_item", "email_click"], "within": "2h", "same_item": True}]},
     "same_item needs two or more steps of item event types"),
    ({"when": [{"sequence": ["view_item", "add_to_cart"], "within": "2h", "same_item": "yes"}]},
     "same_item is true or false"),
], ids=["rfm-field", "profile-field", "count-event", "sequence-event", "key", "duration", "operator",
        "same-item-one-item-step", "same-item-not-bool"])
def test_bad_rules_refused_at_load_naming_the_problem(rule, message):
    with pytest.raises(RuleError, match="rule 'r'.*" + message.replace("(", r"\(")):
        parse_rules({"rules": {"r": rule}}, EVENT_TYPES, FIELDS, ITEM_EVENT_TYPES)


def test_custom_profile_trait_and_the_committed_rules_load():
    import yaml

    parse_rules({"rules": {"r": {"when": [{"field": "profile.loyalty_tier", "in": ["gold"]}]}}},
                EVENT_TYPES, FIELDS)
    rules = parse_rules(yaml.safe_load((REPO / "conf" / "segments.yaml").read_text()), EVENT_TYPES,
                        FIELDS, ITEM_EVENT_TYPES)
    assert [r.name for r in rules] == ["browse_cart_email_48h", "frequent_buyers_90d",
                                       "champions_gone_quiet", "urban_25_34"]
