"""`make bench-serve`: the recommendation service under wrk, beside a no-op BentoML endpoint.

    .venv/bin/python bench/serve_bench.py --out bench/report.md [--seconds 15] [--soak 60]

Set-up (cached under bench/work/serve/): an ALS champion on a synthetic catalogue (50,000
people x 20,000 items, Zipf-popular, 20 items each) registered in a local SQLite MLflow, built
with the real `tailor build-service` and served with the real `tailor serve`; the ceiling is
bench/noop_service.py under `bentoml serve` with the same service options. Both servers run
the whole time on loopback; for each concurrency the no-op and /recommend runs alternate, so
drift hits both alike. Each run is wrk for `--seconds` after a 3 s warm-up, requests for
random known people (k=10, live scoring of the whole catalogue: the shipped rules and
experiments, without the rule that ranks one experiment arm by popularity). Memory is the
resident set of each server's worker process, sampled every second; a final `--soak` run at concurrency 16
checks that it stays flat. Writes the `serve` section of the report.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice; before numpy loads

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from bench.run import machine_facts, write_section  # noqa: E402

WORK = REPO / "bench" / "work" / "serve"
VENV_BIN = Path(sys.executable).parent
PEOPLE, ITEMS, PER_PERSON = 50_000, 20_000, 20
CONCURRENCY = (1, 16, 64)
#: plain: BentoML as shipped; noop: the same with the service's heap settings and BentoML fix
#: (the ceiling the targets compare with); recommend: the service.
TARGETS_RUN = ("plain", "noop", "recommend")
LABELS = {"plain": "no-op, plain BentoML", "noop": "no-op, as the service", "recommend": "/recommend"}
LUA = """
math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1"))
local people = tonumber(os.getenv("BENCH_PEOPLE"))
local path = os.getenv("BENCH_PATH")
local headers = {["Content-Type"] = "application/json"}
request = function()
  local body = string.format('{"user_id": "u%d", "k": 10}', math.random(0, people - 1))
  return wrk.format("POST", path, headers, body)
end
done = function(summary, latency, requests)
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "non2xx": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
end
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "True",
            "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable}


def settings() -> list[str]:
    return ["--set", f"storage.root={WORK / 'root'}",
            "--set", f"mlflow.tracking_uri=sqlite:///{WORK / 'mlflow.db'}",
            "--set", f"serving.bentoml_home={WORK / 'bentoml'}",
            "--set", f"serving.rules_file={WORK / 'rules.yaml'}"]


def live_scoring_rules() -> None:
    """conf/rules.yaml without its `rank: popularity` rules (the shipped experiment's
    model=popularity arm), so that every /recommend of the benchmark is scored by the model."""
    import yaml

    shipped = yaml.safe_load((REPO / "conf" / "rules.yaml").read_text())
    shipped["rules"] = [rule for rule in shipped["rules"] if "rank" not in rule["then"]]
    (WORK / "rules.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))


def synthetic_champion() -> dict:
    """Fit and register the ALS champion once (cached by the MLflow store's existence)."""
    import mlflow
    from mlflow import MlflowClient

    from jobs.config import load_config
    from training import registry, tracking
    from training.evaluation import recipe
    from training.fitted import FittedRecommender
    from training.interactions import Interactions
    from training.pyfunc_model import log_recommender
    from training.recommenders import make_recommender

    marker = WORK / "champion.json"
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rng = np.random.default_rng(42)
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    rows = np.repeat(np.arange(PEOPLE), PER_PERSON)
    cols = rng.choice(ITEMS, size=PEOPLE * PER_PERSON, p=popularity / popularity.sum())
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                           shape=(PEOPLE, ITEMS))
    matrix.data[:] = 1.0  # repeated draws count once
    config = load_config(overrides=settings()[1::2])
    params = config.training.params["als"]
    started = time.monotonic()
    fitted = FittedRecommender(
        make_recommender("als", params).fit(matrix),
        Interactions(matrix, np.array([f"u{p}" for p in range(PEOPLE)]),
                     np.array([f"i{i}" for i in range(ITEMS)])),
        matrix, recipe("als", params, {"purchase": 1.0}))
    fit_s = time.monotonic() - started
    name = config.training.registry.model_name
    tracking.open_experiment(config.mlflow.tracking_uri, "serve-bench", REPO)
    with mlflow.start_run():
        info = log_recommender(fitted, k=10)
    version = str(registry.register(info.model_uri, name, fitted.recipe).version)
    registry.make_champion(MlflowClient(), name, version)
    facts = {"people": PEOPLE, "items": ITEMS, "interactions": int(matrix.nnz),
             "factors": params["factors"], "fit_s": round(fit_s, 1), "version": version}
    marker.write_text(json.dumps(facts))
    return facts


def build() -> float:
    started = time.monotonic()
    subprocess.run([str(VENV_BIN / "tailor"), "build-service", *settings()], cwd=REPO,
                   env=env(), check=True, capture_output=True)
    return time.monotonic() - started


