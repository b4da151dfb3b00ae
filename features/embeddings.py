"""Item and person vectors from item co-occurrence: a truncated SVD of the person × item matrix.

Spark shrinks the events to one weight per (person, item) — log(1 + item events) — and the SVD
runs in memory on that sparse matrix, X ≈ U·S·Vᵀ. Persons get U·√S and items V·√S, so a
person's vector dotted with an item's approximates their affinity, items bought or viewed by
the same people point the same way (`similar_items`: the nearest by cosine), and person vectors
serve as clustering features.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def person_item_weights(events: DataFrame) -> DataFrame:
    """(person_id, item_id, weight): log(1 + the person's events on the item)."""
    return (events.where(F.col("person_id").isNotNull() & F.col("item_id").isNotNull())
            .groupBy("person_id", "item_id")
            .agg(F.log1p(F.count("*").cast("double")).alias("weight")))


def svd_embeddings(weights: pd.DataFrame, dims: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(persons, items): person_id / item_id with `vector` (a list of floats, at most `dims`).

    Fewer dimensions than asked when the matrix has fewer people or items; empty frames when
    there is nothing to factor.
    """
    from sklearn.utils.extmath import randomized_svd

    persons = pd.Index(weights["person_id"].unique())
    items = pd.Index(weights["item_id"].unique())
    rank = min(dims, len(persons), len(items))
    if rank == 0:
        return (pd.DataFrame({"person_id": [], "vector": []}),
                pd.DataFrame({"item_id": [], "vector": []}))
    matrix = sp.csr_matrix((weights["weight"].to_numpy(float),
                            (persons.get_indexer(weights["person_id"]),
                             items.get_indexer(weights["item_id"]))),
                           shape=(len(persons), len(items)))
    u, s, vt = randomized_svd(matrix, rank, random_state=seed)
    root = np.sqrt(s)
    return (pd.DataFrame({"person_id": persons, "vector": (u * root).tolist()}),
            pd.DataFrame({"item_id": items, "vector": (vt.T * root).tolist()}))


SIMILAR_COLUMNS = ["item_id", "similar_item_id", "rank", "score"]


def similar_items(items: pd.DataFrame, k: int, item_ids=None, block: int = 1024) -> pd.DataFrame:
    """(item_id, similar_item_id, rank, score): for each of `item_ids` (default: every item of
    `items`, the features/embeddings/items rows), its `k` nearest other items by cosine of their
    vectors, best first (rank 1; ties by position in `items`); an all-zero vector scores 0
    against every item. An unknown item id is a KeyError naming it. Scored `block` items at a time, so memory stays at
    block × items."""
    ids = pd.Index(items["item_id"])
    queries = np.arange(len(ids)) if item_ids is None else ids.get_indexer(pd.Index(item_ids))
    if (queries < 0).any():
        unknown = [i for i, q in zip(item_ids, queries) if q < 0]
        raise KeyError(f"no embedding for item(s) {', '.join(map(str, unknown[:5]))}")
    k = min(k, len(ids) - 1)
    if k <= 0 or len(queries) == 0:
        return pd.DataFrame({c: [] for c in SIMILAR_COLUMNS})
    vectors = np.array(items["vector"].tolist(), float)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    parts = []
    for start in range(0, len(queries), block):
        query = queries[start:start + block]
        scores = unit[query] @ unit.T
        scores[np.arange(len(query)), query] = -np.inf  # never the item itself
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top, top_scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)
        parts.append(pd.DataFrame({"item_id": np.repeat(ids[query].to_numpy(), k),
                                   "similar_item_id": ids[top.ravel()].to_numpy(),
                                   "rank": np.tile(np.arange(1, k + 1), len(query)),
                                   "score": top_scores.ravel()}))
    return pd.concat(parts, ignore_index=True)
