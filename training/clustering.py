"""Clustering people into segments: standardization, three in-memory methods, their scores.

Every method follows one contract (``Segmenter``): ``fit(X)`` on a standardized matrix sets
``labels_`` (-1 = noise), ``assign(X)`` puts new rows into the fitted segments, and labels are
canonical — numbered by segment size (largest first, ties by centroid) — so the same data and
seed give the same labels, whatever order an algorithm happened to find its clusters in.

* ``KMeansSegmenter``: k-means for each k of a range; k is the one with the best silhouette,
  scored on a sample of rows so choosing k stays fast on many people.
* ``DBSCANSegmenter``: DBSCAN with eps at the knee of the sorted k-distance curve (the point
  farthest below the chord, as in "kneedle"). Fitted on a sample (DBSCAN is quadratic in the
  worst case); other rows join the segment of their nearest core point within eps, else noise.
* ``WardSegmenter``: Ward hierarchical clustering of up to ``max_sample`` rows, or above that
  of k-means micro-clusters (one tree over their centres); the tree is cut at the k with the
  best sampled silhouette.

Spark's BisectingKMeans for a million people and more is in ``training.segmentation``; its
segments are ``LeafSegmenter``s (leaves merged into segments).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

NOISE = -1


@dataclass
class Standardizer:
    """Raw feature columns → the weighted z-scores clustering runs on.

    Nulls take ``fill`` (0 for counts and money, otherwise the column mean, i.e. neutral);
    ``log_columns`` are log1p'd first (heavy tails would otherwise dominate the distances);
    ``weights`` scale a column's z-score (an embedding block of d columns weighs 1/√d each,
    so together they count like one feature).
    """

    columns: list[str]
    log_columns: list[str]
    fill: dict[str, float]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray

    def prepared(self, frame: pd.DataFrame) -> np.ndarray:
        """The filled, log-transformed raw columns (before centring)."""
        values = frame[self.columns].astype(float).fillna(self.fill)
        for column in self.log_columns:
            values[column] = np.log1p(values[column].clip(lower=0))
        return values.to_numpy(float)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return (self.prepared(frame) - self.mean) / self.scale * self.weights


def fit_standardizer(frame: pd.DataFrame, columns: list[str], log_columns=(), zero_fill=(),
                     weights: dict[str, float] | None = None) -> Standardizer:
    """A Standardizer fitted on `frame` (the same statistics Spark computes at scale)."""
    log_columns = [c for c in columns if c in set(log_columns)]
    means = frame[columns].astype(float).mean()
    fill = {c: 0.0 if c in set(zero_fill) or pd.isna(means[c]) else float(means[c]) for c in columns}
    draft = Standardizer(columns, log_columns, fill, np.zeros(len(columns)), np.ones(len(columns)),
                         np.ones(len(columns)))
    return finish_standardizer(draft, draft.prepared(frame).mean(axis=0),
                               draft.prepared(frame).std(axis=0), weights)


def finish_standardizer(draft: Standardizer, mean, std, weights: dict[str, float] | None) -> Standardizer:
    """`draft` with centring statistics; a constant column gets scale 1 (it stays all zero)."""
    std = np.asarray(std, float)
    weights = weights or {}
    return Standardizer(draft.columns, draft.log_columns, draft.fill, np.asarray(mean, float),
                        np.where(std > 1e-12, std, 1.0),
                        np.array([weights.get(c, 1.0) for c in draft.columns]))


def canonical_labels(labels: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..n-1 by size (largest first), ties by their centroid; noise stays -1."""
    labels = np.asarray(labels)
    found = [c for c in np.unique(labels) if c != NOISE]
    order = sorted(found, key=lambda c: (-(labels == c).sum(), tuple(np.round(X[labels == c].mean(axis=0), 9))))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping.get(c, NOISE) for c in labels], dtype=int)


