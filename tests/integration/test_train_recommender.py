"""The training job against a real MLflow server (SQLite + artifacts on the test S3): tracking,
the champion gate and rollback, batch outputs, MovieLens end to end, and Spark ALS."""
import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from mlflow import MlflowClient
from pyspark.sql import functions as F

from jobs import ingest_events, promote, train_recommender
from jobs.datasets import import_dataset
from jobs.runtime import JobError, execute
from training import registry, tracking
from training.evaluation import recipe

MOVIELENS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ml-100k"
T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
EVENT_SCHEMA = ("event_id string, event_type string, event_time timestamp, channel string, "
                "user_id string, anonymous_id string, email_hash string, phone_hash string, "
                "session_id string, item_id string, item_name string, category string, "
                "brand string, price double, quantity int, revenue double, discount double, "
                "currency string, consent_personalization boolean, consent_analytics boolean, "
                "properties map<string,string>, event_date date")


def canonical(rows: list[dict]) -> list[tuple]:
    """Canonical event rows (every column, as ingest writes them) from short dicts."""
    out = []
    for n, row in enumerate(rows):
        time = T0 + timedelta(hours=row.get("hour", n))
        consent = row.get("consent", True)
        out.append((f"e{n}", row.get("type", "view_item"), time, "web", row.get("user"),
                    row.get("anon"), None, None, None, row.get("item"), None, None, None, None,
                    None, None, None, None, consent, consent, row.get("props", {}), time.date()))
    return out


def two_tastes(n_people: int = 40, n_items: int = 20) -> list[dict]:
    """Even people view even items, odd people odd items; person p skips item p % n_items."""
    return [{"user": f"u{p:02d}", "item": f"i{i:02d}"} for p in range(n_people)
            for i in range(p % 2, n_items, 2) if i != p % n_items]


EXTRAS = [
    # anonymous only: the anonymous id is both person_id and user_id
    {"anon": "dev-x", "item": "i00"},
    # only a page view: no item history, still consented -> popular items
    {"user": "browser", "type": "page_view"},
    # no consent: never in any output
    {"user": "private", "item": "i01", "consent": False},
    {"user": "private", "item": "i03", "consent": False},
    # added to cart, then removed (confidence 0): still never recommended back
    {"user": "u00", "type": "add_to_cart", "item": "i05"},
    {"user": "u00", "type": "remove_from_cart", "item": "i05"},
]


def write_events(spark, root: Path, rows: list[dict]) -> None:
    (spark.createDataFrame(canonical(rows), EVENT_SCHEMA)
     .write.mode("overwrite").partitionBy("event_date").parquet(str(root / "events")))


@pytest.fixture
def tracked_config(make_config, mlflow_server, tmp_path):
    """Config for a test with its own root, experiment and registered model on the server."""
    tag = uuid.uuid4().hex[:8]

    def _make(*overrides):
        return make_config(f"storage.root={tmp_path}/root", f"mlflow.tracking_uri={mlflow_server}",
                           f"mlflow.experiment=test-{tag}",
                           f"training.registry.model_name=rec-{tag}", *overrides)

    return _make


def train(spark, config) -> dict:
    return execute("train_recommender", config, train_recommender.train, spark=spark)


def run_promote(spark, config, **options) -> dict:
    return execute("promote", config, lambda job: promote.promote(job, **options), spark=spark)


