"""The ingest normalization in one Python process (pandas/pyarrow): the benchmark's baseline.

Why: `make bench` compares the Spark ingest with what a single process does on the same dump.
The comparison is only fair if both do the same work, so this follows features/events.py and
jobs/ingest_events.py rule for rule: the same input shapes, canonical columns, quarantine
reasons and details, de-duplication on event_id before items are exploded, HMAC-SHA256
pseudonymization (Python's hmac), PII masking in the quarantine and the same counts. Nested
values are read the way Spark's `from_json` reads them (numbers as Java prints them, nested
blocks as compact JSON text, trailing text after a JSON object ignored), so every generated
record gets the same reason and the same canonical row.

    .venv/bin/python bench/ingest_baseline.py --input DUMP --output DIR [--conf F] [--set k=v …]

Parsing is `json.JSONDecoder.raw_decode` per record; numbers, timestamps, checks, hashing of
distinct values, the item explode and the Parquet writing are vectorized. Records stream
through in chunks; only the set of event ids seen so far grows with the input.

Known differences, none of which the generated dumps exercise:
* Of two records with one event_id in the same file, the first line wins; features/events.py
  takes the one with the smaller xxhash64 of the raw text (across files both take the first
  file). Exact re-sends, the only duplicates the generator makes, give the same rows either way;
  matching the hash order exactly would mean keeping a hash per event id seen.
* Number text follows pandas.to_numeric (Spark's cast also takes Java's "1d", and "NaN"),
  ISO timestamps pandas' ISO-8601 reader (Spark's cast also takes zone names and partial forms
  such as "2024-3-1"), JSON syntax Python's (Spark's parser also takes single quotes), and a
  double prints shortest-first (JDK 17 sometimes adds a digit: 1.0E23 → 9.999999999999999E22).
* Output goes to a fresh folder: there is no merge with an existing events/ (the benchmark
  always ingests into an empty root).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.events import _KNOWN_KEYS, _UA_ACTIONS, QUARANTINE_COLUMNS, IngestParams  # one definition
from features.consent import DEFAULTED_PROPERTY
from features.privacy import _EMAIL_PATTERN, _PHONE_PATTERN, _PII_KEY_VALUE
from jobs.config import load_config
from jobs.ingest_events import ingest_params
from jobs.runtime import new_run_id

KNOWN_KEYS = frozenset(_KNOWN_KEYS)
UA_ACTIONS = _UA_ACTIONS
# features/privacy.py's masking patterns; re.ASCII gives \d and \s Java's meaning.
EMAIL_PATTERN, PII_KEY_VALUE, PHONE_PATTERN = _EMAIL_PATTERN, _PII_KEY_VALUE, _PHONE_PATTERN
_MASKS = [(re.compile(PII_KEY_VALUE, re.ASCII), r'\1"***"'),
          (re.compile(EMAIL_PATTERN, re.ASCII), "***@***"),
          (re.compile(PHONE_PATTERN, re.ASCII), "***")]

JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
CHUNK_RECORDS = 50_000
_NUMERIC_CHECKS = (("price", "double"), ("quantity", "int"), ("revenue", "double"), ("discount", "double"))
_ITEM_FIELDS = ("item_id", "item_name", "category", "brand", "price", "quantity", "revenue",
                "discount", "coupon")
_BLOCK_SIZE = 64
_MICROS_PER_DAY = 86_400_000_000
_MAX_MICROS = 9.223372036854775e18  # largest double below 2**63: Spark's toLong saturates here

EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("event_type", pa.string()),
    ("event_time", pa.timestamp("us", tz="UTC")), ("channel", pa.string()),
    ("user_id", pa.string()), ("anonymous_id", pa.string()), ("email_hash", pa.string()),
    ("phone_hash", pa.string()), ("session_id", pa.string()), ("item_id", pa.string()),
    ("item_name", pa.string()), ("category", pa.string()), ("brand", pa.string()),
    ("price", pa.float64()), ("quantity", pa.int32()), ("revenue", pa.float64()),
    ("discount", pa.float64()), ("currency", pa.string()),
    ("consent_personalization", pa.bool_()), ("consent_analytics", pa.bool_()),
    ("properties", pa.map_(pa.string(), pa.string())), ("event_date", pa.date32()),
])
QUARANTINE_SCHEMA = pa.schema([*[(name, pa.string()) for name in QUARANTINE_COLUMNS],
                               ("run_id", pa.string()),
                               ("quarantined_at", pa.timestamp("us", tz="UTC"))])

_decoder = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_dumps = json.JSONEncoder(ensure_ascii=False).encode


# -- reading values the way Spark's from_json does --------------------------------------------

def java_double(x: float) -> str:
    """A double as Java's Double.toString prints it (what Spark's JSON reader turns numbers into)."""
    if not math.isfinite(x):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        return repr(x)
    mantissa, exponent = format(Decimal(repr(x)).normalize(), "E").split("E")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}E{int(exponent)}"


def json_text(value, drop_null_fields: bool = False) -> str:
    """Compact JSON with Java-printed doubles, like Spark's JSON writer; optionally without
    null object fields, as `to_json` writes a row."""
    if value.__class__ is dict:
        return "{" + ",".join(f"{_dumps(k)}:{json_text(v, drop_null_fields)}" for k, v in value.items()
                              if not (drop_null_fields and v is None)) + "}"
    if value.__class__ is list:
        return "[" + ",".join(json_text(v, drop_null_fields) for v in value) + "]"
    if value.__class__ is float:
        return java_double(value)
    return _dumps(value)


def text_of(value) -> str | None:
    """A JSON value read into a string field: strings as they are, anything else as JSON text."""
    if value.__class__ is str or value is None:
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value.__class__ is int:
        return str(value)
    return java_double(value) if value.__class__ is float else json_text(value)


def decode_object(text: str) -> dict | None:
    """The JSON object at the start of `text` (trailing text ignored, as Spark does), else None."""
    try:
        value = _decoder.raw_decode(text, _WHITESPACE.match(text).end())[0]
    except (ValueError, RecursionError):
        return None
    return value if value.__class__ is dict else None


def _first_text(m: dict, keys: tuple[str, ...]) -> str | None:
    """features.events._text: the first value among `keys` that is not blank, space-trimmed."""
    for key in keys:
        value = m.get(key)
        if value is not None:
            value = (value if value.__class__ is str else text_of(value)).strip(" ")
            if value:
                return value
    return None


def _map_block(value) -> dict | None:
    """A nested block read as map<string,string>: an object, or a string holding one."""
    if value.__class__ is dict:
        return value
    return decode_object(value) if value.__class__ is str else None


def _struct_block(value) -> dict | None:
    """A nested block read with a struct schema: any non-blank value gives a struct (of nulls
    unless it is an object); only a missing or blank one gives null."""
    if value is None or (value.__class__ is str and not value.strip(" ")):
        return None
    return _map_block(value) or {}


def _struct_array(value) -> list[dict] | None:
    """An array<struct> field: null unless a list whose elements are objects or nulls."""
    if value.__class__ is not list:
        return None
    if any(x is not None and x.__class__ is not dict for x in value):
        return None
    return [x or {} for x in value]


# -- per-record parse (the only row-at-a-time step) ---------------------------------------------

def _items(m: dict, ec: dict | None) -> list[tuple] | None:
    """features.events._items: GA4 items, else UA products, else the flat record's own item."""
    if ec is not None:
        ga4 = _struct_array(ec.get("items"))
        if ga4 is not None:
            return [(text_of(x.get("item_id")), text_of(x.get("item_name")),
                     text_of(x.get("item_category")), text_of(x.get("item_brand")),
                     text_of(x.get("price")), text_of(x.get("quantity")), None,
                     text_of(x.get("discount")), text_of(x.get("coupon"))) for x in ga4]
        for action in UA_ACTIONS:
            block = ec.get(action)
            products = _struct_array(block.get("products")) if block.__class__ is dict else None
            if products is not None:
                return [(text_of(x.get("id")), text_of(x.get("name")), text_of(x.get("category")),
                         text_of(x.get("brand")), text_of(x.get("price")), text_of(x.get("quantity")),
                         None, None, text_of(x.get("coupon"))) for x in products]
    item_id = _first_text(m, ("item_id", "sku"))
    name, price, quantity = (_first_text(m, (k,)) for k in ("item_name", "price", "quantity"))
    if item_id is None and name is None and price is None and quantity is None:
        return None
    return [(item_id, name, _first_text(m, ("category",)), _first_text(m, ("brand",)), price, quantity,
             _first_text(m, ("revenue",)), _first_text(m, ("discount",)), None)]


