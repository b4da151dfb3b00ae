"""Segmentation in Spark: the per-person feature table, its standardization, BisectingKMeans
for a million people and more, and the registered model that assigns segments and personas.

The feature table joins features/behaviour (everyone with consented events) with rfm/,
embeddings/persons and, once they exist, profiles/ — one row per person, numeric columns only
(booleans as 0/1, each embedding dimension as `emb_NN`, `category_concentration` = the largest
share in the person's category affinity). Standardization statistics are computed here in Spark,
so the in-memory methods (training.clustering) and BisectingKMeans see the same z-scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from training.clustering import (LeafSegmenter, Segmenter, Standardizer, choose_k,
                                 finish_standardizer, z_profile)

EMBEDDING_PREFIX = "emb_"
_SHIFT = 10.0
_REQUIREMENTS = ("mlflow", "scikit-learn", "numpy", "scipy", "pandas", "cloudpickle")


def segment_features(behaviour: DataFrame, rfm: DataFrame | None = None,
                     embeddings: DataFrame | None = None, profiles: DataFrame | None = None,
                     profile_traits: tuple[str, ...] = ()) -> DataFrame:
    """person_id, user_id and every numeric candidate column (see the module docstring)."""
    frame = behaviour.withColumn(
        "category_concentration", F.array_max(F.map_values("category_affinity")))
    if rfm is not None:
        frame = frame.join(rfm.drop("user_id"), "person_id", "left")
    if embeddings is not None:
        dims = embeddings.select(F.max(F.size("vector"))).first()[0] or 0
        frame = frame.join(embeddings.select("person_id", *[
            F.col("vector")[i].alias(f"{EMBEDDING_PREFIX}{i:02d}") for i in range(dims)]),
            "person_id", "left")
    if profiles is not None:
        traits = [t for t in profile_traits if t in profiles.columns]
        frame = frame.join(profiles.select("person_id", *traits), "person_id", "left")
    numeric = [name for name, kind in frame.dtypes if name not in ("person_id", "user_id")
               and (kind in ("int", "bigint", "double", "float", "boolean", "smallint")
                    or kind.startswith("decimal"))]
    return frame.select("person_id", "user_id", *[F.col(c).cast("double").alias(c) for c in numeric])


def trait_profile(profile: pd.DataFrame) -> pd.DataFrame:
    """segment × feature mean z-scores (training.clustering.z_profile) without the embedding
    dimensions: they name no persona and mean nothing to a reader of the heatmap."""
    z = z_profile(profile)
    return z[[c for c in z.columns if not c.startswith(EMBEDDING_PREFIX)]]


def _prepared(column: str, standardizer: Standardizer):
    value = F.coalesce(F.col(column), F.lit(standardizer.fill[column]))
    return F.log1p(F.greatest(value, F.lit(0.0))) if column in standardizer.log_columns else value


def spark_standardizer(frame: DataFrame, columns: list[str], log_columns=(), zero_fill=(),
                       weights: dict[str, float] | None = None) -> Standardizer:
    """training.clustering.fit_standardizer, with the statistics computed in Spark."""
    means = frame.agg(*[F.avg(c).alias(c) for c in columns]).first().asDict()
    fill = {c: 0.0 if c in set(zero_fill) or means[c] is None else float(means[c]) for c in columns}
    draft = Standardizer(columns, [c for c in columns if c in set(log_columns)], fill,
                         np.zeros(len(columns)), np.ones(len(columns)), np.ones(len(columns)))
    stats = frame.agg(*[F.avg(_prepared(c, draft)) for c in columns],
                      *[F.stddev_pop(_prepared(c, draft)) for c in columns]).first()
    return finish_standardizer(draft, [stats[i] or 0.0 for i in range(len(columns))],
                               [stats[len(columns) + i] or 0.0 for i in range(len(columns))], weights)


def z_columns(standardizer: Standardizer) -> list:
    """One z-score column per feature, named like the feature."""
    return [((_prepared(c, standardizer) - float(m)) / float(s) * float(w)).alias(c)
            for c, m, s, w in zip(standardizer.columns, standardizer.mean, standardizer.scale,
                                  standardizer.weights)]


def bisecting_leaves(frame: DataFrame, standardizer: Standardizer, leaves: int, seed: int):
    """(person_id, user_id, leaf, z columns…) from Spark's BisectingKMeans with `leaves` leaf
    clusters, the leaf centres (z-space) and each leaf's size."""
    from pyspark.ml.clustering import BisectingKMeans
    from pyspark.ml.functions import array_to_vector

    z = frame.select("person_id", "user_id", *z_columns(standardizer))
    # Spark splits a cluster at its centre ± noise scaled by the centre's norm: on centred data
    # the root's centre is 0 and it would never split. A constant shift leaves distances alone.
    shifted = F.array(*[F.col(c) + _SHIFT for c in standardizer.columns])
    vectors = z.withColumn("features", array_to_vector(shifted))
    model = BisectingKMeans(k=leaves, seed=seed, featuresCol="features", predictionCol="leaf").fit(vectors)
    leafed = model.transform(vectors).drop("features")
    centres = np.array([np.asarray(c) for c in model.clusterCenters()]) - _SHIFT
    counted = dict(leafed.groupBy("leaf").count().collect())
    return leafed, centres, np.array([counted.get(i, 0) for i in range(len(centres))])


