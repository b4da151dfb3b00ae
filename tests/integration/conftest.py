"""A real MLflow tracking server for the run: SQLite backend, artifacts proxied to the test S3.

Clients talk HTTP only (`--serve-artifacts`), so the training job needs no S3 access for
MLflow; only the server process gets the moto endpoint and test credentials.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import S3_BUCKET, VENV_BIN, free_port, stop, wait_for_port


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """`mlflow server` on a free loopback port; yields its http:// tracking URI."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(home / "server.log", "w")
    process = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{home}/mlflow.db",
         "--serve-artifacts", "--artifacts-destination", f"s3://{S3_BUCKET}/mlflow"],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=120, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()
