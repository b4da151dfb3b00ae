"""`tailor pipeline` as `make run` calls it: generated sample in, every stage, outputs listed."""
import json

from tests.conftest import tailor


def test_pipeline_on_a_small_generated_sample(tmp_path):
    root = tmp_path / "root"
    result = tailor("pipeline", "--set", f"storage.root={root}", "--set", "sample.users=30",
                    "--set", "sample.days=7", "--set", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== ingest_events" in result.stdout
    assert f"Outputs under file://{root}" in result.stdout
    assert "make mlflow-ui" in result.stdout
    assert any(root.joinpath("events").rglob("*.parquet"))
    runs = [json.loads(p.read_text()) for p in root.joinpath("audit").rglob("*.jsonl")]
    assert {r["job"] for r in runs} == {
        "ingest_events", "apply_retention", "resolve_identities", "build_features",
        "train_recommender"} and all(r["status"] == "succeeded" for r in runs)