def ward_cuts(centres: np.ndarray, sizes: np.ndarray, ks: list[int]) -> dict[int, np.ndarray]:
    """For each k in `ks`, the group (0..k-1) of every leaf once the leaves are merged by Ward's
    criterion — the pair whose merge adds least within-segment variance, size × size / (size +
    size) × squared distance of their centres — so a big leaf weighs as many people as it holds."""
    groups = {i: (np.asarray(c, float), float(n), [i]) for i, (c, n) in enumerate(zip(centres, sizes))}
    cuts: dict[int, np.ndarray] = {}

    def record() -> None:
        labels = np.empty(len(centres), dtype=int)
        for group, (_, _, members) in enumerate(groups.values()):
            labels[members] = group
        cuts[len(groups)] = labels

    while True:
        if len(groups) in ks:
            record()
        if len(groups) <= min(ks) or len(groups) == 1:
            return cuts
        keys = list(groups)
        _, a, b = min((groups[a][1] * groups[b][1] / (groups[a][1] + groups[b][1])
                       * float(np.sum((groups[a][0] - groups[b][0]) ** 2)), a, b)
                      for i, a in enumerate(keys) for b in keys[i + 1:])
        (ca, na, ma), (cb, nb, mb) = groups.pop(a), groups.pop(b)
        groups[a] = ((ca * na + cb * nb) / (na + nb), na + nb, ma + mb)


@dataclass
class BisectingResult:
    """BisectingKMeans' segments: everyone's (person_id, user_id, segment, z columns…), the
    segmenter for the registry, the silhouette of each k and the sample it was scored on."""
    assigned: DataFrame
    segmenter: LeafSegmenter
    k_scores: dict
    sample_X: np.ndarray
    sample_labels: np.ndarray


