"""The recommender contract, checked for every model (after implicit's recommender_base_test).

``RecommenderContract`` states what every recommender must do; each model's test class only
says how to build it. The data is a checkerboard: even users like even items, odd users odd
items, and each user's "own" item (the diagonal) is withheld, so the right first
recommendation for user u is obviously item u.
"""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from training import recommenders
from training.metrics import PAD
from training.recommenders import RECOMMENDERS, drop_items, make_recommender, top_k

N = 50


def checkerboard(n: int = N) -> sp.csr_matrix:
    likes = np.zeros((n, n), dtype=np.float32)
    for user in range(n):
        likes[user, user % 2 :: 2] = 1.0
    np.fill_diagonal(likes, 0.0)
    return sp.csr_matrix(likes)


def mixed_taste() -> sp.csr_matrix:
    """The checkerboard plus user N, who likes five even items and one odd item (1)."""
    extra = np.zeros((1, N), dtype=np.float32)
    extra[0, [0, 2, 4, 6, 8, 1]] = 1.0
    return sp.vstack([checkerboard(), sp.csr_matrix(extra)]).tocsr()


def assert_same_ranking(expected, got):
    """The same scores, and the same items wherever scores don't tie within float noise (gemv
    vs gemm, a library's top-k vs numpy's). ``expected`` may be one slot wider, to see ties."""
    (items, scores), (got_items, got_scores) = expected, got
    width = got_items.shape[1]
    with np.errstate(invalid="ignore"):  # -inf - -inf in padded slots
        close = np.isclose(np.diff(scores, axis=1), 0, atol=1e-5)
    edge = np.zeros((len(scores), 1), dtype=bool)
    tied = (np.hstack([edge, close]) | np.hstack([close, edge]))[:, :width]
    np.testing.assert_allclose(got_scores, scores[:, :width], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_items[~tied], items[:, :width][~tied])


class RecommenderContract:
    #: False for models that ignore the user's history (the popularity baseline): the
    #: checkerboard's "obvious" answers only apply to models that learn from co-occurrence.
    learns_from_history = True

    def make(self):
        raise NotImplementedError

    @pytest.fixture
    def data(self):
        return checkerboard()

    @pytest.fixture
    def model(self, data):
        return self.make().fit(data)

    def test_withheld_item_comes_first(self, model, data):
        if not self.learns_from_history:
            pytest.skip("ignores history")
        items, _ = model.recommend(np.arange(N), data, k=1)
        assert items[:, 0].tolist() == list(range(N))

    def test_shapes_and_scores_descending(self, model, data):
        items, scores = model.recommend(np.arange(N), data, k=5)
        assert items.shape == scores.shape == (N, 5)
        assert np.issubdtype(items.dtype, np.integer)
        assert np.all(scores[:, :-1] >= scores[:, 1:])

    def test_never_recommends_liked_items(self, model, data):
        items, _ = model.recommend(np.arange(N), data, k=N)
        for user in range(N):
            assert not set(items[user]) & set(data[user].indices)

    def test_filter_off_allows_liked_items(self, model, data):
        items, _ = model.recommend(np.arange(N), data, k=N, filter_already_liked=False)
        assert any(set(items[user]) & set(data[user].indices) for user in range(N))

    def test_k_beyond_catalogue_pads(self, model, data):
        # like implicit issue #22: asking for more items than exist must not crash
        items, scores = model.recommend([0], data, k=N + 10)
        assert items.shape == (1, N + 10)
        assert set(items[0, N - data[0].nnz :]) == {PAD}  # only unliked items are candidates
        assert np.all(np.isneginf(scores[items == PAD]))

    def test_batch_equals_single_user(self, model, data):
        batch = model.recommend(np.arange(N), data, k=6)  # one beyond k, to see ties
        for user in range(0, N, 7):
            assert_same_ranking((batch[0][[user]], batch[1][[user]]),
                                model.recommend(user, data, k=5))

    def test_batch_path_agrees_with_score_rows(self, model, data):
        """The batched top-k (implicit's or Spark's, where the model has one) ranks as the
        score rows do that the service scores one person with."""
        users = np.arange(N)
        scores = model._score_users(users, data)
        scores[data.nonzero()] = -np.inf
        assert_same_ranking(top_k(scores, 6), model.recommend(users, data, k=5))

    def test_memory_batches_do_not_change_results(self, model, data, monkeypatch):
        whole = model.recommend(np.arange(N), data, k=5), model.similar_items(np.arange(N), k=5)
        monkeypatch.setattr(recommenders, "_BATCH_CELLS", 3 * N)  # 3 rows per batch
        batched = model.recommend(np.arange(N), data, k=5), model.similar_items(np.arange(N), k=5)
        for expected, got in zip(whole, batched):
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-6)

    def test_similar_items_exclude_the_item_itself(self, model):
        items, scores = model.similar_items(np.arange(N), k=5)
        assert items.shape == scores.shape == (N, 5)
        assert not np.any(items == np.arange(N)[:, None])
        assert np.all(scores[:, :-1] >= scores[:, 1:])

    def test_similar_items_share_parity(self, model):
        if not self.learns_from_history:
            pytest.skip("ignores history")
        items, _ = model.similar_items(np.arange(N), k=5)
        real = items != PAD
        assert real.any()
        assert np.all((items % 2 == np.arange(N)[:, None] % 2)[real])

    def test_explain_ranks_history_items_that_share_taste(self):
        data = mixed_taste()
        model = self.make().fit(data)
        items, contributions = model.explain(N, data, item_index=10, n=3)
        assert len(items) == len(contributions) <= 3
        assert set(items) <= set(data[N].indices)
        assert np.all(np.diff(contributions) <= 0)
        if self.learns_from_history:
            assert len(items) and items[0] % 2 == 0

    def test_pickle_round_trip(self, model, data):
        clone = pickle.loads(pickle.dumps(model))
        assert_same_ranking(model.recommend(np.arange(N), data, k=4),
                            clone.recommend(np.arange(N), data, k=3))


