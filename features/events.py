"""Raw event records → canonical events (DESIGN.md), with a reason for every rejected record.

The pipeline is three pure steps over DataFrames of raw JSON text:

1. `check_records`: parse every record into one common intermediate shape (flat events, GA4,
   Universal Analytics and per-channel exports alike; items as an array) and give each a
   `reason` — null when the record is accepted. Every field is first read as text and then cast
   with `try_cast`, so a bad number is reported as `bad_type` on that field instead of turning
   the whole record into a JSON error.
2. `dedupe_records`: one record per `event_id`, before items are exploded.
3. `to_canonical`: explode items to rows, derive revenue, pseudonymize email and phone.

Only Spark built-in functions are used, so nothing leaves the JVM on the hot path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.consent import DEFAULTED_PROPERTY
from features.privacy import hmac_sha256_hex, mask_pii_text, normalize_email, normalize_phone

CANONICAL_COLUMNS = [
    "event_id", "event_type", "event_time", "channel", "user_id", "anonymous_id",
    "email_hash", "phone_hash", "session_id", "item_id", "item_name", "category", "brand",
    "price", "quantity", "revenue", "discount", "currency",
    "consent_personalization", "consent_analytics", "properties",
]
QUARANTINE_COLUMNS = ["quarantine_id", "event_id", "reason", "reason_detail", "raw", "source_file"]

# Top-level keys that a shape gives a meaning to; every other key goes to `properties`.
_KNOWN_KEYS = [
    "event_id", "event_type", "event", "export", "timestamp", "event_time", "ts", "started_at",
    "sent_at", "user_id", "customer_id", "anonymous_id", "cookie_id", "device_id", "session_id",
    "channel", "email", "recipient", "phone", "consent", "item_id", "sku", "item_name", "category",
    "brand", "price", "quantity", "revenue", "discount", "currency", "page_type", "properties",
    "ecommerce",
]
_NUMERIC_FIELDS = {"price": "double", "quantity": "int", "revenue": "double", "discount": "double"}
_UA_ACTIONS = {"detail": "view_item", "add": "add_to_cart", "remove": "remove_from_cart",
               "checkout": "begin_checkout", "purchase": "purchase"}
_ITEM_FIELDS = ["item_id", "item_name", "category", "brand", "price", "quantity", "revenue",
                "discount", "coupon"]
_ITEM_STRUCT = ", ".join(f"{name}: string" for name in _ITEM_FIELDS)
_GA4_ITEM_SCHEMA = ("array<struct<item_id: string, item_name: string, item_category: string, "
                    "item_brand: string, price: string, quantity: string, discount: string, "
                    "coupon: string>>")
_UA_ACTION_SCHEMA = ("struct<actionField: map<string,string>, products: array<struct<id: string, "
                     "name: string, category: string, brand: string, price: string, "
                     "quantity: string, coupon: string>>>")
_ECOMMERCE_SCHEMA = (
    "struct<currency: string, currencyCode: string, value: string, transaction_id: string, "
    f"items: {_GA4_ITEM_SCHEMA}, "
    + ", ".join(f"{action}: {_UA_ACTION_SCHEMA}" for action in _UA_ACTIONS) + ">")
_CONSENT_SCHEMA = "map<string,string>"
_BLOCK_SCHEMAS = {"ecommerce": _ECOMMERCE_SCHEMA, "consent": _CONSENT_SCHEMA,
                  "properties": "map<string,string>"}
# Every known top-level key as text (nested values keep their JSON text), the blocks typed.
_RECORD_SCHEMA = "struct<" + ", ".join(
    f"`{key}`: {_BLOCK_SCHEMAS.get(key, 'string')}" for key in _KNOWN_KEYS) + ">"
_BOOLEAN_TEXT = ["true", "false"]


@dataclass(frozen=True)
class IngestParams:
    """Everything the normalization depends on, passed explicitly (no config reads here)."""

    pii_key: str
    now: datetime
    event_types: tuple[str, ...]
    item_event_types: tuple[str, ...]
    event_aliases: dict[str, str] = field(default_factory=dict)
    max_future_skew_minutes: int = 5
    default_personalization: bool = False
    default_analytics: bool = False
    default_phone_country_code: str = "1"


def _text(m: Column, *keys: str) -> Column:
    """The first non-blank value among `keys` of a record (its struct of known keys or a map)."""
    return F.coalesce(*[F.nullif(F.trim(m[key]), F.lit("")) for key in keys])


def _merge_maps(base: Column, override: Column) -> Column:
    """`base` with `override`'s entries on top (it wins on shared keys); neither may hold null
    values. Higher-order functions run interpreted, so they are evaluated only when both maps
    have entries (most records have no explicit properties and no coupon)."""
    empty = F.create_map().cast("map<string,string>")
    base, override = F.coalesce(base, empty), F.coalesce(override, empty)
    kept = F.map_filter(base, lambda k, v: ~F.array_contains(F.map_keys(override), k))
    return (F.when(F.size(override) == 0, base).when(F.size(base) == 0, override)
            .otherwise(F.map_concat(kept, override)))


def _without_nulls(m: Column) -> Column:
    return F.map_filter(m, lambda k, v: v.isNotNull())


def _parse_timestamp(text: Column) -> Column:
    """ISO-8601 (offset honoured, none means UTC) or epoch seconds / milliseconds."""
    number = text.try_cast("double")
    is_number = text.rlike(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$")
    epoch = F.when(F.abs(number) >= 1e11, number / 1000).otherwise(number)
    return F.when(is_number, F.timestamp_seconds(epoch)).otherwise(text.try_cast("timestamp"))


def _items(m: Column, ecommerce: Column) -> Column:
    """Every shape's products as one array<struct> of text fields (null: no item at all)."""
    ga4 = F.transform(ecommerce["items"], lambda x: F.struct(
        x["item_id"].alias("item_id"), x["item_name"].alias("item_name"),
        x["item_category"].alias("category"), x["item_brand"].alias("brand"),
        x["price"].alias("price"), x["quantity"].alias("quantity"),
        F.lit(None).cast("string").alias("revenue"), x["discount"].alias("discount"),
        x["coupon"].alias("coupon")))
    ua_products = F.coalesce(*[ecommerce[action]["products"] for action in _UA_ACTIONS])
    ua = F.transform(ua_products, lambda x: F.struct(
        x["id"].alias("item_id"), x["name"].alias("item_name"), x["category"].alias("category"),
        x["brand"].alias("brand"), x["price"].alias("price"), x["quantity"].alias("quantity"),
        F.lit(None).cast("string").alias("revenue"), F.lit(None).cast("string").alias("discount"),
        x["coupon"].alias("coupon")))
    flat_item = F.struct(
        _text(m, "item_id", "sku").alias("item_id"), _text(m, "item_name").alias("item_name"),
        _text(m, "category").alias("category"), _text(m, "brand").alias("brand"),
        _text(m, "price").alias("price"), _text(m, "quantity").alias("quantity"),
        _text(m, "revenue").alias("revenue"), _text(m, "discount").alias("discount"),
        F.lit(None).cast("string").alias("coupon"))
    has_flat_item = F.coalesce(*[_text(m, key) for key in
                                 ("item_id", "sku", "item_name", "price", "quantity")]).isNotNull()
    flat = F.when(has_flat_item, F.array(flat_item))
    return F.coalesce(ga4, ua, flat).cast(f"array<struct<{_ITEM_STRUCT}>>")


