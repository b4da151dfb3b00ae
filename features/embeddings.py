"""Item and person vectors from item co-occurrence: a truncated SVD of the person × item matrix.

Spark shrinks the events to one weight per (person, item) — log(1 + item events) — and the SVD
runs in memory on that sparse matrix, X ≈ U·S·Vᵀ. Persons get U·√S and items V·√S, so a
person's vector dotted with an item's approximates their affinity, items bought or viewed by
the same people point the same way (cosine similarity finds similar items), and person vectors
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