class TestPopularity(RecommenderContract):
    learns_from_history = False

    def make(self):
        return make_recommender("popularity", {})


class TestImplicitALS(RecommenderContract):
    def make(self):
        return make_recommender(
            "als", {"factors": 4, "regularization": 0.01, "random_state": 7, "use_gpu": False}
        )


class TestBPR(RecommenderContract):
    def make(self):
        return make_recommender(
            "bpr", {"factors": 8, "learning_rate": 0.05, "random_state": 7, "use_gpu": False}
        )


class TestItemItemCosine(RecommenderContract):
    # K=N keeps every neighbour: on the checkerboard same-parity similarities all tie, so a
    # smaller K would keep an arbitrary subset.
    def make(self):
        return make_recommender("item_item", {"similarity": "cosine", "K": N})


class TestItemItemBM25(RecommenderContract):
    def make(self):
        return make_recommender("item_item", {"similarity": "bm25", "K": N})


class TestEASE(RecommenderContract):
    def make(self):
        return make_recommender("ease", {"lambda_": 10.0})


def test_every_registered_model_has_a_contract_test():
    from tests.spark.test_spark_als import TestSparkALS  # needs a Spark session to run

    tested = {
        "popularity": TestPopularity,
        "als": TestImplicitALS,
        "bpr": TestBPR,
        "item_item": TestItemItemCosine,
        "ease": TestEASE,
        "spark_als": TestSparkALS,
    }
    assert set(tested) == set(RECOMMENDERS)


def test_popularity_ranks_by_number_of_users():
    data = sp.csr_matrix(np.array([[5, 0, 0, 1], [1, 1, 0, 1], [0, 1, 0, 1]], dtype=np.float32))
    model = make_recommender("popularity").fit(data)
    items, _ = model.recommend([0, 1], data, k=2)
    # counts: item 3 -> 3 users, 1 -> 2, 0 -> 2 (heavy confidence doesn't count), 2 -> 0
    assert items.tolist() == [[1, 2], [2, PAD]]


def test_ease_matches_closed_form():
    data = checkerboard(6)
    model = make_recommender("ease", {"lambda_": 2.0}).fit(data)
    x = data.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(6))
    expected = np.eye(6) - p / np.diag(p)
    np.testing.assert_allclose(model.weights, expected, atol=1e-6)


