"""Resolve identities over all events into identity/ (one row per identifier with its person).

    spark-submit jobs/resolve_identities.py [--conf conf/ENV.yaml] [--set k=v …]
    tailor identities [--conf …] [--set …]

Besides identity/, the job rewrites suppression/consent_withdrawn.jsonl: every identifier of
each person whose consent to personalization is now withdrawn (see jobs/suppression.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click

from features.consent import withdrawn_persons
from features.identity import (IDENTIFIER_COLUMNS, IDENTITY_COLUMNS, probabilistic_links,
                               resolve_identities, with_person_id)
from jobs.config import TailorConfig
from jobs.runtime import JobRun, config_options, execute, report_errors
from jobs.suppression import FOLDER as SUPPRESSION_FOLDER, write_list

WITHDRAWN_LIST = "consent_withdrawn"

SIZE_BUCKETS = [(1, "1"), (2, "2"), (5, "3-5"), (10, "6-10"), (100, "11-100")]


def size_bucket(size: int) -> str:
    return next((name for limit, name in SIZE_BUCKETS if size <= limit), ">100")


def _bucket_order(name: str) -> int:
    names = [bucket for _, bucket in SIZE_BUCKETS] + [">100"]
    return names.index(name)


def stitched_links(job: JobRun, events):
    """Probabilistic links, also written to identity_links/ (each link both ways, so that
    forgetting either end finds it) with their confidence."""
    from pyspark.sql import functions as F

    stitching = job.config.identity.stitching
    links = probabilistic_links(events, stitching.fingerprint_property, stitching.network_property,
                                stitching.window_minutes, stitching.min_confidence).localCheckpoint()
    anonymous = F.expr("substring({0}, instr({0}, ':') + 1)".format)
    both_ways = links.select(anonymous("a").alias("anonymous_id"),
                             anonymous("b").alias("linked_anonymous_id"), "confidence", "observations")
    both_ways = both_ways.unionByName(both_ways.select(
        F.col("linked_anonymous_id").alias("anonymous_id"),
        F.col("anonymous_id").alias("linked_anonymous_id"), "confidence", "observations"))
    links_uri = job.storage.uri("identity_links")
    job.storage.replace(links_uri, lambda uri: both_ways.write.parquet(uri), job.run_id)
    job.outputs.append(links_uri)
    job.say(f"probabilistic stitching: {links.count()} links at confidence >= "
            f"{stitching.min_confidence}")
    return links.select("a", "b")


def with_trait_records(job: JobRun, events):
    """The events' identifiers plus those of trait records (identify calls, CRM rows), so an
    identify call with an anonymousId and a userId links them like an event would."""
    from pyspark.sql import functions as F

    traits_uri = job.storage.uri("traits")
    if not job.storage.has_parquet(traits_uri):
        return events
    job.inputs.append(traits_uri)
    columns = ["event_id", "event_time", *IDENTIFIER_COLUMNS]
    traits = job.spark.read.parquet(traits_uri).select(
        F.concat(F.lit("trait:"), "record_id").alias("event_id"),
        F.col("observed_at").alias("event_time"), *IDENTIFIER_COLUMNS)
    return traits if events is None else events.select(*columns).unionByName(traits)


def resolve(job: JobRun) -> dict:
    events_uri, identity_uri = job.storage.uri("events"), job.storage.uri("identity")
    job.outputs = [identity_uri]
    events = None
    if job.storage.has_parquet(events_uri):
        job.inputs.append(events_uri)
        events = job.spark.read.parquet(events_uri)
    observations = with_trait_records(job, events)
    if observations is None:
        job.say("no events or trait records yet: nothing to resolve")
        return {"persons": 0, "identifiers": 0}
    settings = job.config.identity
    links = (stitched_links(job, events) if settings.stitching.enabled and events is not None
             else None)
    result = resolve_identities(observations, max_links=settings.max_links,
                                max_rounds=settings.max_rounds, extra_links=links)
    job.storage.replace(identity_uri, lambda uri: result.identity.select(*IDENTITY_COLUMNS)
                        .write.parquet(uri), job.run_id)

    identity = job.spark.read.parquet(identity_uri)
    counts = {**identity_report(identity, result.refused), "rounds": result.rounds,
              "withdrawn_consent_identifiers": suppress_withdrawn(job, events, identity)}
    job.say(f"{counts['identifiers']} identifiers -> {counts['persons']} persons "
            f"in {counts['rounds']} rounds; component sizes {counts['component_sizes']}")
    job.say(f"suppression list: {counts['withdrawn_consent_identifiers']} identifiers of persons who withdrew consent")
    if counts["refused_identifiers"]:
        job.say(f"refused as too connected (> {settings.max_links} links), by type: "
                f"{counts['refused_identifiers']} (identity/ rows with refused = true)")
    return counts


def identity_report(identity, refused) -> dict:
    """Persons, identifiers, component sizes (persons per size bucket) and the identifiers
    refused as too connected, counted per type: the report names no identifier, so the
    append-only audit log keeps nothing a later forget would have to erase."""
    from pyspark.sql import functions as F

    sizes = identity.groupBy("person_id").count()
    distribution: dict[str, int] = {}
    for row in sizes.groupBy(F.col("count").alias("size")).agg(F.count("*").alias("persons")).collect():
        bucket = size_bucket(row["size"])
        distribution[bucket] = distribution.get(bucket, 0) + row["persons"]
    refused_by_type = {row.identifier_type: row["count"]
                       for row in refused.groupBy("identifier_type").count().collect()}
    return {"identifiers": identity.count(), "persons": sizes.count(),
            "component_sizes": dict(sorted(distribution.items(),
                                           key=lambda item: _bucket_order(item[0]))),
            "refused_identifiers": dict(sorted(refused_by_type.items()))}


def suppress_withdrawn(job: JobRun, events, identity) -> int:
    """Rewrite the suppression list of everyone whose consent is now withdrawn (all of their
    identifiers), so the service stops personalizing for them without waiting for a rebuild.
    Without events (a CRM-only root) nobody has withdrawn, and the list is emptied."""
    identifiers = []
    if events is not None:
        withdrawn = withdrawn_persons(with_person_id(events, identity))
        identifiers = ((row.identifier_type, row.identifier) for row in identity.join(
            withdrawn, "person_id").select("identifier_type", "identifier").toLocalIterator())
    job.outputs.append(job.storage.uri(SUPPRESSION_FOLDER, f"{WITHDRAWN_LIST}.jsonl"))
    return write_list(job.storage, WITHDRAWN_LIST, identifiers, job.config.pii.effective_key(),
                      "consent_withdrawn")


@click.command("identities")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Resolve identifiers seen together into persons (identity/)."""
    execute("resolve_identities", config, resolve)


if __name__ == "__main__":
    main()
