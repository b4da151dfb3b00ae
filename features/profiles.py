"""Person profiles: trait records (Segment `identify` calls, CRM export rows) → profiles/.

Two steps, like events:

1. Trait records. `identify_records` and `crm_records` bring both sources to one shape (text
   traits under canonical names, the raw identifiers, a time), `check_trait_records` gives each
   a `reason` (null = accepted) and `trait_rows` writes what traits/ keeps: normalized traits,
   email and phone hashed as in events, never the raw values.
2. Profiles. `build_profiles` turns trait records (with person_id from identity resolution)
   and the consented events into one row per person: for every trait the most recent
   observation wins and `trait_sources` says where it came from and when. Birth dates become
   an age (as of the build) and an age band; postcodes only feed `urban` and are not output.

Age bands (AGE_BANDS): "0-17", "18-24", "25-34", "35-44", "45-54", "55-64", "65+"; a band
includes both of its edges (24 is "18-24", 25 is "25-34").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.consent import personalization_events, withdrawn_persons
from features.events import _first_reason, _parse_timestamp
from features.identity import primary_user_ids
from features.privacy import hmac_sha256_hex, normalize_email, normalize_phone
from features.segment_spec import CONTEXT_SCHEMA, context_traits

AGE_BANDS = [(0, "0-17"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-54"),
             (55, "55-64"), (65, "65+")]
MAX_AGE = 120
# Canonical traits and their types; `age` and `birth_date` both end up as age / age_band.
STANDARD_TRAITS = {
    "age": "int", "birth_date": "date", "gender": "string", "city": "string",
    "region": "string", "country": "string", "postcode": "string", "device_type": "string",
    "os": "string", "locale": "string", "signup_date": "date", "marketing_opt_in": "boolean",
}
# Segment identify trait names (address.* flattened) per canonical trait, first present wins.
IDENTIFY_TRAITS = {
    "age": ("age",),
    "birth_date": ("birthday", "birth_date", "birthdate", "date_of_birth"),
    "gender": ("gender",),
    "city": ("address.city", "city"),
    "region": ("address.state", "address.region", "region", "state"),
    "country": ("address.country", "country"),
    "postcode": ("address.postalCode", "address.postal_code", "address.zip", "postcode",
                 "postal_code", "zip"),
    "signup_date": ("createdAt", "created_at", "signup_date"),
    "marketing_opt_in": ("marketing_opt_in", "marketingOptIn"),
    "device_type": ("device_type",),
    "os": ("os",),
    "locale": ("locale",),
}
IDENTIFIER_TRAITS = ("email", "phone", "id")
EVENT_TRAITS = ("device_type", "os", "locale", "city", "region", "country")
_TEXT_MAP = "map<string,string>"
_TRUE, _FALSE = ["true", "yes", "y", "1", "t"], ["false", "no", "n", "0", "f"]


@dataclass(frozen=True)
class TraitParams:
    """What trait checking depends on, passed explicitly."""

    pii_key: str
    now: datetime
    custom_traits: dict[str, str] = field(default_factory=dict)  # name → string|int|double|boolean|date
    ignored_traits: tuple[str, ...] = ()
    max_future_skew_minutes: int = 5
    default_phone_country_code: str = "1"

    def trait_types(self) -> dict[str, str]:
        return {**STANDARD_TRAITS, **self.custom_traits}


def _blank_to_null(value: Column) -> Column:
    return F.nullif(F.trim(value), F.lit(""))


def _trait_map(values: dict[str, Column]) -> Column:
    pairs = [x for name, value in values.items() for x in (F.lit(name), _blank_to_null(value))]
    return F.map_filter(F.create_map(*pairs), lambda k, v: v.isNotNull())


def identify_records(calls: DataFrame, params: TraitParams) -> DataFrame:
    """Segment identify calls (raw, source_file, `_m` the parsed record) in the common trait
    record shape. Traits not known (standard, custom, identifiers or configured as ignored)
    are listed in `_unknown`; `context` fills device, OS, locale and location where the
    traits do not say."""
    m = F.col("_m")
    traits = F.coalesce(F.from_json(m["traits"], _TEXT_MAP), F.create_map().cast(_TEXT_MAP))
    address = F.coalesce(F.from_json(traits["address"], _TEXT_MAP), F.create_map().cast(_TEXT_MAP))
    flat = F.map_concat(F.map_filter(traits, lambda k, v: k != "address"),
                        F.transform_keys(address, lambda k, v: F.concat(F.lit("address."), k)))
    aliases = {**IDENTIFY_TRAITS, **{name: (name,) for name in params.custom_traits}}
    known = sorted({a for names in aliases.values() for a in names}
                   | set(IDENTIFIER_TRAITS) | set(params.ignored_traits)
                   | {f"address.{x}" for x in params.ignored_traits})
    unknown = F.filter(F.map_keys(flat), lambda k: ~F.array_contains(F.array(*map(F.lit, known)), k))
    given = _trait_map({name: F.coalesce(*[flat[a] for a in names]) for name, names in aliases.items()})
    context = context_traits(F.from_json(m["context"], CONTEXT_SCHEMA))
    from_context = F.map_filter(context, lambda k, v: ~F.array_contains(F.map_keys(given), k))
    consent = F.from_json(m["context"], CONTEXT_SCHEMA)["consent"]["categoryPreferences"]
    return calls.select(
        "raw", "source_file",
        F.coalesce(_blank_to_null(m["messageId"]), F.sha2("raw", 256)).alias("record_id"),
        F.lit("segment_identify").alias("source"),
        F.lower(m["type"]).alias("_call"),
        m.isNotNull().alias("_is_json"),
        F.lit(False).alias("_needs_customer_id"),
        _blank_to_null(F.coalesce(m["timestamp"], m["originalTimestamp"], m["sentAt"])).alias("_raw_time"),
        _blank_to_null(m["userId"]).alias("user_id"),
        _blank_to_null(m["anonymousId"]).alias("anonymous_id"),
        F.coalesce(flat["email"], F.from_json(m["context"], CONTEXT_SCHEMA)["traits"]["email"]).alias("_email"),
        F.coalesce(flat["phone"], F.from_json(m["context"], CONTEXT_SCHEMA)["traits"]["phone"]).alias("_phone"),
        F.lower(consent["personalization"]).alias("_consent_p"),
        F.map_concat(given, from_context).alias("_traits"),
        F.array_sort(unknown).alias("_unknown"),
    )


def crm_records(rows: DataFrame, source: str, columns: dict[str, str],
                constants: dict[str, str] | None = None, date_format: str | None = None) -> DataFrame:
    """CRM export rows (raw, source_file, `_m` the row as map<string,string>, `modified_at`) in
    the common trait record shape. `columns` maps Tailor names (customer_id, email, phone,
    updated_at, consent_personalization and trait names) to the export's column names;
    `constants` gives traits the export lacks (e.g. country). Without `updated_at` a row is
    as recent as its file. With `date_format`, dates in that format are read too."""
    m = F.col("_m")
    special = ("customer_id", "email", "phone", "updated_at", "consent_personalization")
    trait_values = {name: m[column] for name, column in columns.items() if name not in special}
    for name, value in (constants or {}).items():
        trait_values.setdefault(name, F.lit(value))
    if date_format:
        for name in ("birth_date", "signup_date"):
            if name in trait_values:
                text = trait_values[name]
                parsed = F.try_to_timestamp(text, F.lit(date_format))
                trait_values[name] = F.coalesce(F.date_format(parsed, "yyyy-MM-dd"), text)

    def column(name: str) -> Column:
        return _blank_to_null(m[columns[name]]) if name in columns else F.lit(None).cast("string")

    updated = column("updated_at")
    return rows.select(
        "raw", "source_file",
        F.sha2(F.concat_ws("\u0001", F.lit(source), F.col("raw")), 256).alias("record_id"),
        F.lit(source).alias("source"),
        F.lit("crm").alias("_call"),
        m.isNotNull().alias("_is_json"),
        F.lit(True).alias("_needs_customer_id"),
        F.coalesce(updated, F.col("modified_at").cast("string")).alias("_raw_time"),
        column("customer_id").alias("user_id"),
        F.lit(None).cast("string").alias("anonymous_id"),
        column("email").alias("_email"),
        column("phone").alias("_phone"),
        F.lower(column("consent_personalization")).alias("_consent_p"),
        _trait_map(trait_values).alias("_traits"),
        F.array().cast("array<string>").alias("_unknown"),
    )


def parse_boolean(text: Column) -> Column:
    lowered = F.lower(F.trim(text))
    return F.when(lowered.isin(*_TRUE), True).when(lowered.isin(*_FALSE), False)


def _typed(text: Column, sql_type: str) -> Column:
    """Text as `sql_type` (null when it does not parse)."""
    if sql_type == "boolean":
        return parse_boolean(text)
    if sql_type == "int":
        number = text.try_cast("double")
        return F.when(number == F.floor(number), number.try_cast("int"))
    return text.try_cast(sql_type)


def _normalized(name: str, sql_type: str, text: Column) -> Column:
    """The trait's canonical text: typed values re-printed, gender spelled out."""
    if name == "gender":
        lowered = F.lower(F.trim(text))
        return (F.when(lowered.isin("m", "male"), "male").when(lowered.isin("f", "female"), "female")
                .otherwise(lowered))
    if sql_type == "string":
        return F.trim(text)
    return _typed(text, sql_type).cast("string")


