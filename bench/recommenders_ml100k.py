"""MovieLens-100k benchmark: Tailor's recommenders beside published Microsoft Recommenders rows.

Same protocol as the published table: every rating is an interaction (binary confidence),
per-user random 75/25 split with seed 42, top-10 with already-rated movies filtered, metrics
from training/metrics.py. The tuned champion is picked by validation nDCG@10 on a split carved
from the training data only, then refitted on the whole training set; the test set is used
once, for the table.

    PYTHONPATH=. .venv/bin/python bench/recommenders_ml100k.py --out bench/report.md
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.run import machine_facts, write_section

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit is slower with threaded BLAS

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from training.interactions import Interactions, build_interactions  # noqa: E402
from training.metrics import evaluate  # noqa: E402
from training.recommenders import make_recommender  # noqa: E402
from training.splits import per_user_random_split  # noqa: E402
from training.tuning import Trial, tune  # noqa: E402

DEFAULT_DATA = "/work/shared/datasets/ml-100k/u.data"
METRICS = ("map", "ndcg", "precision", "recall")

#: Microsoft Recommenders' published MovieLens-100k rows (MAP, nDCG, P, R at 10).
PUBLISHED = {
    "BiVAE (Microsoft Recommenders, published)": (0.146, 0.475, 0.412, 0.219),
    "BPR (Microsoft Recommenders, published)": (0.132, 0.442, 0.388, 0.213),
    "SAR (Microsoft Recommenders, published)": (0.111, 0.382, 0.331, 0.176),
}

#: Untuned rows: (label, model name, params). ``seed`` fills random_state where the model has one.
BASELINES = (
    ("Popularity", "popularity", {}),
    ("implicit ALS, library defaults", "als", {"random_state": "seed"}),
    ("implicit BPR, library defaults", "bpr", {"random_state": "seed"}),
    ("Item-item cosine, K=20", "item_item", {}),
    ("EASE, lambda=500", "ease", {"lambda_": 500.0}),
)

#: The champion sweep: model -> (space, n_trials, search method, fixed params).
SWEEP = {
    "als": (
        {
            "factors": [32, 64, 128],
            "regularization": {"log_uniform": [1.0, 100.0]},
            "alpha": {"log_uniform": [0.5, 10.0]},
        },
        40,
        "random",
        {"random_state": "seed"},
    ),
    "ease": ({"lambda_": [100.0, 200.0, 300.0, 500.0, 700.0, 1000.0, 1500.0]}, 0, "grid", {}),
    "item_item": (
        {"similarity": ["cosine", "bm25", "tfidf"], "K": [20, 50, 100, 200]},
        0,
        "grid",
        {},
    ),
}


def load_ratings(path: str) -> pd.DataFrame:
    """u.data (user, item, rating, epoch seconds) as canonical 'rate' events."""
    raw = pd.read_csv(path, sep="\t", names=["person_id", "item_id", "value", "timestamp"])
    return raw.assign(
        event_type="rate", event_time=pd.to_datetime(raw["timestamp"], unit="s", utc=True)
    )


def split_matrices(events: pd.DataFrame, seed: int) -> tuple[Interactions, Interactions]:
    """Binary train/test matrices over the whole catalogue, so a movie rated only in test still
    counts as relevant (it just can't be recommended)."""
    train_events, test_events = per_user_random_split(events, ratio=0.75, seed=seed)
    ids = {
        "person_ids": np.sort(events["person_id"].unique()),
        "item_ids": np.sort(events["item_id"].unique()),
    }
    weights = {"rate": 1.0}
    return (
        build_interactions(train_events, weights, **ids),
        build_interactions(test_events, weights, **ids),
    )


def _seeded(params: dict, seed: int) -> dict:
    return {key: seed if value == "seed" else value for key, value in params.items()}


def score(name: str, params: dict, train: Interactions, test: Interactions, k: int) -> dict:
    """Fit on the whole training matrix, evaluate once on test."""
    start = time.perf_counter()
    model = make_recommender(name, params).fit(train.matrix)
    fit_seconds = time.perf_counter() - start
    items, _ = model.recommend(np.arange(train.matrix.shape[0]), train.matrix, k)
    return {**evaluate(items, test.matrix, k, train.matrix.shape[1]), "fit_seconds": fit_seconds}


def sweep(train: Interactions, seed: int, k: int) -> list[Trial]:
    trials = []
    for name, (space, n_trials, method, fixed) in SWEEP.items():
        trials += tune(
            train.matrix, name, space, n_trials, seed, k, method, _seeded(fixed, seed)
        )
    return sorted(trials, key=lambda trial: -trial.metrics[f"ndcg_at_{k}"])


def _describe(params: dict) -> str:
    return ", ".join(
        f"{key}={round(value, 3) if isinstance(value, float) else value}"
        for key, value in params.items()
        if key != "random_state"
    )


def markdown_table(rows: list[tuple[str, dict]], k: int) -> str:
    header = [f"MAP@{k}", f"nDCG@{k}", f"P@{k}", f"R@{k}", "coverage", "fit s"]
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for label, result in rows:
        cells = [f"{result[f'{metric}_at_{k}']:.3f}" for metric in METRICS]
        cells.append(f"{result[f'coverage_at_{k}']:.3f}" if f"coverage_at_{k}" in result else "")
        cells.append(f"{result['fit_seconds']:.2f}" if "fit_seconds" in result else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="path to ml-100k u.data")
    parser.add_argument("--out", required=True, help="markdown file to write the table to")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    train, test = split_matrices(load_ratings(args.data), args.seed)
    rows = [
        (label, score(name, _seeded(params, args.seed), train, test, args.k))
        for label, name, params in BASELINES
    ]

    start = time.perf_counter()
    trials = sweep(train, args.seed, args.k)
    champion = trials[0]
    rows.append(
        (
            f"**Tuned champion: {champion.model}** ({_describe(champion.params)})",
            score(champion.model, champion.params, train, test, args.k),
        )
    )
    sweep_seconds = time.perf_counter() - start

    for label, published in PUBLISHED.items():
        rows.append((label, {f"{m}_at_{args.k}": v for m, v in zip(METRICS, published)}))
    val = champion.metrics[f"ndcg_at_{args.k}"]
    report = (
        f"{markdown_table(rows, args.k)}\n\n"
        f"MovieLens-100k, per-user 75/25 split (seed {args.seed}), k={args.k}, binary "
        f"interactions, {train.matrix.shape[0]} users x {train.matrix.shape[1]} items. "
        f"Champion chosen by validation nDCG@{args.k} ({val:.3f}) among {len(trials)} trials "
        f"({', '.join(SWEEP)}); sweep + refit wall time {sweep_seconds:.0f} s.\n"
    )
    report += f"\nTop validation trials (nDCG@{args.k} on the split carved from train):\n\n"
    report += "\n".join(
        f"- {trial.metrics[f'ndcg_at_{args.k}']:.4f} {trial.model} ({_describe(trial.params)})"
        for trial in trials[:5]
    )
    print(report)
    write_section(Path(args.out), "recommenders",
                  "## Recommenders on MovieLens-100k\n\n" + report + "\n\n" + "\n".join(machine_facts()))


if __name__ == "__main__":
    main()