def _properties(m: dict, ec: dict | None) -> dict:
    """Leftover top-level keys < ecommerce extras < the record's own `properties` (nulls dropped)."""
    props = {k: text_of(v) for k, v in m.items() if v is not None and k not in KNOWN_KEYS}
    if ec is not None:
        purchase = ec.get("purchase")
        action_field = purchase.get("actionField") if purchase.__class__ is dict else None
        action_field = action_field if action_field.__class__ is dict else {}
        for key, value in (("value", ec.get("value")), ("transaction_id", ec.get("transaction_id")),
                           ("transaction_revenue", action_field.get("revenue")),
                           ("transaction_id_ua", action_field.get("id"))):
            if value is not None:
                props[key] = text_of(value)
    explicit = _map_block(m.get("properties"))
    if explicit:
        props = {k: v for k, v in props.items() if k not in explicit}
        props.update((k, text_of(v)) for k, v in explicit.items() if v is not None)
    return props


def _raw_event_name(m: dict, ec: dict | None, export: str | None) -> str | None:
    """A UA action block wins, then the export kind (lower-cased), then the record's own name."""
    if ec is not None:
        for action, canonical in UA_ACTIONS.items():
            if ec.get(action).__class__ is dict:
                return canonical
    if export is not None:
        if export != "web_browse":
            return export
        page_type = (_first_text(m, ("page_type",)) or "").lower()
        return {"product": "view_item", "search": "search", "cart": "add_to_cart"}.get(page_type, "page_view")
    return _first_text(m, ("event_type", "event"))


