"""Recipes, the evaluation split and scoring: how a configuration becomes comparable numbers.

A recipe is plain data (model, params and how events become confidences), so the same code
fits the configured model, the baselines, the refit on all data and, for the champion gate,
the current champion's recipe on this run's split. Re-fitting the champion's recipe (rather
than scoring its stored artifact) is what makes the comparison fair: the stored champion was
fitted on ALL data of its day, test pairs of this split included, so its artifact has either
seen the answers (factor models score them high) or treats them as history (and excludes them).

The events table has one row per (person_id, item_id, event_type, day) with columns
event_time, value (the rating of ``rate`` rows) and event_count, as the training job collects
it from Spark (training/spark_interactions.py); one row per event works too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.fitted import FittedRecommender
from training.interactions import Interactions, build_interactions
from training.metrics import evaluate
from training.recommenders import make_recommender
from training.splits import per_user_random_split, time_split
from training.tuning import Trial, tune


def recipe(model: str, params: Mapping, weights: Mapping, half_life_days: float | None = None,
           weighting: str = "none", bm25: Mapping | None = None, binarize: bool = False) -> dict:
    """A JSON-ready recipe; ``weighting`` is none, bm25 (with ``bm25`` = K1, B) or tfidf."""
    if weighting not in ("none", "bm25", "tfidf"):
        raise ValueError(f"weighting must be none, bm25 or tfidf, got {weighting!r}")
    return {"model": model, "params": dict(params), "weights": dict(weights),
            "half_life_days": half_life_days, "weighting": weighting,
            "bm25": dict(bm25 or {}), "binarize": binarize}


def confidence_matrix(events: pd.DataFrame, spec: Mapping, as_of: pd.Timestamp,
                      person_ids: np.ndarray, item_ids: np.ndarray) -> Interactions:
    """The recipe's person x item confidences over a fixed id space, decayed from ``as_of``."""
    return build_interactions(
        events, spec["weights"], half_life_days=spec["half_life_days"], as_of=as_of,
        bm25=spec["bm25"] if spec["weighting"] == "bm25" else None,
        tfidf=spec["weighting"] == "tfidf", binarize=spec["binarize"],
        person_ids=person_ids, item_ids=item_ids)


def seen_matrix(events: pd.DataFrame, person_ids: np.ndarray,
                item_ids: np.ndarray) -> sp.csr_matrix:
    """1 for every (person, item) with any event, whatever its type or weight."""
    every_type = dict.fromkeys(events["event_type"].unique().tolist(), 1.0)
    return build_interactions(events, every_type, binarize=True,
                              person_ids=person_ids, item_ids=item_ids).matrix


def fit(spec: Mapping, events: pd.DataFrame, as_of: pd.Timestamp,
        person_ids: np.ndarray, item_ids: np.ndarray) -> tuple[FittedRecommender, float]:
    """Fit the recipe on ``events``; returns the fitted model and the fit time in seconds."""
    interactions = confidence_matrix(events, spec, as_of, person_ids, item_ids)
    start = time.perf_counter()
    recommender = make_recommender(spec["model"], spec["params"]).fit(interactions.matrix)
    seconds = time.perf_counter() - start
    return FittedRecommender(recommender, interactions,
                             seen_matrix(events, person_ids, item_ids), dict(spec)), seconds


@dataclass(frozen=True)
class Split:
    """Train events, the test relevance matrix and the shared id space, fixed for one run;
    ``positive_pairs`` counts the (person, item) pairs with a positive confidence on either
    side (every pair is on one side only), i.e. what there is to learn from at all."""

    train: pd.DataFrame
    relevant: sp.csr_matrix
    person_ids: np.ndarray
    item_ids: np.ndarray
    as_of: pd.Timestamp
    positive_pairs: int


def split_events(events: pd.DataFrame, weights: Mapping, as_of: pd.Timestamp,
                 method: str = "per_user", ratio: float = 0.75, seed: int = 42,
                 test_days: float = 14.0) -> Split:
    """Per-person random (``ratio``, ``seed``) or time (each person's last ``test_days``) split.

    A test pair is relevant when its events under ``weights`` sum to a positive confidence
    (an add-to-cart removed again is not something to have predicted).
    """
    if method == "per_user":
        train, test = per_user_random_split(events, ratio, seed)
    elif method == "time":
        train, test = time_split(events, test_days)
    else:
        raise ValueError(f"split method must be per_user or time, got {method!r}")
    person_ids = np.sort(events["person_id"].unique())
    item_ids = np.sort(events["item_id"].unique())
    relevant, liked_in_train = (
        build_interactions(side, weights, binarize=True,
                           person_ids=person_ids, item_ids=item_ids).matrix
        for side in (test, train))
    return Split(train, relevant, person_ids, item_ids, as_of,
                 positive_pairs=relevant.nnz + liked_in_train.nnz)


def score(fitted: FittedRecommender, relevant: sp.csr_matrix, k: int) -> dict:
    """training.metrics.evaluate over the people with relevant items, recommending as served."""
    users = np.flatnonzero(np.diff(relevant.indptr))
    items, _ = fitted.recommend_rows(users, k)
    return evaluate(dict(zip(users.tolist(), items)), relevant, k, relevant.shape[1])


def fit_and_score(spec: Mapping, split: Split, k: int) -> tuple[dict, float]:
    """Test metrics and fit seconds of a recipe fitted on the split's training side."""
    fitted, seconds = fit(spec, split.train, split.as_of, split.person_ids, split.item_ids)
    return score(fitted, split.relevant, k), seconds


def tune_recipe(spec: Mapping, split: Split, spaces: Mapping[str, Mapping],
                weightings: Sequence[Mapping], n_trials: int, seed: int, k: int,
                method: str = "random",
                params_by_model: Mapping[str, Mapping] | None = None) -> tuple[list[Trial], dict]:
    """Search models (``spaces``: model -> parameter space), their parameters and the
    confidence weighting (each of ``weightings`` overrides the recipe's ``weighting`` /
    ``binarize``; empty: the recipe's own) on a validation split carved from the training side
    only. ``params_by_model`` are fixed per model (e.g. random_state). Every trial shares one
    validation split, so models and weightings compete on equal terms. Returns the trials (best
    first) and the recipe of the best."""
    trials = []
    for overrides in weightings or [{}]:
        candidate = {**spec, **overrides}
        matrix = confidence_matrix(split.train, candidate, split.as_of, split.person_ids,
                                   split.item_ids).matrix
        for model, space in spaces.items():
            found = tune(matrix, model, space, n_trials, seed, k, method,
                         fixed_params=(params_by_model or {}).get(model))
            trials += [replace(trial, weighting=dict(overrides)) for trial in found]
    trials.sort(key=lambda trial: -trial.metrics[f"ndcg_at_{k}"])
    best = trials[0]
    return trials, {**spec, **best.weighting, "model": best.model, "params": best.params}
