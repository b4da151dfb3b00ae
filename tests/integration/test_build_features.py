"""The features job end to end: a generated sample in, features/ out, an MLflow run with the
cohort heatmap; consent, failure safety, idempotence, and stages with nothing to work on."""
import gzip
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from jobs import build_features, ingest_events
from jobs.config import load_config
from jobs.runtime import execute
from jobs.sample_data import ground_truth, user_profile, write_sample
from tests.conftest import REPO

USERS, DAYS, SEED = 40, 45, 7  # 45 days to 2024-06-30: two monthly cohorts


def config_for(root: Path, *overrides: str):
    return load_config(REPO / "conf" / "test.yaml",
                       [f"storage.root={root}/root", f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db",
                        *overrides])


def run_features(spark, config, **kwargs) -> dict:
    return execute("build_features", config, lambda job: build_features.build(job, **kwargs),
                   spark=spark)


def table(spark, config, name):
    return spark.read.parquet(f"{config.storage.root}/features/{name}").toPandas()


@pytest.fixture(scope="module")
def sample(spark, tmp_path_factory):
    """A generated sample ingested and built once; (config, counts of the build)."""
    base = tmp_path_factory.mktemp("features")
    write_sample(base / "raw", users=USERS, days=DAYS, seed=SEED)
    config = config_for(base)
    execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(base / "raw")),
            spark=spark)
    return config, run_features(spark, config)


def test_every_table_written_with_person_and_user_ids(spark, sample):
    config, counts = sample
    assert counts["built"] and counts["as_of"] == "2024-06-30"
    rfm, behaviour = table(spark, config, "rfm"), table(spark, config, "behaviour")
    assert list(rfm.columns[:2]) == list(behaviour.columns[:2]) == ["person_id", "user_id"]
    assert len(rfm) == counts["persons_with_rfm"] > 0 and rfm["person_id"].is_unique
    assert set(rfm["person_id"]) <= set(behaviour["person_id"])
    assert rfm["user_id"].notna().all() and behaviour["user_id"].notna().all()
    assert sum(counts["segments"].values()) == len(rfm)
    assert rfm["r_score"].between(1, 5).all() and rfm["rfm_segment"].notna().all()
    cohorts = table(spark, config, "cohorts")
    assert counts["cohorts"] == 2 and (cohorts.query("months_since == 0")["retention_rate"] == 1).all()
    persons, items = table(spark, config, "embeddings/persons"), table(spark, config, "embeddings/items")
    assert len(items) == counts["embedding_items"] > 0 and len(persons) == counts["embedding_persons"]
    assert {len(v) for v in items["vector"]} == {config.features.embedding_dims}
    assert not Path(config.storage.root, "_staging").exists() or not any(
        Path(config.storage.root, "_staging").iterdir())


def test_people_without_personalization_consent_have_no_rows(spark, sample):
    config, _ = sample
    withheld = [user_profile(i, SEED) for i in range(USERS)]
    withheld = {i for p in withheld if not p.consent_personalization
                for i in (p.user_id, *p.anonymous_ids)}
    assert withheld
    for name in ("rfm", "behaviour", "embeddings/persons"):
        rows = table(spark, config, name)
        assert not withheld & (set(rows["person_id"]) | set(rows["user_id"])), name


def test_planted_personas_show_in_the_features(spark, sample):
    config, _ = sample
    personas = ground_truth(USERS, SEED)
    behaviour = table(spark, config, "behaviour").assign(persona=lambda t: t["user_id"].map(personas))
    by_persona = behaviour.groupby("persona")[["discounted_purchase_share",
                                               "new_arrival_purchase_share", "sessions"]].mean()
    assert (by_persona.loc["deal_seeker", "discounted_purchase_share"]
            > by_persona.loc["trendsetter", "discounted_purchase_share"])
    assert (by_persona.loc["trendsetter", "new_arrival_purchase_share"]
            > by_persona.loc["deal_seeker", "new_arrival_purchase_share"])


def test_mlflow_run_has_the_heatmap_and_summary_metrics(sample):
    config, counts = sample
    client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
    run = client.get_run(counts["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["as_of"] == "2024-06-30"
    assert run.data.metrics["persons_with_rfm"] == counts["persons_with_rfm"]
    segment_metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("segment_")}
    assert len(segment_metrics) == 11 and sum(segment_metrics.values()) == counts["persons_with_rfm"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
        "plots/cohort_retention.png"]


def test_failed_run_keeps_the_previous_features_and_a_rerun_rebuilds_them(spark, sample,
                                                                          monkeypatch):
    config, _ = sample
    before = table(spark, config, "rfm").sort_values("person_id").reset_index(drop=True)

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(build_features, "behaviour_features", explode)
        with pytest.raises(RuntimeError, match="disk full"):
            run_features(spark, config)
    assert table(spark, config, "rfm").sort_values("person_id").reset_index(drop=True).equals(before)
    assert not any(Path(config.storage.root, "_staging").glob("*/*"))
    failed = [json.loads(p.read_text()) for p in Path(config.storage.root, "audit").rglob("*.jsonl")]
    assert any(r["job"] == "build_features" and r["status"] == "failed" for r in failed)

    run_features(spark, config)
    again = table(spark, config, "rfm").sort_values("person_id").reset_index(drop=True)
    assert again.equals(before)


def test_no_events_says_so_and_succeeds(spark, tmp_path):
    counts = run_features(spark, config_for(tmp_path))
    assert counts == {"built": False, "reason": "no events yet"}


def test_ratings_only_data_has_empty_rfm_but_behaviour(spark, tmp_path):
    """Like MovieLens: rate events only, so no purchases; built through the click command."""
    dump = tmp_path / "in"
    dump.mkdir()
    ratings = [{"event_id": f"r{i}", "event_type": "rate", "timestamp": f"2024-03-0{day}T10:00:00Z",
                "user_id": user, "item_id": item, "properties": {"rating": "4"},
                "consent": {"personalization": True, "analytics": True}}
               for i, (user, item, day) in enumerate([("1", "a", 1), ("1", "b", 2), ("2", "a", 2),
                                                      ("2", "c", 5)])]
    with gzip.open(dump / "ratings.jsonl.gz", "wt") as out:
        out.write("\n".join(json.dumps(r) for r in ratings) + "\n")
    config = config_for(tmp_path)
    execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(dump)), spark=spark)

    result = CliRunner().invoke(build_features.main, [
        "--conf", str(REPO / "conf" / "test.yaml"), "--set", f"storage.root={tmp_path}/root",
        "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "--as-of", "2024-03-02"])
    assert result.exit_code == 0, result.output
    assert "no purchases up to 2024-03-02: RFM is empty" in result.output
    assert table(spark, config, "rfm").empty
    behaviour = table(spark, config, "behaviour").set_index("person_id")
    assert behaviour["events_rate"].to_dict() == {"1": 2, "2": 1}  # 2024-03-05 is after the as-of day


def test_bad_as_of_is_refused_by_the_command():
    result = CliRunner().invoke(build_features.main, ["--as-of", "2024-13-01"])
    assert result.exit_code == 2 and "--as-of" in result.output