def _parse(raw: str) -> tuple:
    """One raw record as the intermediate fields of features.events.check_records."""
    m = decode_object(raw)
    if m is None:
        return (False, hashlib.sha256(raw.encode()).hexdigest(), False) + (None,) * 12 + ({},)
    ecommerce = m.get("ecommerce")
    ec = _struct_block(ecommerce)
    consent = _map_block(m.get("consent"))
    consent_p = consent_a = None
    if consent is not None:
        consent_p, consent_a = text_of(consent.get("personalization")), text_of(consent.get("analytics"))
    export = _first_text(m, ("export",))
    export = export.lower() if export is not None else None
    channel = _first_text(m, ("channel",)) or (
        "app" if export == "app_session" else "email" if export and export.startswith("email") else "web")
    currency = _first_text(m, ("currency",))
    if currency is None and ec is not None:
        currency = text_of(ec.get("currency"))
        if currency is None:
            currency = text_of(ec.get("currencyCode"))
    return (
        True,
        _first_text(m, ("event_id",)) or hashlib.sha256(raw.encode()).hexdigest(),
        ec is not None,
        _raw_event_name(m, ec, export),
        _first_text(m, ("timestamp", "event_time", "ts", "started_at", "sent_at")),
        _first_text(m, ("user_id", "customer_id")),
        _first_text(m, ("anonymous_id", "cookie_id", "device_id")),
        _first_text(m, ("session_id",)),
        channel.lower(),
        _first_text(m, ("email", "recipient")),
        _first_text(m, ("phone",)),
        currency.upper() if currency is not None else None,
        consent_p.lower() if consent_p is not None else None,
        consent_a.lower() if consent_a is not None else None,
        _items(m, ec),
        _properties(m, ec),
    )


_FIELDS = ("parsed", "event_id", "from_ecommerce", "raw_event", "raw_time", "user_id", "anonymous_id",
           "session_id", "channel", "email", "phone", "currency", "consent_p", "consent_a", "items",
           "properties")


# -- vectorized casts ---------------------------------------------------------------------------

def to_double(texts) -> np.ndarray:
    """try_cast(text AS double): NaN where the text is null or not a number."""
    return pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").astype("float64").to_numpy()


