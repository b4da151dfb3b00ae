"""Shared fixtures: one local Spark session per test run and a real S3-compatible server.

The S3 server (moto's, over HTTP on 127.0.0.1) starts before Spark so the session's S3A
settings can point at it; both are stopped when the run ends.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
S3_BUCKET = "tailor-test"

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


@pytest.fixture(scope="module", autouse=True)
def tracking_uri_stays_in_its_module():
    """mlflow.set_tracking_uri, which jobs run in-process call, exports MLFLOW_TRACKING_URI, and
    that variable wins over a config's tracking URI: without this, a module's store would leak
    into the jobs of the modules after it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free loopback port, with one bucket and test credentials."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    process = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process=process)
        endpoint = f"http://127.0.0.1:{port}"
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        import boto3
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=S3_BUCKET)
        yield endpoint
    finally:
        stop(process)
        log.close()


def s3_overrides(endpoint: str) -> list[str]:
    return [f"storage.s3.endpoint={endpoint}", "storage.s3.path_style_access=true",
            "storage.s3.ssl_enabled=false"]


@pytest.fixture(scope="session")
def spark(s3_server, tmp_path_factory):
    """One local Spark session for the whole run (start-up costs 5-15 s), S3A pointed at moto."""
    from jobs.config import load_config
    from jobs.spark import build_spark_session

    root = tmp_path_factory.mktemp("spark-root")
    config = load_config(REPO / "conf" / "test.yaml", s3_overrides(s3_server),
                         environ={**os.environ, "TAILOR_TEST_ROOT": str(root)})
    session = build_spark_session(config)
    yield session
    session.stop()


@pytest.fixture
def make_config(tmp_path, s3_server):
    """Config for a test: conf/test.yaml under tmp_path, S3A on the test server, plus overrides."""
    from jobs.config import load_config

    def _make(*overrides: str, environ: dict | None = None):
        env = {**os.environ, "TAILOR_TEST_ROOT": str(tmp_path), **(environ or {})}
        return load_config(REPO / "conf" / "test.yaml", [*s3_overrides(s3_server), *overrides],
                           environ=env)

    return _make


def tailor(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: int = 600):
    """Run the `tailor` CLI as a user would, returning the CompletedProcess."""
    return subprocess.run([str(VENV_BIN / "tailor"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
