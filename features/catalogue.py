"""The item catalogue: column-mapped item feeds plus what events say about items → catalogue/.

`feed_records` maps a feed's rows (CSV, JSON lines or Parquet, each row as map<string,string>)
to item records and gives each a `reason` (null = accepted); accepted ones are kept in
item_feed/. `build_catalogue` then makes one row per item known from a feed or an event: per
field the most recent feed value wins, and an item seen only in events gets what the events
say (name, brand, categories, first seen, last price).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.events import _first_reason, _parse_timestamp
from features.profiles import parse_boolean

ITEM_FEED_COLUMNS = ["record_id", "source", "observed_at", "item_id", "name", "category",
                     "categories", "brand", "price", "sale_price", "release_date", "in_stock",
                     "attributes", "source_file"]
CATALOGUE_COLUMNS = ["item_id", "name", "category", "categories", "brand", "price", "sale_price",
                     "release_date", "in_stock", "attributes", "first_seen", "last_price", "source"]
ITEM_FEED_SCHEMA = ("record_id string, source string, observed_at timestamp, item_id string, "
                    "name string, category string, categories array<string>, brand string, "
                    "price double, sale_price double, release_date date, in_stock boolean, "
                    "attributes map<string,string>, source_file string")
FEED_FIELDS = ("item_id", "name", "category", "categories", "brand", "price", "sale_price",
               "release_date", "in_stock", "updated_at")


@dataclass(frozen=True)
class FeedMapping:
    """How one feed's columns become catalogue fields. `columns` maps FEED_FIELDS to the
    feed's column names; `attributes` lists columns kept as attributes; `categories` is split
    on `category_separator`, and its first entry is the category when none is mapped."""

    source: str
    columns: dict[str, str]
    attributes: tuple[str, ...] = ()
    category_separator: str = "|"
    date_format: str | None = None
    constants: dict[str, str] = field(default_factory=dict)


def _text(m: Column, mapping: FeedMapping, name: str) -> Column:
    if name in mapping.columns:
        return F.nullif(F.trim(m[mapping.columns[name]]), F.lit(""))
    return F.lit(mapping.constants.get(name)).cast("string")


def _date(text: Column, date_format: str | None) -> Column:
    """ISO dates (a bare year is 1 January), or `date_format` where given."""
    iso = text.try_cast("date")
    if date_format:
        return F.coalesce(F.try_to_timestamp(text, F.lit(date_format)).cast("date"), iso)
    return iso


def feed_records(rows: DataFrame, mapping: FeedMapping) -> DataFrame:
    """Feed rows (raw, source_file, `_m`, modified_at) as item records with `reason`."""
    m = F.col("_m")
    text = {name: _text(m, mapping, name) for name in FEED_FIELDS}
    split = F.filter(F.transform(F.split(text["categories"], re.escape(mapping.category_separator)),
                                 lambda c: F.trim(c)), lambda c: c != "")
    categories = F.when(text["categories"].isNotNull(), split)
    category = F.coalesce(text["category"], F.element_at(categories, 1))
    price, sale_price = text["price"].try_cast("double"), text["sale_price"].try_cast("double")
    release_date = _date(text["release_date"], mapping.date_format)
    in_stock = parse_boolean(text["in_stock"])
    raw_time = F.coalesce(text["updated_at"], F.col("modified_at").cast("string"))
    observed_at = _parse_timestamp(raw_time)
    attributes = F.map_filter(F.create_map(*[x for column in mapping.attributes
                                             for x in (F.lit(column), F.trim(m[column]))]),
                              lambda k, v: v.isNotNull() & (v != ""))
    checks = [
        (text["item_id"].isNull(), "missing_field", F.lit("item_id")),
        (text["price"].isNotNull() & price.isNull(), "bad_type", F.lit("price")),
        (text["sale_price"].isNotNull() & sale_price.isNull(), "bad_type", F.lit("sale_price")),
        (text["in_stock"].isNotNull() & in_stock.isNull(), "bad_type", F.lit("in_stock")),
        (text["release_date"].isNotNull() & release_date.isNull(), "unparseable_date",
         text["release_date"]),
        (observed_at.isNull(), "unparseable_timestamp", raw_time),
        ((price < 0) | (sale_price < 0), "negative_value", F.lit("price")),
    ]
    reason, detail = _first_reason(checks)
    return rows.select(
        "raw", "source_file", F.lit(True).alias("_is_json"),
        F.sha2(F.concat_ws("\u0001", F.lit(mapping.source), F.col("raw")), 256).alias("record_id"),
        F.lit(mapping.source).alias("source"), observed_at.alias("observed_at"),
        text["item_id"].alias("item_id"), text["name"].alias("name"), category.alias("category"),
        F.coalesce(categories, F.when(category.isNotNull(), F.array(category))).alias("categories"),
        text["brand"].alias("brand"), price.alias("price"), sale_price.alias("sale_price"),
        release_date.alias("release_date"), in_stock.alias("in_stock"),
        attributes.alias("attributes"),
        reason.alias("reason"), detail.alias("reason_detail"))


def item_rows(checked: DataFrame) -> DataFrame:
    """Accepted item records as stored in item_feed/, one per record_id."""
    first = Window.partitionBy("record_id").orderBy("source_file", F.xxhash64("raw"))
    return (checked.where(F.col("reason").isNull())
            .withColumn("_copy", F.row_number().over(first)).where(F.col("_copy") == 1)
            .select(*ITEM_FEED_COLUMNS))


def _latest(column: str, time: str) -> Column:
    """The value of `column` at the latest `time` where it is not null."""
    return F.max_by(column, F.when(F.col(column).isNotNull(), F.col(time)))


def build_catalogue(feed: DataFrame | None, events: DataFrame) -> DataFrame:
    """One row per item (CATALOGUE_COLUMNS) from item_feed/ rows and canonical events."""
    from_events = events.where(F.col("item_id").isNotNull()).groupBy("item_id").agg(
        _latest("item_name", "event_time").alias("e_name"),
        _latest("category", "event_time").alias("e_category"),
        F.array_sort(F.collect_set("category")).alias("e_categories"),
        _latest("brand", "event_time").alias("e_brand"),
        _latest("price", "event_time").alias("e_last_price"),
        F.min("event_time").alias("e_first_seen"))
    if feed is None:
        feed = events.sparkSession.createDataFrame([], ITEM_FEED_SCHEMA)
    from_feed = feed.groupBy("item_id").agg(
        *[_latest(c, "observed_at").alias(c) for c in
          ("name", "category", "categories", "brand", "price", "sale_price", "release_date",
           "in_stock", "attributes", "source")],
        F.min("observed_at").alias("f_first_seen"))
    joined = from_feed.join(from_events, "item_id", "full")
    return joined.select(
        "item_id",
        F.coalesce("name", "e_name").alias("name"),
        F.coalesce("category", "e_category").alias("category"),
        F.coalesce("categories", F.when(F.size("e_categories") > 0, F.col("e_categories"))
                   ).alias("categories"),
        F.coalesce("brand", "e_brand").alias("brand"),
        "price", "sale_price", "release_date", "in_stock",
        F.coalesce("attributes", F.create_map().cast("map<string,string>")).alias("attributes"),
        F.least("f_first_seen", "e_first_seen").alias("first_seen"),
        F.coalesce("e_last_price", "sale_price", "price").alias("last_price"),
        F.coalesce("source", F.lit("events")).alias("source"))
