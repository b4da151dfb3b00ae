"""Tuning: trials sorted by validation nDCG, reproducible for a seed, spaces sampled as declared."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.tuning import sample_params, tune


def test_grid_is_every_combination():
    params = sample_params({"a": [1, 2], "b": ["x", "y", "z"]}, n_trials=0, seed=0, method="grid")
    assert len(params) == 6 and {"a": 2, "b": "z"} in params


def test_random_over_lists_never_repeats_and_is_seeded():
    space = {"a": [1, 2, 3], "b": [10, 20]}
    first = sample_params(space, n_trials=6, seed=1)
    assert len({tuple(p.items()) for p in first}) == 6
    assert sample_params(space, 4, seed=1) == sample_params(space, 4, seed=1)
    assert len(sample_params(space, 100, seed=1)) == 6


def test_ranges_stay_in_bounds():
    space = {"reg": {"log_uniform": [0.1, 10.0]}, "f": [8, 16]}
    for p in sample_params(space, 20, seed=0):
        assert 0.1 <= p["reg"] <= 10.0 and p["f"] in (8, 16)
    with pytest.raises(ValueError):
        sample_params({"reg": {"normal": [0, 1]}}, 1, 0)
    with pytest.raises(ValueError):
        sample_params(space, 1, 0, method="grid")


def test_tune_returns_trials_best_first():
    likes = np.zeros((40, 40), dtype=np.float32)
    for user in range(40):
        likes[user, user % 2 :: 2] = 1.0
    trials = tune(sp.csr_matrix(likes), "ease", {"lambda_": [0.1, 10.0, 1e6]}, method="grid")
    scores = [t.metrics["ndcg_at_10"] for t in trials]
    assert scores == sorted(scores, reverse=True)
    assert all(t.model == "ease" and t.fit_seconds >= 0 for t in trials)
    assert {t.params["lambda_"] for t in trials} == {0.1, 10.0, 1e6}


class _Recording:
    """A recommender that notes every matrix it is fitted on or recommends from."""

    def __init__(self, model, matrices):
        self.model, self.matrices = model, matrices

    def fit(self, user_items):
        self.matrices.append(user_items)
        self.model.fit(user_items)
        return self

    def recommend(self, users, user_items, k):
        self.matrices.append(user_items)
        return self.model.recommend(users, user_items, k)


def test_tuning_never_touches_the_test_split(monkeypatch):
    """No test pair is in any matrix a trial fits on, recommends from or is validated against."""
    from training import tuning
    from training.evaluation import recipe, split_events, tune_recipe
    from training.recommenders import make_recommender

    people, items = range(30), range(12)
    table = pd.DataFrame([{"person_id": f"p{p:02d}", "item_id": f"i{i:02d}",
                           "event_type": "view_item", "event_time": pd.Timestamp("2024-03-01")}
                          for p in people for i in items if (p + i) % 3])
    weights = {"view_item": 1.0}
    split = split_events(table, weights, pd.Timestamp("2024-03-02", tz="UTC"), seed=3)
    test_pairs = split.relevant
    assert test_pairs.nnz > 0  # every test row weighs positively, so these are all of them

    seen, validated = [], []
    monkeypatch.setattr(tuning, "make_recommender",
                        lambda name, params: _Recording(make_recommender(name, params), seen))
    score = tuning.evaluate
    monkeypatch.setattr(tuning, "evaluate", lambda recommended, relevant, *args: (
        validated.append(relevant), score(recommended, relevant, *args))[1])
    trials, _ = tune_recipe(recipe("ease", {}, weights), split,
                            {"ease": {"lambda_": [1.0, 10.0]}, "item_item": {"K": [5]}},
                            [{"weighting": "none", "binarize": False},
                             {"weighting": "bm25", "binarize": False}],
                            n_trials=2, seed=3, k=3, method="grid")
    assert len(trials) == 6 and len(validated) == 6 and len(seen) == 2 * 6
    for matrix in seen + validated:
        assert sp.csr_matrix(matrix).multiply(test_pairs).nnz == 0
