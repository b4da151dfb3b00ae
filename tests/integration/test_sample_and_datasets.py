"""Generated samples and public data sets through the ingest job, and the `tailor` commands
that make them, including writing a dump straight to the S3-compatible server."""
import boto3

from jobs import ingest_events
from jobs.datasets import import_dataset
from jobs.runtime import execute
from jobs.sample_data import write_sample
from tests.conftest import REPO, S3_BUCKET, tailor

DATASETS = REPO.parent / "shared" / "datasets"


def ingest(spark, config, path) -> dict:
    return execute("ingest_events", config, lambda job: ingest_events.ingest(job, str(path)),
                   spark=spark)


def test_generated_sample_reconciles_with_what_the_generator_planted(spark, make_config, tmp_path):
    summary = write_sample(tmp_path / "raw", users=80, days=14, seed=7)
    counts = ingest(spark, make_config(f"storage.root={tmp_path}/root"), tmp_path / "raw")
    assert counts["raw_records"] == summary["records"]
    assert counts["quarantined"] == summary["bad_records"]
    assert counts["duplicates"] == summary["duplicates"]
    assert counts["accepted"] == summary["good_records"]


def test_movielens_and_cdnow_ingest_completely(spark, make_config, tmp_path):
    config = make_config(f"storage.root={tmp_path}/root")
    movielens = import_dataset("movielens", DATASETS / "ml-100k", tmp_path / "ml")
    cdnow = import_dataset("cdnow", DATASETS / "cdnow", tmp_path / "cdnow")
    assert ingest(spark, config, tmp_path / "ml")["accepted"] == movielens["records"] == 100_000
    assert ingest(spark, config, tmp_path / "cdnow")["accepted"] == cdnow["records"] == 6_919
    events = spark.read.parquet(config.storage.root + "/events")
    by_type = {r.event_type: r["count"] for r in events.groupBy("event_type").count().collect()}
    assert by_type == {"rate": 100_000, "purchase": 6_919}
    assert events.where("event_type = 'rate' and properties['rating'] is null").count() == 0
    assert events.where("event_type = 'purchase' and revenue is null").count() == 0


def test_cli_writes_dumps_locally_and_to_s3(s3_server, tmp_path):
    result = tailor("sample-data", "--users", "20", "--days", "5", "--output", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert any(tmp_path.joinpath("s").glob("*.jsonl.gz"))

    s3_env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
              "AWS_SECRET_ACCESS_KEY": "testing"}
    result = tailor("import-dataset", "cdnow", str(DATASETS / "cdnow"),
                    "--output", f"s3a://{S3_BUCKET}/cli/cdnow", "--conf", "conf/test.yaml",
                    "--set", "storage.s3.path_style_access=true", env=s3_env)
    assert result.returncode == 0, result.stderr
    assert "6919 cdnow records" in result.stdout
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="cli/cdnow/")["Contents"]]
    assert keys == ["cli/cdnow/cdnow.jsonl.gz"]


def test_cli_rejects_unknown_dataset_and_missing_folder(tmp_path):
    result = tailor("import-dataset", "netflix", str(tmp_path), "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "netflix" in result.stderr
    result = tailor("import-dataset", "cdnow", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "does not exist" in result.stderr