def to_int(texts) -> np.ndarray:
    """try_cast(text AS int) as floats: NaN unless an optionally signed integer within int32."""
    stripped = pd.Series(texts, dtype=object).str.strip(" \t\n\r\x0b\x0c")
    whole = stripped.str.fullmatch(r"[+-]?[0-9]+", na=False)
    values = pd.to_numeric(stripped.where(whole), errors="coerce").astype("float64").to_numpy()
    return np.where((values >= -2 ** 31) & (values < 2 ** 31), values, np.nan)


def parse_times(texts: list) -> np.ndarray:
    """features.events._parse_timestamp as int64 microseconds (min int64 where unparseable)."""
    series = pd.Series(texts, dtype=object)
    is_number = series.str.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?", na=False).to_numpy()
    number = to_double(series.where(is_number))
    epoch = np.where(np.abs(number) >= 1e11, number / 1000, number)
    micros = np.trunc(np.clip(epoch * 1e6, -_MAX_MICROS, _MAX_MICROS))
    iso = pd.to_datetime(series.where(~is_number), format="ISO8601", utc=True, errors="coerce")
    iso_micros = iso.to_numpy(dtype="datetime64[ns]").astype("int64") // 1000
    nat = np.iinfo(np.int64).min
    return np.where(is_number, np.where(np.isnan(micros), nat, np.nan_to_num(micros).astype("int64")),
                    np.where(iso.isna().to_numpy(), nat, iso_micros))


class Pseudonymizer:
    """Normalized e-mail / phone → HMAC-SHA256 hex, computed once per distinct value."""

    def __init__(self, key: str, default_country_code: str):
        key_bytes = key.encode()
        self._key = hashlib.sha256(key_bytes).digest() if len(key_bytes) > _BLOCK_SIZE else key_bytes
        self._country = default_country_code
        self._phones: dict[str, str | None] = {}
        self._hashes: dict[str, str] = {}

    def phone(self, raw: str | None) -> str | None:
        """features.privacy.normalize_phone: E.164 digits with '+', None under 7 digits."""
        if raw is None:
            return None
        known = self._phones.get(raw, False)
        if known is not False:
            return known
        trimmed = raw.strip(" ")
        digits = re.sub(r"[^0-9]", "", trimmed)
        if trimmed.startswith("+"):
            e164 = digits
        elif digits.startswith("00"):
            e164 = digits[2:]
        else:
            e164 = self._country + (digits[1:] if digits.startswith("0") else digits)
        self._phones[raw] = result = "+" + e164 if len(digits) >= 7 else None
        return result

    def hash(self, value: str | None) -> str | None:
        if value is None:
            return None
        digest = self._hashes.get(value)
        if digest is None:
            digest = self._hashes[value] = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()
        return digest


def mask_pii_text(raw: str) -> str:
    for pattern, replacement in _MASKS:
        raw = pattern.sub(replacement, raw)
    return raw


# -- one chunk: check, quarantine, de-duplicate, explode ---------------------------------------

def _reasons(rec: dict, item_rec: np.ndarray, item_cols: dict, times: np.ndarray,
             params: IngestParams) -> tuple[np.ndarray, np.ndarray]:
    """features.events.check_records' reason and detail per record (None: accepted)."""
    n = len(rec["parsed"])

    def any_item(flags: np.ndarray) -> np.ndarray:
        return np.bincount(item_rec[flags], minlength=n) > 0

    def column(name):
        return np.array(rec[name], dtype=object)

    raw_event = column("raw_event")
    event_type = column("event_type")
    horizon = int(params.now.timestamp() * 1e6) + params.max_future_skew_minutes * 60_000_000
    unparsed_time = times == np.iinfo(np.int64).min
    no_id = ((column("user_id") == None) & (column("anonymous_id") == None)  # noqa: E711
             & (column("email") == None) & (column("phone_norm") == None))  # noqa: E711
    known, item_types = frozenset(params.event_types), frozenset(params.item_event_types)
    is_item_event = np.array([t in item_types for t in event_type], dtype=bool)
    n_items = np.array([-1 if items is None else len(items) for items in rec["items"]])
    checks = [
        (~np.array(rec["parsed"]), "malformed_json", "not a JSON object"),
        (raw_event == None, "missing_field", "event_type"),  # noqa: E711
        (np.array([t not in known for t in event_type], dtype=bool), "unknown_event_type",
         raw_event),
        (column("raw_time") == None, "missing_field", "timestamp"),  # noqa: E711
        (unparsed_time, "unparseable_timestamp", column("raw_time")),
        (~unparsed_time & (times > horizon), "future_timestamp", column("raw_time")),
        (no_id, "missing_identifier", None),
    ]
    present = {name: np.array([v is not None for v in item_cols[name]], dtype=bool)
               for name, _ in _NUMERIC_CHECKS}
    for name, _ in _NUMERIC_CHECKS:
        checks.append((any_item(present[name] & np.isnan(item_cols["_" + name])), "bad_type", name))
    for flag in ("consent_p", "consent_a"):
        values = column(flag)
        checks.append((np.array([v is not None and v not in ("true", "false") for v in values], dtype=bool),
                       "bad_type", "consent"))
    for name, _ in _NUMERIC_CHECKS:
        checks.append((any_item(item_cols["_" + name] < 0), "negative_value", name))
    checks.append((is_item_event & (n_items <= 0), "missing_field", "item_id"))
    item_id_null = np.array([v is None for v in item_cols["item_id"]], dtype=bool)
    checks.append((is_item_event & any_item(item_id_null), "missing_field", "item_id"))

    reason = np.full(n, None, dtype=object)
    detail = np.full(n, None, dtype=object)
    for failed, name, info in reversed(checks):  # the first failing check wins
        reason = np.where(failed, name, reason)
        detail = np.where(failed, info, detail)
    return reason, detail