def age_on(birth_date: Column, day: Column) -> Column:
    """Whole years from `birth_date` to `day`."""
    return F.floor(F.months_between(day, birth_date) / 12).cast("int")


def age_band(age: Column) -> Column:
    """The AGE_BANDS label of an age (null for null)."""
    band = F.lit(None).cast("string")
    for lower, label in AGE_BANDS:
        band = F.when(age >= lower, F.lit(label)).otherwise(band)
    return F.when(age.isNotNull(), band)


def check_trait_records(records: DataFrame, params: TraitParams) -> DataFrame:
    """Validate trait records: `reason` (null = accepted) and `reason_detail`, `observed_at`,
    `traits` (normalized text). Impossible ages (below 0 or above MAX_AGE, given or implied by
    a birth date), unparseable dates and unknown traits are rejected with the record."""
    traits, types = F.col("_traits"), params.trait_types()
    observed_at = _parse_timestamp(F.col("_raw_time"))
    horizon = F.lit(params.now).cast("timestamp") + F.expr(
        f"INTERVAL {int(params.max_future_skew_minutes)} MINUTES")
    age = _typed(traits["age"], "int")
    implied_age = age_on(traits["birth_date"].try_cast("date"), F.to_date(observed_at))
    checks = [
        (~F.col("_is_json"), "malformed_json", F.lit("not a JSON object")),
        (~F.col("_call").isin("identify", "crm"), "unsupported_call", F.col("_call")),
        (F.col("_needs_customer_id") & F.col("user_id").isNull(), "missing_customer_id", F.lit(None)),
        (F.coalesce(F.col("user_id"), F.col("anonymous_id")).isNull(), "missing_identifier", F.lit(None)),
        (F.col("_raw_time").isNull(), "missing_field", F.lit("timestamp")),
        (observed_at.isNull(), "unparseable_timestamp", F.col("_raw_time")),
        (observed_at > horizon, "future_timestamp", F.col("_raw_time")),
        (F.size("_unknown") > 0, "unknown_trait", F.array_join("_unknown", ",")),
    ]
    for name, sql_type in types.items():
        failed = traits[name].isNotNull() & _typed(traits[name], sql_type).isNull()
        checks.append((failed, "unparseable_date" if sql_type == "date" else "bad_type", F.lit(name)))
    for value in (age, implied_age):
        checks.append(((value < 0) | (value > MAX_AGE), "impossible_age", value.cast("string")))
    checks.append((F.col("_consent_p").isNotNull() & parse_boolean(F.col("_consent_p")).isNull(),
                   "bad_type", F.lit("consent")))
    reason, detail = _first_reason(checks)
    normalized = F.map_filter(F.create_map(*[x for name, sql_type in types.items() for x in (
        F.lit(name), _normalized(name, sql_type, traits[name]))]), lambda k, v: v.isNotNull())
    return records.select(
        "*", reason.alias("reason"), detail.alias("reason_detail"),
        observed_at.alias("observed_at"), normalized.alias("traits"))


