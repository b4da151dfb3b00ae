"""`model: spark_als` keeps the same contract as every other recommender (see
tests/unit/test_recommenders.py), fitted on the shared local Spark session."""
import pytest

from tests.unit.test_recommenders import RecommenderContract, checkerboard
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
