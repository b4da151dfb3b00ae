"""Identity resolution on a generated graph of 1M identifiers with long chains.

    .venv/bin/python bench/identity_bench.py --out bench/report.md [--identifiers 1000000]

The graph: people with a user id and a device each (pairs), plus chains in which each
person's device was also used by the next person to log in, so whole chains of up to
`chain_length` people are one component. The worker runs in its own process (local[2]) and
the parent samples the whole process tree's memory, as bench/run.py does for ingest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import REPO, WORK, machine_facts, run_measured, write_section  # noqa: E402


def worker(identifiers: int, chain_length: int) -> dict:
    """Build the graph, resolve it and return rounds, persons and timings (runs in a child)."""
    from pyspark.sql import functions as F

    from features.identity import resolve_identities
    from jobs.config import load_config
    from jobs.spark import build_spark_session

    spark = build_spark_session(load_config(environ={}))
    people = identifiers // 2
    ids = spark.range(people)
    as_text = F.col("id").cast("string")

    def event(prefix, user, device):
        return ids.select(F.concat(F.lit(prefix), as_text).alias("event_id"),
                          F.current_timestamp().alias("event_time"),
                          F.concat(F.lit("u"), user.cast("string")).alias("user_id"),
                          F.lit(None).cast("string").alias("email_hash"),
                          F.lit(None).cast("string").alias("phone_hash"),
                          F.concat(F.lit("d"), device.cast("string")).alias("anonymous_id"))

    own = event("e", F.col("id"), F.col("id"))
    # person i+1 logs in on person i's device, except at the end of each chain
    chained = event("c", F.col("id") + 1, F.col("id")).where(
        ((F.col("id") + 1) % chain_length != 0) & (F.col("id") + 1 < people))
    started = time.monotonic()
    result = resolve_identities(own.unionByName(chained), max_links=20)
    persons = result.identity.select("person_id").distinct().count()
    seconds = time.monotonic() - started
    return {"identifiers": identifiers, "chain_length": chain_length, "rounds": result.rounds,
            "persons": persons, "expected_persons": -(-people // chain_length),
            "resolve_seconds": round(seconds, 1)}


def section(results: list[dict]) -> str:
    lines = ["## Identity resolution", "",
             "Connected components over a generated graph (pairs of user id + device, chained "
             "person to person through shared devices), local[2], in its own process; peak "
             "memory is the whole process tree (Python + JVM).", "",
             "| identifiers | chain length | rounds | persons (expected) | resolve time | wall incl. start-up | peak memory |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {r['identifiers']:,} | {r['chain_length']:,} | {r['rounds']} | "
                     f"{r['persons']:,} ({r['expected_persons']:,}) | {r['resolve_seconds']} s | "
                     f"{r['wall_s']:.0f} s | {r['peak_rss'] / 2**30:.2f} GiB |")
    lines += ["", *machine_facts()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "report.md")
    parser.add_argument("--identifiers", default="1000000",
                        help="comma-separated graph sizes (identifiers)")
    parser.add_argument("--chain-length", type=int, default=1000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(int(args.identifiers), args.chain_length)))
        return
    WORK.mkdir(parents=True, exist_ok=True)
    results = []
    for size in [int(s) for s in args.identifiers.split(",")]:
        log = WORK / f"identity-{size}"
        measured = run_measured([sys.executable, __file__, "--worker", "--identifiers", str(size),
                                 "--chain-length", str(args.chain_length)],
                                {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}, log)
        if measured.returncode != 0:
            raise SystemExit(f"identity worker failed; see {log.with_suffix('.err')}")
        outcome = json.loads(log.with_suffix(".out").read_text().strip().splitlines()[-1])
        results.append({**outcome, "wall_s": measured.wall_s, "peak_rss": measured.peak_rss})
        print(json.dumps(results[-1]))
    write_section(args.out, "identity", section(results))


if __name__ == "__main__":
    main()
