"""Behaviour features on a small hand-made event set whose every answer is worked out below.

ann (user "ann") browses on the web and in the app and reads e-mail; bob (anonymous "cb1")
came a month earlier. cat has no personalization consent: she must get no row, and her early
open of c3 must not change ann's answers. Her early view of X3 does, deliberately: an item's
first appearance is a fact about the item, taken from every event whatever its consent (only
the earliest time per item leaves them), so X3 arrived on 1 January and ann's purchase of it
in March is no new arrival.
"""
from datetime import datetime, timezone

import pytest

from features.behaviour import BehaviourParams, behaviour_features
from features.consent import personalization_events
from features.identity import with_person_id

SCHEMA = ("event_id string, event_type string, event_time timestamp, channel string, "
          "user_id string, anonymous_id string, session_id string, item_id string, "
          "category string, revenue double, discount double, properties map<string,string>, "
          "consent_personalization boolean, consent_analytics boolean")
DECAY_FROM = datetime(2024, 3, 11, tzinfo=timezone.utc)
PARAMS = BehaviourParams(decay_from=DECAY_FROM, half_life_days=5.0, new_arrival_days=7,
                         top_categories=2, event_types=("page_view", "view_item", "add_to_cart",
                                                        "purchase", "app_open", "email_open",
                                                        "email_click", "search"))


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def event(event_id, event_type, time, channel, user=None, anon=None, session=None, item=None,
          category=None, revenue=None, discount=None, properties=None, consent=True):
    return (event_id, event_type, t(time), channel, user, anon, session, item, category, revenue,
            discount, properties or {}, consent, True)


IOS = {"device_type": "ios"}
EVENTS = [
    # ann, web session s1: view -> cart -> purchase of X1 (a coupon, first seen by bob in Feb)
    event("a1", "page_view", "2024-03-01 10:00:00", "web", "ann", "ca1", "s1"),
    event("a2", "view_item", "2024-03-01 10:00:30", "web", "ann", "ca1", "s1", "X1", "shoes"),
    event("a3", "add_to_cart", "2024-03-01 10:01:00", "web", "ann", "ca1", "s1", "X1", "shoes"),
    event("a4", "purchase", "2024-03-01 10:02:00", "web", "ann", "ca1", "s1", "X1", "shoes", 50.0,
          properties={"coupon": "SPRING"}),
    # ann, app session s2: views and a cart, no purchase
    # (the app's Segment calls carry context.device.type: ios; one says so in capitals)
    event("a5", "app_open", "2024-03-06 12:00:00", "app", "ann", "app1", "s2", properties=IOS),
    event("a6", "view_item", "2024-03-06 12:00:10", "app", "ann", "app1", "s2", "X2", "books",
          properties=IOS),
    event("a7", "view_item", "2024-03-06 12:01:10", "app", "ann", "app1", "s2", "X3", "shoes",
          properties=IOS),
    event("a8", "add_to_cart", "2024-03-06 12:01:40", "app", "ann", "app1", "s2", "X3", "shoes",
          properties={"device_type": " IOS"}),
    # ann, web session s3: one view from a desktop; then X3 bought without a session, 3.9 days
    # after ann first saw it but 69 days after cat did
    event("a9", "view_item", "2024-03-10 09:00:00", "web", "ann", "ca1", "s3", "X2", "books",
          properties={"device_type": "desktop"}),
    event("a10", "purchase", "2024-03-10 09:05:00", "web", "ann", "ca1", None, "X3", "shoes", 30.0, 0.0),
    # ann's e-mail: opens c1 and c2, clicks c1; c3 went out after her first event, unopened
    event("a11", "email_open", "2024-03-02 08:00:00", "email", "ann", properties={"campaign_id": "c1"}),
    event("a12", "email_click", "2024-03-02 08:01:00", "email", "ann", properties={"campaign_id": "c1"}),
    event("a13", "email_open", "2024-03-08 08:00:00", "email", "ann", properties={"campaign_id": "c2"}),
    # bob: one session (view X1, buy X4 at a discount the moment it appears), two opens
    event("b1", "view_item", "2024-02-01 10:00:00", "web", None, "cb1", "sb1", "X1", "shoes"),
    event("b2", "purchase", "2024-02-01 10:05:00", "web", None, "cb1", "sb1", "X4", "toys", 20.0, 5.0),
    event("b3", "email_open", "2024-02-10 08:00:00", "email", None, "cb1", properties={"campaign_id": "c0"}),
    event("b4", "email_open", "2024-03-09 08:00:00", "email", None, "cb1", properties={"campaign_id": "c3"}),
    # cat: no personalization consent
    event("c1", "view_item", "2024-01-01 10:00:00", "web", "cat", "cc1", "sc1", "X3", "toys", consent=False),
    event("c2", "email_open", "2024-02-20 08:00:00", "email", "cat", properties={"campaign_id": "c3"},
          consent=False),
    # an e-mail click with no identifier that identity resolution could use here: nobody's
    event("n1", "email_click", "2024-03-02 09:00:00", "email", properties={"campaign_id": "c1"}),
]


