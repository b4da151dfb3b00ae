"""The exposure writer and persona discovery on an s3a:// root (the moto server), without Spark,
as the service runs them."""
import json

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.experiments import Assignment, discover_segment_names
from serving.exposures import ExposureWriter
from serving.rootfs import root_filesystem
from tests.conftest import S3_BUCKET

pytestmark = pytest.mark.integration


def test_exposures_and_personas_on_an_s3_root(make_config, s3_server):
    config = make_config(f"storage.root=s3a://{S3_BUCKET}/exposure-test",
                         "experiments.exposure_batch_size=2")
    with ExposureWriter.from_config(config, background=False) as writer:
        for i in range(3):
            writer.record(Assignment("banner", "home_banner", "sale", True, "enrolled"),
                          person_id=f"p{i}", user_id=f"u{i}")
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys = sorted(o["Key"] for o in client.list_objects_v2(
        Bucket=S3_BUCKET, Prefix="exposure-test/raw/exposures/")["Contents"])
    files = [k for k in keys if k.endswith(".jsonl")]
    assert len(files) == 2 and not [k for k in keys if "/." in k]
    records = [json.loads(line) for k in files for line in
               client.get_object(Bucket=S3_BUCKET, Key=k)["Body"].read().decode().splitlines()]
    assert sorted(r["user_id"] for r in records) == ["u0", "u1", "u2"]

    fs, base = root_filesystem(config.storage.root, config.storage.s3)
    with fs.open_output_stream(f"{base}/segments/part-0.parquet") as stream:
        pq.write_table(pa.table({"person_id": ["a"], "persona": ["Night Owls"]}), stream)
    assert "Night Owls" in discover_segment_names(config)