def _raw_event_name(m: Column, ecommerce: Column) -> Column:
    """The source's own event name: a UA action block wins, then the export kind, then the name."""
    ua_action = F.coalesce(*[F.when(ecommerce[action].isNotNull(), F.lit(canonical))
                             for action, canonical in _UA_ACTIONS.items()])
    page_type = F.lower(_text(m, "page_type"))
    export = F.lower(_text(m, "export"))
    export_event = (F.when(export != "web_browse", export)
                    .when(page_type == "product", "view_item")
                    .when(page_type == "search", "search")
                    .when(page_type == "cart", "add_to_cart")
                    .otherwise("page_view"))
    return F.coalesce(ua_action, F.when(export.isNotNull(), export_event),
                      _text(m, "event_type", "event"))


def _canonical_event_type(raw_name: Column, params: IngestParams) -> Column:
    lowered = F.lower(raw_name)
    aliases = F.create_map(*[F.lit(x) for pair in sorted(params.event_aliases.items()) for x in pair])
    return F.coalesce(aliases[lowered], lowered) if params.event_aliases else lowered


def _default_channel(m: Column) -> Column:
    export = F.lower(_text(m, "export"))
    return (F.when(export == "app_session", "app")
            .when(export.startswith("email"), "email")
            .otherwise("web"))


