"""Hyper-parameter search that never looks at the test set.

Every trial is fitted on part of the TRAINING matrix and scored on a validation split carved
from the rest of it, with the same split and metrics code as the final evaluation; the caller
refits the winner on the whole training matrix. Trials are plain data (params, validation
metrics, fit time) so the job layer can log each one as a nested MLflow run.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.metrics import evaluate
from training.recommenders import make_recommender
from training.splits import per_user_random_split

#: A parameter's candidates: a list of values, or {"uniform": [lo, hi]} / {"log_uniform": [lo, hi]}.
Space = Mapping[str, Sequence | Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class Trial:
    model: str
    params: dict
    metrics: dict  # validation metrics, keys as in training.metrics.evaluate
    fit_seconds: float
    weighting: dict = field(default_factory=dict)  # recipe overrides tried (weighting, binarize)


def validation_split(
    user_items: sp.spmatrix, ratio: float = 0.75, seed: int = 42
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split a training matrix per user, with the same rule as the train/test split."""
    coo = sp.coo_matrix(user_items)
    pairs = pd.DataFrame({"user": coo.row, "item": coo.col, "value": coo.data})
    fit, validation = per_user_random_split(pairs, ratio, seed, user_col="user", item_col="item")
    return _to_csr(fit, coo.shape), _to_csr(validation, coo.shape)


def _to_csr(pairs: pd.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix((pairs["value"], (pairs["user"], pairs["item"])), shape=shape)


def sample_params(space: Space, n_trials: int, seed: int, method: str = "random") -> list[dict]:
    """Parameter sets to try.

    ``grid``: every combination of the listed values (n_trials is ignored). ``random``: a
    space of lists is sampled without repetition (all of it when n_trials covers the grid); a
    space with ranges is sampled independently per trial.
    """
    names = list(space)
    discrete = all(not isinstance(space[name], Mapping) for name in names)
    if method == "grid":
        if not discrete:
            raise ValueError("grid search needs a list of values for every parameter")
        return [dict(zip(names, values)) for values in itertools.product(*space.values())]
    if method != "random":
        raise ValueError(f"method must be 'random' or 'grid', got {method!r}")
    rng = np.random.default_rng(seed)
    if discrete:
        sizes = [len(space[name]) for name in names]
        total = int(np.prod(sizes))
        picks = rng.choice(total, size=min(n_trials, total), replace=False)
        return [
            {name: space[name][int(i)] for name, i in zip(names, np.unravel_index(pick, sizes))}
            for pick in picks
        ]
    return [{name: _draw(space[name], rng) for name in names} for _ in range(n_trials)]


def _draw(candidates, rng: np.random.Generator):
    if not isinstance(candidates, Mapping):
        return candidates[int(rng.integers(len(candidates)))]
    (kind, (low, high)), = candidates.items()
    if kind == "uniform":
        return float(rng.uniform(low, high))
    if kind == "log_uniform":
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))
    raise ValueError(f"unknown distribution {kind!r}; use a list, 'uniform' or 'log_uniform'")


def tune(
    user_items: sp.spmatrix,
    model: str,
    space: Space,
    n_trials: int = 20,
    seed: int = 42,
    k: int = 10,
    method: str = "random",
    fixed_params: Mapping | None = None,
    validation_ratio: float = 0.75,
) -> list[Trial]:
    """Fit ``model`` once per sampled parameter set; trials best first by validation nDCG@k.

    ``fixed_params`` (e.g. random_state) are passed to every trial but not searched; the same
    ``seed`` gives the same validation split, so trials of different models are comparable.
    """
    fit_matrix, validation = validation_split(user_items, validation_ratio, seed)
    users = np.flatnonzero(np.diff(validation.indptr))
    trials = []
    for params in sample_params(space, n_trials, seed, method):
        all_params = {**(fixed_params or {}), **params}
        start = time.perf_counter()
        recommender = make_recommender(model, all_params).fit(fit_matrix)
        fit_seconds = time.perf_counter() - start
        items, _ = recommender.recommend(users, fit_matrix, k)
        metrics = evaluate(dict(zip(users, items)), validation, k, fit_matrix.shape[1])
        trials.append(Trial(model, all_params, metrics, fit_seconds))
    return sorted(trials, key=lambda trial: -trial.metrics[f"ndcg_at_{k}"])
