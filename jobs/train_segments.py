"""Segment people: clustering into named personas (MLflow, registry) and rule-based segments.

    spark-submit jobs/train_segments.py [--conf conf/ENV.yaml] [--set k=v …]
    tailor segment [--conf …] [--set …]

Clustering reads features/ (behaviour, rfm, embeddings) and profiles/ when it exists, builds
one standardized row per person (training.segmentation) and runs each configured method in
memory (training.clustering) — or, from `segmentation.spark_min_people` people on, Spark's
BisectingKMeans (its leaves merged by Ward, k by silhouette on a sample). Each method is a nested
MLflow run (silhouette, Davies–Bouldin, sizes, profile table, projection and heatmap plots);
the chosen one — the best silhouette among those with at least two segments and at most
`max_noise_share` noise — is registered as `segmentation.model_name` and becomes `champion`
(training.registry records the version it replaced in the tag `previous_champion`, as for the
recommender).

Rule segments (conf/segments.yaml, features.rule_segments) are evaluated over the consented
events, features and profiles. segments/ (person_id, user_id, segment, persona, model_version)
and segments/rules/ (person_id, user_id, rule_segment, since) are staged together and swapped
in at the end, so a failed run leaves the previous segments readable.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import click
import numpy as np
import pandas as pd
import yaml

from features.consent import personalization_events
from features.identity import primary_user_ids
from features.rule_segments import RuleError, evaluate_rule, known_fields, parse_rules
from jobs.config import ConfigError, TailorConfig, checkout_path
from jobs.inputs import resolved_events
from jobs.runtime import JobRun, config_options, execute, report_errors

ASSIGNMENT_SCHEMA = "person_id string, user_id string, segment int, persona string, model_version string"
MEMBERSHIP_SCHEMA = "person_id string, user_id string, rule_segment string, since timestamp"


def load_rules(config: TailorConfig) -> list:
    """The rule segments of `segmentation.rules_file`, checked against the known fields and
    event types; a problem is a ConfigError naming it."""
    path = checkout_path(config.segmentation.rules_file)
    if not path.is_file():
        raise ConfigError(f"segmentation.rules_file: {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        fields = known_fields(config.ingest.event_types, config.features.channels,
                              config.segmentation.profile_traits, config.features.device_types)
        return parse_rules(raw, config.ingest.event_types, fields, config.ingest.item_event_types)
    except (RuleError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


@dataclass
class Clustered:
    """One method's result: its segmenter, scores, profile and names, and its assignments
    (a pandas or Spark frame of person_id, user_id, segment), plus a sample for the plots."""
    method: str
    segmenter: object
    metrics: dict
    profile: pd.DataFrame
    names: dict
    assignments: object
    sample_X: np.ndarray
    sample_labels: np.ndarray
    k_scores: dict
    run_id: str = ""
    version: str = ""


def segment(job: JobRun) -> dict:
    """The job body (see the module docstring); returns the counts written to audit/."""
    import mlflow

    from training import tracking

    rules = load_rules(job.config)
    tables = read_tables(job)
    events = resolved_events(job)
    if "behaviour" not in tables and events is None:
        job.say("no features and no events yet: nothing to segment")
        return {"segmented": False, "reason": "no features or events yet"}
    target = job.storage.uri("segments")
    job.outputs = [target]
    tracking.open_experiment(job.config.mlflow.tracking_uri, job.config.mlflow.experiment, Path.cwd())
    counts: dict = {"segmented": True}
    with mlflow.start_run(run_name=f"segment-{job.run_id}") as run:
        mlflow.set_tags({"job_run_id": job.run_id, "storage_root": job.storage.root})
        chosen = None
        if "behaviour" in tables:
            chosen, clustering_counts = cluster(job, tables)
            counts.update(clustering_counts)
        else:
            job.say("no features yet: clustering skipped")
        memberships, rule_counts = rule_memberships(job, rules, events, tables)
        counts.update(rule_counts)
        counts.update(publish(job, chosen, memberships))
    counts["mlflow_run_id"] = run.info.run_id
    return counts


def read_tables(job: JobRun) -> dict:
    """features/ tables and profiles/ that exist, by the names rules use."""
    found = {"behaviour": "features/behaviour", "rfm": "features/rfm",
             "embeddings": "features/embeddings/persons", "profile": "profiles"}
    tables = {}
    for name, folder in found.items():
        uri = job.storage.uri(folder)
        if job.storage.has_parquet(uri):
            tables[name] = job.spark.read.parquet(uri)
            job.inputs.append(uri)
    return tables


def feature_columns(frame_columns: list[str], settings) -> tuple[list[str], dict]:
    """The clustering columns present in the table, and the embedding block's weights."""
    from training.segmentation import EMBEDDING_PREFIX

    columns = [c for c in dict.fromkeys([*settings.features, *settings.profile_traits])
               if c in frame_columns]
    embedding = [c for c in frame_columns if c.startswith(EMBEDDING_PREFIX)] if settings.use_embeddings else []
    weights = {c: settings.embedding_weight / math.sqrt(len(embedding)) for c in embedding}
    return columns + embedding, weights