def _first_reason(checks: list[tuple[Column, str, str | Column | None]]) -> tuple[Column, Column]:
    """(reason, detail) of the first failing check, in the order given."""
    reason = F.lit(None).cast("string")
    detail = F.lit(None).cast("string")
    for failed, name, info in reversed(checks):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
        info_col = info if isinstance(info, Column) else F.lit(info).cast("string")
        detail = F.when(failed, info_col).otherwise(detail)
    return reason, detail


def _item_problems() -> list[tuple[str, str, Callable[[Column], Column]]]:
    """(reason, field, predicate on one item) in the order they are reported: every bad type
    before any negative value, a missing item id last."""
    bad_type = [("bad_type", name, lambda item, name=name, sql_type=sql_type:
                 item[name].isNotNull() & item[name].try_cast(sql_type).isNull())
                for name, sql_type in _NUMERIC_FIELDS.items()]
    negative = [("negative_value", name, lambda item, name=name, sql_type=sql_type:
                 item[name].try_cast(sql_type) < 0)
                for name, sql_type in _NUMERIC_FIELDS.items()]
    return [*bad_type, *negative, ("missing_field", "item_id", lambda item: item["item_id"].isNull())]


_ITEM_PROBLEMS = _item_problems()


def _first_item_problem(items: Column) -> Column:
    """Index in _ITEM_PROBLEMS of the first problem any item has (null: none). One pass over
    the items: higher-order functions are evaluated interpreted, so one instead of one per check."""
    return F.array_min(F.transform(items, lambda item: F.coalesce(
        *[F.when(problem(item), F.lit(index)) for index, (_, _, problem) in enumerate(_ITEM_PROBLEMS)])))


def _item_problem_is(reason: str, problem: Column) -> tuple[Column, str, Column]:
    """A check for `_first_reason`: the first item problem is of kind `reason`; detail its field."""
    indexes = [index for index, (kind, _, _) in enumerate(_ITEM_PROBLEMS) if kind == reason]
    fields = F.array(*[F.lit(field) for _, field, _ in _ITEM_PROBLEMS])
    return problem.isin(*indexes), reason, F.element_at(fields, problem + 1)