def decayed(*times: datetime) -> float:
    return sum(0.5 ** ((DECAY_FROM - x).total_seconds() / 86400 / 5.0) for x in times)


EXPECTED = {
    "ann": {
        "events": 13, "days_active": 5, "first_event_time": t("2024-03-01 10:00:00"),
        "last_event_time": t("2024-03-10 09:05:00"),
        "events_page_view": 1, "events_view_item": 4, "events_add_to_cart": 2, "events_purchase": 2,
        "events_app_open": 1, "events_email_open": 2, "events_email_click": 1, "events_search": 0,
        "recency_weighted_events": decayed(*[e[2] for e in EVENTS if e[4] == "ann"]),
        "sessions": 3, "mean_session_seconds": (120 + 100 + 0) / 3,
        "view_to_cart_rate": 2 / 3, "cart_to_purchase_rate": 1 / 2, "view_to_purchase_rate": 1 / 3,
        "category_affinity": {"shoes": 6 / 8, "books": 2 / 8},
        "discounted_purchase_share": 1 / 2, "new_arrival_purchase_share": 0.0,
        "email_campaigns_sent": 3, "email_open_rate": 2 / 3, "email_click_rate": 1 / 3,
        "devices": 2, "device_share_ios": 4 / 5, "device_share_desktop": 1 / 5,
        "device_share_mobile": 0.0, "channel_share_web": 6 / 13, "channel_share_app": 4 / 13,
        "channel_share_email": 3 / 13,
    },
    "cb1": {
        "events": 4, "days_active": 3, "events_view_item": 1, "events_purchase": 1,
        "events_email_open": 2, "events_add_to_cart": 0,
        "sessions": 1, "mean_session_seconds": 300.0,
        "view_to_cart_rate": 0.0, "cart_to_purchase_rate": None, "view_to_purchase_rate": 1.0,
        "category_affinity": {"shoes": 0.5, "books": 0.0},
        "discounted_purchase_share": 1.0, "new_arrival_purchase_share": 1.0,
        "email_campaigns_sent": 4, "email_open_rate": 0.5, "email_click_rate": 0.0,
        "devices": 1, "device_share_ios": None, "device_share_desktop": None,
        "channel_share_web": 0.5, "channel_share_app": 0.0, "channel_share_email": 0.5,
    },
}


@pytest.fixture(scope="module")
def rows(spark):
    every_event = with_person_id(spark.createDataFrame(EVENTS, SCHEMA))
    features = behaviour_features(personalization_events(every_event), PARAMS,
                                  item_events=every_event)
    return {row.person_id: row.asDict() for row in features.collect()}


def test_one_row_per_consented_person(rows):
    assert sorted(rows) == ["ann", "cb1"]


@pytest.mark.parametrize("person,field", [(p, f) for p, fields in EXPECTED.items() for f in fields])
def test_known_answer(rows, person, field):
    expected, got = EXPECTED[person][field], rows[person][field]
    if isinstance(expected, datetime):  # Spark hands timestamps back as local naive datetimes
        expected = expected.astimezone().replace(tzinfo=None)
    if isinstance(expected, (float, dict)):
        assert got == pytest.approx(expected)
    else:
        assert got == expected
