"""Behaviour per person: how, where and how much each person engages.

One row per person with at least one event, from the events given (the caller limits them
to personalization consent and to the as-of day):

* activity: `events`, `days_active`, `first_event_time`, `last_event_time`, `events_<type>`
  for every type in `event_types`, and `recency_weighted_events` (each event weighs
  0.5 ** (age / half-life), its age measured from `decay_from`);
* sessions (events with a session_id): `sessions`, `mean_session_seconds` (first to last
  event), and the session funnel `view_to_cart_rate` (sessions with a view that also add to
  cart), `cart_to_purchase_rate` and `view_to_purchase_rate`;
* `category_affinity`: the person's share of category-bearing events in each of the
  `top_categories` most active categories overall (null without any category);
* purchases: `discounted_purchase_share` (a discount > 0, a coupon, or, where the catalogue
  has a sale price below the list price, a price at or below the sale price) and
  `new_arrival_purchase_share` (bought within `new_arrival_days` of the item's release date
  in the catalogue, else of its first appearance in `item_events`: the job passes every event,
  whatever its consent, because when an item first showed up is a fact about the item (only
  the earliest time per item leaves those events, nothing about anyone), and an item first
  seen by someone without personalization consent had still arrived then);
* e-mail: `email_campaigns_sent`, `email_open_rate`, `email_click_rate` per campaign
  (properties.campaign_id). Sends are not events, so a campaign counts as sent to a person
  when it went out (its first open or click by anyone) after their first event, or when they
  opened or clicked it;
* devices and channels: `devices` (distinct anonymous ids), `device_share_<type>` for each of
  `device_types` (share of the person's events whose properties.device_type — from a Segment
  call's context, lower-cased — is that type, among their events that carry one) and
  `channel_share_<channel>` (share of all their events).

Rates and shares are null where their denominator is zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

FUNNEL_STEPS = {"view": "view_item", "cart": "add_to_cart", "purchase": "purchase"}
EMAIL_ACTIONS = {"open": "email_open", "click": "email_click"}


@dataclass(frozen=True)
class BehaviourParams:
    decay_from: datetime
    half_life_days: float
    new_arrival_days: int
    top_categories: int
    event_types: tuple[str, ...]
    channels: tuple[str, ...] = ("web", "app", "email")
    device_types: tuple[str, ...] = ("desktop", "mobile", "tablet", "ios", "android")


def _ratio(numerator: Column, denominator: Column) -> Column:
    return F.when(denominator > 0, numerator / denominator)


def _count_if(condition: Column) -> Column:
    return F.count(F.when(condition, 1))


def top_categories(events: DataFrame, n: int) -> list[str]:
    """The `n` categories with the most events (ties by name)."""
    rows = (events.where(F.col("category").isNotNull()).groupBy("category").count()
            .orderBy(F.desc("count"), "category").limit(n).collect())
    return [row["category"] for row in rows]


def email_interactions(events: DataFrame) -> DataFrame:
    """The opens and clicks that name their campaign, with its id as `campaign_id`."""
    return (events.where(F.col("event_type").isin(*EMAIL_ACTIONS.values()))
            .withColumn("campaign_id", F.col("properties")["campaign_id"])
            .where(F.col("campaign_id").isNotNull()))


def campaign_sends(events: DataFrame) -> list[tuple[str, datetime]]:
    """(campaign_id, sent_at) per campaign: its earliest open or click stands in for the send."""
    rows = (email_interactions(events).groupBy("campaign_id")
            .agg(F.min("event_time").alias("sent_at")).orderBy("campaign_id").collect())
    return [(row["campaign_id"], row["sent_at"]) for row in rows]


def session_funnel(events: DataFrame) -> DataFrame:
    """Per person: sessions, their mean duration and the session funnel rates."""
    per_session = (events.where(F.col("session_id").isNotNull())
                   .groupBy("person_id", "session_id")
                   .agg((F.max("event_time").cast("double") - F.min("event_time").cast("double"))
                        .alias("seconds"),
                        *[F.max(F.col("event_type") == event_type).alias(step)
                          for step, event_type in FUNNEL_STEPS.items()]))
    view, cart, purchase = (F.col(step) for step in FUNNEL_STEPS)
    per_person = per_session.groupBy("person_id").agg(
        F.count("*").alias("sessions"),
        F.avg("seconds").alias("mean_session_seconds"),
        _count_if(view).alias("_view"), _count_if(cart).alias("_cart"),
        _count_if(view & cart).alias("_view_cart"), _count_if(cart & purchase).alias("_cart_purchase"),
        _count_if(view & purchase).alias("_view_purchase"))
    return per_person.select(
        "person_id", "sessions", "mean_session_seconds",
        _ratio(F.col("_view_cart"), F.col("_view")).alias("view_to_cart_rate"),
        _ratio(F.col("_cart_purchase"), F.col("_cart")).alias("cart_to_purchase_rate"),
        _ratio(F.col("_view_purchase"), F.col("_view")).alias("view_to_purchase_rate"))


def _campaigns_sent(first_event_time: Column, interacted: Column,
                    sends: list[tuple[str, datetime]]) -> Column:
    """Campaign ids sent to a person: those that went out after their first event, plus theirs."""
    if not sends:
        return interacted
    later = F.filter(F.array(*[F.struct(F.lit(c).alias("id"), F.lit(t).alias("at")) for c, t in sends]),
                     lambda send: send["at"] >= first_event_time)
    return F.array_union(F.transform(later, lambda send: send["id"]), interacted)


def distinct_count(events: DataFrame, value: Column, name: str) -> DataFrame:
    """Per person: `name`, the number of distinct non-null `value`s among their events."""
    return (events.select("person_id", value.alias("_value")).where(F.col("_value").isNotNull())
            .distinct().groupBy("person_id").agg(F.count("*").alias(name)))


def campaigns_interacted(events: DataFrame) -> DataFrame:
    """Per person with an e-mail open or click: the campaign ids opened (`_opens`) and clicked
    (`_clicks`)."""
    return (email_interactions(events).groupBy("person_id")
            .agg(*[F.collect_set(F.when(F.col("event_type") == t, F.col("campaign_id")))
                   .alias(f"_{action}s") for action, t in EMAIL_ACTIONS.items()]))


def item_arrivals(events: DataFrame, catalogue: DataFrame | None) -> DataFrame:
    """Per item: when it arrived (catalogue release date, else first event) and, with a
    catalogue, its sale and list prices."""
    first_seen = (events.where(F.col("item_id").isNotNull()).groupBy("item_id")
                  .agg(F.min("event_time").alias("_first_event")))
    if catalogue is None:
        return first_seen.select("item_id", F.col("_first_event").alias("_item_first_seen"))
    return first_seen.join(catalogue, "item_id", "left").select(
        "item_id", F.coalesce(F.col("release_date").cast("timestamp"), "_first_event")
        .alias("_item_first_seen"),
        F.col("sale_price").alias("_sale_price"), F.col("price").alias("_list_price"))


def behaviour_features(events: DataFrame, params: BehaviourParams,
                       catalogue: DataFrame | None = None,
                       item_events: DataFrame | None = None) -> DataFrame:
    """One row per person (see the module docstring); `events` need person_id; `catalogue`
    (catalogue/ rows) adds release dates and sale prices where it has them; `item_events`
    (default `events`) date each item's first appearance."""
    events = events.where(F.col("person_id").isNotNull())
    categories = top_categories(events, params.top_categories)
    sends = campaign_sends(events)
    item_first_seen = item_arrivals(events if item_events is None else item_events, catalogue)

    event_type = F.col("event_type")
    is_purchase = event_type == "purchase"
    discounted = (F.coalesce(F.col("discount"), F.lit(0.0)) > 0) | F.col("properties")["coupon"].isNotNull()
    if catalogue is not None:
        on_sale = (F.col("_sale_price") < F.col("_list_price")) & (F.col("price") <= F.col("_sale_price"))
        discounted = discounted | F.coalesce(on_sale, F.lit(False))
    new_arrival = (F.col("event_time").cast("double") - F.col("_item_first_seen").cast("double")
                   <= params.new_arrival_days * 86400.0)
    age_days = F.greatest(F.lit(params.decay_from).cast("double") - F.col("event_time").cast("double"),
                          F.lit(0.0)) / 86400.0
    device_type = F.lower(F.trim(F.col("properties")["device_type"]))

    # Only plain counts, sums and extremes here, so that Spark aggregates in one hash pass; the
    # distinct counts and campaign sets come from their own aggregates (in this one, Spark would
    # copy every event once per distinct count and fall back to sorting them all).
    totals = events.join(item_first_seen, "item_id", "left").groupBy("person_id").agg(
        F.count("*").alias("events"),
        F.min("event_time").alias("first_event_time"),
        F.max("event_time").alias("last_event_time"),
        *[_count_if(event_type == t).alias(f"events_{t}") for t in params.event_types],
        F.sum(F.pow(F.lit(0.5), age_days / params.half_life_days)).alias("recency_weighted_events"),
        _count_if(F.col("category").isNotNull()).alias("_category_events"),
        *[_count_if(F.col("category") == c).alias(f"_category_{i}") for i, c in enumerate(categories)],
        _count_if(is_purchase).alias("_purchases"),
        _count_if(is_purchase & discounted).alias("_discounted"),
        _count_if(is_purchase & new_arrival).alias("_new_arrivals"),
        _count_if(device_type.isNotNull() & (device_type != "")).alias("_device_typed"),
        *[_count_if(device_type == d).alias(f"_device_{i}") for i, d in enumerate(params.device_types)],
        *[_count_if(F.col("channel") == c).alias(f"_channel_{c}") for c in params.channels])
    no_campaigns = F.array().cast("array<string>")
    days_active = distinct_count(events, F.to_date("event_time"), "days_active")
    devices = distinct_count(events, F.col("anonymous_id"), "devices")
    totals = (totals.join(days_active, "person_id", "left").join(devices, "person_id", "left")
              .join(campaigns_interacted(events), "person_id", "left")
              .fillna(0, ["days_active", "devices"])
              .withColumn("_opens", F.coalesce("_opens", no_campaigns))
              .withColumn("_clicks", F.coalesce("_clicks", no_campaigns)))

    affinity = F.create_map(*[part for i, c in enumerate(categories) for part in
                              (F.lit(c), F.col(f"_category_{i}") / F.col("_category_events"))])
    sent = F.size(_campaigns_sent(F.col("first_event_time"),
                                  F.array_union(F.col("_opens"), F.col("_clicks")), sends))
    features = totals.select(
        "person_id", "events", "days_active", "first_event_time", "last_event_time",
        *[f"events_{t}" for t in params.event_types],
        "recency_weighted_events",
        F.when(F.col("_category_events") > 0, affinity.cast("map<string,double>"))
        .alias("category_affinity"),
        _ratio(F.col("_discounted"), F.col("_purchases")).alias("discounted_purchase_share"),
        _ratio(F.col("_new_arrivals"), F.col("_purchases")).alias("new_arrival_purchase_share"),
        sent.alias("email_campaigns_sent"),
        _ratio(F.size("_opens"), sent).alias("email_open_rate"),
        _ratio(F.size("_clicks"), sent).alias("email_click_rate"),
        "devices",
        *[_ratio(F.col(f"_device_{i}"), F.col("_device_typed")).alias(f"device_share_{d}")
          for i, d in enumerate(params.device_types)],
        *[_ratio(F.col(f"_channel_{c}"), F.col("events")).alias(f"channel_share_{c}")
          for c in params.channels])
    return (features.join(session_funnel(events), "person_id", "left")
            .withColumn("sessions", F.coalesce("sessions", F.lit(0))))
