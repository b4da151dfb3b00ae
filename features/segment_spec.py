"""Segment-spec calls (`track`, `page`, `screen`, `identify`) and column-mapped feeds, as Spark
transforms into the shapes the rest of ingest already knows.

Why convert instead of teaching `features.events` a fifth shape: a `track`/`page`/`screen`
call becomes a flat event (GA4 `items` for a `products` array) in JSON text, so it gets every
check, de-duplication and pseudonymization events get, with no second code path. `identify`
calls are not events: they become trait records (see `features.profiles`). `context` feeds the
device, OS, locale and IP-derived location; `integrations` is ignored.

Routing looks at the raw text first (a substring test), so lines that are not Segment calls
are never parsed twice.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

EVENT_CALLS = ("track", "page", "screen")
IDENTIFY = "identify"
SEGMENT_CALLS = EVENT_CALLS + (IDENTIFY, "group", "alias")

# Segment's e-commerce / video / e-mail spec names → canonical event types. Names not listed
# are lower-cased with spaces as underscores and go through `ingest.event_aliases`.
SEGMENT_EVENTS = {
    "products searched": "search",
    "product viewed": "view_item",
    "product clicked": "view_item",
    "product added": "add_to_cart",
    "product removed": "remove_from_cart",
    "product added to wishlist": "add_to_wishlist",
    "checkout started": "begin_checkout",
    "order completed": "purchase",
    "product shared": "share",
    "product reviewed": "rate",
    "video playback started": "video_play",
    "email opened": "email_open",
    "email link clicked": "email_click",
    "application opened": "app_open",
}
# properties → flat event fields (first present wins); the rest stay in `properties`.
_PROPERTY_FIELDS = {
    "item_id": ("product_id", "sku", "item_id"),
    "item_name": ("name",),
    "category": ("category",),
    "brand": ("brand",),
    "price": ("price",),
    "quantity": ("quantity",),
    "revenue": ("revenue", "total"),
    "discount": ("discount",),
    "currency": ("currency",),
    "session_id": ("session_id",),
}
_PRODUCTS_SCHEMA = "array<map<string,string>>"
CONTEXT_SCHEMA = ("struct<device: map<string,string>, os: map<string,string>, locale: string, "
                  "location: map<string,string>, traits: map<string,string>, "
                  "app: map<string,string>, consent: struct<categoryPreferences: map<string,string>>>")
_RECORD_SCHEMA = "map<string,string>"
_SEGMENT_TYPE = r'"type"\s*:\s*"(' + "|".join(SEGMENT_CALLS) + r')"'


def _field(m: Column, *keys: str) -> Column:
    return F.coalesce(*[F.nullif(F.trim(m[key]), F.lit("")) for key in keys])


def context_traits(context: Column) -> Column:
    """Device type, OS, locale and IP-derived location of a Segment `context` (null entries
    dropped), named as profile traits."""
    pairs = {
        "device_type": F.lower(context["device"]["type"]),
        "os": context["os"]["name"],
        "locale": context["locale"],
        "city": context["location"]["city"],
        "region": context["location"]["region"],
        "country": context["location"]["country"],
    }
    return F.map_filter(F.create_map(*[x for k, v in pairs.items() for x in (F.lit(k), v)]),
                        lambda k, v: v.isNotNull() & (F.trim(v) != ""))


def route_segment(raw: DataFrame) -> DataFrame:
    """`raw` (raw, source_file) plus `kind`: "event" (everything that is not a Segment call, and
    track/page/screen converted to flat-event text in `raw`), "identify", or "segment_other"
    (group/alias, which Tailor does not use: quarantined as such). Identify rows keep their text
    and get `_m` (the parsed record) for `identify_records`."""
    candidate = F.col("raw").contains('"type"') & F.col("raw").rlike(_SEGMENT_TYPE)
    parsed = raw.withColumn("_m", F.when(candidate, F.from_json("raw", _RECORD_SCHEMA)))
    m = F.col("_m")
    call = F.lower(m["type"])
    is_segment = call.isin(*SEGMENT_CALLS) & F.coalesce(
        m["userId"], m["anonymousId"], m["messageId"]).isNotNull()
    kind = (F.when(~is_segment | m.isNull(), F.lit("event"))
            .when(call.isin(*EVENT_CALLS), F.lit("event"))
            .when(call == IDENTIFY, F.lit("identify"))
            .otherwise(F.lit("segment_other")))
    converted = F.when(is_segment & call.isin(*EVENT_CALLS), flat_event_json(m)).otherwise(F.col("raw"))
    return parsed.select(converted.alias("raw"), "source_file", kind.alias("kind"), "_m")


def flat_event_json(m: Column) -> Column:
    """A Segment track/page/screen call (parsed as map<string,string>) as flat-event JSON text."""
    call = F.lower(m["type"])
    props = F.coalesce(F.from_json(m["properties"], _RECORD_SCHEMA),
                       F.create_map().cast(_RECORD_SCHEMA))
    context = F.from_json(m["context"], CONTEXT_SCHEMA)
    spec_names = F.create_map(*[F.lit(x) for pair in SEGMENT_EVENTS.items() for x in pair])
    name = F.lower(F.trim(m["event"]))
    event_type = (F.when(call == "track", F.coalesce(spec_names[name],
                                                     F.regexp_replace(name, r"\s+", "_")))
                  .otherwise(F.lit("page_view")))
    products = F.from_json(props["products"], _PRODUCTS_SCHEMA)
    items = F.transform(products, lambda p: F.struct(
        F.coalesce(p["product_id"], p["sku"], p["item_id"]).alias("item_id"),
        p["name"].alias("item_name"), p["category"].alias("item_category"),
        p["brand"].alias("item_brand"), p["price"].alias("price"),
        p["quantity"].alias("quantity"), p["coupon"].alias("coupon")))
    ecommerce = F.when(products.isNotNull(), F.struct(
        _field(props, "currency").alias("currency"), items.alias("items")))
    mapped_keys = [k for keys in _PROPERTY_FIELDS.values() for k in keys] + ["products"]
    extra = F.map_filter(props, lambda k, v: ~F.array_contains(F.array(*map(F.lit, mapped_keys)), k))
    described = F.create_map(
        F.lit("segment_call"), call,
        F.lit("page_name"), _field(m, "name"),
        F.lit("page_category"), _field(m, "category"))
    properties = F.map_concat(
        F.map_filter(described, lambda k, v: v.isNotNull()),
        F.map_filter(extra, lambda k, v: ~F.array_contains(F.map_keys(described), k)))
    properties = F.map_concat(
        F.map_filter(properties, lambda k, v: ~F.array_contains(
            F.map_keys(context_traits(context)), k)),
        context_traits(context))
    preferences = context["consent"]["categoryPreferences"]
    consent = F.when(preferences.isNotNull(), F.struct(
        preferences["personalization"].alias("personalization"),
        preferences["analytics"].alias("analytics")))
    channel = F.when((call == "screen") | context["app"].isNotNull(), F.lit("app")).otherwise("web")
    single = {field: F.when(products.isNull(), _field(props, *keys))
              for field, keys in _PROPERTY_FIELDS.items() if field not in ("currency", "session_id")}
    record = F.struct(
        _field(m, "messageId").alias("event_id"),
        event_type.alias("event_type"),
        _field(m, "timestamp", "originalTimestamp", "sentAt", "receivedAt").alias("timestamp"),
        _field(m, "userId").alias("user_id"),
        _field(m, "anonymousId").alias("anonymous_id"),
        context["traits"]["email"].alias("email"),
        context["traits"]["phone"].alias("phone"),
        _field(props, "session_id").alias("session_id"),
        channel.alias("channel"),
        F.when(products.isNull(), _field(props, "currency")).alias("currency"),
        *[column.alias(field) for field, column in single.items()],
        ecommerce.alias("ecommerce"),
        F.coalesce(consent.cast("struct<personalization: string, analytics: string>"),
                   F.from_json(m["consent"], "struct<personalization: string, analytics: string>")
                   ).alias("consent"),
        properties.alias("properties"),
    )
    return F.to_json(record)
