"""Train, evaluate and register the recommender, then write the batch recommendations.

    spark-submit jobs/train_recommender.py [--conf conf/ENV.yaml] [--set k=v …]
    tailor train [--conf …] [--set …]

Reads consented, identity-resolved events/, shrinks them in Spark to one row per
(person, item, event type, day), and does the rest in memory with training/: split, optional
tuning (nested MLflow runs), baselines, the champion gate, a refit on all data registered as
`training.registry.model_name`, and recommendations/ (+ similar_items/) swapped in whole.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click
import pandas as pd

from features.consent import personalization_events
from features.identity import primary_user_ids
from jobs.config import ConfigError, TailorConfig, TrainingConfig
from jobs.inputs import resolved_events
from jobs.runtime import JobRun, config_options, execute, report_errors

RECOMMENDATION_SCHEMA = ("person_id string, user_id string, item_id string, rank int, "
                         "score double, model_version string, reason string")
SIMILAR_ITEMS_SCHEMA = "item_id string, similar_item_id string, rank int, score double"


def check_training_config(training: TrainingConfig) -> None:
    """Refuse unknown models or parameters (of any configured model) before Spark starts."""
    from training.recommenders import make_recommender

    for name in dict.fromkeys([training.model, *training.baselines, *training.params]):
        try:
            make_recommender(name, training.params.get(name, {}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"training: {name}: {exc}") from None
    if training.tuning.enabled:
        for name in tuned_models(training):
            if name not in training.tuning.space:
                raise ConfigError(f"training.tuning.space: no search space for model {name!r}")


def tuned_models(training: TrainingConfig) -> list[str]:
    return training.tuning.models or [training.model]


def read_events(job: JobRun):
    """Consented events up to the as-of day, with person_id (from identity/ where it has run);
    None when events/ is empty."""
    from pyspark.sql import functions as F

    from training.spark_interactions import as_of_end

    events = resolved_events(job)
    if events is None:
        return None
    events = personalization_events(events)
    if job.config.training.as_of:
        events = events.where(F.col("event_time") < F.lit(as_of_end(job.config.training.as_of)))
    return events.select("event_id", "event_type", "event_time", "person_id", "user_id",
                         "anonymous_id", "item_id", "properties")


def collect(job: JobRun, events) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The (person, item, event type, day) table, each person's primary user_id, the events
    digest."""
    from pyspark import StorageLevel

    from training.spark_interactions import fingerprint, item_interactions
    from training.tracking import events_digest

    events = events.persist(StorageLevel.DISK_ONLY)  # as large as the events: not on the heap
    try:
        digest = events_digest(*fingerprint(events))
        table = item_interactions(events).toPandas()
        people = primary_user_ids(events).toPandas()
    finally:
        events.unpersist()
    return table, people, digest


def nothing_to_do(job: JobRun, reason: str, **counts) -> dict:
    job.say(f"{reason}: nothing to train on")
    return {"trained": False, "reason": reason, **counts}


def train(job: JobRun) -> dict:
    """The job body (see the module docstring); returns the counts written to audit/."""
    from training.evaluation import recipe, split_events
    from training.spark_interactions import as_of_end

    training = job.config.training
    events = read_events(job)
    if events is None:
        return nothing_to_do(job, "no events yet")
    table, people, digest = collect(job, events)
    if table.empty:
        return nothing_to_do(job, "no consented item events", consented_people=len(people))
    # Decay is measured from the as-of time: the end of the as-of day, else the latest event.
    as_of = (pd.Timestamp(as_of_end(training.as_of)) if training.as_of
             else pd.Timestamp(table["event_time"].max()).tz_localize("UTC"))
    spec = recipe(training.model, training.params.get(training.model, {}), training.weights,
                  training.half_life_days, training.weighting, training.bm25, training.binarize)
    split = split_events(table, training.weights, as_of, training.split.method,
                         training.split.ratio, training.split.seed, training.split.test_days)
    if split.positive_pairs == 0:
        return nothing_to_do(job, "no consented interactions with a positive weight",
                             consented_people=len(people), item_event_rows=len(table))
    job.outputs = [job.storage.uri("recommendations")]
    counts = {"trained": True, "events_digest": digest, "as_of": as_of.isoformat(),
              "consented_people": len(people), "people_with_items": len(split.person_ids),
              "items": len(split.item_ids), "interactions": split.positive_pairs,
              "test_people": int((split.relevant.getnnz(axis=1) > 0).sum())}
    counts.update(track_and_register(job, spec, split, table, people, digest))
    return counts


