"""Build features/ from the canonical events: rfm/, behaviour/, cohorts/ and embeddings/.

    spark-submit jobs/build_features.py [--conf conf/ENV.yaml] [--set k=v …] [--as-of DATE]
    tailor features [--conf …] [--set …] [--as-of DATE]

Per-person tables use personalization-consented events only and carry person_id (from
identity/ where identity resolution has run) and the person's primary user_id (only an item's
first appearance, a fact about the item, is taken from every event); cohorts are an aggregate
and use analytics-consented events. "As of DATE" includes that whole day (default:
the day of the latest event); time decay is measured from the end of that day, or by default
from the latest event. The whole features/ folder is written beside the old one and swapped in
at the end, so a failed run leaves the previous features readable. One MLflow run records the
summary metrics and the cohort heatmap.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import re
from datetime import date, datetime, timezone

import click

from features.behaviour import BehaviourParams, behaviour_features
from features.cohorts import cohort_retention, retention_heatmap
from features.consent import analytics_events, personalization_events
from features.embeddings import person_item_weights, svd_embeddings
from features.identity import primary_user_ids
from features.rfm import SEGMENTS, rfm_features
from jobs.config import TailorConfig
from jobs.inputs import resolved_events
from jobs.runtime import JobRun, config_options, execute, report_errors

VECTOR_SCHEMA = "{key} string, vector array<double>"
SEGMENT_NAMES = sorted({name for row in SEGMENTS.values() for name in row})


def read_events(job: JobRun, as_of: date | None):
    """(events with person_id, the as-of day, the decay origin), or None without events."""
    from pyspark.sql import functions as F

    from training.spark_interactions import as_of_end

    events = resolved_events(job)
    if events is None:
        return None
    if as_of is None:
        latest = (job.spark.read.parquet(job.storage.uri("events"))
                  .agg(F.max("event_time").cast("double")).first()[0])
        if latest is None:
            return None
        decay_from = datetime.fromtimestamp(latest, timezone.utc)
        as_of = decay_from.date()
    else:
        decay_from = as_of_end(as_of)
    return events, as_of, decay_from


def per_person(table, people):
    """`table` with each person's primary user_id right after person_id."""
    rest = [c for c in table.columns if c != "person_id"]
    return table.join(people, "person_id", "left").select("person_id", "user_id", *rest)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def build(job: JobRun, as_of: date | None = None) -> dict:
    """The job body: every features/ table, one MLflow run, then the swap."""
    import mlflow
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from training import tracking

    settings = job.config.features
    found = read_events(job, as_of or settings.as_of)
    if found is None:
        job.say("no events yet: nothing to build features from")
        return {"built": False, "reason": "no events yet"}
    events, as_of, decay_from = found
    params = BehaviourParams(decay_from=decay_from, half_life_days=settings.half_life_days,
                             new_arrival_days=settings.new_arrival_days,
                             top_categories=settings.top_categories,
                             event_types=tuple(job.config.ingest.event_types),
                             channels=tuple(settings.channels),
                             device_types=tuple(settings.device_types))
    target = job.storage.uri("features")
    job.outputs = [target]
    tracking.open_experiment(job.config.mlflow.tracking_uri, job.config.mlflow.experiment, Path.cwd())
    # Consent is decided on the whole history (a later withdrawal applies to past as-of days
    # too), then cut. Every per-person table reads these and the timeline is a sort: once. As
    # large as the events, so cached on local disk (the OS page cache serves it), not the heap.
    up_to_as_of = F.col("event_date") <= F.lit(as_of)
    personal = (personalization_events(events).where(up_to_as_of)
                .persist(StorageLevel.DISK_ONLY))
    people = primary_user_ids(personal).persist(StorageLevel.MEMORY_AND_DISK)
    counts: dict = {}
    try:
        with mlflow.start_run(run_name=f"features-{job.run_id}") as run:
            mlflow.set_tags({"job_run_id": job.run_id, "storage_root": job.storage.root})
            mlflow.log_params({"as_of": as_of.isoformat(), "decay_from": decay_from.isoformat(),
                               **tracking.flat_params("features", settings.model_dump(mode="json"))})

            def write(folder: str) -> None:
                counts.update(write_tables(job, folder, personal,
                                           analytics_events(events).where(up_to_as_of), people,
                                           as_of, params, events.where(up_to_as_of)))
                mlflow.log_metrics(summary_metrics(counts))

            job.storage.replace(target, write, job.run_id)
    finally:
        personal.unpersist()
        people.unpersist()
        job.storage.clear_staging(job.run_id)
    return {"built": True, "as_of": as_of.isoformat(), "mlflow_run_id": run.info.run_id, **counts}