def check_records(raw: DataFrame, params: IngestParams) -> DataFrame:
    """Parse and validate raw records (`raw`, `source_file`) into the intermediate shape.

    Returns one row per raw record with `reason` (null = accepted) and `reason_detail`.
    """
    # Two parses of each record: into a map (is it an object at all, and the unknown keys that go
    # to `properties`) and into a struct of the known keys with the nested blocks typed, so fields
    # are read by position (map lookups scan every key) and nested blocks are not turned back
    # into text and parsed again. Where a record repeats a key, the struct keeps the last value.
    m, r = F.col("_m"), F.col("_r")
    ecommerce, consent, explicit_properties = r["ecommerce"], r["consent"], r["properties"]
    leftover = F.map_filter(m, lambda k, v: ~k.isin(*_KNOWN_KEYS) & v.isNotNull())
    ecommerce_extras = F.when(ecommerce.isNotNull(), _without_nulls(F.create_map(
        F.lit("value"), ecommerce["value"], F.lit("transaction_id"), ecommerce["transaction_id"],
        F.lit("transaction_revenue"), ecommerce["purchase"]["actionField"]["revenue"],
        F.lit("transaction_id_ua"), ecommerce["purchase"]["actionField"]["id"],
    )))

    parsed = raw.select(
        "raw", "source_file", F.from_json("raw", "map<string,string>").alias("_m"),
        F.from_json("raw", _RECORD_SCHEMA).alias("_r"),
    ).select(
        "raw", "source_file", "_m",
        F.coalesce(_text(r, "event_id"), F.sha2(F.col("raw"), 256)).alias("event_id"),
        ecommerce.isNotNull().alias("_from_ecommerce"),
        _raw_event_name(r, ecommerce).alias("_raw_event"),
        _text(r, "timestamp", "event_time", "ts", "started_at", "sent_at").alias("_raw_time"),
        _text(r, "user_id", "customer_id").alias("user_id"),
        _text(r, "anonymous_id", "cookie_id", "device_id").alias("anonymous_id"),
        _text(r, "session_id").alias("session_id"),
        F.lower(F.coalesce(_text(r, "channel"), _default_channel(r))).alias("channel"),
        normalize_email(_text(r, "email", "recipient")).alias("_email"),
        normalize_phone(_text(r, "phone"), params.default_phone_country_code).alias("_phone"),
        F.upper(F.coalesce(_text(r, "currency"), ecommerce["currency"],
                           ecommerce["currencyCode"])).alias("currency"),
        F.lower(consent["personalization"]).alias("_consent_p"),
        F.lower(consent["analytics"]).alias("_consent_a"),
        _items(r, ecommerce).alias("_items"),
        _merge_maps(_merge_maps(leftover, ecommerce_extras),
                    F.when(explicit_properties.isNotNull(), _without_nulls(explicit_properties))
                    ).alias("properties"),
    ).withColumn("event_type", _canonical_event_type(F.col("_raw_event"), params)
    ).withColumn("event_time", _parse_timestamp(F.col("_raw_time"))
    ).withColumn("_item_problem", _first_item_problem(F.col("_items")))

    items = F.col("_items")
    horizon = F.lit(params.now).cast("timestamp") + F.expr(
        f"INTERVAL {int(params.max_future_skew_minutes)} MINUTES")
    checks: list[tuple[Column, str, str | Column | None]] = [
        (m.isNull(), "malformed_json", "not a JSON object"),
        (F.col("_raw_event").isNull(), "missing_field", "event_type"),
        (~F.col("event_type").isin(*params.event_types), "unknown_event_type", F.col("_raw_event")),
        (F.col("_raw_time").isNull(), "missing_field", "timestamp"),
        (F.col("event_time").isNull(), "unparseable_timestamp", F.col("_raw_time")),
        (F.col("event_time") > horizon, "future_timestamp", F.col("_raw_time")),
        (F.coalesce(F.col("user_id"), F.col("anonymous_id"), F.col("_email"),
                    F.col("_phone")).isNull(), "missing_identifier", None),
    ]
    problem = F.col("_item_problem")
    is_item_event = F.col("event_type").isin(*params.item_event_types)
    checks.append(_item_problem_is("bad_type", problem))
    for flag in ("_consent_p", "_consent_a"):
        checks.append((F.col(flag).isNotNull() & ~F.col(flag).isin(*_BOOLEAN_TEXT),
                       "bad_type", "consent"))
    checks.append(_item_problem_is("negative_value", problem))
    checks.append((is_item_event & (F.coalesce(F.size(items), F.lit(0)) == 0), "missing_field", "item_id"))
    missing_item_id, _, _ = _item_problem_is("missing_field", problem)
    checks.append((is_item_event & missing_item_id, "missing_field", "item_id"))

    reason, detail = _first_reason(checks)
    return (parsed.withColumn("reason", reason).withColumn("reason_detail", detail)
            .withColumn("_is_json", m.isNotNull())
            .withColumn("_raw_order", F.xxhash64("raw"))  # tie-break among duplicates
            .drop("_m", "_item_problem"))


def quarantine_rows(checked: DataFrame) -> DataFrame:
    """Rejected records with their reason and source, PII in the raw text masked.

    `quarantine_id` hashes the raw text with its source, so re-ingesting a dump is idempotent.
    """
    return checked.where(F.col("reason").isNotNull()).select(
        F.sha2(F.concat_ws("\u0001", F.col("source_file"), F.col("raw")), 256).alias("quarantine_id"),
        F.when(F.col("_is_json"), F.col("event_id")).alias("event_id"),
        "reason", "reason_detail",
        mask_pii_text(F.col("raw")).alias("raw"),
        "source_file",
    )


def repeated_event_ids(checked: DataFrame) -> DataFrame:
    """The event_ids that more than one accepted record carries (an aggregate of one column)."""
    return (checked.where(F.col("reason").isNull()).groupBy("event_id").count()
            .where(F.col("count") > 1).select("event_id"))