def track_and_register(job: JobRun, spec: dict, split, table: pd.DataFrame,
                       people: pd.DataFrame, digest: str) -> dict:
    """Everything that talks to MLflow, in one parent run; the batch swap comes last."""
    import mlflow
    from mlflow import MlflowClient

    from training import tracking

    tracking.open_experiment(job.config.mlflow.tracking_uri, job.config.mlflow.experiment,
                             Path.cwd())
    client = MlflowClient()
    with mlflow.start_run(run_name=f"train-{job.run_id}") as run:
        mlflow.set_tags({"job_run_id": job.run_id, "storage_root": job.storage.root})
        tracking.log_events_input(table, job.storage.uri("events"), digest,
                                  name="consented-item-interactions")
        spec, metrics, decision = evaluate(job, client, spec, split)
        counts = publish(job, client, spec, decision, split, table, people)
    return {**counts, "test_metrics": metrics, "model": spec["model"],
            "model_params": spec["params"], "mlflow_run_id": run.info.run_id}


def evaluate(job: JobRun, client, spec: dict, split) -> tuple[dict, dict, object]:
    """Tune (optionally), score baselines, the candidate and the re-fitted champion on the
    test split, plot them, and decide; returns the final recipe, its metrics and the decision."""
    import mlflow

    from training import registry, tracking
    from training.evaluation import fit_and_score, tune_recipe

    training, k = job.config.training, job.config.training.k
    metric, name = f"ndcg_at_{k}", training.registry.model_name
    if training.tuning.enabled:
        tuning = training.tuning
        trials, spec = tune_recipe(
            spec, split, {model: tuning.space[model] for model in tuned_models(training)},
            [choice.model_dump() for choice in tuning.weightings], tuning.n_trials,
            training.split.seed, k, tuning.method, training.params)
        for number, trial in enumerate(trials):
            tracking.log_trial(number, trial)
        job.say(f"tuned {', '.join(tuned_models(training))}: {len(trials)} trials, best "
                f"{spec['model']} at validation {metric} {trials[0].metrics[metric]:.4f} with "
                f"{trials[0].params} {trials[0].weighting or ''}")
    mlflow.log_params(tracking.flat_params("", {
        "recipe": spec, "split": training.split.model_dump(), "k": k,
        "as_of": split.as_of.isoformat(), "tuning": training.tuning.enabled}))

    results = {}
    for baseline_name in training.baselines:
        baseline = {**spec, "model": baseline_name,
                    "params": training.params.get(baseline_name, {})}
        scored, seconds = fit_and_score(baseline, split, k)
        tracking.log_scored(f"baseline-{baseline_name}", "baseline", baseline, scored, seconds)
        results[f"baseline {baseline_name}"] = scored
    metrics, seconds = fit_and_score(spec, split, k)
    mlflow.log_metrics({**metrics, "fit_seconds": seconds})
    results[f"candidate {spec['model']}"] = metrics

    champion = registry.current_champion(client, name)
    champion_score = None
    if champion is not None:
        champion_spec = registry.recipe_of(champion)
        scored, seconds = fit_and_score(champion_spec, split, k)
        tracking.log_scored(f"champion-v{champion.version}", "champion_rescored",
                            champion_spec, scored, seconds)
        results[f"champion v{champion.version}"] = scored
        champion_score = scored[metric]
    decision = registry.decide(metrics[metric], champion_score,
                               training.registry.promotion_margin,
                               str(champion.version) if champion else None,
                               champion_stale=registry.stale_reason(champion))
    tracking.log_figure(tracking.metrics_figure(results, k), "plots/metrics.png")
    mlflow.log_dict({"recipe": spec, "k": k, "test_metrics": results,
                     "gate": decision.as_dict(metric)}, "evaluation/report.json")
    job.say(f"{spec['model']}: {metric} {metrics[metric]:.4f}" + (
        f" vs champion v{champion.version} {champion_score:.4f}" if champion else
        " (no champion yet)"))
    return spec, metrics, decision


