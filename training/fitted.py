"""A fitted recommender bundled with what it needs to answer for a person id.

Evaluation, batch recommendations and the served MLflow model all recommend through this one
class, so they apply the same rules:

- a person's whole history (every item they touched, even an add-to-cart they removed again,
  whose confidence sums to nothing) is never recommended back;
- people the model can't personalize for (unknown ids, or no positive history) get the most
  popular items they haven't touched, instead of arbitrary zero-score items.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.interactions import Interactions
from training.metrics import PAD
from training.recommenders import (PopularityRecommender, Recommender, drop_items,
                                   longest_row)

_RECOMMENDER_FILE = "recommender.pkl"
_SEEN_FILE = "seen.npz"
_RECIPE_FILE = "recipe.json"
_INTERACTIONS_DIR = "interactions"


@dataclass(eq=False)
class FittedRecommender:
    """``recommender`` fitted on ``interactions``; ``seen`` marks every (person, item) touched.

    ``seen`` has the shape and ids of ``interactions``. ``recipe`` is the plain-data
    configuration that produced the model (kept with it so it can be refit and compared).
    """

    recommender: Recommender
    interactions: Interactions
    seen: sp.csr_matrix
    recipe: dict

    def __post_init__(self) -> None:
        self.seen = sp.csr_matrix(self.seen, dtype=np.float32)
        if self.seen.shape != self.interactions.matrix.shape:
            raise ValueError(f"seen matrix {self.seen.shape} does not match interactions "
                             f"{self.interactions.matrix.shape}")

    @cached_property
    def _fallback(self) -> tuple[PopularityRecommender, sp.csr_matrix]:
        """Popularity over the same items, and ``seen`` plus one empty row for unknown people."""
        popularity = PopularityRecommender().fit(self.interactions.matrix)
        empty = sp.csr_matrix((1, self.seen.shape[1]), dtype=np.float32)
        return popularity, sp.vstack([self.seen, empty]).tocsr()

    @cached_property
    def _seen_not_liked(self) -> sp.csr_matrix:
        """Items touched without a positive confidence: the recommender doesn't filter these."""
        liked = (self.interactions.matrix > 0).astype(np.float32)
        only_seen = sp.csr_matrix(self.seen - self.seen.multiply(liked))
        only_seen.eliminate_zeros()
        return only_seen

    def recommend_rows(self, rows, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` item indices and scores per row index; -1 is an unknown person."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        items = np.full((len(rows), k), PAD, dtype=np.int64)
        scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        known = rows >= 0
        has_history = np.zeros(len(rows), dtype=bool)
        has_history[known] = np.diff(self.interactions.matrix.indptr)[rows[known]] > 0
        if has_history.any():
            personal = rows[has_history]
            forbidden = self._seen_not_liked[personal]
            # over-fetch by the most seen-but-not-liked items, so k remain once they are dropped
            candidates = self.recommender.recommend(
                personal, self.interactions.matrix, k + longest_row(forbidden))
            items[has_history], scores[has_history] = drop_items(*candidates, forbidden, k)
        if (~has_history).any():
            popularity, seen = self._fallback
            fallback_rows = np.where(known, rows, seen.shape[0] - 1)[~has_history]
            items[~has_history], scores[~has_history] = popularity.recommend(
                fallback_rows, seen, k)
        return items, scores

    def recommend(self, person_ids, k: int) -> pd.DataFrame:
        """Rows (person_id, item_id, rank, score), rank 1 = best; empty slots are left out."""
        person_ids = np.asarray(list(person_ids), dtype=object)
        rows = pd.Index(self.interactions.person_ids).get_indexer(person_ids)
        items, scores = self.recommend_rows(rows, k)
        filled = items != PAD
        return pd.DataFrame({
            "person_id": np.repeat(person_ids, k)[filled.ravel()],
            "item_id": self.interactions.item_ids[items[filled]],
            "rank": np.tile(np.arange(1, k + 1), len(person_ids))[filled.ravel()],
            "score": scores[filled].astype(np.float64),
        })

    def similar_items(self, k: int) -> pd.DataFrame:
        """Rows (item_id, similar_item_id, rank, score) for every item of the catalogue."""
        n_items = len(self.interactions.item_ids)
        items, scores = self.recommender.similar_items(np.arange(n_items), k)
        filled = items != PAD
        return pd.DataFrame({
            "item_id": np.repeat(self.interactions.item_ids, k)[filled.ravel()],
            "similar_item_id": self.interactions.item_ids[items[filled]],
            "rank": np.tile(np.arange(1, k + 1), n_items)[filled.ravel()],
            "score": scores[filled].astype(np.float64),
        })

    def explain(self, person_id, item_id, n: int = 10) -> pd.DataFrame:
        """The person's history items that pushed ``item_id`` up most: (item_id, contribution).

        Empty when the person or item is unknown, or the model ignores history (popularity).
        """
        row = self.interactions.person_index.get(person_id)
        column = self.interactions.item_index.get(item_id)
        if row is None or column is None:
            return pd.DataFrame({"item_id": pd.Series(dtype=object),
                                 "contribution": pd.Series(dtype=np.float64)})
        history, contributions = self.recommender.explain(
            row, self.interactions.matrix, column, n)
        return pd.DataFrame({"item_id": self.interactions.item_ids[history],
                             "contribution": contributions.astype(np.float64)})

    def save(self, path: str | Path) -> None:
        """Write the model into folder ``path``: the id mappings and matrix (Interactions),
        the seen matrix, the pickled recommender and the recipe as JSON."""
        folder = Path(path)
        self.interactions.save(folder / _INTERACTIONS_DIR)
        sp.save_npz(folder / _SEEN_FILE, self.seen)
        (folder / _RECOMMENDER_FILE).write_bytes(pickle.dumps(self.recommender))
        (folder / _RECIPE_FILE).write_text(json.dumps(self.recipe, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> FittedRecommender:
        folder = Path(path)
        return cls(
            recommender=pickle.loads((folder / _RECOMMENDER_FILE).read_bytes()),
            interactions=Interactions.load(folder / _INTERACTIONS_DIR),
            seen=sp.load_npz(folder / _SEEN_FILE).tocsr(),
            recipe=json.loads((folder / _RECIPE_FILE).read_text()),
        )
