"""Spark MLlib ALS for interaction tables too big for one machine (implicit feedback).

Same parameter names as ``training.recommenders.ImplicitALSRecommender`` so one config block
can drive either, but the numbers do not mean the same thing, so tune each separately:

- confidence: MLlib uses 1 + alpha * r, implicit uses alpha * r;
- regularization: MLlib multiplies it by each user's / item's number of interactions
  (ALS-WR), implicit applies it as given.

On one machine implicit is much faster (see DESIGN.md); this path is for scale-out.
``SparkALSRecommender`` puts it behind the common Recommender interface (``model: spark_als``)
and recommends batches with MLlib's ``recommendForAllUsers``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from training.metrics import PAD
from training.recommenders import _FactorRecommender, library_top_k


def fit_spark_als(
    interactions: DataFrame,
    factors: int = 100,
    regularization: float = 0.01,
    alpha: float = 1.0,
    iterations: int = 15,
    seed: int = 42,
    user_col: str = "user_idx",
    item_col: str = "item_idx",
    confidence_col: str = "confidence",
) -> ALSModel:
    """Fit implicit-preference ALS on (user index, item index, confidence) rows.

    Indices must be integers (MLlib's requirement); build them with
    ``training.interactions`` or any stable id -> index mapping.
    """
    als = ALS(
        rank=factors,
        regParam=regularization,
        alpha=alpha,
        maxIter=iterations,
        seed=seed,
        implicitPrefs=True,
        userCol=user_col,
        itemCol=item_col,
        ratingCol=confidence_col,
        coldStartStrategy="drop",
    )
    return als.fit(interactions)


class SparkALSRecommender(_FactorRecommender):
    """MLlib ALS behind the same Recommender interface as implicit's, so the training job,
    evaluation, registry and service treat ``model: spark_als`` like any other model.

    The fit runs on the active Spark session (the job's: local or a cluster); the learned
    factors are then held as numpy arrays, like implicit's, for scoring and pickling. A person
    or item MLlib returns no factors for (no positive confidence) gets zeros. Batches are
    recommended by the fitted MLlib model's ``recommendForAllUsers`` while it is at hand (in
    the process that fitted it: evaluation, tuning, the batch job); a pickled copy (the
    registered model, the service) scores from the numpy factors.
    """

    _als: ALSModel | None = None

    def __init__(self, factors: int = 10, regularization: float = 0.1, alpha: float = 1.0,
                 iterations: int = 10, random_state: int | None = None):
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state

    def _fit(self, user_items: sp.csr_matrix) -> None:
        spark = SparkSession.getActiveSession()
        if spark is None:
            raise RuntimeError("spark_als needs an active Spark session (the training job's)")
        coo = user_items.tocoo()
        rows = pd.DataFrame({"user_idx": coo.row.astype("int32"), "item_idx": coo.col.astype("int32"),
                             "confidence": coo.data.astype("float32")})
        model = fit_spark_als(spark.createDataFrame(rows), self.factors, self.regularization,
                              self.alpha, self.iterations,
                              seed=self.random_state if self.random_state is not None else 42)
        self.user_factors = _dense_factors(model.userFactors, user_items.shape[0], self.factors)
        self.item_factors = _dense_factors(model.itemFactors, user_items.shape[1], self.factors)
        self._als = model

    def _recommend(self, users, user_items, k, filter_already_liked):
        if self._als is None:
            return super()._recommend(users, user_items, k, filter_already_liked)
        return library_top_k(self._spark_top, users, user_items, k, filter_already_liked,
                             self.n_items)

    def _spark_top(self, users: np.ndarray, rows: sp.csr_matrix, n: int):
        """MLlib's best ``n`` for every user, kept for ``users`` (in their order)."""
        flat = (self._als.recommendForAllUsers(n)
                .select("user_idx", F.posexplode("recommendations").alias("slot", "rec"))
                .select("user_idx", "slot", "rec.item_idx", "rec.rating").toPandas())
        unique, position = np.unique(users, return_inverse=True)
        row = pd.Index(unique).get_indexer(flat["user_idx"])
        wanted = row >= 0
        items = np.full((len(unique), n), PAD, dtype=np.int64)
        scores = np.full((len(unique), n), -np.inf, dtype=np.float32)
        cells = row[wanted], flat["slot"].to_numpy()[wanted]
        items[cells] = flat["item_idx"].to_numpy()[wanted]
        scores[cells] = flat["rating"].to_numpy()[wanted]
        return items[position], scores[position]

    def __getstate__(self) -> dict:
        # the MLlib model lives in the JVM of the session that fitted it: not picklable
        return {**self.__dict__, "_als": None}

    def _contributions(self, user_row, history, confidence, item_index):
        # MLlib has no exact explain: weight each history item by its factor similarity
        return (self.item_factors[history] @ self.item_factors[item_index]) * confidence


def _dense_factors(factors: DataFrame, n: int, rank: int) -> np.ndarray:
    table = factors.toPandas()
    dense = np.zeros((n, rank), dtype=np.float32)
    if len(table):
        dense[table["id"].to_numpy()] = np.stack(table["features"].to_numpy())
    return dense