def bisecting_segments(frame: DataFrame, standardizer: Standardizer, k_range: tuple[int, int],
                       leaves: int, seed: int, silhouette_sample: int) -> BisectingResult:
    """Segments of a table too big for memory: BisectingKMeans splits everyone into `leaves`
    leaves, Ward merges the leaves (ward_cuts), and k is the cut with the best silhouette on a
    sample of people. Bisecting alone, stopped at k, splits the largest cluster first, which
    can cut one persona in two while leaving two merged; its leaves, merged, do not."""
    leafed, centres, sizes = bisecting_leaves(frame, standardizer, leaves, seed)
    people = int(sizes.sum())
    sample = (leafed.sample(fraction=min(1.0, silhouette_sample / max(people, 1)), seed=seed)
              .toPandas().sort_values("person_id", ignore_index=True))
    X, leaf = sample[standardizer.columns].to_numpy(float), sample["leaf"].to_numpy(int)
    low, high = k_range
    cuts = ward_cuts(centres, sizes, [k for k in range(low, high + 1) if k <= len(centres)]
                     or [len(centres)])
    k, k_scores = choose_k(X, {k: cut[leaf] for k, cut in cuts.items()}, silhouette_sample, seed)
    member = np.eye(k)[cuts[k]]  # leaves × groups
    group_sizes = member.T @ sizes
    group_centres = member.T @ (centres * sizes[:, None]) / group_sizes[:, None]
    order = sorted(range(k), key=lambda g: (-group_sizes[g], tuple(np.round(group_centres[g], 9))))
    rank = {group: new for new, group in enumerate(order)}
    leaf_segment = np.array([rank[g] for g in cuts[k]])
    segment_of = F.create_map(*[F.lit(int(part)) for i, s in enumerate(leaf_segment) for part in (i, s)])
    assigned = leafed.withColumn("segment", segment_of[F.col("leaf")]).drop("leaf")
    segmenter = LeafSegmenter("bisecting_kmeans", centres, leaf_segment,
                              {"k": k, "leaves": len(centres)})
    return BisectingResult(assigned, segmenter, k_scores, X, leaf_segment[leaf])


def spark_profile_table(assigned: DataFrame, frame: DataFrame, columns: list[str]) -> pd.DataFrame:
    """training.clustering.profile_table over the whole population, aggregated in Spark."""
    raw = frame.select("person_id", *[F.col(c).alias(f"mean_{c}") for c in columns])
    joined = assigned.select("person_id", "segment", *[F.col(c).alias(f"z_{c}") for c in columns]).join(raw, "person_id")
    aggregates = [F.avg(f"mean_{c}").alias(f"mean_{c}") for c in columns] + [
        F.avg(f"z_{c}").alias(f"z_{c}") for c in columns]
    per_segment = joined.groupBy("segment").agg(F.count("*").alias("size"), *aggregates).toPandas()
    overall = joined.agg(F.count("*").alias("size"), *aggregates).toPandas()
    total = int(overall["size"].iloc[0])
    per_segment = per_segment.sort_values("segment").assign(share=lambda t: t["size"] / total)
    overall = overall.assign(segment="overall", share=1.0, **{f"z_{c}": 0.0 for c in columns})
    ordered = ["segment", "size", "share", *[f"mean_{c}" for c in columns], *[f"z_{c}" for c in columns]]
    table = pd.concat([per_segment[ordered], overall[ordered]], ignore_index=True)
    table["segment"] = table["segment"].astype(object)
    return table


class SegmenterModel(mlflow.pyfunc.PythonModel):
    """predict: rows of raw feature columns in, (segment, persona) out — the same
    standardization, segments and names as the batch run that registered it. Centroid methods
    assign the nearest centre (for BisectingKMeans: the segment of the nearest leaf centre),
    DBSCAN the nearest core point within eps (else -1, "Unassigned")."""

    def __init__(self, standardizer: Standardizer, segmenter: Segmenter, names: dict[int, str]):
        self.standardizer, self.segmenter, self.names = standardizer, segmenter, names

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = model_input.reindex(columns=self.standardizer.columns)
        segments = self.segmenter.assign(self.standardizer.transform(frame))
        return pd.DataFrame({"segment": segments.astype(int),
                             "persona": [self.names.get(int(s), str(s)) for s in segments]})


def log_segmenter(model: SegmenterModel, example: pd.DataFrame, name: str = "model"):
    """Log the model in the active run, with its signature and an input example."""
    from importlib.metadata import version

    from mlflow.models import infer_signature

    example = example[model.standardizer.columns].astype(float)
    signature = infer_signature(example, model.predict(None, example))
    return mlflow.pyfunc.log_model(
        name=name, python_model=model, signature=signature, input_example=example,
        pip_requirements=[f"{package}=={version(package)}" for package in _REQUIREMENTS])