def cluster(job: JobRun, tables: dict) -> tuple[Clustered | None, dict]:
    """Every configured method (or BisectingKMeans at scale) as a nested run; the chosen one."""
    from pyspark import StorageLevel

    from training.segmentation import segment_features, spark_standardizer

    settings = job.config.segmentation
    frame = segment_features(tables["behaviour"], tables.get("rfm"), tables.get("embeddings"),
                             tables.get("profile"), tuple(settings.profile_traits))
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        people = frame.count()
        columns, weights = feature_columns(frame.columns, settings)
        if people < 2 or not columns:
            job.say(f"{people} people with features: too few to cluster")
            return None, {"people_clustered": people}
        standardizer = spark_standardizer(frame, columns, settings.log_features,
                                          settings.zero_fill_features, weights)
        if people >= settings.spark_min_people:
            results = [spark_method(job, frame, standardizer, people)]
        else:
            raw = frame.toPandas().sort_values("person_id", ignore_index=True)
            X = standardizer.transform(raw)
            results = [in_memory_method(job, method, raw, X, columns) for method in settings.methods]
        for result in results:
            log_method(job, result, standardizer, people)
        chosen = choose(results, settings.max_noise_share)
        job.say(f"chose {chosen.method}: {chosen.metrics['n_clusters']} segments, silhouette "
                f"{chosen.metrics['silhouette']}" + "; personas: " + ", ".join(
                    f"{s}={n}" for s, n in sorted(chosen.names.items())))
        version = chosen.version = register(job, chosen, standardizer, frame)
        chosen.assignments = with_personas(job, chosen)
        return chosen, {"people_clustered": people, "features_used": len(columns),
                        "method": chosen.method, "segments": chosen.metrics["n_clusters"],
                        "silhouette": chosen.metrics["silhouette"], "model_version": version,
                        "personas": {str(k): v for k, v in sorted(chosen.names.items())},
                        "scores": {r.method: r.metrics["silhouette"] for r in results}}
    finally:
        frame.unpersist()


def _named(profile: pd.DataFrame) -> dict:
    """Persona names from the profile's non-embedding features."""
    from training.personas import name_segments
    from training.segmentation import trait_profile

    return name_segments(trait_profile(profile))


def in_memory_method(job: JobRun, method: str, raw: pd.DataFrame, X: np.ndarray,
                     columns: list[str]) -> Clustered:
    from training.clustering import cluster_metrics, make_segmenter, profile_table, sample_rows

    s = job.config.segmentation
    segmenter = make_segmenter(method, (s.k_min, s.k_max), s.seed, s.silhouette_sample,
                               s.dbscan_min_samples, s.max_sample, s.micro_clusters).fit(X)
    labels = segmenter.labels_
    profile = profile_table(raw[columns], X, labels)
    rows = sample_rows(len(X), s.silhouette_sample, s.seed)
    return Clustered(method, segmenter, cluster_metrics(X, labels, s.silhouette_sample, s.seed),
                     profile, _named(profile),
                     raw[["person_id", "user_id"]].assign(segment=labels),
                     X[rows], labels[rows], getattr(segmenter, "scores_", {}))