def write_tables(job: JobRun, folder: str, personal, analytics, people, as_of: date,
                 params: BehaviourParams, every_event) -> dict:
    """Write the four tables under `folder`, log the cohort heatmap; returns what was written.
    `every_event` (any consent) only dates the items' first appearance."""
    from training import tracking

    spark, settings = job.spark, job.config.features

    per_person(rfm_features(personal, as_of), people).write.parquet(f"{folder}/rfm")
    rfm = spark.read.parquet(f"{folder}/rfm")
    segments = {r["rfm_segment"]: r["count"] for r in rfm.groupBy("rfm_segment").count().collect()}
    persons_with_rfm = sum(segments.values())
    job.say(f"RFM as of {as_of}: {persons_with_rfm} purchasing people" if persons_with_rfm
            else f"no purchases up to {as_of}: RFM is empty")

    catalogue_uri = job.storage.uri("catalogue")
    catalogue = (spark.read.parquet(catalogue_uri).select("item_id", "release_date", "sale_price",
                                                          "price")
                 if job.storage.has_parquet(catalogue_uri) else None)
    behaviour = behaviour_features(personal, params, catalogue, item_events=every_event)
    per_person(behaviour, people).write.parquet(f"{folder}/behaviour")
    persons_with_behaviour = spark.read.parquet(f"{folder}/behaviour").count()
    job.say(f"behaviour: {persons_with_behaviour} people with consented events")

    cohort_retention(analytics, as_of).coalesce(1).write.parquet(f"{folder}/cohorts")
    cohorts = spark.read.parquet(f"{folder}/cohorts").toPandas()
    if cohorts.empty:
        job.say("cohorts: no analytics-consented events")
    else:
        tracking.log_figure(retention_heatmap(cohorts), "plots/cohort_retention.png")
        job.say(f"cohorts: {cohorts['cohort_month'].nunique()} monthly cohorts")

    weights = person_item_weights(personal).toPandas()
    persons, items = svd_embeddings(weights, settings.embedding_dims, settings.seed)
    person_vectors = spark.createDataFrame(persons, VECTOR_SCHEMA.format(key="person_id"))
    per_person(person_vectors, people).write.parquet(f"{folder}/embeddings/persons")
    spark.createDataFrame(items, VECTOR_SCHEMA.format(key="item_id")).write.parquet(
        f"{folder}/embeddings/items")
    dims = len(items["vector"].iloc[0]) if len(items) else 0
    job.say(f"embeddings: {len(persons)} people and {len(items)} items in {dims} dimensions")

    return {"persons_with_rfm": persons_with_rfm, "segments": dict(sorted(segments.items())),
            "persons_with_behaviour": persons_with_behaviour,
            "cohorts": int(cohorts["cohort_month"].nunique()), "embedding_persons": len(persons),
            "embedding_items": len(items), "embedding_dims": dims}


def summary_metrics(counts: dict) -> dict:
    """The counts as MLflow metrics, one per segment (zero for the empty ones)."""
    segments = {f"segment_{slug(name)}": counts["segments"].get(name, 0) for name in SEGMENT_NAMES}
    return {**{k: v for k, v in counts.items() if k != "segments"}, **segments}


@click.command("features")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="Build as of this day, the whole day included (default: features.as_of, "
                   "else the day of the latest event).")
@report_errors
@config_options
def main(config: TailorConfig, as_of: datetime | None) -> None:
    """Build RFM, behaviour, cohort and embedding features from the canonical events."""
    execute("build_features", config, lambda job: build(job, as_of.date() if as_of else None))


if __name__ == "__main__":
    main()