def trait_rows(checked: DataFrame, params: TraitParams) -> DataFrame:
    """Accepted trait records as stored in traits/, email and phone hashed; one per record_id
    (of repeats the first by source file, then raw text)."""
    first = Window.partitionBy("record_id").orderBy("source_file", F.xxhash64("raw"))
    accepted = (checked.where(F.col("reason").isNull())
                .withColumn("_copy", F.row_number().over(first)).where(F.col("_copy") == 1))
    email = normalize_email(F.col("_email"))
    phone = normalize_phone(F.col("_phone"), params.default_phone_country_code)
    return accepted.select(
        "record_id", "source", "observed_at", "user_id", "anonymous_id",
        hmac_sha256_hex(email, params.pii_key).alias("email_hash"),
        hmac_sha256_hex(phone, params.pii_key).alias("phone_hash"),
        parse_boolean(F.col("_consent_p")).alias("consent_personalization"),
        "traits", "source_file")


@dataclass(frozen=True)
class ProfileParams:
    as_of: date
    custom_traits: dict[str, str] = field(default_factory=dict)
    postcode_urban: dict[str, bool] = field(default_factory=dict)  # postcode prefix → urban
    default_personalization: bool = False


def _observations(records: DataFrame, events: DataFrame) -> DataFrame:
    """(person_id, trait, value, observed_at, source): every trait record's traits, plus each
    person's most used device type, OS, locale and location in their events' properties."""
    from_records = records.select(
        "person_id", "observed_at", "source", "record_id", F.explode("traits").alias("trait", "value"))
    per_value = (events.select("person_id", "event_time", F.explode(F.map_filter(
        "properties", lambda k, v: F.array_contains(F.array(*map(F.lit, EVENT_TRAITS)), k)))
        .alias("trait", "value"))
        .groupBy("person_id", "trait", "value")
        .agg(F.count("*").alias("uses"), F.max("event_time").alias("observed_at")))
    most_used = Window.partitionBy("person_id", "trait").orderBy(
        F.desc("uses"), F.desc("observed_at"), "value")
    from_events = (per_value.withColumn("_rank", F.row_number().over(most_used))
                   .where(F.col("_rank") == 1)
                   .select("person_id", "observed_at", F.lit("events").alias("source"),
                           F.lit("").alias("record_id"), "trait", "value"))
    return from_records.unionByName(from_events)