def test_ease_refuses_huge_catalogues():
    with pytest.raises(ValueError, match="max_items"):
        make_recommender("ease", {"max_items": 10}).fit(checkerboard(20))


def test_item_item_items_without_neighbours_are_not_candidates():
    # two disjoint blocks: user 0's history never touches items 2, 3. implicit's own filter
    # returns liked item 0 here at score 0 (implicit issue #345); it must not come back.
    data = sp.csr_matrix(np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    items, _ = make_recommender("item_item", {"K": 5}).fit(data).recommend([0], data, k=3)
    assert items.tolist() == [[1, PAD, PAD]]


IMPLICIT_MODELS = [("als", {"factors": 4, "random_state": 7, "use_gpu": False}),
                   ("bpr", {"factors": 4, "random_state": 7, "use_gpu": False}),
                   ("item_item", {"K": N})]


@pytest.mark.parametrize("name, params", IMPLICIT_MODELS)
def test_implicit_models_recommend_a_batch_in_one_call_to_implicit(name, params, monkeypatch):
    data = checkerboard()
    model = make_recommender(name, params).fit(data)
    batches = []
    library = model._model.recommend
    monkeypatch.setattr(model._model, "recommend", lambda users, *args, **kwargs: (
        batches.append(np.size(users)), library(users, *args, **kwargs))[1])
    model.recommend(np.arange(N), data, k=5)
    assert batches[0] == N


def test_drop_items_keeps_order_and_pads():
    items = np.array([[3, 1, 2, PAD], [0, 2, 1, 3]])
    scores = np.array([[4, 3, 2, -np.inf], [4, 3, 2, 1]], dtype=np.float32)
    forbidden = sp.csr_matrix(np.array([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=np.float32))
    kept, kept_scores = drop_items(items, scores, forbidden, k=3)
    assert kept.tolist() == [[3, PAD, PAD], [0, 2, 1]]
    assert kept_scores.tolist() == [[4, -np.inf, -np.inf], [4, 3, 2]]


class _GpuStandIn:
    """Behaves like implicit's GPU model as far as Tailor can tell without CUDA: its factors
    are not numpy arrays until ``to_cpu()``, which returns the (CPU-fitted) model."""

    def __init__(self, cpu_model):
        self.cpu_model, self.item_factors = cpu_model, None

    def fit(self, user_items, show_progress=True):
        self.cpu_model.fit(user_items, show_progress=show_progress)

    def to_cpu(self):
        return self.cpu_model


@pytest.mark.parametrize("has_cuda, use_gpu, gpu", [
    (True, None, True), (False, None, False), (True, False, False)])
@pytest.mark.parametrize("name, module, factory", [
    ("als", recommenders.implicit.als, "AlternatingLeastSquares"),
    ("bpr", recommenders.implicit.bpr, "BayesianPersonalizedRanking")])
def test_gpu_solver_is_chosen_when_cuda_is_present(name, module, factory, has_cuda, use_gpu, gpu,
                                                   monkeypatch):
    """The GPU solver itself is untested (no CUDA here); the choice of it and the CPU copy of
    its factors are, with the CUDA check and the GPU model stubbed."""
    monkeypatch.setattr(recommenders.implicit.gpu, "HAS_CUDA", has_cuda)
    cpu_factory, chosen = getattr(module, factory), []

    def build(**kwargs):
        chosen.append(kwargs.pop("use_gpu"))
        cpu_model = cpu_factory(**kwargs, use_gpu=False)
        return _GpuStandIn(cpu_model) if chosen[-1] else cpu_model

    monkeypatch.setattr(module, factory, build)
    data = checkerboard()
    model = make_recommender(name, {"factors": 4, "iterations": 3, "use_gpu": use_gpu}).fit(data)
    assert chosen == [gpu]
    assert isinstance(model.item_factors, np.ndarray) and not isinstance(model._model, _GpuStandIn)
    assert model.recommend(np.arange(N), data, k=2)[0].shape == (N, 2)


def test_unknown_names_rejected():
    with pytest.raises(ValueError, match="unknown recommender"):
        make_recommender("svd")
    with pytest.raises(ValueError, match="similarity"):
        make_recommender("item_item", {"similarity": "jaccard"})
