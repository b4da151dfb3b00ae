"""Spark MLlib ALS for interaction tables too big for one machine (implicit feedback).

Same parameter names as ``training.recommenders.ImplicitALSRecommender`` so one config block
can drive either, but the numbers do not mean the same thing, so tune each separately:

- confidence: MLlib uses 1 + alpha * r, implicit uses alpha * r;
- regularization: MLlib multiplies it by each user's / item's number of interactions
  (ALS-WR), implicit applies it as given.

On one machine implicit is much faster (see DESIGN.md); this path is for scale-out.
"""

from __future__ import annotations

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


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
