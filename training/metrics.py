"""Ranking metrics: the one definition every recommender, job and benchmark is scored by.

Definitions follow Microsoft Recommenders' python evaluation so Tailor's numbers can be put
beside its published MovieLens tables:

- precision@k: hits in the top k divided by k (not by the list length);
- recall@k: hits in the top k divided by the number of the user's relevant items;
- nDCG@k: binary gain, DCG = sum(1 / log2(rank + 1)) over hits, divided by the ideal DCG of
  min(k, |relevant|) hits at the top;
- MAP@k: sum of precision@rank at each hit within the top k, divided by the number of the
  user's relevant items (all of them, not min(k, |relevant|));
- catalog coverage: distinct items recommended in anyone's top k over the catalogue size.

User-level metrics are averaged over users that have relevant (test) items; users without
any are skipped, and a test user without recommendations scores zero.

Metric names use ``<name>_at_<k>`` because MLflow rejects ``@`` in metric keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import scipy.sparse as sp

#: Marks an empty slot in a recommendation array (fewer candidates than k).
PAD = -1

Recommended = Mapping[object, Iterable] | np.ndarray
Relevant = Mapping[object, Iterable] | sp.spmatrix | sp.sparray


def _ranked(items: Iterable) -> np.ndarray:
    """A ranked item list with PAD slots (from integer arrays) dropped."""
    ranked = np.asarray(list(items))
    return ranked[ranked != PAD] if ranked.dtype.kind in "iu" else ranked


def _as_lists(recommended: Recommended) -> dict:
    """Map user -> ranked items; an array's row index is the user."""
    if isinstance(recommended, np.ndarray):
        return {u: _ranked(row) for u, row in enumerate(np.atleast_2d(recommended))}
    return {u: _ranked(items) for u, items in recommended.items()}


def _as_sets(relevant: Relevant) -> dict:
    """Map user -> set of relevant items; a sparse matrix's rows are users, its columns items."""
    if sp.issparse(relevant):
        csr = sp.csr_matrix(relevant)
        csr.eliminate_zeros()
        return {
            u: set(csr.indices[csr.indptr[u] : csr.indptr[u + 1]].tolist())
            for u in np.flatnonzero(np.diff(csr.indptr))
        }
    return {u: items for u, raw in relevant.items() if (items := set(raw))}


def _hits(recommended: Recommended, relevant: Relevant, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean hit matrix [test users, k] and each test user's number of relevant items.

    Every other metric is a function of these two, which is what keeps them consistent.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    recs = _as_lists(recommended)
    rel = _as_sets(relevant)
    hits = np.zeros((len(rel), k), dtype=bool)
    n_relevant = np.empty(len(rel), dtype=np.float64)
    for row, (user, items) in enumerate(rel.items()):
        top = recs.get(user, ())[:k]
        hits[row, : len(top)] = [item in items for item in top]
        n_relevant[row] = len(items)
    return hits, n_relevant


def _precision(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / hits.shape[1]


def _recall(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / n_relevant


def _ndcg(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(n_relevant, k).astype(int) - 1]
    return (hits * discounts).sum(axis=1) / ideal


def _average_precision(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    return (precision_at_rank * hits).sum(axis=1) / n_relevant


#: Per-user metric functions of (hits, n_relevant); the public functions all go through here.
_USER_METRICS = {
    "precision": _precision,
    "recall": _recall,
    "ndcg": _ndcg,
    "map": _average_precision,
}


def _mean(per_user: np.ndarray) -> float:
    return float(per_user.mean()) if len(per_user) else 0.0


def _mean_over_users(metric, recommended: Recommended, relevant: Relevant, k: int) -> float:
    hits, n_relevant = _hits(recommended, relevant, k)
    return _mean(metric(hits, n_relevant))


def precision_at_k(recommended: Recommended, relevant: Relevant, k: int) -> float:
    return _mean_over_users(_precision, recommended, relevant, k)


def recall_at_k(recommended: Recommended, relevant: Relevant, k: int) -> float:
    return _mean_over_users(_recall, recommended, relevant, k)


def ndcg_at_k(recommended: Recommended, relevant: Relevant, k: int) -> float:
    return _mean_over_users(_ndcg, recommended, relevant, k)


def map_at_k(recommended: Recommended, relevant: Relevant, k: int) -> float:
    return _mean_over_users(_average_precision, recommended, relevant, k)


def catalog_coverage(recommended: Recommended, k: int, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's top k (all users given)."""
    recs = _as_lists(recommended)
    shown = {item for items in recs.values() for item in items[:k].tolist()}
    return len(shown) / n_items if n_items else 0.0


def evaluate(recommended: Recommended, relevant: Relevant, k: int, n_items: int) -> dict:
    """All metrics at once, from a single hit computation.

    ``recommended``: dict user -> ranked items, or an int array [users, >=k] whose row index is
    the user; PAD (-1) marks empty slots in integer lists and is skipped. ``relevant``: dict
    user -> items, or a sparse users x items matrix of test interactions. Keys:
    precision/recall/ndcg/map_at_<k>, coverage_at_<k>, and n_users (the test users averaged
    over).
    """
    hits, n_relevant = _hits(recommended, relevant, k)
    metrics = {
        f"{name}_at_{k}": _mean(metric(hits, n_relevant))
        for name, metric in _USER_METRICS.items()
    }
    metrics[f"coverage_at_{k}"] = catalog_coverage(recommended, k, n_items)
    metrics["n_users"] = len(n_relevant)
    return metrics
