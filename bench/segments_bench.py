"""Segmentation benchmark: `tailor segment` on 1M people through the Spark path.

    .venv/bin/python bench/segments_bench.py --out bench/report.md [--people 1000000]

Synthetic feature tables (features/behaviour, features/rfm, features/embeddings/persons, as
the features job writes them) for N people drawn from three planted personas (`PLANTED`, the
one definition the clustering tests use too) are generated once under bench/work/ — no
ingest. Then `tailor segment` runs on them as a user runs it (local[2], the default driver
heap, a local SQLite MLflow store), in a subprocess whose process tree is sampled for peak
RSS by bench/run.py's `run_measured`. With 1M people and more the job takes the Spark path
(BisectingKMeans leaves merged by Ward, k by silhouette on a sample). There are no events, so
the rule segments are skipped: this times the clustering. The report section sits between
`<!-- segments:start -->` and `<!-- segments:end -->`.
"""
from __future__ import annotations

import argparse
import hashlib
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
from jobs.sample_data import PERSONA_SHARES  # noqa: E402

WORK = REPO / "bench" / "work"
CHUNK = 250_000
DIMS = 16
GIB = 1024 ** 3
TRAIT_NOISE = 0.2  # each planted trait is its persona's mean × lognormal(0, TRAIT_NOISE)
# The sample generator's personas (jobs.sample_data) as the feature means they produce: per
# day, trendsetters have ~0.45 sessions, deal seekers ~0.1 (0.06, and 0.6 on the ~1/15 of days
# in a sale), occasional browsers 0.05 — about 4.7 : 1 : 0.5 — with 3–8 / 2–7 / 1–4 product
# views of 8–40 / 5–25 / 60–300 s each, one or two favourite categories for the browsers.
PLANTED = {
    "trendsetter": {"days_active": 24, "events": 250, "frequency": 8, "mean_session_seconds": 130,
                    "new_arrival_purchase_share": 0.7, "discounted_purchase_share": 0.1,
                    "category_concentration": 0.3},
    "deal_seeker": {"days_active": 6, "events": 50, "frequency": 3, "mean_session_seconds": 70,
                    "new_arrival_purchase_share": 0.1, "discounted_purchase_share": 0.8,
                    "category_concentration": 0.3},
    "occasional_browser": {"days_active": 3, "events": 12, "frequency": 1,
                           "mean_session_seconds": 450, "new_arrival_purchase_share": 0.1,
                           "discounted_purchase_share": 0.15, "category_concentration": 0.8},
}
# The persona each planted one must be named by training/personas.py's rule table.
PERSONA_NAMES = {"trendsetter": "Trendsetters", "deal_seeker": "Deal Seekers",
                 "occasional_browser": "Occasional Browsers"}
_COUNTS = ("days_active", "events", "frequency")
_SHARES = ("new_arrival_purchase_share", "discounted_purchase_share", "category_concentration")


def planted_people(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """(features, planted persona per row) for `n` people in the sample generator's persona
    shares: the PLANTED traits with their noise (counts rounded, at least 1; shares in [0, 1];
    5% without a discount share, as people the data says nothing about), and the other
    behaviour and RFM columns the job clusters on drawn independently of the persona — noise
    the clustering has to see through."""
    rng = np.random.default_rng(seed)
    names = list(PERSONA_SHARES)
    personas = np.array(names)[rng.choice(len(names), n, p=list(PERSONA_SHARES.values()))]
    frame = pd.DataFrame({trait: pd.Series(personas).map({p: PLANTED[p][trait] for p in names})
                          .to_numpy(float) * rng.lognormal(0, TRAIT_NOISE, n)
                          for trait in PLANTED[names[0]]})
    for trait in _COUNTS:
        frame[trait] = np.maximum(1, frame[trait].round()).astype("int64")
    for trait in _SHARES:
        frame[trait] = frame[trait].clip(0, 1)
    frame.loc[rng.random(n) < 0.05, "discounted_purchase_share"] = np.nan
    frame = frame.assign(
        recency_weighted_events=frame["events"] * rng.uniform(0.2, 0.8, n),
        sessions=np.maximum(1, frame["events"] // 5), devices=rng.integers(1, 4, n),
        email_campaigns_sent=rng.integers(0, 10, n), email_open_rate=rng.uniform(0, 1, n),
        email_click_rate=rng.uniform(0, 0.3, n), view_to_cart_rate=rng.uniform(0, 0.5, n),
        view_to_purchase_rate=rng.uniform(0, 0.2, n), recency_days=rng.integers(0, 365, n),
        monetary_total=frame["frequency"] * rng.lognormal(3.5, 0.5, n))
    return frame, personas


def _affinity(concentration: np.ndarray) -> pa.MapArray:
    """category_affinity over four categories whose largest share is `concentration`."""
    first = np.clip(concentration, 0.25, 1.0)
    shares = np.column_stack([first, *[(1 - first) / 3] * 3])
    return pa.MapArray.from_arrays(np.arange(0, 4 * len(first) + 1, 4, dtype=np.int32),
                                   pa.array(np.tile(["c00", "c01", "c02", "c03"], len(first))),
                                   pa.array(shares.ravel()))


def ensure_features(people: int, seed: int) -> Path:
    """features/ for `people` planted people under bench/work/, made once; truth.parquet beside it."""
    definition = json.dumps([PLANTED, PERSONA_SHARES, TRAIT_NOISE, DIMS], sort_keys=True)
    digest = hashlib.sha256(definition.encode()).hexdigest()[:8]  # a changed definition: new data
    root = WORK / f"segments-{people}-seed{seed}-{digest}"
    if (root / "_SUCCESS").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("features/behaviour", "features/rfm", "features/embeddings/persons"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(seed)
    truth = []
    for part, first in enumerate(range(0, people, CHUNK)):
        n = min(CHUNK, people - first)
        frame, personas = planted_people(n, seed + part)
        ids = pd.Series(np.arange(first, first + n)).map("p{:08d}".format)
        users = "u" + ids.str[1:]
        truth.append(pd.DataFrame({"user_id": users, "planted": personas}))
        rfm_columns = ["recency_days", "frequency", "monetary_total"]
        behaviour = pa.Table.from_pandas(
            frame.drop(columns=[*rfm_columns, "category_concentration"]).assign(
                person_id=ids, user_id=users), preserve_index=False)
        behaviour = behaviour.append_column("category_affinity",
                                            _affinity(frame["category_concentration"].to_numpy()))
        rfm = pa.Table.from_pandas(frame[rfm_columns].assign(
            person_id=ids, user_id=users,
            rfm_segment=rng.choice(["Champions", "Loyal", "At Risk", "Lost"], n)), preserve_index=False)
        index = pd.Series(personas).map({p: i for i, p in enumerate(PLANTED)}).to_numpy()
        vectors = rng.normal(0, 1, (n, DIMS)) * 0.1 + index[:, None] * 0.05
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
        "three planted personas in jobs/sample_data.py's shares: "
        + ", ".join(f"{share:.0%} {name}s" for name, share in PERSONA_SHARES.items()) + "; no "
        "events, so the rule segments are skipped). From `segmentation.spark_min_people` (1M) the "
        "job runs Spark's BisectingKMeans over everyone into `segmentation.spark_leaves` leaves, "
        "merged by Ward into the k with the best silhouette on a 5,000-person sample; silhouette "
        "and Davies–Bouldin on a sample; MLflow in a local SQLite "
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
