"""Spark MLlib ALS for interaction tables too big for one machine (implicit feedback).

Same parameter names as ``training.recommenders.ImplicitALSRecommender`` so one config block
can drive either, but the numbers do not mean the same thing, so tune each separately:

- confidence: MLlib uses 1 + alpha * r, implicit uses alpha * r;
- regularization: MLlib multiplies it by each user's / item's number of interactions
  (ALS-WR), implicit applies it as given.

On one machine implicit is much faster (see DESIGN.md); this path is for scale-out.
``SparkALSRecommender`` puts it behind the common Recommender interface (``model: spark_als``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from training.recommenders import _FactorRecommender


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


def recommend_spark_als(
    model: ALSModel,
    interactions: DataFrame,
    k: int,
    user_col: str = "user_idx",
    item_col: str = "item_idx",
    confidence_col: str = "confidence",
) -> DataFrame:
    """Top ``k`` unseen items per user: rows (user, item, score, rank), rank 1 = best.

    MLlib can't filter seen items itself, so it is asked for k + (the largest history) items,
    which guarantees k unseen ones remain for everybody (or all there are), and the seen ones
    are anti-joined away. That over-fetch is bounded by the catalogue size.
    """
    liked = interactions.where(F.col(confidence_col) > 0).select(user_col, item_col).distinct()
    largest_history = liked.groupBy(user_col).count().agg(F.max("count")).first()[0] or 0
    n_items = model.itemFactors.count()
    candidates = model.recommendForAllUsers(min(k + largest_history, n_items))
    scored = candidates.select(user_col, F.explode("recommendations").alias("rec")).select(
        user_col, F.col(f"rec.{item_col}").alias(item_col), F.col("rec.rating").alias("score")
    )
    unseen = scored.join(liked, [user_col, item_col], "left_anti")
    by_score = Window.partitionBy(user_col).orderBy(F.col("score").desc(), F.col(item_col))
    return unseen.withColumn("rank", F.row_number().over(by_score)).where(F.col("rank") <= k)


class SparkALSRecommender(_FactorRecommender):
    """MLlib ALS behind the same Recommender interface as implicit's, so the training job,
    evaluation, registry and service treat ``model: spark_als`` like any other model.

    The fit runs on the active Spark session (the job's: local or a cluster); the learned
    factors are then held as numpy arrays, like implicit's, for scoring and pickling. A person
    or item MLlib returns no factors for (no positive confidence) gets zeros.
    """

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

    def _contributions(self, user_row, history, confidence, item_index):
        # MLlib has no exact explain: weight each history item by its factor similarity
        return (self.item_factors[history] @ self.item_factors[item_index]) * confidence


def _dense_factors(factors: DataFrame, n: int, rank: int) -> np.ndarray:
    table = factors.toPandas()
    dense = np.zeros((n, rank), dtype=np.float32)
    if len(table):
        dense[table["id"].to_numpy()] = np.stack(table["features"].to_numpy())
    return dense