def _with_age(observations: DataFrame, as_of: date) -> DataFrame:
    """Birth dates replaced by the age they give on `as_of` (so no birth date is output)."""
    is_birth = F.col("trait") == "birth_date"
    age = age_on(F.col("value").try_cast("date"), F.lit(as_of)).cast("string")
    return observations.select(
        "person_id", "observed_at", "source", "record_id",
        F.when(is_birth, F.lit("age")).otherwise(F.col("trait")).alias("trait"),
        F.when(is_birth, age).otherwise(F.col("value")).alias("value"))


def urban_of(postcode: Column, postcode_urban: dict[str, bool]) -> Column:
    """Urban (true/false) by the longest matching postcode prefix; null without a match."""
    result = F.lit(None).cast("boolean")
    normalized = F.upper(F.regexp_replace(postcode, r"\s+", ""))
    for prefix in sorted(postcode_urban, key=len):
        cleaned = prefix.replace(" ", "").upper()
        result = F.when(normalized.startswith(cleaned), F.lit(bool(postcode_urban[prefix]))).otherwise(result)
    return F.when(postcode.isNotNull(), result)


def consented_persons(records: DataFrame, events: DataFrame, default_personalization: bool) -> DataFrame:
    """person_id of everyone who may have a profile: with personalization-consented events, or
    known only from trait records whose latest consent (else the default) allows it; never
    anyone whose events withdraw personalization."""
    latest = Window.partitionBy("person_id").orderBy(F.desc("observed_at"), "record_id")
    from_records = (records.withColumn("_rank", F.row_number().over(latest))
                    .where((F.col("_rank") == 1) & F.coalesce(
                        "consent_personalization", F.lit(default_personalization)))
                    .select("person_id"))
    with_events = events.select("person_id").distinct()
    allowed = from_records.join(with_events, "person_id", "left_anti").unionByName(
        personalization_events(events).select("person_id"))
    return allowed.distinct().join(withdrawn_persons(events), "person_id", "left_anti")