def dedupe_records(checked: DataFrame, repeated_ids: DataFrame | None = None) -> DataFrame:
    """Accepted records, one per event_id; of duplicates the first by source file, then by a
    hash of the raw text, wins (the same one on every run).

    Given `repeated_ids` (from `repeated_event_ids`, small enough to broadcast), only the
    records that share an id go through the window's shuffle and sort; the rest, nearly all,
    keep their partitions. Without it every record does.
    """
    accepted = checked.where(F.col("reason").isNull())
    first = Window.partitionBy("event_id").orderBy("source_file", "_raw_order")

    def first_of_each(records: DataFrame) -> DataFrame:
        return (records.withColumn("_copy", F.row_number().over(first))
                .where(F.col("_copy") == 1).drop("_copy"))

    if repeated_ids is None:
        return first_of_each(accepted)
    repeated_ids = F.broadcast(repeated_ids)
    return (accepted.join(repeated_ids, "event_id", "left_anti")
            .unionByName(first_of_each(accepted.join(repeated_ids, "event_id", "left_semi"))))


def to_canonical(records: DataFrame, params: IngestParams) -> DataFrame:
    """Explode items to one row per item and produce the canonical columns plus `event_date`.

    Rows exploded from an item array are keyed `<event_id>:<index>`; a flat record keeps its id.
    `_record_id` (the raw record's event_id) and `_first_of_record` (true on one row per record,
    so records can be counted without a distinct) are kept for counting and dropped before writing.
    """
    exploded = records.select("*", F.posexplode_outer("_items").alias("_index", "_item"))
    item = F.col("_item")
    price = item["price"].try_cast("double")
    quantity = F.when(item.isNotNull(), F.coalesce(item["quantity"].try_cast("int"), F.lit(1)))
    given_revenue = item["revenue"].try_cast("double")
    derived_revenue = F.when(F.col("event_type") == "purchase", price * quantity)
    coupon = F.when(item["coupon"].isNotNull(), F.create_map(F.lit("coupon"), item["coupon"]))
    consent_p = F.coalesce(F.col("_consent_p") == "true", F.lit(params.default_personalization))
    consent_a = F.coalesce(F.col("_consent_a") == "true", F.lit(params.default_analytics))
    # Flags the record did not carry took the configured default: marked, so consent over time
    # (features.consent) does not read them as the person's choice.
    defaulted = F.concat_ws(",", F.when(F.col("_consent_p").isNull(), F.lit("personalization")),
                            F.when(F.col("_consent_a").isNull(), F.lit("analytics")))
    defaulted_marker = F.when(defaulted != "", F.create_map(F.lit(DEFAULTED_PROPERTY), defaulted))
    properties = _merge_maps(F.col("properties"), coupon)
    # Only ingest sets the marker: a sender's own property of that name is dropped.
    properties = F.when(properties[DEFAULTED_PROPERTY].isNull(), properties).otherwise(
        F.map_filter(properties, lambda k, v: k != DEFAULTED_PROPERTY))
    row_id = F.when(F.col("_from_ecommerce") & F.col("_index").isNotNull(),
                    F.concat_ws(":", F.col("event_id"), F.col("_index").cast("string"))
                    ).otherwise(F.col("event_id"))
    return exploded.select(
        row_id.alias("event_id"),
        "event_type",
        "event_time",
        "channel",
        "user_id",
        "anonymous_id",
        hmac_sha256_hex(F.col("_email"), params.pii_key).alias("email_hash"),
        hmac_sha256_hex(F.col("_phone"), params.pii_key).alias("phone_hash"),
        "session_id",
        item["item_id"].alias("item_id"),
        item["item_name"].alias("item_name"),
        item["category"].alias("category"),
        item["brand"].alias("brand"),
        price.alias("price"),
        quantity.alias("quantity"),
        F.coalesce(given_revenue, derived_revenue).alias("revenue"),
        item["discount"].try_cast("double").alias("discount"),
        "currency",
        consent_p.alias("consent_personalization"),
        consent_a.alias("consent_analytics"),
        _merge_maps(properties, defaulted_marker).alias("properties"),
        F.to_date("event_time").alias("event_date"),
        F.col("event_id").alias("_record_id"),
        (F.coalesce(F.col("_index"), F.lit(0)) == 0).alias("_first_of_record"),
    )