def spark_method(job: JobRun, frame, standardizer, people: int) -> Clustered:
    """BisectingKMeans leaves over everyone, merged into the k with the best sampled silhouette."""
    from pyspark.sql import functions as F

    from training.clustering import cluster_metrics
    from training.segmentation import bisecting_segments, spark_profile_table

    s = job.config.segmentation
    result = bisecting_segments(frame, standardizer, (s.k_min, s.k_max), s.spark_leaves, s.seed,
                                s.silhouette_sample)
    job.say(f"{people} people: BisectingKMeans, {result.segmenter.params()['leaves']} leaves merged "
            f"into k={result.segmenter.params()['k']} (best silhouette on {len(result.sample_X)} people)")
    assigned = result.assigned.persist()
    profile = spark_profile_table(assigned, frame, standardizer.columns)
    metrics = {**cluster_metrics(result.sample_X, result.sample_labels, s.silhouette_sample, s.seed),
               "n_clusters": int(len(profile) - 1), "noise_share": 0.0}
    return Clustered("bisecting_kmeans", result.segmenter, metrics, profile, _named(profile),
                     assigned.select("person_id", "user_id", F.col("segment").cast("int")),
                     result.sample_X, result.sample_labels, result.k_scores)


def log_method(job: JobRun, result: Clustered, standardizer, people: int) -> None:
    """One nested MLflow run per method: what it chose, its scores, sizes, profile, plots."""
    import mlflow

    from training import tracking
    from training.clustering import heatmap_figure, projection_figure
    from training.segmentation import trait_profile

    s = job.config.segmentation
    sizes = {str(row["segment"]): int(row["size"]) for _, row in result.profile.iterrows()
             if row["segment"] != "overall"}
    with mlflow.start_run(run_name=result.method, nested=True) as run:
        mlflow.set_tag("role", "segmentation_method")
        mlflow.log_params({"method": result.method, "people": people,
                           "features": ",".join(standardizer.columns)[:5000],
                           **{f"chosen.{k}": v for k, v in result.segmenter.params().items()}})
        metrics = {k: v for k, v in result.metrics.items() if v is not None}
        metrics.update({f"silhouette_k{k}": v for k, v in result.k_scores.items() if v is not None})
        metrics.update({f"size_segment_{k}": v for k, v in sizes.items() if k != "-1"})
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"sizes": sizes, "personas": {str(k): v for k, v in result.names.items()},
                         "k_silhouettes": {str(k): v for k, v in result.k_scores.items()}},
                        "segments/summary.json")
        mlflow.log_text(result.profile.assign(persona=result.profile["segment"].map(
            lambda seg: result.names.get(seg, "") if seg != "overall" else "")).to_csv(index=False),
            "segments/profile_table.csv")
        tracking.log_figure(heatmap_figure(trait_profile(result.profile), result.names),
                            "plots/profile_heatmap.png")
        tracking.log_figure(projection_figure(result.sample_X, result.sample_labels, result.names,
                                              s.silhouette_sample, s.seed), "plots/projection.png")
        result.run_id = run.info.run_id
    job.say(f"{result.method}: {result.metrics['n_clusters']} segments, silhouette "
            f"{result.metrics['silhouette']}, Davies–Bouldin {result.metrics['davies_bouldin']}")


def choose(results: list[Clustered], max_noise_share: float) -> Clustered:
    """The best silhouette among results with ≥ 2 segments and noise within bounds; else the
    first configured method."""
    eligible = [r for r in results if r.metrics["silhouette"] is not None
                and r.metrics["n_clusters"] >= 2 and r.metrics["noise_share"] <= max_noise_share]
    return max(eligible, key=lambda r: r.metrics["silhouette"]) if eligible else results[0]


def register(job: JobRun, chosen: Clustered, standardizer, frame) -> str:
    """Log the chosen model in its run and register it; the alias moves at publish time."""
    import mlflow

    from training import registry
    from training.segmentation import SegmenterModel, log_segmenter

    example = frame.select(*standardizer.columns).limit(3).toPandas()
    model = SegmenterModel(standardizer, chosen.segmenter, chosen.names)
    with mlflow.start_run(run_id=chosen.run_id, nested=True):
        logged = log_segmenter(model, example)
    recipe = {"method": chosen.method, **chosen.segmenter.params(), "features": standardizer.columns}
    version = registry.register(logged.model_uri, job.config.segmentation.model_name, recipe)
    mlflow.set_tags({"chosen_method": chosen.method, "registered_model": version.name,
                     "model_version": str(version.version)})
    return str(version.version)