def centroids_of(X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of each cluster 0..max(labels), in label order."""
    return np.array([X[labels == c].mean(axis=0) for c in range(labels.max() + 1)])


def nearest(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centre, its distance) for each row of X."""
    from sklearn.metrics import pairwise_distances_argmin_min

    index, distance = pairwise_distances_argmin_min(X, centres)
    return index.astype(int), distance


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Indices of a seeded sample of up to `size` rows (all rows, in order, when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def sampled_silhouette(X: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> float | None:
    """Silhouette of the non-noise rows on a seeded sample; None with fewer than 2 clusters."""
    from sklearn.metrics import silhouette_score

    keep = labels != NOISE
    X, labels = X[keep], labels[keep]
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return None
    rows = sample_rows(len(X), sample, seed)
    if len(np.unique(labels[rows])) < 2:
        return None
    return float(silhouette_score(X[rows], labels[rows]))


def choose_k(X: np.ndarray, labelings: dict[int, np.ndarray], sample: int, seed: int) -> tuple[int, dict]:
    """The k whose labels have the best sampled silhouette (ties: the smaller k), all scores."""
    scores = {k: sampled_silhouette(X, labels, sample, seed) for k, labels in labelings.items()}
    valid = {k: s for k, s in scores.items() if s is not None}
    if not valid:
        return min(labelings), scores
    return max(sorted(valid), key=lambda k: valid[k]), scores


def k_values(k_range: tuple[int, int], n: int) -> list[int]:
    """The ks of an inclusive range that n rows can support (at least k = 1)."""
    low, high = k_range
    return [k for k in range(low, high + 1) if k < n] or [1]


class Segmenter:
    """The contract: fit(X) -> self sets labels_ (canonical); assign(X) -> labels."""

    method = ""
    labels_: np.ndarray
    centroids_: np.ndarray

    def fit(self, X: np.ndarray) -> "Segmenter":
        raise NotImplementedError

    def assign(self, X: np.ndarray) -> np.ndarray:
        return nearest(X, self.centroids_)[0]

    def params(self) -> dict:
        """What was chosen (k, eps, …) for the MLflow run."""
        return {}

    def _set_labels(self, X: np.ndarray, labels: np.ndarray) -> None:
        self.labels_ = canonical_labels(labels, X)
        self.centroids_ = centroids_of(X, self.labels_) if (self.labels_ >= 0).any() else X[:0]


class KMeansSegmenter(Segmenter):
    method = "kmeans"

    def __init__(self, k_range: tuple[int, int] = (2, 8), seed: int = 42,
                 silhouette_sample: int = 5000, n_init: int = 4):
        self.k_range, self.seed, self.silhouette_sample, self.n_init = k_range, seed, silhouette_sample, n_init
        self.scores_: dict = {}

    def fit(self, X: np.ndarray) -> "KMeansSegmenter":
        from sklearn.cluster import KMeans

        labelings = {k: KMeans(k, n_init=self.n_init, random_state=self.seed).fit_predict(X)
                     for k in k_values(self.k_range, len(X))}
        self.k_, self.scores_ = choose_k(X, labelings, self.silhouette_sample, self.seed)
        self._set_labels(X, labelings[self.k_])
        return self

    def params(self) -> dict:
        return {"k": self.k_}


def knee_point(values: np.ndarray) -> float:
    """The value at the knee of an ascending curve: the point farthest below its chord."""
    y = np.sort(np.asarray(values, float))
    if len(y) < 3 or y[-1] == y[0]:
        return float(y[-1]) if len(y) else 0.0
    x = np.linspace(0.0, 1.0, len(y))
    gap = x - (y - y[0]) / (y[-1] - y[0])
    return float(y[int(np.argmax(gap))])


class DBSCANSegmenter(Segmenter):
    method = "dbscan"

    def __init__(self, min_samples: int = 10, max_sample: int = 20000, seed: int = 42):
        self.min_samples, self.max_sample, self.seed = min_samples, max_sample, seed

    def fit(self, X: np.ndarray) -> "DBSCANSegmenter":
        from sklearn.cluster import DBSCAN
        from sklearn.neighbors import NearestNeighbors

        rows = sample_rows(len(X), self.max_sample, self.seed)
        sample = X[rows]
        min_samples = max(2, min(self.min_samples, len(sample) - 1))
        distances, _ = NearestNeighbors(n_neighbors=min_samples).fit(sample).kneighbors(sample)
        self.eps_ = max(knee_point(distances[:, -1]), 1e-9)
        fitted = DBSCAN(eps=self.eps_, min_samples=min_samples).fit(sample)
        self.core_points_ = sample[fitted.core_sample_indices_]
        self.core_labels_ = fitted.labels_[fitted.core_sample_indices_]
        labels = self._nearest_core(X) if len(rows) < len(X) else fitted.labels_
        self._set_labels(X, labels)
        # Core labels in the canonical numbering, for assign().
        mapping = {raw: canon for raw, canon in zip(labels, self.labels_)}
        self.core_labels_ = np.array([mapping[c] for c in self.core_labels_], dtype=int)
        return self

    def _nearest_core(self, X: np.ndarray) -> np.ndarray:
        if len(self.core_points_) == 0:
            return np.full(len(X), NOISE)
        index, distance = nearest(X, self.core_points_)
        return np.where(distance <= self.eps_, self.core_labels_[index], NOISE)

    def assign(self, X: np.ndarray) -> np.ndarray:
        return self._nearest_core(X)

    def params(self) -> dict:
        return {"eps": self.eps_, "min_samples": self.min_samples, "fit_rows": min(self.max_sample, len(self.labels_))}


class WardSegmenter(Segmenter):
    method = "ward"

    def __init__(self, k_range: tuple[int, int] = (2, 8), seed: int = 42, max_sample: int = 20000,
                 micro_clusters: int = 200, silhouette_sample: int = 5000):
        self.k_range, self.seed, self.max_sample = k_range, seed, max_sample
        self.micro_clusters, self.silhouette_sample = micro_clusters, silhouette_sample
        self.scores_: dict = {}

    def fit(self, X: np.ndarray) -> "WardSegmenter":
        from scipy.cluster.hierarchy import fcluster, linkage
        from sklearn.cluster import MiniBatchKMeans

        if len(X) <= self.max_sample:
            points, member = X, np.arange(len(X))
            self.mode_ = "direct"
        else:  # one tree over micro-cluster centres; each person follows their micro-cluster
            micro = MiniBatchKMeans(self.micro_clusters, random_state=self.seed, n_init=3).fit(X)
            points, member = micro.cluster_centers_, micro.labels_
            self.mode_ = "micro_clusters"
        tree = linkage(points, method="ward")
        labelings = {k: fcluster(tree, k, criterion="maxclust")[member] - 1
                     for k in k_values(self.k_range, len(points))}
        self.k_, self.scores_ = choose_k(X, labelings, self.silhouette_sample, self.seed)
        self._set_labels(X, labelings[self.k_])
        return self

    def params(self) -> dict:
        return {"k": self.k_, "mode": self.mode_}


class LeafSegmenter(Segmenter):
    """Segments made of leaf clusters (Spark's BisectingKMeans leaves merged by Ward, fitted
    elsewhere): a row joins the segment of its nearest leaf centre."""

    def __init__(self, method: str, leaf_centres: np.ndarray, leaf_segments: np.ndarray, chosen: dict):
        self.method, self.chosen = method, chosen
        self.leaf_centres_, self.leaf_segments_ = np.asarray(leaf_centres, float), np.asarray(leaf_segments, int)

    def assign(self, X: np.ndarray) -> np.ndarray:
        return self.leaf_segments_[nearest(X, self.leaf_centres_)[0]]

    def params(self) -> dict:
        return dict(self.chosen)


def make_segmenter(method: str, k_range: tuple[int, int], seed: int, silhouette_sample: int,
                   dbscan_min_samples: int, max_sample: int, micro_clusters: int) -> Segmenter:
    if method == "kmeans":
        return KMeansSegmenter(k_range, seed, silhouette_sample)
    if method == "dbscan":
        return DBSCANSegmenter(dbscan_min_samples, max_sample, seed)
    if method == "ward":
        return WardSegmenter(k_range, seed, max_sample, micro_clusters, silhouette_sample)
    raise ValueError(f"unknown clustering method {method!r}")


# -- scores, profiles, plots ------------------------------------------------------------------

def cluster_metrics(X: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> dict:
    """Silhouette and Davies–Bouldin (sampled, noise left out), cluster count and noise share."""
    from sklearn.metrics import davies_bouldin_score

    keep = labels != NOISE
    clusters = len(np.unique(labels[keep]))
    metrics = {"n_clusters": clusters, "noise_share": float((~keep).mean()) if len(labels) else 0.0,
               "silhouette": sampled_silhouette(X, labels, sample, seed)}
    rows = sample_rows(int(keep.sum()), sample, seed)
    kept_X, kept_labels = X[keep][rows], labels[keep][rows]
    metrics["davies_bouldin"] = (float(davies_bouldin_score(kept_X, kept_labels))
                                 if 1 < len(np.unique(kept_labels)) < len(kept_labels) else None)
    return metrics


def profile_table(raw: pd.DataFrame, z: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Per segment: size, share, and for each feature its mean (raw) and its mean z-score —
    how far the segment sits from the overall mean in standard deviations. The `overall` row
    holds the whole population's means (z = 0)."""
    columns = list(raw.columns)
    rows = []
    for segment in sorted(set(labels)):
        mask = labels == segment
        rows.append({"segment": int(segment), "size": int(mask.sum()), "share": float(mask.mean()),
                     **{f"mean_{c}": float(raw[c][mask].mean()) for c in columns},
                     **{f"z_{c}": float(z[mask, i].mean()) for i, c in enumerate(columns)}})
    rows.append({"segment": "overall", "size": len(labels), "share": 1.0,
                 **{f"mean_{c}": float(raw[c].mean()) for c in columns},
                 **{f"z_{c}": 0.0 for c in columns}})
    return pd.DataFrame(rows)


def z_profile(profile: pd.DataFrame) -> pd.DataFrame:
    """segment × feature mean z-scores (noise and the overall row left out)."""
    rows = profile[profile["segment"].map(lambda s: s != "overall" and s != NOISE)]
    z = rows.set_index("segment")[[c for c in rows.columns if c.startswith("z_")]]
    return z.rename(columns=lambda c: c[2:])


def projection_figure(X: np.ndarray, labels: np.ndarray, names: dict, sample: int, seed: int):
    """The people of a sample on the data's first two principal components, by segment."""
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    rows = sample_rows(len(X), sample, seed)
    points = (PCA(2, random_state=seed).fit_transform(X[rows]) if min(X.shape[1], len(rows)) >= 2
              else np.column_stack([X[rows, 0], np.zeros(len(rows))]))
    figure, axes = plt.subplots(figsize=(7, 5))
    for segment in sorted(set(labels[rows])):
        mask = labels[rows] == segment
        axes.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.6,
                     label=names.get(int(segment), "noise" if segment == NOISE else str(segment)))
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.legend(fontsize=7, markerscale=2)
    figure.tight_layout()
    return figure


def heatmap_figure(z: pd.DataFrame, names: dict):
    """Segment × feature heatmap of mean z-scores (red above the overall mean, blue below)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6, 0.45 * z.shape[1] + 3), 0.5 * len(z) + 2))
    image = axes.imshow(z.to_numpy(float), cmap="RdBu_r", vmin=-2, vmax=2, aspect="auto")
    axes.set_xticks(range(z.shape[1]), z.columns, rotation=70, ha="right", fontsize=7)
    axes.set_yticks(range(len(z)), [f"{s}: {names.get(int(s), s)}" for s in z.index], fontsize=8)
    figure.colorbar(image, ax=axes, label="mean z-score")
    figure.tight_layout()
    return figure
