"""Build profiles/ (one row per person) from traits/ and the consented events.

    spark-submit jobs/build_profiles.py [--conf conf/ENV.yaml] [--set k=v …]
    tailor profiles [--conf …] [--set …]

Trait records (Segment identify calls, CRM export rows) take the person of their identifiers
in identity/ (run `tailor identities` first; without it person_id falls back to the user_id,
else the anonymous_id), so traits sent from an anonymous device join the person after a later
login. Ages are as of the day of the latest event or trait record, so a re-run on the same
input gives the same table. profiles/ is replaced whole.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click

from jobs.config import TailorConfig
from jobs.inputs import resolved_events
from jobs.runtime import JobRun, config_options, execute, report_errors

# What profiles need of events when there are none yet (a CRM-only root).
NO_EVENTS_SCHEMA = ("person_id string, event_id string, event_type string, event_time timestamp, "
                    "user_id string, anonymous_id string, consent_personalization boolean, "
                    "consent_analytics boolean, properties map<string,string>")
NO_TRAITS_SCHEMA = ("record_id string, source string, observed_at timestamp, user_id string, "
                    "anonymous_id string, email_hash string, phone_hash string, "
                    "consent_personalization boolean, traits map<string,string>, "
                    "source_file string, person_id string")


def traits_with_person_id(job: JobRun, traits):
    """traits/ rows with the person_id of their identifiers (as events get theirs)."""
    from pyspark.sql import functions as F

    from features.identity import with_person_id

    identity_uri = job.storage.uri("identity")
    identity = (job.spark.read.parquet(identity_uri)
                if job.storage.has_parquet(identity_uri) else None)
    as_events = traits.withColumn("event_id", F.col("record_id")).withColumn(
        "event_time", F.col("observed_at"))
    return with_person_id(as_events, identity).drop("event_id", "event_time")


def build(job: JobRun) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from features.profiles import ProfileParams, build_profiles

    traits_uri, target = job.storage.uri("traits"), job.storage.uri("profiles")
    events = resolved_events(job)
    has_traits = job.storage.has_parquet(traits_uri)
    if events is None and not has_traits:
        job.say("no events or trait records yet: nothing to build profiles from")
        return {"built": False, "reason": "no events or trait records yet"}
    if events is None:
        events = job.spark.createDataFrame([], NO_EVENTS_SCHEMA)
    traits = (traits_with_person_id(job, job.spark.read.parquet(traits_uri)) if has_traits
              else job.spark.createDataFrame([], NO_TRAITS_SCHEMA))
    job.inputs = job.inputs + ([traits_uri] if has_traits else [])
    job.outputs = [target]
    latest = max(t for t in (events.agg(F.max("event_time")).first()[0],
                             traits.agg(F.max("observed_at")).first()[0]) if t is not None)
    settings = job.config.profiles
    params = ProfileParams(as_of=latest.date(), custom_traits=dict(settings.custom_traits),
                           postcode_urban=dict(settings.postcode_urban),
                           default_personalization=job.config.consent.default_personalization)
    traits = traits.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        profiles = build_profiles(traits, events, params)
        job.storage.replace(target, lambda uri: profiles.coalesce(1).write.parquet(uri), job.run_id)
    finally:
        traits.unpersist()
    written = job.spark.read.parquet(target)
    filled = written.agg(*[F.count(c).alias(c) for c in (
        "age", "gender", "city", "country", "urban", "device_type", "signup_date",
        "marketing_opt_in", *settings.custom_traits)]).first().asDict()
    counts = {"built": True, "as_of": params.as_of.isoformat(), "persons": written.count(),
              "trait_records": traits.count(), "persons_with": filled}
    job.say(f"profiles as of {params.as_of}: {counts['persons']} persons from "
            f"{counts['trait_records']} trait records; filled {filled}")
    return counts


@click.command("profiles")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Build one profile per person from identify calls, CRM exports and events (profiles/)."""
    execute("build_profiles", config, build)


if __name__ == "__main__":
    main()