def _canonical(rec: dict, keep: np.ndarray, item_rec: np.ndarray, item_cols: dict, times: np.ndarray,
               params: IngestParams) -> pa.Table:
    """features.events.to_canonical for the kept records: one row per item (or one per record
    without items), keyed `<event_id>:<index>` where the items came from an ecommerce block."""
    kept_items = np.flatnonzero(keep[item_rec])
    itemless = np.flatnonzero(keep & np.array([not items for items in rec["items"]], dtype=bool))
    row_rec = np.concatenate([item_rec[kept_items], itemless])
    row_item = np.concatenate([kept_items, np.full(len(itemless), -1)])
    has_item = row_item >= 0

    def records(name):
        return np.array(rec[name], dtype=object)[row_rec]

    # Item arrays get one null item at the end, which index -1 (rows without an item) picks.
    def items_text(name):
        return np.array(item_cols[name] + [None], dtype=object)[row_item]

    def items_number(name):
        return np.append(item_cols["_" + name], np.nan)[row_item]

    event_id = records("event_id")
    index = items_text("index")
    keyed = np.array(rec["from_ecommerce"], dtype=bool)[row_rec] & has_item
    event_id = np.where(keyed, [f"{e}:{i}" for e, i in zip(event_id, index)], event_id)
    event_type = records("event_type")
    price = items_number("price")
    quantity = np.where(has_item, np.nan_to_num(items_number("quantity"), nan=1.0), np.nan)
    derived = np.where(event_type == "purchase", price * quantity, np.nan)
    given = items_number("revenue")
    revenue = np.where(np.isnan(given), derived, given)
    micros = times[row_rec]

    def consent(name, default):
        return [default if v is None else v == "true" for v in records(name)]

    props = records("properties")
    coupons = items_text("coupon")
    props = [p if c is None else {**{k: v for k, v in p.items() if k != "coupon"}, "coupon": c}
             for p, c in zip(props, coupons)]
    # features.events marks flags that took the configured default (and drops a sent marker)
    defaulted = [",".join(flag for flag, value in (("personalization", p), ("analytics", a)) if value is None)
                 for p, a in zip(records("consent_p"), records("consent_a"))]
    props = [{**{k: v for k, v in p.items() if k != DEFAULTED_PROPERTY},
              **({DEFAULTED_PROPERTY: d} if d else {})} for p, d in zip(props, defaulted)]

    def nullable(values):
        return pa.array(values, type=pa.float64(), from_pandas=True)

    columns = {
        "event_id": pa.array(event_id, pa.string()),
        "event_type": pa.array(event_type, pa.string()),
        "event_time": pa.array(micros, pa.timestamp("us", tz="UTC")),
        "channel": pa.array(records("channel"), pa.string()),
        "user_id": pa.array(records("user_id"), pa.string()),
        "anonymous_id": pa.array(records("anonymous_id"), pa.string()),
        "email_hash": pa.array(records("email_hash"), pa.string()),
        "phone_hash": pa.array(records("phone_hash"), pa.string()),
        "session_id": pa.array(records("session_id"), pa.string()),
        "item_id": pa.array(items_text("item_id"), pa.string()),
        "item_name": pa.array(items_text("item_name"), pa.string()),
        "category": pa.array(items_text("category"), pa.string()),
        "brand": pa.array(items_text("brand"), pa.string()),
        "price": nullable(price),
        "quantity": pa.array(quantity, pa.float64(), from_pandas=True).cast(pa.int32()),
        "revenue": nullable(revenue),
        "discount": nullable(items_number("discount")),
        "currency": pa.array(records("currency"), pa.string()),
        "consent_personalization": pa.array(consent("consent_p", params.default_personalization), pa.bool_()),
        "consent_analytics": pa.array(consent("consent_a", params.default_analytics), pa.bool_()),
        "properties": pa.array(props, EVENT_SCHEMA.field("properties").type),
        "event_date": pa.array(np.floor_divide(micros, _MICROS_PER_DAY).astype("int32"), pa.date32()),
    }
    return pa.table(columns, schema=EVENT_SCHEMA)


