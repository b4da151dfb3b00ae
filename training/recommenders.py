"""Recommenders behind one small interface, so jobs, tuning and serving never care which model.

Every model turns (users, their history) into a dense score row over the catalogue
(``_score_users``, which the service scores single people with). Batches of users go through
the library's own batched top-k where there is one: implicit's ``recommend`` for ALS, BPR and
item-item, Spark's ``recommendForAllUsers`` for ``spark_als`` (training/spark_als.py); EASE and
popularity take the numpy top-k of their score rows. A library is asked for each user's best
``k`` plus as many as the longest history in the batch, unfiltered, and ``drop_items`` removes
the history: the same filter for every library path and for the whole-history rule in
training/fitted.py, so "batch == single user" and "never recommend a liked item" hold for
every model alike.

Conventions (the contract ``tests/unit/test_recommenders.py`` checks for each model):

- ``user_items`` is a users x items CSR matrix of confidences (positive = liked), indexed like
  the ``user_indices`` passed alongside it, usually the training matrix. History-based models
  (item-item, EASE) score from it; factor models use their fitted user factors and use it only
  to filter.
- ``recommend`` and ``similar_items`` return ``(items, scores)``, both [n, k], best first.
  Slots with no candidate hold item ``PAD`` (-1) and score -inf.
- ``similar_items`` never returns the item itself: "more like this" should show other items.
- ``explain`` returns the user's history items that contributed most to an item's score, with
  their contributions, largest first; items that contributed nothing are left out (so the
  popularity baseline, which ignores history, explains nothing).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable

import implicit.als
import implicit.bpr
import implicit.gpu
import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
from implicit.utils import ParameterWarning

from training.metrics import PAD

#: Score cells computed per batch in ``recommend`` (bounds memory on large catalogues).
_BATCH_CELLS = 1 << 22


def _as_csr(user_items: sp.spmatrix) -> sp.csr_matrix:
    return sp.csr_matrix(user_items, dtype=np.float32)


def _dense(matrix: sp.spmatrix, fill: float = -np.inf) -> np.ndarray:
    """Sparse -> dense where absent entries get ``fill``: 'no evidence' must rank below 0."""
    coo = sp.coo_matrix(matrix)
    out = np.full(coo.shape, fill, dtype=np.float32)
    out[coo.row, coo.col] = coo.data
    return out


def _positive(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """The liked cells (positive confidence) of some rows, as a CSR pattern."""
    liked = sp.csr_matrix(user_items > 0, dtype=np.float32)
    liked.eliminate_zeros()
    return liked


def longest_row(matrix: sp.csr_matrix) -> int:
    """The most stored entries of any row: how far to over-fetch before ``drop_items``."""
    return int(np.diff(matrix.indptr).max(initial=0))


def drop_items(
    items: np.ndarray, scores: np.ndarray, forbidden: sp.spmatrix, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ranked candidates without the items stored in the same row of ``forbidden``,
    the best ``k`` kept, order unchanged, PAD / -inf where fewer remain."""
    forbidden = sp.csr_matrix(forbidden)
    rows, cols = forbidden.nonzero()
    n_cols = forbidden.shape[1]
    keys = np.arange(len(items), dtype=np.int64)[:, None] * n_cols + items
    keep = (items != PAD) & ~np.isin(keys, rows.astype(np.int64) * n_cols + cols)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    out_items = np.full((len(items), k), PAD, dtype=np.int64)
    out_scores = np.full((len(items), k), -np.inf, dtype=np.float32)
    width = order.shape[1]
    out_items[:, :width] = np.where(kept, np.take_along_axis(items, order, axis=1), PAD)
    out_scores[:, :width] = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
    return out_items, out_scores