def build_profiles(records: DataFrame, events: DataFrame, params: ProfileParams) -> DataFrame:
    """One row per consented person: person_id, user_id, age, age_band, gender, city, region,
    country, urban, device_type, os, locale, signup_date, marketing_opt_in, first_seen,
    last_seen, the custom traits, trait_sources.

    `records` are traits/ rows and `events` canonical events, both with person_id. Each trait
    takes its most recent observation (ties: by source, then value); `trait_sources` maps each
    output trait to that observation's source and time.
    """
    allowed = consented_persons(records, events, params.default_personalization)
    personal = personalization_events(events).join(allowed, "person_id", "left_semi")
    records = records.join(allowed, "person_id", "left_semi")
    observations = _with_age(_observations(records, personal), params.as_of)
    newest = Window.partitionBy("person_id", "trait").orderBy(
        F.desc("observed_at"), "source", "value")
    latest = (observations.withColumn("_rank", F.row_number().over(newest))
              .where(F.col("_rank") == 1))
    by_person = latest.groupBy("person_id").agg(
        F.map_from_entries(F.collect_list(F.struct("trait", "value"))).alias("_values"),
        F.map_from_entries(F.collect_list(F.struct("trait", F.struct(
            F.col("source"), F.col("observed_at").alias("updated_at"))))).alias("_sources"))

    # A CRM row names the person's login but is not a sighting: its time is the export's.
    timeline = (personal.select("person_id", "event_id", "event_time", "user_id", "anonymous_id",
                                F.lit(True).alias("_sighting"))
                .unionByName(records.select("person_id", F.col("record_id").alias("event_id"),
                                            F.col("observed_at").alias("event_time"),
                                            "user_id", "anonymous_id",
                                            (F.col("source") == "segment_identify").alias("_sighting"))))
    seen = timeline.where("_sighting").groupBy("person_id").agg(
        F.min("event_time").alias("first_seen"), F.max("event_time").alias("last_seen"))
    values, sources = F.col("_values"), F.col("_sources")
    age = values["age"].try_cast("int")
    urban = urban_of(values["postcode"], params.postcode_urban)
    derived_sources = F.map_filter(F.map_concat(
        F.map_filter(sources, lambda k, v: ~k.isin("postcode", "birth_date")),
        F.create_map(F.lit("age_band"), sources["age"], F.lit("urban"),
                     F.when(urban.isNotNull(), sources["postcode"]))),
        lambda k, v: v.isNotNull())
    custom = [_typed(values[name], sql_type).alias(name)
              for name, sql_type in params.custom_traits.items()]
    return (allowed.join(primary_user_ids(timeline.drop("_sighting")), "person_id", "left")
            .join(by_person, "person_id", "left").join(seen, "person_id", "left")
            .select(
                "person_id", "user_id", age.alias("age"), age_band(age).alias("age_band"),
                values["gender"].alias("gender"), values["city"].alias("city"),
                values["region"].alias("region"), values["country"].alias("country"),
                urban.alias("urban"), values["device_type"].alias("device_type"),
                values["os"].alias("os"), values["locale"].alias("locale"),
                values["signup_date"].try_cast("date").alias("signup_date"),
                parse_boolean(values["marketing_opt_in"]).alias("marketing_opt_in"),
                "first_seen", "last_seen", *custom,
                F.coalesce(derived_sources, F.create_map().cast(
                    "map<string,struct<source:string,updated_at:timestamp>>")).alias("trait_sources")))