@dataclass
class Counts:
    raw_records: int = 0
    valid_records: int = 0
    accepted: int = 0
    event_rows_written: int = 0
    quarantined_by_reason: dict = field(default_factory=dict)

    def summary(self) -> dict:
        by_reason = dict(sorted(self.quarantined_by_reason.items()))
        return {"raw_records": self.raw_records, "accepted": self.accepted,
                "event_rows_written": self.event_rows_written,
                "quarantined": sum(by_reason.values()), "quarantined_by_reason": by_reason,
                "duplicates": self.valid_records - self.accepted,
                "duplicates_in_dump": self.valid_records - self.accepted, "already_ingested": 0}


class Normalizer:
    """Runs chunks of raw records through check → quarantine → de-dup → canonical, keeping
    the counts and the event ids seen so far (files arrive in Spark's order: sorted paths)."""

    def __init__(self, params: IngestParams, run_id: str):
        self.params = params
        self.run_id = run_id
        self.pseudo = Pseudonymizer(params.pii_key, params.default_phone_country_code)
        self.seen: set[str] = set()
        self.counts = Counts()

    def chunk(self, raws: list[str], source_file: str) -> tuple[pa.Table | None, pa.Table | None]:
        """(canonical event rows, quarantine rows) of one chunk of raw records from one file."""
        params, pseudo = self.params, self.pseudo
        rec = dict(zip(_FIELDS, (list(col) for col in zip(*map(_parse, raws)))))
        aliases = params.event_aliases
        rec["event_type"] = [None if name is None else aliases.get(name.lower(), name.lower())
                             for name in rec["raw_event"]]
        rec["email"] = [None if e is None else e.lower() for e in rec["email"]]
        rec["phone_norm"] = list(map(pseudo.phone, rec["phone"]))

        item_rec, item_cols = [], {name: [] for name in ("index", *_ITEM_FIELDS)}
        for r, items in enumerate(rec["items"]):
            for i, item in enumerate(items or ()):
                item_rec.append(r)
                item_cols["index"].append(i)
                for name, value in zip(_ITEM_FIELDS, item):
                    item_cols[name].append(value)
        item_rec = np.array(item_rec, dtype=np.int64)
        for name, kind in _NUMERIC_CHECKS:
            item_cols["_" + name] = (to_double if kind == "double" else to_int)(item_cols[name])
        times = parse_times(rec["raw_time"])
        reason, detail = _reasons(rec, item_rec, item_cols, times, params)

        valid = reason == None  # noqa: E711
        keep = np.zeros(len(raws), dtype=bool)
        seen = self.seen
        for r in np.flatnonzero(valid):
            event_id = rec["event_id"][r]
            if event_id not in seen:
                seen.add(event_id)
                keep[r] = True
        counts = self.counts
        counts.raw_records += len(raws)
        counts.valid_records += int(valid.sum())
        counts.accepted += int(keep.sum())
        for name in reason[~valid]:
            counts.quarantined_by_reason[name] = counts.quarantined_by_reason.get(name, 0) + 1

        events = None
        if keep.any():
            rec["email_hash"] = list(map(pseudo.hash, rec["email"]))
            rec["phone_hash"] = list(map(pseudo.hash, rec["phone_norm"]))
            events = _canonical(rec, keep, item_rec, item_cols, times, params)
            counts.event_rows_written += events.num_rows
        return events, self._quarantine(raws, source_file, rec, reason, detail, valid)

    def _quarantine(self, raws, source_file, rec, reason, detail, valid) -> pa.Table | None:
        rejected = np.flatnonzero(~valid)
        if not len(rejected):
            return None
        raw = [raws[r] for r in rejected]
        return pa.table({
            "quarantine_id": [hashlib.sha256(f"{source_file}\x01{text}".encode()).hexdigest() for text in raw],
            "event_id": [rec["event_id"][r] if rec["parsed"][r] else None for r in rejected],
            "reason": reason[rejected].tolist(),
            "reason_detail": detail[rejected].tolist(),
            "raw": [mask_pii_text(text) for text in raw],
            "source_file": [source_file] * len(raw),
            "run_id": [self.run_id] * len(raw),
            "quarantined_at": [self.params.now] * len(raw),
        }, schema=QUARANTINE_SCHEMA)