def library_top_k(fetch, users: np.ndarray, user_items: sp.csr_matrix, k: int,
                  filter_already_liked: bool, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """A library's batched top-k held to the contract. ``fetch(users, their rows, n)`` returns
    its unfiltered best ``n`` per user (PAD / -inf past its candidates); it is asked for ``k``
    plus the longest liked history among ``users``, so ``k`` unliked ones survive drop_items."""
    rows = user_items[users]
    liked = _positive(rows) if filter_already_liked else sp.csr_matrix(rows.shape)
    items, scores = fetch(users, rows, min(k + longest_row(liked), n_items))
    return drop_items(items, scores, liked, k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` columns of each row, best first; -inf cells become PAD slots."""
    n_rows, n_cols = scores.shape
    items = np.full((n_rows, k), PAD, dtype=np.int64)
    best = np.full((n_rows, k), -np.inf, dtype=np.float32)
    kk = min(k, n_cols)
    if kk == 0:
        return items, best
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    items[:, :kk] = np.take_along_axis(part, order, axis=1)
    best[:, :kk] = np.take_along_axis(part_scores, order, axis=1)
    items[np.isneginf(best)] = PAD
    return items, best


class Recommender(ABC):
    """fit / recommend / similar_items / explain over item and user indices."""

    n_items: int

    def fit(self, user_items: sp.spmatrix) -> Recommender:
        user_items = _as_csr(user_items)
        self.n_items = user_items.shape[1]
        self._fit(user_items)
        return self

    def recommend(
        self,
        user_indices,
        user_items: sp.spmatrix,
        k: int,
        filter_already_liked: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per user; liked items (positive in ``user_items``) are never shown."""
        users = np.atleast_1d(np.asarray(user_indices, dtype=np.int64))
        return self._recommend(users, _as_csr(user_items), k, filter_already_liked)

    def similar_items(self, item_indices, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most like each given item, excluding the item itself."""

        def top(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            similarity = self._item_similarity(items)
            similarity[np.arange(len(items)), items] = -np.inf
            return top_k(similarity, k)

        return self._in_batches(item_indices, k, top)

    def _recommend(self, users: np.ndarray, user_items: sp.csr_matrix, k: int,
                   filter_already_liked: bool) -> tuple[np.ndarray, np.ndarray]:
        """The numpy path: each batch's score rows, liked cells set to -inf, top ``k``."""

        def top(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            scores = self._score_users(chunk, user_items)
            if filter_already_liked:
                scores[_positive(user_items[chunk]).nonzero()] = -np.inf
            return top_k(scores, k)

        return self._in_batches(users, k, top)

    def explain(
        self, user_index: int, user_items: sp.spmatrix, item_index: int, n: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """History items with the largest contribution to ``item_index``'s score, largest first."""
        row = _as_csr(user_items)[user_index]
        history, confidence = row.indices, row.data
        contributions = np.asarray(
            self._contributions(row, history, confidence, item_index), dtype=np.float32
        )
        keep = contributions != 0
        history, contributions = history[keep], contributions[keep]
        order = np.argsort(-contributions, kind="stable")[:n]
        return history[order], contributions[order]

    def _in_batches(self, indices, k: int, top) -> tuple[np.ndarray, np.ndarray]:
        """``top`` over batches of rows, so a batch's dense rows over a big catalogue stay
        within ``_BATCH_CELLS``; the results stacked in order."""
        rows = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        batch = max(1, _BATCH_CELLS // max(self.n_items, 1))
        items = [np.empty((0, k), dtype=np.int64)]
        scores = [np.empty((0, k), dtype=np.float32)]
        for start in range(0, len(rows), batch):
            chunk_items, chunk_scores = top(rows[start : start + batch])
            items.append(chunk_items)
            scores.append(chunk_scores)
        return np.vstack(items), np.vstack(scores)

    @abstractmethod
    def _fit(self, user_items: sp.csr_matrix) -> None: ...

    @abstractmethod
    def _score_users(self, users: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Fresh, writable float32 scores [len(users), n_items]."""

    @abstractmethod
    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        """Fresh, writable float32 similarities [len(items), n_items]."""

    @abstractmethod
    def _contributions(
        self,
        user_row: sp.csr_matrix,
        history: np.ndarray,
        confidence: np.ndarray,
        item_index: int,
    ) -> np.ndarray:
        """Contribution of each history item (aligned with ``history``) to the item's score."""


class PopularityRecommender(Recommender):
    """Most-liked items first: the baseline every model has to beat.

    Popularity is the number of distinct users with a positive interaction, so a few heavy
    users' confidences can't make an item "popular".
    """

    def _fit(self, user_items: sp.csr_matrix) -> None:
        liked = user_items.indices[user_items.data > 0]
        self.popularity = np.bincount(liked, minlength=self.n_items).astype(np.float32)

    def _score_users(self, users, user_items):
        return np.tile(self.popularity, (len(users), 1))

    def _item_similarity(self, items):
        return np.tile(self.popularity, (len(items), 1))

    def _contributions(self, user_row, history, confidence, item_index):
        return np.zeros(len(history))


class _ImplicitTopK:
    """Batches through implicit's own ``recommend`` of the fitted ``self._model``.

    Its liked-item filter is not used: for item-item it can return liked items at score 0
    (implicit issue #345), so the filter is ``drop_items``, as for every library path."""

    _model: object
    n_items: int

    def _recommend(self, users, user_items, k, filter_already_liked):
        return self._in_batches(users, k, lambda chunk: library_top_k(
            self._implicit_top, chunk, user_items, k, filter_already_liked, self.n_items))

    def _implicit_top(self, users: np.ndarray, rows: sp.csr_matrix, n: int):
        items, scores = self._model.recommend(users, rows, N=n, filter_already_liked_items=False)
        empty = scores <= -np.finfo(np.float32).max  # implicit's padding
        return (np.where(empty, PAD, items).astype(np.int64),
                np.where(empty, -np.inf, scores).astype(np.float32))


class _FactorRecommender(Recommender):
    """Scores are dot products of user and item factors; similarity is cosine of item factors."""

    user_factors: np.ndarray
    item_factors: np.ndarray

    def _score_users(self, users, user_items):
        return self.user_factors[users] @ self.item_factors.T

    def _item_similarity(self, items):
        norms = np.linalg.norm(self.item_factors, axis=1)
        norms[norms == 0] = 1.0
        normalized = self.item_factors / norms[:, None]
        return normalized[items] @ normalized.T

    def _fit_implicit(self, model, user_items: sp.csr_matrix) -> None:
        """Fit an implicit model (GPU or CPU) and keep a CPU copy, so scoring and pickling are
        the same everywhere."""
        model.fit(user_items, show_progress=False)
        if not isinstance(model.item_factors, np.ndarray):
            model = model.to_cpu()
        self._model = model
        self.user_factors = model.user_factors
        self.item_factors = model.item_factors


def _use_gpu(use_gpu: bool | None) -> bool:
    return implicit.gpu.HAS_CUDA if use_gpu is None else use_gpu


class ImplicitALSRecommender(_ImplicitTopK, _FactorRecommender):
    """implicit's ALS (Hu, Koren & Volinsky): confidence = alpha * value, on GPU when present.

    Defaults are implicit's own, so "library defaults" means what it says.
    """

    def __init__(
        self,
        factors: int = 100,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        random_state: int | None = None,
        use_gpu: bool | None = None,
    ):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.use_gpu = use_gpu

    def _fit(self, user_items):
        model = implicit.als.AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.random_state,
            use_gpu=_use_gpu(self.use_gpu),
        )
        self._fit_implicit(model, user_items)

    def _contributions(self, user_row, history, confidence, item_index):
        # implicit's exact decomposition of the (re-solved) user's score over liked items
        _, top, _ = self._model.explain(0, user_row, item_index, N=len(history))
        by_item = dict(top)
        return np.array([by_item.get(item, 0.0) for item in history])


class BPRRecommender(_ImplicitTopK, _FactorRecommender):
    """implicit's Bayesian Personalized Ranking (pairwise ranking loss, sampled negatives).

    BPR scores don't decompose over the history, so ``explain`` ranks history items by how close
    their factors are to the item's (cosine), weighted by the user's confidence in them.
    """

    def __init__(
        self,
        factors: int = 100,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int | None = None,
        use_gpu: bool | None = None,
    ):
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.use_gpu = use_gpu

    def _fit(self, user_items):
        model = implicit.bpr.BayesianPersonalizedRanking(
            factors=self.factors,
            learning_rate=self.learning_rate,
            regularization=self.regularization,
            iterations=self.iterations,
            random_state=self.random_state,
            use_gpu=_use_gpu(self.use_gpu),
        )
        self._fit_implicit(model, user_items)

    def _contributions(self, user_row, history, confidence, item_index):
        similarity = self._item_similarity(np.array([item_index]))[0]
        return np.clip(similarity[history], 0, None) * confidence


_SIMILARITIES = {"cosine": CosineRecommender, "bm25": BM25Recommender, "tfidf": TFIDFRecommender}


class ItemItemRecommender(_ImplicitTopK, Recommender):
    """Item-item nearest neighbours (implicit): score = sum over history of confidence x sim.

    ``similarity`` is cosine, bm25 or tfidf; each item keeps its ``K`` nearest neighbours.
    ``K1`` and ``B`` are BM25's parameters and only used with bm25. Items with no neighbour in
    the user's history are not candidates at all (PAD rather than arbitrary zero-score items).
    """

    def __init__(self, similarity: str = "cosine", K: int = 20, K1: float = 1.2, B: float = 0.75):
        if similarity not in _SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {sorted(_SIMILARITIES)}, got {similarity!r}"
            )
        self.similarity = similarity
        self.K = K
        self.K1 = K1
        self.B = B

    def _fit(self, user_items):
        params = {"K1": self.K1, "B": self.B} if self.similarity == "bm25" else {}
        model = _SIMILARITIES[self.similarity](K=self.K, **params)
        with warnings.catch_warnings():
            # implicit re-weights into a COO matrix internally, then warns about its own input
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(user_items, show_progress=False)
        self._model = model
        self.item_similarity = model.similarity.tocsr()

    def _score_users(self, users, user_items):
        return _dense(user_items[users] @ self.item_similarity)

    def _item_similarity(self, items):
        return _dense(self.item_similarity[items])

    def _contributions(self, user_row, history, confidence, item_index):
        return self.item_similarity[history, item_index].toarray().ravel() * confidence


class EASERecommender(Recommender):
    """EASE (Steck 2019): closed-form item-item weights B = I - P / diag(P), P = (X'X + lI)^-1.

    Strong on dense catalogues; the item x item matrix is dense, so it refuses catalogues above
    ``max_items`` (20k items is ~1.6 GB in float32) instead of running out of memory.
    """

    def __init__(self, lambda_: float = 500.0, max_items: int = 20_000):
        self.lambda_ = lambda_
        self.max_items = max_items

    def _fit(self, user_items):
        if self.n_items > self.max_items:
            raise ValueError(
                f"EASE needs a dense {self.n_items}^2 item matrix; catalogue exceeds "
                f"max_items={self.max_items}"
            )
        gram = (user_items.T @ user_items).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.lambda_
        inverse = np.linalg.inv(gram)
        weights = inverse / -np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        self.weights = weights.astype(np.float32)

    def _score_users(self, users, user_items):
        return np.asarray(user_items[users] @ self.weights, dtype=np.float32)

    def _item_similarity(self, items):
        return self.weights[items].copy()

    def _contributions(self, user_row, history, confidence, item_index):
        return self.weights[history, item_index] * confidence


def _spark_als(**params) -> Recommender:
    """Imported on use: pyspark is heavy and only the Spark path needs it."""
    from training.spark_als import SparkALSRecommender

    return SparkALSRecommender(**params)


RECOMMENDERS: dict[str, Callable[..., Recommender]] = {
    "popularity": PopularityRecommender,
    "als": ImplicitALSRecommender,
    "bpr": BPRRecommender,
    "item_item": ItemItemRecommender,
    "ease": EASERecommender,
    "spark_als": _spark_als,
}


def make_recommender(name: str, params: dict | None = None) -> Recommender:
    """Build a recommender from config: ``name`` is a key of ``RECOMMENDERS``."""
    if name not in RECOMMENDERS:
        raise ValueError(f"unknown recommender {name!r}; choose one of {sorted(RECOMMENDERS)}")
    return RECOMMENDERS[name](**(params or {}))
