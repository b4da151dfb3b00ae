"""Consent over time: opt-out before, after and in the middle of a person's history."""
from datetime import datetime, timedelta

from features.consent import analytics_events, personalization_events, withdrawn_persons

SCHEMA = ("event_id string, event_type string, event_time timestamp, person_id string, "
          "user_id string, anonymous_id string, consent_personalization boolean, "
          "consent_analytics boolean")
T0 = datetime(2024, 3, 1)


def history(person: str, steps: list[tuple[str, bool]], analytics=True):
    """One event a day: (event_type, personalization flag on the record)."""
    return [(f"{person}-{i}", kind, T0 + timedelta(days=i), person, person, None, flag, analytics)
            for i, (kind, flag) in enumerate(steps)]


def test_consent_timeline(spark):
    rows = (
        # opted out before anything, opted in on day 2: only days 3-4 count
        history("before", [("consent_update", False), ("view_item", True), ("consent_update", True),
                           ("view_item", False), ("purchase", False)])
        # consented throughout, opted out after the last event: removed entirely
        + history("after", [("view_item", True), ("purchase", True), ("consent_update", False)])
        # opted out in the middle, back in later: the middle is excluded
        + history("middle", [("view_item", True), ("consent_update", False), ("view_item", True),
                             ("consent_update", True), ("purchase", True)])
        # never any update: the record flags decide, and the latest one withdrew
        + history("flags", [("view_item", True), ("view_item", False)], analytics=False)
        # never any update, consenting records throughout
        + history("steady", [("view_item", True), ("purchase", True)])
        # never consented at all: nothing personal to suppress
        + history("never", [("view_item", False), ("consent_update", False)])
    )
    events = spark.createDataFrame(rows, SCHEMA)
    kept = sorted(r.event_id for r in personalization_events(events).collect())
    assert kept == ["before-3", "before-4", "middle-0", "middle-4", "steady-0", "steady-1"]
    assert sorted(r.person_id for r in withdrawn_persons(events).collect()) == ["after", "flags"]
    aggregate = {r.event_id for r in analytics_events(events).collect()}
    assert "after-0" in aggregate and not any(e.startswith("flags") for e in aggregate)


def test_update_applies_from_its_own_instant(spark):
    same_time = T0 + timedelta(hours=5)
    rows = [("a", "view_item", same_time, "p", "p", None, True, True),
            ("b", "consent_update", same_time, "p", "p", None, False, True),
            ("c", "consent_update", same_time + timedelta(hours=1), "p", "p", None, True, True)]
    events = spark.createDataFrame(rows, SCHEMA)
    assert personalization_events(events).count() == 0