def read_batch(spark, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (spark.read.parquet(str(root / "recommendations")).toPandas(),
            spark.read.parquet(str(root / "recommendations" / "similar_items")).toPandas())


def audit_counts(root: Path, job: str) -> list[dict]:
    lines = [json.loads(p.read_text()) for p in sorted((root / "audit").rglob("*.jsonl"))]
    return [line["counts"] for line in sorted(lines, key=lambda l: l["started_at"])
            if line["job"] == job and line["status"] == "succeeded"]


def test_nothing_to_train_on_says_so_and_succeeds(spark, make_config, tmp_path):
    config = make_config(f"storage.root={tmp_path}/root")
    assert train(spark, config) == {"trained": False, "reason": "no events yet"}
    write_events(spark, tmp_path / "root", [{"user": "a", "item": "x", "consent": False},
                                            {"user": "b", "type": "page_view"}])
    counts = train(spark, config)
    assert counts["trained"] is False and counts["reason"] == "no consented item events"
    assert not (tmp_path / "root" / "recommendations").exists()


def test_champion_gate_batch_outputs_and_rollback(spark, tracked_config, tmp_path, monkeypatch):
    root = tmp_path / "root"
    write_events(spark, root, two_tastes() + EXTRAS)
    popularity = ["training.model=popularity"]
    ease = ["training.model=ease", "training.params.ease.lambda_=1.0"]

    first = train(spark, tracked_config(*popularity))
    assert (first["decision"], first["model_version"], first["champion_version"]) == (
        "champion", "1", None)

    recs, similar = read_batch(spark, root)
    people = set(recs.person_id)
    assert "private" not in people and {"browser", "dev-x", "u00"} <= people
    assert len(people) == 40 + 2 and (recs.groupby("person_id").size() == 10).all()
    assert recs.loc[recs.person_id == "dev-x", "user_id"].unique().tolist() == ["dev-x"]
    assert set(recs.model_version) == {"1"}
    assert "i05" not in recs.loc[recs.person_id == "u00", "item_id"].tolist()
    history = {(f"u{p:02d}", r["item"]) for p in range(40) for r in two_tastes()
               if r["user"] == f"u{p:02d}"}
    assert not history & set(zip(recs.person_id, recs.item_id))
    assert sorted(similar["rank"].unique()) == list(range(1, 11))
    assert (similar.item_id != similar.similar_item_id).all()

    second = train(spark, tracked_config(*ease))
    assert second["decision"] == "champion" and second["model_version"] == "2"
    assert second["champion_version"] == "1"
    assert second["candidate_ndcg_at_10"] > second["champion_ndcg_at_10"]

    third = train(spark, tracked_config(*popularity))
    assert third["decision"] == "challenger" and third["model_version"] == "3"
    assert third["champion_ndcg_at_10"] == pytest.approx(second["candidate_ndcg_at_10"])
    assert third["champion_ndcg_at_10"] > third["candidate_ndcg_at_10"]

    config = tracked_config()
    name = config.training.registry.model_name
    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    assert registry.aliases(client, name) == {"champion": "2", "challenger": "3"}
    assert client.get_model_version(name, "2").tags["previous_champion"] == "1"
    run = client.get_run(third["mlflow_run_id"])
    assert run.data.tags["decision"] == "challenger"
    rescored = float(run.data.tags["champion_ndcg_at_10"])
    assert rescored == pytest.approx(third["champion_ndcg_at_10"])
    assert [c["decision"] for c in audit_counts(root, "train_recommender")] == [
        "champion", "champion", "challenger"]

    assert run_promote(spark, config, rollback=True)["to_version"] == "1"
    assert registry.aliases(client, name)["champion"] == "1"
    with pytest.raises(JobError, match="no previous champion"):
        run_promote(spark, config, rollback=True)
    assert run_promote(spark, config, version="3")["from_version"] == "1"
    assert client.get_model_version(name, "3").tags["previous_champion"] == "1"
    assert [c["to_version"] for c in audit_counts(root, "promote")] == ["1", "3"]

    # after a forget every version is stale: the next run replaces the champion whatever it scores
    registry.mark_stale(client, name, "forget request forget-1")
    fourth = train(spark, tracked_config(*popularity))
    assert fourth["decision"] == "champion" and fourth["model_version"] == "4"
    assert fourth["champion_stale"] == "forget request forget-1"
    assert registry.aliases(client, name)["champion"] == "4"

    # a run that fails after registering leaves the previous batch in place, no staging behind
    def refuse(*args, **kwargs):
        raise RuntimeError("registry down")

    monkeypatch.setattr(registry, "apply_decision", refuse)
    with pytest.raises(RuntimeError, match="registry down"):
        train(spark, tracked_config(*ease))
    assert set(read_batch(spark, root)[0].model_version) == {"4"}
    assert not (root / "_staging").exists() or not any((root / "_staging").iterdir())


def test_promote_needs_exactly_one_action():
    result = CliRunner().invoke(promote.main, ["--rollback", "--version", "2"])
    assert result.exit_code == 1 and "exactly one of" in result.output


def test_movielens_end_to_end(spark, tracked_config, tmp_path):
    """Import + ingest a MovieLens subsample, tune ALS, register a champion, batch-recommend,
    and serve the registered model back through the tracking server."""
    sample = tmp_path / "ml-sample"
    sample.mkdir()
    ratings = pd.read_csv(MOVIELENS / "u.data", sep="\t", header=None, dtype=str)
    ratings[ratings[0].astype(int) <= 150].to_csv(sample / "u.data", sep="\t", header=False,
                                                  index=False)
    dump = import_dataset("movielens", sample, tmp_path / "raw")
    config = tracked_config("training.tuning.enabled=true", "training.tuning.n_trials=2",
                            "training.tuning.models=[als,item_item]",
                            "training.tuning.space.als.iterations=[5]")
    execute("ingest_events", config,
            lambda job: ingest_events.ingest(job, str(tmp_path / "raw")), spark=spark)

    counts = train(spark, config)
    assert counts["decision"] == "champion" and counts["consented_people"] == 150
    assert counts["interactions"] == dump["records"] and counts["test_people"] == 150
    assert counts["test_metrics"]["ndcg_at_10"] > 0.2

    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    run = client.get_run(counts["mlflow_run_id"])
    children = client.search_runs([run.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    roles = sorted(child.data.tags["role"] for child in children)
    assert roles == ["baseline"] + ["tuning_trial"] * 2 * 4 * 2  # models x weightings x n_trials
    baseline = next(c for c in children if c.data.tags["role"] == "baseline")
    assert counts["test_metrics"]["ndcg_at_10"] > baseline.data.metrics["ndcg_at_10"]
    assert {"fit_seconds", "validation_ndcg_at_10"} <= set(
        next(c for c in children if c.data.tags["role"] == "tuning_trial").data.metrics)
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == counts["events_digest"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")} | {
        a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {"plots/metrics.png", "evaluation/report.json"}

    recs, _ = read_batch(spark, tmp_path / "root")
    assert len(recs) == 150 * 10 and set(recs.model_version) == {counts["model_version"]}
    rated = set(zip(ratings[0], ratings[1]))
    assert not rated & set(zip(recs.person_id, recs.item_id))

    name = config.training.registry.model_name
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_registry_uri(config.mlflow.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.metadata.get_input_schema().input_names() == ["person_id"]
    assert [param.name for param in model.metadata.get_params_schema().params] == ["k"]
    assert model.metadata.get_output_schema().input_names() == ["person_id", "item_id", "rank",
                                                                "score"]
    assert model.input_example.columns.tolist() == ["person_id"]
    served = model.predict(pd.DataFrame({"person_id": ["7", "nobody"]}), params={"k": 3})
    batch = recs[(recs.person_id == "7") & (recs["rank"] <= 3)]
    assert served[served.person_id == "7"].item_id.tolist() == batch.item_id.tolist()
    assert len(served[served.person_id == "nobody"]) == 3
    why = model.unwrap_python_model().explain("7", batch.item_id.iloc[0])
    assert len(why) > 0 and set(why.item_id) <= set(ratings[ratings[0] == "7"][1])


def test_relative_sqlite_store_keeps_runs_and_artifacts_under_var(tmp_path):
    """The embedded default `sqlite:///var/mlflow.db` works from any working directory."""
    from training.fitted import FittedRecommender
    from training.interactions import Interactions
    from training.pyfunc_model import log_recommender
    from training.recommenders import make_recommender

    tracking.open_experiment("sqlite:///var/mlflow.db", "local", cwd=tmp_path)
    matrix = sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32))
    interactions = Interactions(matrix, np.array(["a", "b"]), np.array(["x", "y", "z"]))
    fitted = FittedRecommender(make_recommender("popularity").fit(matrix), interactions, matrix,
                               recipe("popularity", {}, {"view_item": 1.0}))
    try:
        with mlflow.start_run():
            info = log_recommender(fitted, k=2)
        version = registry.register(info.model_uri, "local-rec", fitted.recipe)
        assert (tmp_path / "var" / "mlflow.db").is_file()
        assert any((tmp_path / "var" / "mlartifacts").rglob("recommender.pkl"))
        assert registry.recipe_of(version) == fitted.recipe
        loaded = mlflow.pyfunc.load_model(f"models:/local-rec/{version.version}")
        assert loaded.predict(pd.DataFrame({"person_id": ["a"]})).item_id.tolist() == ["y"]
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        shutil.rmtree(tmp_path / "var", ignore_errors=True)


def test_repeated_events_add_up_and_only_the_latest_rating_counts(spark):
    """Three views (two on one day, one the next) and a purchase of m; m rated 2, then 5."""
    from training.interactions import build_interactions
    from training.spark_interactions import item_interactions

    rows = canonical([
        {"user": "a", "item": "m", "hour": 0}, {"user": "a", "item": "m", "hour": 1},
        {"user": "a", "item": "m", "hour": 30},
        {"user": "a", "type": "purchase", "item": "m", "hour": 31},
        {"user": "a", "type": "rate", "item": "n", "props": {"rating": "2"}, "hour": 2},
        {"user": "a", "type": "rate", "item": "n", "props": {"rating": "5"}, "hour": 40},
    ])
    events = spark.createDataFrame(rows, EVENT_SCHEMA).withColumn("person_id", F.col("user_id"))
    table = item_interactions(events).toPandas()
    views = table[table.event_type == "view_item"].sort_values("event_time")
    assert views.event_count.tolist() == [2, 1]  # one row per day
    matrix = build_interactions(table, {"view_item": 1.0, "purchase": 5.0, "rate": "rating"})
    confidence = dict(zip(matrix.item_ids, matrix.matrix.toarray()[0]))
    assert confidence == {"m": 3 * 1.0 + 5.0, "n": 5.0}


def test_logged_input_digest_follows_the_events(spark, tmp_path):
    """The digest logged with mlflow.log_input changes when any event does, not with order."""
    from training.spark_interactions import fingerprint, item_interactions

    rows = canonical(two_tastes(6, 4))
    changed = rows[:-1] + [rows[-1][:9] + ("i99",) + rows[-1][10:]]
    digests = []
    tracking.open_experiment(f"sqlite:///{tmp_path}/mlflow.db", "digests", cwd=tmp_path)
    try:
        for variant in (rows, rows[::-1], changed, rows[:-1]):
            events = spark.createDataFrame(variant, EVENT_SCHEMA).withColumn(
                "person_id", F.col("user_id"))
            digest = tracking.events_digest(*fingerprint(events))
            with mlflow.start_run() as run:
                tracking.log_events_input(item_interactions(events).toPandas(),
                                          str(tmp_path / "events"), digest, name="events")
            (logged,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
            assert logged.dataset.digest == digest
            digests.append(digest)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert digests[0] == digests[1] and len(set(digests)) == 3


def test_interaction_table_keeps_the_latest_rating(spark):
    from training.spark_interactions import item_interactions

    rows = canonical([
        {"user": "a", "type": "rate", "item": "m", "props": {"rating": "2"}},
        {"user": "a", "type": "rate", "item": "m", "props": {"rating": "5"}},
        {"user": "a", "type": "view_item", "item": "m"},
        {"user": "a", "type": "rate", "item": "n", "props": {"rating": "bad"}},
        {"user": "a", "type": "page_view"},
    ])
    events = spark.createDataFrame(rows, EVENT_SCHEMA).withColumn("person_id", F.col("user_id"))
    table = item_interactions(events).toPandas().set_index(["item_id", "event_type"])
    assert table.loc[("m", "rate"), "value"] == 5.0
    latest_rating = pd.Timestamp(T0 + timedelta(hours=1)).tz_localize(None)
    assert table.loc[("m", "rate"), "event_time"] == latest_rating
    assert pd.isna(table.loc[("n", "rate"), "value"]) and len(table) == 3
