"""Segmentation benchmark: `tailor segment` on 1M people through the Spark path.

    .venv/bin/python bench/segments_bench.py --out bench/report.md [--people 1000000]

Synthetic feature tables (features/behaviour, features/rfm, features/embeddings/persons, as
the features job writes them) for N people drawn from three planted personas are generated
once under bench/work/ — no ingest. Then `tailor segment` runs on them as a user runs it
(local[2], the default driver heap, a local SQLite MLflow store), in a subprocess whose
process tree is sampled for peak RSS by bench/run.py's `run_measured`. With 1M people and more
the job takes the Spark path (BisectingKMeans, k chosen by k-means silhouettes on a sample).
There are no events, so the rule segments are skipped: this times the clustering. The report
section sits between `<!-- segments:start -->` and `<!-- segments:end -->`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file: make the checkout importable
    sys.path.insert(0, str(REPO))

from bench.run import machine_facts, run_measured, write_section  # noqa: E402

WORK = REPO / "bench" / "work"
CHUNK = 250_000
DIMS = 16
GIB = 1024 ** 3
# persona: (share, means of the behaviour/rfm columns that tell them apart)
PERSONAS = {
    "trendsetter": (0.15, {"days_active": 20, "new_arrival_purchase_share": 0.7,
                           "discounted_purchase_share": 0.1, "mean_session_seconds": 300,
                           "frequency": 8, "events": 200}),
    "deal_seeker": (0.35, {"days_active": 10, "new_arrival_purchase_share": 0.1,
                           "discounted_purchase_share": 0.8, "mean_session_seconds": 250,
                           "frequency": 4, "events": 80}),
    "occasional_browser": (0.5, {"days_active": 3, "new_arrival_purchase_share": 0.1,
                                 "discounted_purchase_share": 0.15, "mean_session_seconds": 900,
                                 "frequency": 1, "events": 15}),
}


def _noisy(rng, mean: float, n: int) -> np.ndarray:
    return mean * rng.lognormal(0, 0.2, n)


def ensure_features(people: int, seed: int) -> Path:
    """features/ for `people` people under bench/work/, made once; truth.parquet beside it."""
    root = WORK / f"segments-{people}-seed{seed}"
    if (root / "_SUCCESS").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("features/behaviour", "features/rfm", "features/embeddings/persons"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = list(PERSONAS)
    truth = []
    for part, first in enumerate(range(0, people, CHUNK)):
        n = min(CHUNK, people - first)
        persona = rng.choice(len(names), n, p=[PERSONAS[p][0] for p in names])
        means = {f: np.array([PERSONAS[p][1][f] for p in names])[persona] for f in PERSONAS[names[0]][1]}
        ids = pd.Series(np.arange(first, first + n)).map("p{:08d}".format)
        users = "u" + ids.str[1:]
        truth.append(pd.DataFrame({"user_id": users, "planted": np.array(names)[persona]}))
        events = np.maximum(1, _noisy(rng, means["events"], n)).round()
        category_share = np.clip(rng.normal(np.where(persona == 2, 0.8, 0.3), 0.1), 0.05, 1.0)
        affinity = pa.MapArray.from_arrays(np.arange(0, 2 * n + 1, 2, dtype=np.int32),
                                           pa.array(np.tile(["c00", "c01"], n)),
                                           pa.array(np.column_stack([category_share, 1 - category_share]).ravel()))
        behaviour = pa.table({
            "person_id": ids, "user_id": users, "events": events.astype("int64"),
            "days_active": np.maximum(1, _noisy(rng, means["days_active"], n)).round().astype("int64"),
            "recency_weighted_events": events * rng.uniform(0.2, 0.8, n),
            "category_affinity": affinity,
            "discounted_purchase_share": np.clip(_noisy(rng, means["discounted_purchase_share"], n), 0, 1),
            "new_arrival_purchase_share": np.clip(_noisy(rng, means["new_arrival_purchase_share"], n), 0, 1),
            "email_campaigns_sent": rng.integers(0, 10, n),
            "email_open_rate": rng.uniform(0, 1, n), "email_click_rate": rng.uniform(0, 0.3, n),
            "devices": rng.integers(1, 4, n), "sessions": np.maximum(1, events // 5).astype("int64"),
            "mean_session_seconds": _noisy(rng, means["mean_session_seconds"], n),
            "view_to_cart_rate": rng.uniform(0, 0.5, n), "view_to_purchase_rate": rng.uniform(0, 0.2, n),
        })
        frequency = np.maximum(1, _noisy(rng, means["frequency"], n)).round().astype("int64")
        rfm = pa.table({
            "person_id": ids, "user_id": users, "recency_days": rng.integers(0, 365, n),
            "frequency": frequency, "monetary_total": frequency * rng.lognormal(3.5, 0.5, n),
            "rfm_segment": rng.choice(["Champions", "Loyal", "At Risk", "Lost"], n),
        })
        vectors = rng.normal(0, 1, (n, DIMS)) * 0.1 + persona[:, None] * 0.05
        embeddings = pa.table({"person_id": ids, "user_id": users,
                               "vector": pa.FixedSizeListArray.from_arrays(vectors.ravel(), DIMS)
                               .cast(pa.list_(pa.float64()))})
        for folder, table in (("behaviour", behaviour), ("rfm", rfm), ("embeddings/persons", embeddings)):
            pq.write_table(table, root / "features" / folder / f"part-{part:04d}.parquet")
    pd.concat(truth).to_parquet(root / "truth.parquet")
    (root / "_SUCCESS").touch()
    return root


def audit_counts(root: Path) -> dict:
    line = next(iter(sorted((root / "audit" / "job_runs").rglob("*.jsonl")))).read_text()
    return json.loads(line)


def measure(people: int, seed: int) -> dict:
    source = ensure_features(people, seed)
    root = WORK / f"segments-run-{people}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source / "features", root / "features")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = run_measured([str(Path(sys.executable).parent / "tailor"), "segment",
                        "--set", f"storage.root={root}",
                        "--set", f"mlflow.tracking_uri=sqlite:///{WORK}/segments-mlflow.db",
                        "--set", "mlflow.experiment=bench-segments"],
                       env, WORK / "logs" / f"segments-{people}")
    if run.returncode != 0:
        raise SystemExit(f"tailor segment on {people:,} people failed: {run.error}")
    audit = audit_counts(root)
    import pyarrow.dataset as ds
    from sklearn.metrics import adjusted_rand_score

    assigned = ds.dataset(root / "segments", format="parquet", exclude_invalid_files=True).to_table(
        columns=["user_id", "segment", "persona"]).to_pandas()
    truth = pd.read_parquet(source / "truth.parquet")
    merged = assigned.merge(truth, on="user_id")
    print(f"[segments] {people:,}: {run.wall_s:.0f}s, peak {run.peak_rss / GIB:.2f} GiB", flush=True)
    return {"people": people, "wall_s": run.wall_s, "peak_rss": run.peak_rss, "cpu_s": run.cpu_s,
            "load": [run.load_before, run.load_after], "heap": run.java_heap,
            "duration_s": audit["duration_s"], "counts": audit["counts"],
            "ari": adjusted_rand_score(merged["planted"], merged["segment"]),
            "crosstab": pd.crosstab(merged["planted"], merged["persona"]).to_dict("index")}


def section(r: dict) -> str:
    counts = r["counts"]
    personas = ", ".join(f"{k}: {v}" for k, v in counts.get("personas", {}).items())
    return "\n".join([
        "## Segmentation: clustering 1M people (Spark path)",
        "",
        f"`tailor segment` on synthetic feature tables of {r['people']:,} people (features/behaviour, "
        "features/rfm, features/embeddings/persons written directly by bench/segments_bench.py, "
        "three planted personas: 15% trendsetters, 35% deal seekers, 50% occasional browsers; no "
        "events, so the rule segments are skipped). From `segmentation.spark_min_people` (1M) the "
        "job runs Spark's BisectingKMeans over everyone, k chosen by k-means silhouettes on a "
        "5,000-person sample; silhouette and Davies–Bouldin on a sample; MLflow in a local SQLite "
        "store. local[2], default driver heap; peak RSS is the whole process tree (Python + JVM), "
        "sampled every 0.2 s; wall time includes JVM start-up.",
        "",
        "| people | wall s | job s (audit) | CPU s | peak RSS | driver heap | load avg before → after |",
        "| ---: | ---: | ---: | ---: | ---: | --- | --- |",
        f"| {r['people']:,} | {r['wall_s']:,.1f} | {r['duration_s']:,.1f} | {r['cpu_s']:,.0f} | "
        f"{r['peak_rss'] / GIB:.2f} GiB | {r['heap'] or 'Spark default (1g)'} | "
        f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |",
        "",
        f"Result: method {counts.get('method')}, {counts.get('segments')} segments, silhouette "
        f"{counts.get('silhouette'):.3f} (sampled), {counts.get('features_used')} features; "
        f"adjusted Rand index against the planted personas {r['ari']:.3f}; personas {personas}.",
        "",
        "Planted persona → assigned persona (people): " + "; ".join(
            f"{planted}: " + ", ".join(f"{name} {n:,}" for name, n in row.items() if n)
            for planted, row in r["crosstab"].items()) + ".",
        "",
        "Machine: " + "; ".join(machine_facts()) + ". Shared with other users: see the load column.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the report (only its segments section)")
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    result = measure(args.people, args.seed)
    write_section(args.out, "segments", section(result))
    print(f"[segments] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
