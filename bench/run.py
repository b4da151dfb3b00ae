"""`make bench`: Tailor's benchmarks, written into one shared markdown report.

    .venv/bin/python bench/run.py --out bench/report.md [--sizes 1000000,10000000]

Each benchmark owns one section of the report, between `<!-- NAME:start -->` and
`<!-- NAME:end -->`, and rewrites only that section, so benchmarks added later (or run
separately) keep their figures. Generated inputs and outputs live under bench/work/ (gitignored).

ingest: the Spark ingest as a user runs it (`tailor ingest`, a fresh storage root, local[2])
beside a single-process pandas/pyarrow implementation of the same normalization
(bench/ingest_baseline.py), on the same generated dump, one after the other in the same run.
Each is a subprocess whose whole process tree (for Spark: Python plus its JVM) is sampled every
0.2 s for resident memory and CPU time. Wall time includes start-up, as a user would see it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent

WORK = REPO / "bench" / "work"
VENV_BIN = Path(sys.executable).parent
DAYS = 90
SEED = 42
SAMPLE_SECONDS = 0.2
UDF_MARKERS = ("PythonUDF", "BatchEvalPython", "ArrowEvalPython")
GIB = 1024 ** 3


# -- measuring a process tree ----------------------------------------------------------------

@dataclass
class Measured:
    """One subprocess run: exit code, wall time, peak summed RSS and CPU time of its tree."""

    returncode: int
    wall_s: float
    peak_rss: int
    cpu_s: float
    load_before: float
    load_after: float
    java_heap: str | None = None
    stdout: str = ""
    error: str | None = None  # why it failed: an OutOfMemoryError, else the last line on stderr


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> Measured:
    """Run `cmd`, sampling the summed RSS and CPU time of it and all its descendants (a child
    that still shares its parent's memory, spawned but not yet exec'd, is counted once).

    CPU time is the last value seen per process, so up to one sample interval of a
    process's CPU can be missed at its exit.
    """
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
        root = psutil.Process(process.pid)
        peak, cpu_by_pid, heap = 0, {}, None
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, heap
            while not done.is_set():
                rss = 0
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                memory_of: dict[int, tuple[int, int]] = {}
                for proc in tree:
                    try:
                        with proc.oneshot():
                            memory = proc.memory_info()
                            memory_of[proc.pid] = (memory.rss, memory.vms)
                            # A child the JVM has just spawned (for a chmod, say) shares its
                            # parent's memory until it execs: counting it would count that twice.
                            if memory_of.get(proc.ppid()) != (memory.rss, memory.vms):
                                rss += memory.rss
                            times = proc.cpu_times()
                            cpu_by_pid[proc.pid] = times.user + times.system
                            if heap is None and proc.name() == "java":
                                args = proc.cmdline()  # the driver JVM, not spark-submit's launcher
                                if "org.apache.spark.launcher.Main" not in args:
                                    heap = next((a[4:] for a in args if a.startswith("-Xmx")), None)
                    except psutil.NoSuchProcess:
                        continue
                peak = max(peak, rss)
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        returncode = process.wait()
        wall = time.monotonic() - start
        done.set()
        sampler.join()
    stdout, stderr = (log.with_suffix(suffix).read_text(errors="replace") for suffix in (".out", ".err"))
    error = None
    if returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        error = ("java.lang.OutOfMemoryError: Java heap space" if "OutOfMemoryError" in stdout + stderr
                 else lines[-1][:300] if lines else f"exit {returncode}")
    return Measured(returncode, wall, peak, sum(cpu_by_pid.values()), load_before, os.getloadavg()[0],
                    heap, stdout, error)


# -- the ingest benchmark --------------------------------------------------------------------

def ensure_dump(size: int, seed: int) -> tuple[Path, dict]:
    """The generated dump for `size` raw events, made once and reused (keyed by size and seed)."""
    from jobs.sample_data import users_for_events, write_sample

    folder = WORK / f"dump-{size}-seed{seed}"
    summary_file = folder / "_summary.json"  # `_` names are skipped by both ingests
    if summary_file.exists():
        return folder, json.loads(summary_file.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    summary = write_sample(folder, users=users_for_events(size, days=DAYS), days=DAYS, seed=seed,
                           workers=2)
    summary["generation_s"] = round(time.monotonic() - started, 1)
    summary_file.write_text(json.dumps(summary, indent=1))
    return folder, summary


_SPARK_COUNTS = {
    "raw_records": r"raw records read\s+(\d+)",
    "accepted": r"accepted\s+(\d+)",
    "event_rows_written": r"->\s*(\d+) event rows",
    "quarantined": r"quarantined\s+(\d+)",
    "duplicates": r"duplicates\s+(\d+)",
}


def spark_counts(stdout: str) -> dict:
    """The counts `tailor ingest` prints in its summary."""
    found = {key: re.search(pattern, stdout) for key, pattern in _SPARK_COUNTS.items()}
    return {key: int(match.group(1)) for key, match in found.items() if match}


def baseline_counts(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    return {key: value for key, value in json.loads(lines[-1]).items() if key in _SPARK_COUNTS} if lines else {}


def run_spark(dump: Path, size: int, env: dict, driver_memory: str | None) -> tuple[Measured, str | None]:
    """`tailor ingest` into a fresh root, with the configured driver heap unless `driver_memory`
    is given. Returns the run and a note on the heap when it is not the configured one."""
    root = WORK / f"root-{size}"
    cmd = [str(VENV_BIN / "tailor"), "ingest", "--input", str(dump), "--set", f"storage.root={root}"]
    note = None
    if driver_memory:
        cmd += ["--set", f"spark.conf.spark.driver.memory={driver_memory}"]
        note = f"run with `--set spark.conf.spark.driver.memory={driver_memory}`"
    shutil.rmtree(root, ignore_errors=True)
    return run_measured(cmd, env, WORK / "logs" / f"spark-{size}"), note


def run_baseline(dump: Path, size: int, env: dict) -> Measured:
    output = WORK / f"baseline-{size}"
    shutil.rmtree(output, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "bench" / "ingest_baseline.py"), "--input", str(dump),
           "--output", str(output)]
    return run_measured(cmd, env, WORK / "logs" / f"baseline-{size}")


@dataclass
class IngestResult:
    """One size: both implementations on the same dump, measured one after the other."""

    size: int
    measured_at: str
    dump: dict
    spark: Measured
    baseline: Measured
    spark_counts: dict
    baseline_counts: dict
    driver_memory: str | None
    note: str | None

    @property
    def ratio(self) -> float | None:
        """Spark's raw records/s ÷ the baseline's; None when either did not finish."""
        spark, baseline = self.rate(self.spark, self.spark_counts), self.rate(self.baseline, self.baseline_counts)
        return spark / baseline if spark and baseline else None

    @staticmethod
    def rate(run: Measured, counts: dict, key: str = "raw_records") -> float | None:
        return counts[key] / run.wall_s if run.returncode == 0 and key in counts else None

    def save(self) -> None:
        (WORK / f"ingest-{self.size}.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load_all(cls) -> list["IngestResult"]:
        """The latest result of every size measured so far, smallest first."""
        results = []
        for path in WORK.glob("ingest-*.json"):
            data = json.loads(path.read_text())
            data["spark"], data["baseline"] = Measured(**data["spark"]), Measured(**data["baseline"])
            results.append(cls(**data))
        return sorted(results, key=lambda r: r.size)


def ingest_benchmark(sizes: list[int], seed: int, driver_memory: str | None) -> None:
    """Measure each size (smallest first) and store its result under bench/work/."""
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    for size in sizes:
        dump, summary = ensure_dump(size, seed)
        print(f"[ingest] {size:,}: dump {dump.name} ({summary['records']:,} records)", flush=True)
        spark, note = run_spark(dump, size, env, driver_memory)
        print(f"[ingest] {size:,}: spark exit {spark.returncode} in {spark.wall_s:.0f}s", flush=True)
        baseline = run_baseline(dump, size, env)
        print(f"[ingest] {size:,}: baseline exit {baseline.returncode} in {baseline.wall_s:.0f}s", flush=True)
        for name, run in (("spark", spark), ("baseline", baseline)):
            if run.error:
                print(f"[ingest] {size:,}: {name} failed: {run.error}", flush=True)
        IngestResult(size, f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", summary, spark, baseline,
                     spark_counts(spark.stdout), baseline_counts(baseline.stdout), driver_memory, note).save()


def python_udf_markers() -> dict:
    """Runs check_records (persisted, as the job does) → quarantine_rows and dedupe_records →
    to_canonical on read_raw of a tiny generated dump in local Spark, and returns the UDF
    markers found in the explain string of each plan after it ran (the cached check_records
    plan is part of both). Plan strings are not truncated, so no expression can hide.

    Runs in a child process so the benchmark's own process holds no JVM.
    """
    import tempfile

    from features.events import check_records, dedupe_records, quarantine_rows, to_canonical
    from jobs.config import load_config
    from jobs.ingest_events import ingest_params, read_raw
    from jobs.runtime import JobRun
    from jobs.sample_data import write_sample
    from jobs.spark import build_spark_session
    from jobs.storage import Storage

    now = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, [f"storage.root={tmp}/root", "spark.conf.spark.ui.showConsoleProgress=false",
                                    "spark.conf.spark.sql.debug.maxToStringFields=100000"])
        spark = build_spark_session(config)
        write_sample(Path(tmp) / "dump", users=20, days=3)
        job = JobRun("plan_check", config, spark, Storage(spark, config.storage.root), "plan", now)
        params = ingest_params(config, now)
        checked = check_records(read_raw(job, f"{tmp}/dump"), params).cache()
        plans = {"quarantine_rows(check_records(read_raw))": quarantine_rows(checked),
                 "to_canonical(dedupe_records(check_records(read_raw)))":
                     to_canonical(dedupe_records(checked), params)}
        found = {}
        for name, frame in plans.items():
            frame.collect()  # explain the plan that actually ran
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                frame.explain(mode="extended")
            found[name] = [marker for marker in UDF_MARKERS if marker in text.getvalue()]
        spark.stop()
    return found


def check_plans() -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(python_udf_markers)


# -- the report ------------------------------------------------------------------------------

def machine_facts() -> list[str]:
    import pandas
    import pyarrow
    import pyspark

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return [
        f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), "
        f"{psutil.virtual_memory().total / GIB:.1f} GiB RAM, CPU: {cpu}",
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"PySpark {pyspark.__version__}, {java[0] if java else 'java ?'}, pyarrow {pyarrow.__version__}, "
        f"pandas {pandas.__version__}",
        f"run finished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    ]


def _mib(n: int) -> str:
    return f"{n / 1024 ** 2:,.0f} MiB"


def _ratio_verdict(result: IngestResult, passes) -> str:
    if result.ratio is None:
        failed = [f"{name} failed ({run.error})" for name, run in (("Spark", result.spark), ("the baseline", result.baseline))
                  if run.error]
        return f"**NOT met** ({'; '.join(failed)})"
    return f"**{'met' if passes(result.ratio) else 'NOT met'}** (ratio {result.ratio:.2f}"


def ingest_section(results: list[IngestResult], plans: dict) -> str:
    rows = []
    for r in results:
        for name, run, counts in (("Spark `tailor ingest`, local[2]", r.spark, r.spark_counts),
                                  ("single-process pandas/pyarrow", r.baseline, r.baseline_counts)):
            records, event_rows = IngestResult.rate(run, counts), IngestResult.rate(run, counts, "event_rows_written")
            rates = (f"{records:,.0f} | {event_rows:,.0f}" if records is not None
                     else f"failed after {run.wall_s:,.0f} s: {run.error} | –")
            rows.append(
                f"| {r.size:,} | {name} | {run.wall_s:,.1f} | {rates} | {run.cpu_s:,.0f} | "
                f"{_mib(run.peak_rss)} | {run.load_before:.1f} → {run.load_after:.1f} | {r.measured_at} |")
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "–"
        rows.append(f"| {r.size:,} | **ratio Spark ÷ baseline (raw records/s)** | | **{ratio}** | | | | | |")
    by_size = {r.size: r for r in results}
    udf_free = all(not markers for markers in plans.values())
    verdicts = [f"- No Python UDF on the hot path: **{'met' if udf_free else 'NOT met'}** — executed plans of "
                + "; ".join(f"`{name}`: {', '.join(found) or 'none of'} {'/'.join(UDF_MARKERS)}"
                            for name, found in plans.items()) + "."]
    if 10_000_000 in by_size:
        verdict = _ratio_verdict(by_size[10_000_000], lambda ratio: ratio > 1)
        verdicts.append(f"- Spark ahead of the baseline at 10M events: {verdict}{')' if '(ratio' in verdict else ''}.")
    if 1_000_000 in by_size:
        verdict = _ratio_verdict(by_size[1_000_000], lambda ratio: ratio >= 0.5)
        verdicts.append(f"- Spark within 2× of the baseline at 1M events: {verdict}"
                        f"{', needs ≥ 0.50)' if '(ratio' in verdict else ''}.")
    if len(results) > 1:
        small, big = results[0], results[-1]
        growth = big.spark.peak_rss / small.spark.peak_rss
        flat = growth < 1.5 and not big.spark.error
        verdicts.append(
            f"- Memory flat as the input grows (criterion: Spark finishes and its peak RSS grows less than 1.5× "
            f"while the input grows {big.size // small.size}×): **{'met' if flat else 'NOT met'}** — "
            f"{_mib(small.spark.peak_rss)} at {small.size:,} (-Xmx{small.spark.java_heap}), "
            f"{_mib(big.spark.peak_rss)} at {big.size:,} (-Xmx{big.spark.java_heap}"
            f"{', then ' + big.spark.error if big.spark.error else ''}) ({growth:.2f}×); the baseline: "
            f"{_mib(small.baseline.peak_rss)} → {_mib(big.baseline.peak_rss)} "
            f"({big.baseline.peak_rss / small.baseline.peak_rss:.2f}×).")
    counts = []
    for r in results:
        done = {name: c for name, c in (("Spark", r.spark_counts), ("baseline", r.baseline_counts))
                if set(c) == set(_SPARK_COUNTS)}
        summary = next(iter(done.values()), None)
        counts.append(
            f"- {r.size:,}: dump of {r.dump['users']:,} people over {r.dump['days']} days, "
            f"{r.dump['records']:,} raw records ({r.dump['good_records']:,} good, {r.dump['bad_records']:,} bad, "
            f"{r.dump['duplicates']:,} re-sent), generated in {r.dump.get('generation_s', '?')} s with 2 workers. "
            + (f"{' and '.join(done)}: {summary['accepted']:,} accepted → {summary['event_rows_written']:,} "
               f"event rows, {summary['quarantined']:,} quarantined, {summary['duplicates']:,} duplicates"
               + ("; identical counts" if len(done) == 2 and r.spark_counts == r.baseline_counts
                  else "; counts DIFFER: " + json.dumps(done) if len(done) == 2 else "") + "."
               if summary else "Neither finished."))
    heaps = [f"{r.size:,}: -Xmx{r.spark.java_heap or '?'}" + (f" ({r.note})" if r.note else "")
             for r in results]
    return "\n".join([
        "## Ingest throughput",
        "",
        "Raw events → canonical events + quarantine on a generated dump of mixed shapes (GA4, Universal "
        "Analytics, flat, per-channel exports; gzipped JSON lines plus one Parquet file; ~1% bad records, "
        "~0.5% re-sent). Spark: `tailor ingest --input DUMP --set storage.root=bench/work/root-N` as a user "
        "runs it (fresh root, `spark.master` local[2], JVM start-up included). Baseline: "
        "`bench/ingest_baseline.py`, the same normalization in one Python process (pandas/pyarrow). Both run "
        "one after the other in the same `bench/run.py` run. Peak RSS is the summed resident memory of the "
        "whole process tree (Python + JVM for Spark), sampled every 0.2 s; CPU s is the tree's user + system "
        "time. Events/s counts raw records read (and canonical event rows written, after items are exploded) "
        "per second of wall time.",
        "",
        "| raw events | implementation | wall s | raw records/s | event rows/s | CPU s | peak RSS | load avg (1 min) before → after | measured |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        *rows,
        "",
        "Targets:",
        *verdicts,
        "",
        "Inputs and counts:",
        *counts,
        "",
        "Machine: " + "; ".join(machine_facts()) + ". The machine is shared: the load average column shows "
        "how busy it was (2 cores), which stretches wall times; CPU s is less sensitive to that.",
        "Spark driver JVM heap (`spark.driver.memory` in conf/base.yaml unless noted; in local mode the "
        "executors run inside the driver JVM): " + "; ".join(heaps) + ".",
    ])


def write_section(report: Path, name: str, body: str) -> None:
    """Replace this benchmark's marked section of the report, keeping everything else."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = report.read_text() if report.exists() else "# Tailor benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run Tailor's benchmarks into a markdown report.")
    parser.add_argument("--out", type=Path, required=True, help="the report to write (sections are merged)")
    parser.add_argument("--sizes", default="1000000,10000000",
                        help="raw events per generated dump, comma-separated (ingest)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the generated dumps")
    parser.add_argument("--spark-driver-memory", default=None, metavar="SIZE",
                        help="spark.driver.memory for the Spark ingest (default: the configured one)")
    args = parser.parse_args(argv)
    sizes = sorted(int(size) for size in args.sizes.split(","))

    plans = check_plans()
    print(f"[ingest] python UDF markers in executed plans: {plans}", flush=True)
    ingest_benchmark(sizes, args.seed, args.spark_driver_memory)
    # Sizes measured by earlier runs stay in the table (with their date) until measured again.
    write_section(args.out, "ingest", ingest_section(IngestResult.load_all(), plans))
    print(f"[ingest] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