class Server:
    """A server process, its worker's resident memory sampled every second."""

    def __init__(self, name: str, command: list[str], port: int, ready_path: str,
                 extra_env: dict | None = None):
        self.name, self.port = name, port
        self.log = open(WORK / f"{name}.log", "w")
        self.process = subprocess.Popen(command, cwd=REPO, env={**env(), **(extra_env or {})},
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: see {WORK / (name + '.log')}")
            try:
                if requests.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after 300 s")
            time.sleep(1)
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def workers(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.process.pid).children(recursive=True)
                if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.samples.append((time.monotonic(), sum(w.memory_info().rss for w in self.workers())))
            except psutil.Error:
                pass

    def cpu_seconds(self) -> float:
        total = 0.0
        for worker in self.workers():
            times = worker.cpu_times()
            total += times.user + times.system
        return total

    def rss_between(self, start: float, end: float) -> list[int]:
        return [rss for t, rss in self.samples if start <= t <= end]

    def stop(self) -> None:
        self._stop.set()
        workers = self.workers()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for worker in workers:  # never leave a worker holding the port
            try:
                worker.wait(timeout=10)
            except psutil.TimeoutExpired:
                worker.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


def wrk(port: int, path: str, connections: int, seconds: int) -> dict:
    script = WORK / "post.lua"
    script.write_text(LUA)
    threads = min(connections, 2)
    result = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
         "-s", str(script), f"http://127.0.0.1:{port}"],
        env={**os.environ, "BENCH_PEOPLE": str(PEOPLE), "BENCH_PATH": path},
        capture_output=True, text=True, check=True)
    line = next(l for l in result.stdout.splitlines() if l.startswith("WRK "))
    stats = json.loads(line[4:])
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["errors"] = sum(stats[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    return stats


def batching(port: int) -> tuple[float, float]:
    """The service's /recommend batch histogram so far: (engine calls, requests answered);
    zeros for a server without it (the no-op)."""
    totals = {"count": 0.0, "sum": 0.0}
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("tailor_recommend_batch_size_") and name.rsplit("_", 1)[1] in totals:
            totals[name.rsplit("_", 1)[1]] = float(value)
    return totals["count"], totals["sum"]


def measure(server: Server, path: str, connections: int, seconds: int) -> dict:
    wrk(server.port, path, connections, 3)  # warm-up
    started, cpu, (calls, answered) = time.monotonic(), server.cpu_seconds(), batching(server.port)
    stats = wrk(server.port, path, connections, seconds)
    stats["cpu_ms_per_request"] = (server.cpu_seconds() - cpu) * 1000 / max(stats["requests"], 1)
    calls_after, answered_after = batching(server.port)
    stats["per_call"] = ((answered_after - answered) / (calls_after - calls)
                         if calls_after > calls else None)
    rss = server.rss_between(started, time.monotonic())
    stats.update(rss_start=rss[0] if rss else 0, rss_end=rss[-1] if rss else 0,
                 rss_max=max(rss) if rss else 0, load=os.getloadavg()[0])
    print(f"[serve] {server.name:9s} c={connections:3d}: {stats['rps']:7.0f} req/s, "
          f"p50 {stats['p50_us'] / 1000:6.2f} ms, p99 {stats['p99_us'] / 1000:6.2f} ms, "
          f"errors {stats['errors']}, worker CPU {stats['cpu_ms_per_request']:.2f} ms/req, "
          f"RSS {stats['rss_max'] / 2**20:.0f} MiB"
          + (f", {stats['per_call']:.1f} requests per engine call" if stats["per_call"] else ""),
          flush=True)
    return stats


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section(facts: dict, build_s: float, results: dict, soak: dict | None) -> str:
    mib = lambda n: f"{n / 2**20:,.0f}"  # noqa: E731
    lines = [
        "## Recommendation service (BentoML) under wrk",
        "",
        f"`make bench-serve`: wrk on loopback against `tailor serve` (one BentoML worker) and, in "
        f"the same run, a no-op BentoML endpoint (bench/noop_service.py, same service options; "
        f"once as plain BentoML, once with the service's gc freeze and timer fix). "
        f"ALS champion ({facts['factors']} factors) over {facts['items']:,} items and "
        f"{facts['people']:,} people ({facts['interactions']:,} interactions); every /recommend "
        f"scores the whole catalogue live for a random known person (k=10; the shipped rules and "
        f"experiments, less the rule that ranks one arm by popularity); requests in flight "
        f"together are scored in one matrix product (serving/batching.py; requests per engine "
        f"call is the mean batch, from the service's /metrics). Each run "
        f"{results['seconds']} s after a 3 s warm-up; the three servers take turns per "
        f"concurrency. Load average is the machine's (shared with other work) at the run's end; worker CPU ms per request (the worker process's CPU time over the run ÷ requests) does not depend on how busy the machine is: 1000 ÷ it is what one worker can do on a free core. `tailor build-service` took {build_s:.0f} s (Spark start-up included).",
        "",
        "| endpoint | concurrency | req/s | p50 ms | p99 ms | max ms | errors | worker CPU ms/req | requests per engine call | worker RSS MiB (start → end, max) | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for connections in CONCURRENCY:
        for name in TARGETS_RUN:
            s = results[name][connections]
            lines.append(
                f"| {LABELS[name]} | {connections} | {s['rps']:,.0f} | "
                f"{s['p50_us'] / 1000:.2f} | {s['p99_us'] / 1000:.2f} | {s['max_us'] / 1000:.1f} | "
                f"{s['errors']} | {s['cpu_ms_per_request']:.2f} | "
                f"{'' if s['per_call'] is None else format(s['per_call'], '.1f')} | "
                f"{mib(s['rss_start'])} → {mib(s['rss_end'])}, {mib(s['rss_max'])} | "
                f"{s['load']:.2f} |")
    lines += ["", "Against the no-op configured like the service (gc frozen, timer fix):", "",
              "| concurrency | /recommend ÷ no-op req/s (target ≥ 0.8) | p99 ÷ no-op p99 (target ≤ 1.5) | no-op ÷ /recommend CPU per request |",
              "| ---: | ---: | ---: | ---: |"]
    for connections in CONCURRENCY:
        rec, noop = results["recommend"][connections], results["noop"][connections]
        lines.append(f"| {connections} | {rec['rps'] / noop['rps']:.2f} | "
                     f"{rec['p99_us'] / max(noop['p99_us'], 1):.2f} | "
                     f"{noop['cpu_ms_per_request'] / max(rec['cpu_ms_per_request'], 1e-9):.2f} |")
    if soak:
        lines += ["", f"Soak: /recommend at concurrency 16 for {soak['seconds']} s: "
                      f"{soak['rps']:,.0f} req/s, p99 {soak['p99_us'] / 1000:.2f} ms, "
                      f"{soak['per_call']:.1f} requests per engine call, "
                      f"{soak['errors']} errors; worker RSS {mib(soak['rss_start'])} MiB at the "
                      f"start, {mib(soak['rss_end'])} MiB at the end, {mib(soak['rss_max'])} MiB max."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--soak", type=int, default=60, help="seconds of the soak run (0: none)")
    parser.add_argument("--notes", type=Path, default=REPO / "bench" / "serve_notes.md",
                        help="markdown appended to the section (the p99 investigation)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the section from the last run's results (after editing the notes)")
    args = parser.parse_args(argv)
    if args.render_only:
        return write_report(args, json.loads((WORK / "results.json").read_text()))
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk; `make bench-serve` does it)")
    facts = synthetic_champion()
    print(f"[serve] champion: {facts}", flush=True)
    live_scoring_rules()
    build_s = build()
    servers: dict[str, Server] = {}
    try:
        for name, as_service in (("plain", "0"), ("noop", "1")):
            port = free_port()
            servers[name] = Server(name, [str(VENV_BIN / "bentoml"), "serve",
                                          "bench.noop_service:Noop", "--host", "127.0.0.1",
                                          "--port", str(port)],
                                   port, "/readyz", {"NOOP_AS_SERVICE": as_service})
        port = free_port()
        servers["recommend"] = Server(
            "recommend", [str(VENV_BIN / "tailor"), "serve", *settings(), "--port", str(port)],
            port, "/readyz")
        paths = {"plain": "/noop", "noop": "/noop", "recommend": "/recommend"}
        results: dict = {"seconds": args.seconds, **{name: {} for name in TARGETS_RUN}}
        for connections in CONCURRENCY:
            for name in TARGETS_RUN:
                results[name][connections] = measure(servers[name], paths[name], connections,
                                                     args.seconds)
        soak = None
        if args.soak:
            soak = measure(servers["recommend"], "/recommend", 16, args.soak)
            soak["seconds"] = args.soak
    finally:
        for server in servers.values():
            server.stop()
    write_report(args, {"facts": facts, "build_s": build_s, "results": results, "soak": soak,
                        "finished": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"})


def write_report(args, run: dict) -> None:
    """The report's serve section from one run (kept in results.json) and the notes."""
    (WORK / "results.json").write_text(json.dumps(run, indent=1))
    results = {**run["results"], **{name: {int(c): s for c, s in run["results"][name].items()}
                                    for name in TARGETS_RUN}}  # JSON made the keys text
    body = section(run["facts"], run["build_s"], results, run["soak"])
    if args.notes.exists():
        body += "\n" + args.notes.read_text()
    facts = [*machine_facts()[:-1], f"run finished {run['finished']} UTC"]
    write_section(args.out, "serve", body + "\n" + "\n".join(facts))
    print(f"[serve] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
