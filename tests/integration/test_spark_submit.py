"""`spark-submit jobs/ingest_events.py` against a standalone Spark master and one worker that
the test starts on loopback from pyspark's own launcher."""
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyspark
import pytest

from tests.conftest import REPO, free_port, stop, wait_for_port
from tests.integration.test_ingest_job import BAD, GOOD, write_dump

SPARK_HOME = Path(pyspark.__file__).parent


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """(master URL, master web UI URL) of a one-worker cluster on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("cluster")
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(logs), "SPARK_WORKER_DIR": str(logs / "work")}
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    processes = []
    try:
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(ui_port)],
            env=env, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT))
        wait_for_port(port, process=processes[0])
        master = f"spark://127.0.0.1:{port}"
        processes.append(subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
             "--cores", "1", "--memory", "2g", "--webui-port", str(worker_ui)],
            env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT))
        wait_for_port(worker_ui, process=processes[1])
        yield master, f"http://127.0.0.1:{ui_port}"
    finally:
        for process in reversed(processes):
            stop(process)


def test_spark_submit_ingest_on_standalone_cluster(standalone_cluster, tmp_path):
    master, master_ui = standalone_cluster
    dump = write_dump(tmp_path / "in", GOOD + [line for line, _ in BAD])
    root = tmp_path / "root"
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "TAILOR_TEST_ROOT": str(tmp_path)}
    result = subprocess.run(
        [str(SPARK_HOME / "bin" / "spark-submit"), "--master", master,
         "--conf", "spark.executor.memory=1g", "--conf", "spark.cores.max=1",
         "jobs/ingest_events.py", "--conf", "conf/test.yaml",
         "--set", f"storage.root={root}", "--input", str(dump)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "raw records read" in result.stdout
    assert any(root.joinpath("events").rglob("*.parquet"))

    with urllib.request.urlopen(f"{master_ui}/json/") as response:
        state = json.load(response)
    assert [app["name"] for app in state["completedapps"]] == ["tailor"]
    audit = [json.loads(p.read_text()) for p in root.joinpath("audit").rglob("*.jsonl")]
    assert [(a["status"], a["counts"]["accepted"]) for a in audit] == [("succeeded", len(GOOD))]
