"""`model: spark_als` keeps the same contract as every other recommender (see
tests/unit/test_recommenders.py), fitted on the shared local Spark session; its batches go
through MLlib's recommendForAllUsers."""
import pickle

import numpy as np
import pytest

from tests.unit.test_recommenders import N, RecommenderContract, checkerboard
from training.recommenders import make_recommender


class TestSparkALS(RecommenderContract):
    @pytest.fixture(autouse=True)
    def _session(self, spark):
        """MLlib fits on the active session: the shared one."""

    @pytest.fixture(scope="class")
    def data(self):
        return checkerboard()

    @pytest.fixture(scope="class")
    def model(self, data, spark):
        return self.make().fit(data)  # one fit for the whole contract: each costs seconds

    def make(self):
        return make_recommender("spark_als", {"factors": 4, "regularization": 0.01, "alpha": 10.0,
                                              "iterations": 15, "random_state": 7})

    def test_a_batch_is_one_recommend_for_all_users(self, model, data, monkeypatch):
        asked = []
        library = model._als.recommendForAllUsers
        monkeypatch.setattr(model._als, "recommendForAllUsers",
                            lambda n: (asked.append(n), library(n))[1])
        model.recommend(np.arange(N), data, k=3)
        assert asked == [3 + (N // 2 - 1)]  # k plus the longest history, dropped afterwards

    def test_a_pickled_copy_scores_from_its_factors(self, model):
        assert pickle.loads(pickle.dumps(model))._als is None