# -- input and output ---------------------------------------------------------------------------

def list_input(path: Path) -> list[Path]:
    """Storage.list_files for a local path: every file below it, skipping `_`/`.` names, sorted."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise SystemExit(f"error: input {path} does not exist")
    files = [p for p in path.rglob("*") if p.is_file()
             and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)]
    unsupported = [p for p in files if not p.name.lower().endswith(JSON_SUFFIXES + PARQUET_SUFFIXES)]
    if unsupported:
        raise SystemExit(f"error: unsupported input file {unsupported[0]}")
    return sorted(files, key=lambda p: str(p))


def raw_chunks(files: list[Path], size: int = CHUNK_RECORDS):
    """(raw JSON texts, source_file) per chunk, in Spark's file order. JSON lines: every
    non-blank line; Parquet: each row as `to_json` writes it. `source_file` is the Hadoop form."""
    for path in files:
        source = "file:" + str(path.resolve())
        if path.name.lower().endswith(PARQUET_SUFFIXES):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
                yield [json_text(row, drop_null_fields=True) for row in batch.to_pylist()], source
            continue
        binary = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
        with io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as lines:
            while True:
                block = islice(lines, size)
                raws = [line[:-1] if line.endswith("\n") else line for line in block]
                if not raws:
                    break
                raws = [raw for raw in raws if raw.strip(" ")]
                if raws:
                    yield raws, source


def ingest(input_path: Path, output: Path, params: IngestParams, run_id: str) -> dict:
    """Normalize every record under `input_path` into output/events (by event_date) and
    output/quarantine; returns the counts in jobs.ingest_events' shape."""
    if output.exists() and any(output.iterdir()):
        raise SystemExit(f"error: output {output} is not empty")
    normalizer = Normalizer(params, run_id)
    (output / "quarantine").mkdir(parents=True)
    with pq.ParquetWriter(output / "quarantine" / "part-00000.parquet", QUARANTINE_SCHEMA) as quarantine:

        def event_batches():
            for raws, source in raw_chunks(list_input(input_path)):
                events, rejected = normalizer.chunk(raws, source)
                if rejected is not None:
                    quarantine.write_table(rejected)
                if events is not None:
                    yield from events.to_batches()

        ds.write_dataset(event_batches(), output / "events", schema=EVENT_SCHEMA, format="parquet",
                         partitioning=ds.partitioning(pa.schema([("event_date", pa.date32())]),
                                                      flavor="hive"),
                         min_rows_per_group=10_000, max_rows_per_group=100_000,
                         existing_data_behavior="error")
    return normalizer.counts.summary()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path, help="a raw dump file or folder")
    parser.add_argument("--output", required=True, type=Path, help="a new folder for events/ and quarantine/")
    parser.add_argument("--conf", default=None, help="environment config (default: conf/local.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    now = datetime.now(timezone.utc)
    params = ingest_params(load_config(args.conf, args.overrides), now)
    counts = ingest(args.input, args.output, params, new_run_id(now))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
