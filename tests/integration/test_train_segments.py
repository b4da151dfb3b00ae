"""`tailor segment` end to end on a generated sample with a real MLflow server: one nested run
per method with its scores, profile and plots, the chosen model registered as champion and
answering like the batch, segments/ and segments/rules/, the planted personas recovered and
named as training/personas.py documents, the same names on a re-run, and a bad rule refused
before anything runs."""
import uuid

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import adjusted_rand_score

from bench.segments_bench import PERSONA_NAMES
from jobs import build_features, ingest_events, resolve_identities, train_segments
from jobs.config import load_config
from jobs.runtime import execute
from jobs.sample_data import ground_truth, write_sample
from tests.conftest import REPO, tailor
from training.segmentation import segment_features

USERS, DAYS, SEED = 150, 60, 11
# Measured on this sample (identity resolved, as `tailor pipeline` does before the features):
# k-means is chosen with 3 segments, ARI 0.87 against the planted personas — 4 of the 97 planted
# people, deal seekers without a purchase on sale, sit with the occasional browsers. Merging two
# personas scores at most 0.80 here (trendsetters into deal seekers 0.80, deal seekers into
# browsers 0.45, trendsetters into browsers 0.61), so 0.8 fails any merge and allows about 6
# misplaced people; the names below fail a merge too. (With 30 days and no identity resolution,
# the earlier set-up, deal seekers had bought about once and every pre-login cookie was a person
# of its own: the best silhouette had 2 segments, ARI 0.33.)
ARI_BAR = 0.8


@pytest.fixture(scope="module")
def sample(spark, tmp_path_factory, mlflow_server):
    """A generated sample ingested and featurized once; its (overrides, config)."""
    base = tmp_path_factory.mktemp("segments")
    tag = uuid.uuid4().hex[:8]
    overrides = [f"storage.root={base}/root", f"mlflow.tracking_uri={mlflow_server}",
                 f"mlflow.experiment=seg-{tag}", f"segmentation.model_name=seg-{tag}"]
    config = load_config(REPO / "conf" / "test.yaml", overrides)
    write_sample(base / "raw", users=USERS, days=DAYS, seed=SEED)
    execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(base / "raw")), spark=spark)
    execute("resolve_identities", config, resolve_identities.resolve, spark=spark)
    execute("build_features", config, build_features.build, spark=spark)
    return overrides, config


def segments(spark, config):
    root = config.storage.root
    return (spark.read.parquet(f"{root}/segments").toPandas(),
            spark.read.parquet(f"{root}/segments/rules").toPandas())


def test_segment_job_through_the_cli(spark, sample, mlflow_server):
    overrides, config = sample
    args = [part for o in overrides for part in ("--set", o)]
    result = tailor("segment", "--conf", str(REPO / "conf" / "test.yaml"), *args)
    assert result.returncode == 0, result.stderr
    assert "chose" in result.stdout

    assigned, rules = segments(spark, config)
    assert list(assigned.columns) == ["person_id", "user_id", "segment", "persona", "model_version"]
    assert assigned["person_id"].is_unique and assigned["persona"].notna().all()
    assert set(assigned["model_version"]) == {"1"}
    assert list(rules.columns) == ["person_id", "user_id", "rule_segment", "since"]
    assert set(rules["rule_segment"]) <= {"browse_cart_email_48h", "frequent_buyers_90d",
                                          "champions_gone_quiet"}  # no profiles/: urban_25_34 skipped
    assert "urban_25_34" in result.stdout and "skipped" in result.stdout

    truth = assigned["user_id"].map(ground_truth(USERS, SEED))
    known = truth.notna()
    ari = adjusted_rand_score(truth[known], assigned["segment"][known])
    print(f"\nadjusted Rand index vs planted personas: {ari:.3f}; personas "
          f"{assigned.groupby(['segment', 'persona']).size().to_dict()}; by planted persona "
          f"{pd.crosstab(truth[known], assigned['persona'][known]).to_dict()}")
    assert ari >= ARI_BAR
    # each planted persona's segment carries its documented name (three different segments)
    majority = {planted: assigned["segment"][known][truth[known] == planted].mode()[0]
                for planted in PERSONA_NAMES}
    assert len(set(majority.values())) == 3
    named = assigned.drop_duplicates("segment").set_index("segment")["persona"]
    assert {planted: named[segment] for planted, segment in majority.items()} == PERSONA_NAMES

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    methods = {r.data.tags.get("mlflow.runName"): r for r in runs
               if r.data.tags.get("role") == "segmentation_method"}
    assert set(methods) == {"kmeans", "dbscan", "ward"}
    for run in methods.values():
        metrics = run.data.metrics
        assert {"n_clusters", "noise_share"} <= set(metrics)
        # silhouette is undefined for one segment (DBSCAN finds one here: its knee eps is wide)
        assert ("silhouette" in metrics) == (metrics["n_clusters"] >= 2)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert artifacts == {"plots/projection.png", "plots/profile_heatmap.png"}
        profile = pd.read_csv(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="segments/profile_table.csv",
            tracking_uri=mlflow_server))
        assert "overall" in set(profile["segment"].astype(str)) and "z_events" in profile.columns
    assert any(k.startswith("silhouette_k") for k in methods["kmeans"].data.metrics)

    name = config.segmentation.model_name
    assert client.get_registered_model(name).aliases == {"champion": "1"}
    # the registered model answers like the batch for the same people
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    root = config.storage.root
    features = segment_features(spark.read.parquet(f"{root}/features/behaviour"),
                                spark.read.parquet(f"{root}/features/rfm"),
                                spark.read.parquet(f"{root}/features/embeddings/persons")).toPandas()
    answered = model.predict(features).assign(person_id=features["person_id"].to_numpy())
    batch = assigned.set_index("person_id").loc[answered["person_id"]]
    agree = (answered["segment"].to_numpy() == batch["segment"].to_numpy()).mean()
    assert agree == 1.0 or (answered["persona"].to_numpy() == batch["persona"].to_numpy()).mean() >= 0.95


def test_rerun_gives_the_same_names_and_moves_the_champion(spark, sample):
    _, config = sample
    before, _ = segments(spark, config)
    counts = execute("train_segments", config, train_segments.segment, spark=spark)
    after, _ = segments(spark, config)
    merged = before.merge(after, on="person_id", suffixes=("_1", "_2"))
    assert len(merged) == len(before)
    assert (merged["persona_1"] == merged["persona_2"]).all()
    assert (merged["segment_1"] == merged["segment_2"]).all()
    assert counts["model_version"] == "2" and set(after["model_version"]) == {"2"}
    client = MlflowClient(config.mlflow.tracking_uri)
    version = client.get_model_version(config.segmentation.model_name, "2")
    assert version.aliases == ["champion"] and version.tags["previous_champion"] == "1"


def test_unknown_field_refused_before_anything_runs(tmp_path):
    bad = tmp_path / "segments.yaml"
    bad.write_text("rules:\n  lapsed:\n    when:\n      - field: rfm.days_since_purchase\n"
                   "        at_least: 30\n")
    result = tailor("segment", "--set", f"segmentation.rules_file={bad}",
                    "--set", f"storage.root={tmp_path}/root")
    assert result.returncode == 2
    assert "unknown field 'rfm.days_since_purchase'" in result.stderr
    assert not (tmp_path / "root").exists()
