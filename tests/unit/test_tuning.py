"""Tuning: trials sorted by validation nDCG, reproducible for a seed, spaces sampled as declared."""

import numpy as np
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