def with_personas(job: JobRun, chosen: Clustered):
    """The chosen assignments as a Spark frame in ASSIGNMENT_SCHEMA."""
    from pyspark.sql import functions as F

    assignments = chosen.assignments
    if isinstance(assignments, pd.DataFrame):
        assignments = job.spark.createDataFrame(
            assignments.astype({"segment": int}), "person_id string, user_id string, segment int")
    names = F.create_map(*[F.lit(part) for k, v in sorted(chosen.names.items()) for part in (int(k), v)])
    return assignments.select("person_id", "user_id", F.col("segment").cast("int"),
                              names[F.col("segment")].alias("persona"),
                              F.lit(chosen.version).alias("model_version"))


def rule_memberships(job: JobRun, rules: list, events, tables: dict):
    """segments/rules/ rows for every rule whose inputs exist (the others are reported)."""
    from pyspark.sql import functions as F

    from training.spark_interactions import as_of_end

    if events is None:
        job.say("no events yet: rule segments skipped")
        return None, {"rule_segments": {}}
    personal = personalization_events(events)
    settings = job.config.segmentation
    if settings.as_of:
        as_of = as_of_end(settings.as_of)
    else:
        latest = personal.agg(F.max("event_time").cast("double")).first()[0]
        if latest is None:
            job.say("no consented events: rule segments skipped")
            return None, {"rule_segments": {}}
        as_of = datetime.fromtimestamp(latest, timezone.utc)
    people = primary_user_ids(personal)
    parts, skipped = [], {}
    for rule in rules:
        missing = sorted(t for t in rule.tables() if t not in tables)
        if missing:
            skipped[rule.name] = f"no {', '.join(missing)} table yet"
            continue
        parts.append(evaluate_rule(rule, personal, people, tables, as_of))
    for name, reason in skipped.items():
        job.say(f"rule {name!r} skipped: {reason}")
    if not parts:
        return None, {"rule_segments": {}, "rules_skipped": skipped}
    union = parts[0]
    for part in parts[1:]:
        union = union.unionByName(part)
    memberships = union.join(people, "person_id").select("person_id", "user_id", "rule_segment", "since")
    return memberships, {"rules_as_of": as_of.isoformat(), "rules_skipped": skipped}


def publish(job: JobRun, chosen: Clustered | None, memberships) -> dict:
    """Stage segments/ (+ rules/), move the registry alias, swap the folder in."""
    import mlflow
    from mlflow import MlflowClient

    from training import registry

    spark, target = job.spark, job.storage.uri("segments")
    assignments = chosen.assignments if chosen else spark.createDataFrame([], ASSIGNMENT_SCHEMA)
    memberships = memberships if memberships is not None else spark.createDataFrame([], MEMBERSHIP_SCHEMA)
    counts = {}

    def write(folder: str) -> None:
        assignments.coalesce(1).write.parquet(folder)
        memberships.coalesce(1).write.parquet(folder + "/rules")
        written = spark.read.parquet(folder + "/rules").groupBy("rule_segment").count().collect()
        counts["rule_segments"] = {row["rule_segment"]: row["count"] for row in sorted(written)}
        counts["assigned"] = spark.read.parquet(folder).count()

    try:
        staged = job.storage.stage(target, write, job.run_id)
        if chosen is not None:
            registry.make_champion(MlflowClient(), job.config.segmentation.model_name, chosen.version)
        mlflow.log_metrics({"assigned": counts["assigned"],
                            **{f"rule_{k}": v for k, v in counts["rule_segments"].items()}})
        mlflow.log_dict(counts, "segments/counts.json")
        job.storage.swap_in(staged, target)
    finally:
        job.storage.clear_staging(job.run_id)
    job.say(f"wrote {counts['assigned']} segment assignments and rule memberships "
            f"{json.dumps(counts['rule_segments'])} to {target}")
    return counts


@click.command("segment")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Cluster people into named personas and evaluate the rule-based segments."""
    load_rules(config)
    execute("train_segments", config, segment)


if __name__ == "__main__":
    main()
