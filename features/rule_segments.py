"""Rule-based dynamic segments: conditions over events, features and profiles, in Spark.

A rule is a name, a description and a list of conditions that must all hold (`when:`):

    rules:
      browse_cart_email_48h:
        description: viewed an item, added it to the cart and clicked a campaign e-mail within 48h
        when:
          - sequence: [view_item, add_to_cart, email_click]   # in this order
            within: 48h                                        # first step to last, inclusive
            same_item: true                                    # the view and the cart: one item
      champions_gone_quiet:
        when:
          - field: rfm.rfm_segment
            equals: Champions
          - count: purchase
            at_most: 0
            in_last: 30d

Conditions: `sequence` (steps in order, each its own event at or after the previous one —
events at the same instant count in step order — the last within `within` of the first;
optional `in_last`: completed in that window; `same_item: true`: every step of an item event
type, such as view_item and add_to_cart, on one and the same item, the other steps on anything),
`count` (an event type
with `at_least` and/or `at_most`, optionally `in_last`), and `field` (`rfm.…`, `behaviour.…`
or `profile.…` with one of `equals`, `not_equals`, `in`, `at_least`, `at_most`). Durations are
`<number><s|m|h|d|w>`. Windows end at the as-of time and include it; `in_last: 90d` means
after as-of − 90 days.

`since` (when the person entered the segment): a sequence's first completion (in the window);
for `at_least: n`, the n-th qualifying event in the window (the count's current run reached
n then); for `at_most: n`, when the window last dropped to n events — the (n+1)-th most recent
event + the window — or the window's start; a field condition holds "as of" the evaluation
time. With several conditions, the latest of these.

Rules are checked when loaded: an unknown field, event type or key is refused with a message
naming it, before any Spark work starts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.rfm import RFM_COLUMNS

FIELD_TABLES = ("rfm", "behaviour", "profile")
PROFILE_FIELDS = ("age", "age_band", "gender", "city", "region", "country", "urban", "device_type",
                  "os", "locale", "signup_date", "marketing_opt_in", "first_seen", "last_seen")
BEHAVIOUR_FIELDS = ("events", "days_active", "first_event_time", "last_event_time",
                    "recency_weighted_events", "discounted_purchase_share",
                    "new_arrival_purchase_share", "email_campaigns_sent", "email_open_rate",
                    "email_click_rate", "devices", "sessions", "mean_session_seconds",
                    "view_to_cart_rate", "cart_to_purchase_rate", "view_to_purchase_rate")
FIELD_OPERATORS = ("equals", "not_equals", "in", "at_least", "at_most")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class RuleError(ValueError):
    """A rule that cannot be evaluated; the message names the rule and the offending part."""


@dataclass(frozen=True)
class Sequence:
    steps: tuple[str, ...]
    within: timedelta
    in_last: timedelta | None = None
    same_item_types: tuple[str, ...] = ()  # with same_item: the step types bound to one item


@dataclass(frozen=True)
class Count:
    event: str
    at_least: int | None = None
    at_most: int | None = None
    in_last: timedelta | None = None


@dataclass(frozen=True)
class Field:
    table: str
    column: str
    operator: str
    value: Any


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    conditions: tuple

    def tables(self) -> set[str]:
        return {c.table for c in self.conditions if isinstance(c, Field)}


def known_fields(event_types, channels, profile_traits=(), device_types=()) -> dict[str, set[str]]:
    """The fields a rule may name, per table (behaviour's columns follow the config)."""
    return {"rfm": set(RFM_COLUMNS) - {"person_id"},
            "behaviour": {*BEHAVIOUR_FIELDS, *(f"events_{t}" for t in event_types),
                          *(f"channel_share_{c}" for c in channels),
                          *(f"device_share_{d}" for d in device_types)},
            "profile": {*PROFILE_FIELDS, *profile_traits}}


def parse_duration(text, where: str) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise RuleError(f"{where}: duration {text!r} is not like 48h, 90d, 30m or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def _keys(spec: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise RuleError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _event(name, event_types, where: str) -> str:
    if name not in event_types:
        raise RuleError(f"{where}: unknown event type {name!r}")
    return name


def _count_bound(spec: dict, key: str, where: str) -> int | None:
    value = spec.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise RuleError(f"{where}: {key} must be a whole number ≥ 0, got {value!r}")
    return value


def _same_item_types(same_item, steps: tuple[str, ...], item_event_types, where: str) -> tuple[str, ...]:
    """The step types `same_item` binds to one item: the item event types among the steps."""
    if not isinstance(same_item, bool):
        raise RuleError(f"{where}: same_item is true or false, got {same_item!r}")
    if not same_item:
        return ()
    bound = [s for s in steps if s in set(item_event_types)]
    if len(bound) < 2:
        raise RuleError(f"{where}: same_item needs two or more steps of item event types "
                        f"({', '.join(sorted(item_event_types))}), got {', '.join(steps)}")
    return tuple(dict.fromkeys(bound))


def parse_condition(spec, event_types, fields: dict[str, set[str]], where: str,
                    item_event_types=()):
    if not isinstance(spec, dict):
        raise RuleError(f"{where}: a condition is a mapping with sequence, count or field")
    kinds = [k for k in ("sequence", "count", "field") if k in spec]
    if len(kinds) != 1:
        raise RuleError(f"{where}: a condition needs exactly one of sequence, count, field")
    in_last = parse_duration(spec["in_last"], where) if spec.get("in_last") is not None else None
    if kinds[0] == "sequence":
        _keys(spec, {"sequence", "within", "in_last", "same_item"}, where)
        steps = spec["sequence"]
        if not isinstance(steps, list) or len(steps) < 2:
            raise RuleError(f"{where}: sequence needs a list of at least two event types")
        if "within" not in spec:
            raise RuleError(f"{where}: sequence needs `within` (e.g. 48h)")
        steps = tuple(_event(s, event_types, where) for s in steps)
        return Sequence(steps, parse_duration(spec["within"], where), in_last,
                        _same_item_types(spec.get("same_item", False), steps, item_event_types,
                                         where))
    if kinds[0] == "count":
        _keys(spec, {"count", "at_least", "at_most", "in_last"}, where)
        at_least, at_most = _count_bound(spec, "at_least", where), _count_bound(spec, "at_most", where)
        if at_least is None and at_most is None:
            raise RuleError(f"{where}: count needs at_least and/or at_most")
        return Count(_event(spec["count"], event_types, where), at_least, at_most, in_last)
    _keys(spec, {"field", *FIELD_OPERATORS}, where)
    table, _, column = str(spec["field"]).partition(".")
    if table not in fields or column not in fields[table]:
        raise RuleError(f"{where}: unknown field {spec['field']!r} (fields are "
                        f"{', '.join(t + '.<column>' for t in FIELD_TABLES)})")
    operators = [op for op in FIELD_OPERATORS if op in spec]
    if len(operators) != 1:
        raise RuleError(f"{where}: field {spec['field']!r} needs exactly one of {', '.join(FIELD_OPERATORS)}")
    value = spec[operators[0]]
    if operators[0] == "in" and not isinstance(value, list):
        raise RuleError(f"{where}: `in` takes a list")
    return Field(table, column, operators[0], value)


def parse_rules(raw: dict, event_types, fields: dict[str, set[str]], item_event_types=()) -> list[Rule]:
    """Rules from the YAML mapping {"rules": {name: {description, when: [...]}}}, validated;
    `item_event_types` are the event types that carry an item (for `same_item`)."""
    if not isinstance(raw, dict) or set(raw) - {"rules"}:
        raise RuleError("segments: the file holds one top-level key, `rules`")
    rules = []
    for name, spec in (raw.get("rules") or {}).items():
        where = f"rule {name!r}"
        if not isinstance(spec, dict):
            raise RuleError(f"{where}: expected a mapping with `when`")
        _keys(spec, {"description", "when"}, where)
        conditions = spec.get("when")
        if not isinstance(conditions, list) or not conditions:
            raise RuleError(f"{where}: `when` needs a list of conditions")
        rules.append(Rule(str(name), str(spec.get("description", "")), tuple(
            parse_condition(c, set(event_types), fields, f"{where}, condition {i + 1}",
                            item_event_types)
            for i, c in enumerate(conditions))))
    return rules


# -- evaluation ------------------------------------------------------------------------------

def _no_time() -> Column:
    return F.lit(None).cast("timestamp")


def _micros(column) -> Column:
    return F.unix_micros(F.col(column) if isinstance(column, str) else column)


def _window_start(as_of: datetime, in_last: timedelta | None) -> Column | None:
    return F.lit(as_of - in_last) if in_last is not None else None


def sequence_members(events: DataFrame, rule: Sequence, as_of: datetime) -> DataFrame:
    """(person_id, since): the first completion of the steps in order within `rule.within`.

    One window pass per step: each event of step i carries the latest start of a valid partial
    sequence ending at an earlier event (the latest start leaves the most room for the rest).
    Events are ordered by time, then by their type's first place among the steps, and the
    frame ends at the row before, so each step needs its own event. With `same_item`, the
    item steps run per (person, item) and every other step's event joins each of the person's
    items once.
    """
    steps = events.where(F.col("event_type").isin(*rule.steps) & (F.col("event_time") <= F.lit(as_of)))
    steps = steps.select("person_id", "event_type", "event_time", _micros("event_time").alias("t"),
                         *(["item_id"] if rule.same_item_types else []))
    keys = ["person_id"]
    if rule.same_item_types:
        bound = F.col("event_type").isin(*rule.same_item_types)
        on_items = steps.where(bound & F.col("item_id").isNotNull())
        items = on_items.select("person_id", F.col("item_id").alias("_item")).distinct()
        steps = on_items.withColumn("_item", F.col("item_id")).unionByName(
            steps.where(~bound).join(items, "person_id")).drop("item_id")
        keys.append("_item")
    first_place = F.array_position(F.array(*[F.lit(step) for step in rule.steps]), F.col("event_type"))
    earlier = (Window.partitionBy(*keys).orderBy("t", "_place")
               .rowsBetween(Window.unboundedPreceding, -1))
    within = int(rule.within.total_seconds() * 1_000_000)
    frame = steps.withColumn("_place", first_place).withColumn(
        "start_0", F.when(F.col("event_type") == rule.steps[0], F.col("t")))
    for i, step in enumerate(rule.steps[1:], start=1):
        previous = F.max(F.col(f"start_{i - 1}")).over(earlier)
        frame = frame.withColumn(f"start_{i}", F.when(
            (F.col("event_type") == step) & (F.col("t") - previous <= within), previous))
    done = frame.where(F.col(f"start_{len(rule.steps) - 1}").isNotNull())
    window_start = _window_start(as_of, rule.in_last)
    if window_start is not None:
        done = done.where(F.col("event_time") > window_start)
    return done.groupBy("person_id").agg(F.min("event_time").alias("since"))


def count_members(events: DataFrame, people: DataFrame, rule: Count, as_of: datetime) -> DataFrame:
    """(person_id, since) of the people (person_id) whose count in the window is in bounds."""
    window_start = _window_start(as_of, rule.in_last)
    chosen = (events.where((F.col("event_type") == rule.event) & (F.col("event_time") <= F.lit(as_of)))
              .select("person_id", "event_time",
                      (F.col("event_time") > window_start if window_start is not None
                       else F.lit(True)).alias("_in")))
    # The at_least-th event counted inside the window; the (at_most+1)-th most recent of all.
    oldest_first = Window.partitionBy("person_id", "_in").orderBy("event_time")
    newest_first = Window.partitionBy("person_id").orderBy(F.desc("event_time"))
    ranked = (chosen.withColumn("_up", F.row_number().over(oldest_first))
              .withColumn("_down", F.row_number().over(newest_first)))
    per_person = ranked.groupBy("person_id").agg(
        F.count(F.when(F.col("_in"), 1)).alias("_n"),
        F.max(F.when(F.col("_in") & (F.col("_up") == (rule.at_least or 1)), F.col("event_time"))).alias("_reached"),
        F.max(F.when(F.col("_down") == (rule.at_most or 0) + 1, F.col("event_time"))).alias("_dropped"))
    counted = people.select("person_id").distinct().join(per_person, "person_id", "left")
    n = F.coalesce(F.col("_n"), F.lit(0))
    keep = F.lit(True)
    since = []
    if rule.at_least is not None:
        keep = keep & (n >= rule.at_least)
        since.append(F.col("_reached") if rule.at_least > 0 else _no_time())
    if rule.at_most is not None:
        keep = keep & (n <= rule.at_most)
        if window_start is None:  # without a window the count never drops: in bounds "as of" now
            since.append(_no_time())
        else:
            emptied = F.timestamp_micros(_micros("_dropped") + int(rule.in_last.total_seconds() * 1e6))
            since.append(F.coalesce(emptied, window_start))
    return counted.where(keep).select("person_id", F.greatest(*since, _no_time()).alias("since"))


def field_members(table: DataFrame, rule: Field) -> DataFrame:
    """(person_id, since = null) of the rows of `table` where the condition holds."""
    column = F.col(rule.column)
    test = {"equals": lambda v: column == F.lit(v), "not_equals": lambda v: column != F.lit(v),
            "in": lambda v: column.isin(*v), "at_least": lambda v: column >= F.lit(v),
            "at_most": lambda v: column <= F.lit(v)}[rule.operator](rule.value)
    return table.where(test).select("person_id", _no_time().alias("since"))


def evaluate_rule(rule: Rule, events: DataFrame, people: DataFrame, tables: dict[str, DataFrame],
                  as_of: datetime) -> DataFrame:
    """(person_id, rule_segment, since) of one rule: the people meeting all its conditions.

    `events` are consented events with person_id; `people` everyone the rule may be about
    (those with consented events: profiles of anyone else never make a member);
    `tables` the field tables by name ("rfm", "behaviour", "profile").
    """
    members = None
    for condition in rule.conditions:
        if isinstance(condition, Sequence):
            found = sequence_members(events, condition, as_of)
        elif isinstance(condition, Count):
            found = count_members(events, people, condition, as_of)
        else:
            found = field_members(tables[condition.table], condition)
        members = found if members is None else (
            members.join(found.withColumnRenamed("since", "_other"), "person_id")
            .select("person_id", F.greatest("since", "_other").alias("since")))
    members = members.join(people.select("person_id").distinct(), "person_id", "left_semi")
    return members.select("person_id", F.lit(rule.name).alias("rule_segment"),
                          F.coalesce("since", F.lit(as_of)).alias("since"))
