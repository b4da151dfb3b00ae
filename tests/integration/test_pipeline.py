"""`tailor pipeline` as `make run` calls it: generated sample in, every stage, outputs listed,
and neither the PII key nor any raw email or phone of the input in what it printed, stored or
sent to MLflow."""
import gzip
import json
import re

from jobs.cli import SAMPLE_DIR
from tests.conftest import REPO, tailor
from tests.integration.test_ingest_job import strings_in

PII_KEY = "pipeline-secret-key-8d1f0c"


def test_pipeline_on_a_small_generated_sample(tmp_path):
    root = tmp_path / "root"
    # the environment's tracking URI wins over config, and earlier tests may have set one
    result = tailor("pipeline", "--set", f"storage.root={root}", "--set", "sample.users=30",
                    "--set", "sample.days=7",
                    env={"TAILOR_PII_KEY": PII_KEY, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"},
                    timeout=1200)  # six stages, on a shared 2-core machine
    assert result.returncode == 0, result.stderr[-3000:]
    assert "== ingest_events" in result.stdout
    assert f"Outputs under file://{root}" in result.stdout
    assert "make mlflow-ui" in result.stdout
    assert any(root.joinpath("events").rglob("*.parquet"))
    runs = [json.loads(p.read_text()) for p in root.joinpath("audit").rglob("*.jsonl")]
    assert {r["job"] for r in runs} == {
        "ingest_events", "apply_retention", "resolve_identities", "build_profiles",
        "build_catalogue", "build_features", "train_segments", "train_recommender"} and all(
        r["status"] == "succeeded" for r in runs)
    assert any(root.joinpath("profiles").rglob("*.parquet"))
    assert any(root.joinpath("catalogue").rglob("*.parquet"))

    assert PII_KEY not in result.stdout + result.stderr
    stored = [p for folder in (tmp_path, REPO / "var" / "mlartifacts") if folder.exists()
              for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "m.db" for p in stored)
    raw_pii = raw_emails_and_phones(SAMPLE_DIR / "sample-u30-d7-s42")
    assert len(raw_pii) > 20  # the sample has people with email and phone
    for path in stored:
        text = strings_in(path)
        assert PII_KEY not in text, f"the PII key is in {path}"
        found = [value for value in raw_pii if value in text]
        assert not found, f"raw PII {found[:3]} in {path}"


def raw_emails_and_phones(sample) -> set[str]:
    """Every email and phone value the sample's input files hold, as sent and normalized."""
    text = "".join(gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else strings_in(p)
                   for p in sample.rglob("*") if p.is_file() and not p.name.startswith("_"))
    emails = set(re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text))
    phones = set(re.findall(r'"phone": ?"([^"]+)"', text)) | set(re.findall(r"\+\d[\d ()-]{8,}\d", text))
    return emails | {e.lower() for e in emails} | phones | {re.sub(r"[^\d+]", "", p) for p in phones}