def publish(job: JobRun, client, spec: dict, decision, split, table: pd.DataFrame,
            people: pd.DataFrame) -> dict:
    """Refit on all data, register it, alias it as decided and swap in its batch output.

    The batch is staged first, so a failure anywhere leaves the previous one in place."""
    import mlflow

    from training import registry
    from training.evaluation import fit
    from training.pyfunc_model import log_recommender

    training, k = job.config.training, job.config.training.k
    metric, name = f"ndcg_at_{k}", training.registry.model_name
    full, refit_seconds = fit(spec, table, split.as_of, split.person_ids, split.item_ids)
    mlflow.log_metric("refit_seconds", refit_seconds)
    version = str(registry.register(log_recommender(full, k).model_uri, name, spec).version)

    recommendations = full.recommend(people["person_id"], k).merge(people, on="person_id")
    recommendations["model_version"] = version
    recommendations = add_new_arrivals(job, recommendations, table, split.as_of)
    similar = full.similar_items(training.similar_items_k)
    target, gate = job.storage.uri("recommendations"), decision.as_dict(metric)
    try:
        staged = job.storage.stage(
            target, lambda uri: write_batch(job, uri, recommendations, similar), job.run_id)
        registry.apply_decision(client, name, version, decision, metric)
        mlflow.set_tags({**{key: "" if value is None else str(value)
                            for key, value in gate.items()},
                         "registered_model": name, "model_version": version})
        job.storage.swap_in(staged, target)
    finally:
        job.storage.clear_staging(job.run_id)
    job.say(f"{name} version {version} is {decision.alias}; wrote {len(recommendations)} "
            f"recommendations for {len(people)} people and {len(similar)} similar items "
            f"to {job.storage.uri('recommendations')}")
    return {**gate, "metric": metric, "registered_model": name, "model_version": version,
            "recommendations": len(recommendations), "similar_items": len(similar)}


def add_new_arrivals(job: JobRun, recommendations: pd.DataFrame, table: pd.DataFrame,
                     as_of: pd.Timestamp) -> pd.DataFrame:
    """The batch with catalogue items nobody has interacted with yet in the last slots of the
    people who like their category (training/cold_start.py); `reason` tells them apart."""
    from training.cold_start import category_preferences, new_arrivals, with_new_arrivals

    settings, uri = job.config.catalogue, job.storage.uri("catalogue")
    if not job.storage.has_parquet(uri):
        return recommendations.assign(reason="model")
    catalogue = job.spark.read.parquet(uri).select(
        "item_id", "category", "categories", "release_date", "first_seen", "in_stock").toPandas()
    weights = job.config.training.weights
    liked = table[table["event_type"].map(lambda t: weights.get(t) == "rating"
                                          or (weights.get(t) or 0) > 0)]
    arrivals = new_arrivals(catalogue, table["item_id"], as_of, settings.new_arrival_days)
    merged = with_new_arrivals(recommendations, category_preferences(liked, catalogue), arrivals,
                               job.config.training.k, settings.new_arrival_slots)
    job.say(f"cold start: {arrivals['item_id'].nunique()} new arrivals without interactions, "
            f"{int((merged['reason'] == 'new_arrival').sum())} recommended")
    return merged


def write_batch(job: JobRun, folder: str, recommendations: pd.DataFrame,
                similar: pd.DataFrame) -> None:
    """The batch as it will be read: top-k in `folder`, neighbours in `folder`/similar_items."""
    columns = [c.split()[0] for c in RECOMMENDATION_SCHEMA.split(", ")]
    (job.spark.createDataFrame(recommendations[columns], RECOMMENDATION_SCHEMA)
     .coalesce(1).write.parquet(folder))
    (job.spark.createDataFrame(similar, SIMILAR_ITEMS_SCHEMA)
     .coalesce(1).write.parquet(folder + "/similar_items"))


@click.command("train")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Train and register the recommender; write batch recommendations."""
    check_training_config(config.training)
    execute("train_recommender", config, train)


if __name__ == "__main__":
    main()
