"""Consent over time: opt-out before, after and in the middle of a person's history; records
without a consent block take the state in force, never the default over an expressed one."""
from datetime import datetime, timedelta

from features.consent import (DEFAULTED_PROPERTY, analytics_events, personalization_events,
                              withdrawn_persons)

SCHEMA_WITHOUT_PROPERTIES = (
    "event_id string, event_type string, event_time timestamp, person_id string, "
    "user_id string, anonymous_id string, consent_personalization boolean, "
    "consent_analytics boolean")
SCHEMA = SCHEMA_WITHOUT_PROPERTIES + ", properties map<string,string>"
T0 = datetime(2024, 3, 1)
NO_BLOCK = None


def history(person: str, steps: list[tuple[str, bool | None]], analytics=True, default=False):
    """One event a day: (event_type, the record's personalization flag, or NO_BLOCK for a
    record without a consent block, whose flags ingest filled with `default` and marked)."""
    rows = []
    for i, (kind, flag) in enumerate(steps):
        if flag is NO_BLOCK:
            flags, properties = (default, default), {DEFAULTED_PROPERTY: "personalization,analytics"}
        else:
            flags, properties = (flag, analytics), {}
        rows.append((f"{person}-{i}", kind, T0 + timedelta(days=i), person, person, None, *flags,
                     properties))
    return rows


def kept_ids(events) -> list[str]:
    return sorted(r.event_id for r in personalization_events(events).collect())


def test_consent_timeline(spark):
    rows = (
        # opted out before anything, opted in on day 2: only days 3-4 count
        history("before", [("consent_update", False), ("view_item", NO_BLOCK),
                           ("consent_update", True), ("view_item", NO_BLOCK),
                           ("purchase", NO_BLOCK)])
        # consented throughout, opted out after the last event: removed entirely
        + history("after", [("view_item", True), ("purchase", True), ("consent_update", False)])
        # opted out in the middle, back in later: the middle is excluded
        + history("middle", [("view_item", True), ("consent_update", False),
                             ("view_item", NO_BLOCK), ("consent_update", True),
                             ("purchase", NO_BLOCK)])
        # a record's own block is a signal too: the latest one withdrew
        + history("block", [("view_item", True), ("view_item", False), ("page_view", NO_BLOCK)],
                  analytics=False)
        # regression: a consenting person whose latest event (an e-mail export) has no block
        + history("export", [("view_item", True), ("purchase", True), ("email_open", NO_BLOCK)])
        # never expressed anything: the configured default (false) applies
        + history("silent", [("view_item", NO_BLOCK), ("purchase", NO_BLOCK)])
        # never consented at all: nothing personal to suppress
        + history("never", [("view_item", False), ("consent_update", False)])
    )
    events = spark.createDataFrame(rows, SCHEMA)
    assert kept_ids(events) == ["before-3", "before-4", "export-0", "export-1", "export-2",
                                "middle-0", "middle-4"]
    assert sorted(r.person_id for r in withdrawn_persons(events).collect()) == ["after", "block"]
    aggregate = {r.event_id for r in analytics_events(events).collect()}
    assert {"after-0", "export-2"} <= aggregate and not any(e.startswith("block") for e in aggregate)


def test_the_default_applies_only_until_a_person_expresses_consent(spark):
    """A deployment whose default is opt-in: silence consents, an expressed no still holds."""
    rows = (history("silent", [("view_item", NO_BLOCK)], default=True)
            + history("refused", [("view_item", False), ("view_item", NO_BLOCK)], default=True))
    assert kept_ids(spark.createDataFrame(rows, SCHEMA)) == ["silent-0"]


def test_a_partial_block_sets_only_the_flags_it_names(spark):
    rows = [("a", "view_item", T0, "p", "p", None, True, True, {}),
            ("b", "view_item", T0 + timedelta(days=1), "p", "p", None, False, True,
             {DEFAULTED_PROPERTY: "analytics"}),  # {"personalization": false} only
            ("c", "view_item", T0 + timedelta(days=2), "p", "p", None, True, False,
             {DEFAULTED_PROPERTY: "personalization"})]  # {"analytics": false} only
    events = spark.createDataFrame(rows, SCHEMA)
    assert kept_ids(events) == []  # the latest personalization signal (b) withdrew
    assert sorted(r.event_id for r in analytics_events(events).collect()) == ["a", "b"]


def test_update_applies_from_its_own_instant(spark):
    """A grant on a record in the same instant as a withdrawal does not win."""
    same_time = T0 + timedelta(hours=5)
    rows = [("a", "view_item", same_time, "p", "p", None, True, True, {}),
            ("b", "consent_update", same_time, "p", "p", None, False, True, {}),
            ("c", "consent_update", same_time + timedelta(hours=1), "p", "p", None, True, True, {})]
    events = spark.createDataFrame(rows, SCHEMA)
    assert personalization_events(events).count() == 0


def test_events_without_properties_count_every_record_as_a_signal(spark):
    rows = [("a", "view_item", T0, "p", "p", None, True, True),
            ("b", "view_item", T0 + timedelta(days=1), "p", "p", None, False, True)]
    events = spark.createDataFrame(rows, SCHEMA_WITHOUT_PROPERTIES)
    assert personalization_events(events).count() == 0
    assert [r.person_id for r in withdrawn_persons(events).collect()] == ["p"]
