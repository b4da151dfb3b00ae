"""From canonical events to the person x item confidence matrix every recommender trains on.

One function decides how much an event says about a person's taste (event-type weight, rating
value, recency), so the jobs, the benchmark and the tests all build the same matrix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight

#: Weight marker meaning "use the event's ``value`` column" (explicit ratings).
RATING = "rating"

_MATRIX_FILE = "matrix.npz"
_IDS_FILE = "ids.json"


@dataclass(frozen=True, eq=False)
class Interactions:
    """A CSR person x item confidence matrix plus the ids of its rows and columns.

    Row ``i`` belongs to ``person_ids[i]`` and column ``j`` to ``item_ids[j]``; the dict
    properties map back from ids to positions.
    """

    matrix: sp.csr_matrix
    person_ids: np.ndarray
    item_ids: np.ndarray

    def __post_init__(self) -> None:
        if self.matrix.shape != (len(self.person_ids), len(self.item_ids)):
            raise ValueError(
                f"matrix shape {self.matrix.shape} does not match "
                f"{len(self.person_ids)} person ids x {len(self.item_ids)} item ids"
            )

    @cached_property
    def person_index(self) -> dict:
        return {pid: i for i, pid in enumerate(self.person_ids.tolist())}

    @cached_property
    def item_index(self) -> dict:
        return {iid: j for j, iid in enumerate(self.item_ids.tolist())}

    def save(self, path: str | Path) -> None:
        """Write ``matrix.npz`` and ``ids.json`` into the folder ``path`` (created if needed)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        sp.save_npz(folder / _MATRIX_FILE, self.matrix)
        ids = {"person_ids": self.person_ids.tolist(), "item_ids": self.item_ids.tolist()}
        (folder / _IDS_FILE).write_text(json.dumps(ids))

    @classmethod
    def load(cls, path: str | Path) -> Interactions:
        folder = Path(path)
        ids = json.loads((folder / _IDS_FILE).read_text())
        return cls(
            matrix=sp.load_npz(folder / _MATRIX_FILE).tocsr(),
            person_ids=np.asarray(ids["person_ids"]),
            item_ids=np.asarray(ids["item_ids"]),
        )


def build_interactions(
    events: pd.DataFrame,
    weights: Mapping[str, float | str],
    half_life_days: float | None = None,
    as_of: pd.Timestamp | str | None = None,
    bm25: Mapping[str, float] | None = None,
    tfidf: bool = False,
    binarize: bool = False,
    person_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> Interactions:
    """Sum weighted events per (person, item) into a confidence matrix.

    ``events`` has columns person_id, item_id, event_type, event_time, optionally
    event_count (a row standing for that many events of its type, as
    ``training.spark_interactions`` collects them; default 1) and, when a weight is
    ``"rating"``, value. Steps, in order:

    1. keep events whose type has a weight (others say nothing about taste) and, when
       ``as_of`` is given, happened at or before it;
    2. weigh each row by its type times its event_count, so repeated views or purchases add
       up; for ``"rating"`` types by its ``value``, and only a person's latest rating of an
       item counts (re-rating replaces the old rating, it doesn't add to it);
    3. with ``half_life_days``, multiply by 0.5 ** (age / half_life), age measured from
       ``as_of`` (default: the latest event), so old interest fades;
    4. sum per (person, item); pairs whose total is not positive are dropped (e.g. an add to
       cart cancelled by a negatively weighted removal);
    5. ``binarize`` sets every kept pair to 1; then optionally BM25 (``bm25`` holds K1, B) or
       TF-IDF re-weighting, oriented as implicit's BM25/TF-IDF recommenders do (items are the
       documents), which damps heavy users and very popular items.

    Rows and columns are the sorted distinct ids, unless ``person_ids``/``item_ids`` fix the
    id space (e.g. to build a test matrix aligned with the training one); events outside a
    fixed space are dropped.
    """
    if bm25 is not None and tfidf:
        raise ValueError("choose at most one of bm25 and tfidf weighting")
    unknown = {w for w in weights.values() if isinstance(w, str) and w != RATING}
    if unknown:
        raise ValueError(f"weights must be numbers or {RATING!r}, got {sorted(unknown)}")

    df = events[events["event_type"].isin(list(weights))]
    df = df.dropna(subset=["person_id", "item_id"])
    if half_life_days is not None or as_of is not None:
        times = pd.to_datetime(df["event_time"], utc=True)
        cut = times.max() if as_of is None else pd.to_datetime(as_of, utc=True)
        df, times = df[times <= cut], times[times <= cut]
    confidence = _event_weights(df, weights)
    if half_life_days is not None:
        age_days = (cut - times).dt.total_seconds().to_numpy() / 86400.0
        confidence = confidence * 0.5 ** (age_days / half_life_days)

    rows, person_ids = _positions(df["person_id"], person_ids)
    cols, item_ids = _positions(df["item_id"], item_ids)
    known = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (confidence[known], (rows[known], cols[known])),
        shape=(len(person_ids), len(item_ids)),
        dtype=np.float64,
    )
    matrix.sum_duplicates()
    matrix.data[matrix.data <= 0] = 0
    matrix.eliminate_zeros()
    if binarize:
        matrix.data[:] = 1.0
    if bm25 is not None:
        matrix = bm25_weight(matrix.T, **bm25).T.tocsr()
    elif tfidf:
        matrix = tfidf_weight(matrix.T).T.tocsr()
    return Interactions(matrix.astype(np.float32), person_ids, item_ids)


def _event_weights(df: pd.DataFrame, weights: Mapping[str, float | str]) -> np.ndarray:
    by_type = df["event_type"].map({t: w for t, w in weights.items() if w != RATING})
    if "event_count" in df:
        by_type = by_type * df["event_count"]
    confidence = by_type.fillna(0.0).to_numpy(dtype=np.float64)
    rated = df["event_type"].isin([t for t, w in weights.items() if w == RATING]).to_numpy()
    if rated.any():
        if "value" not in df:
            raise ValueError(f"{RATING!r} weights need a 'value' column")
        rating = pd.to_numeric(df["value"], errors="coerce").to_numpy(dtype=np.float64)
        confidence[rated] = 0.0
        latest = _latest_per_pair(df, np.flatnonzero(rated & ~np.isnan(rating)))
        confidence[latest] = rating[latest]
    return confidence


def _latest_per_pair(df: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
    """Of the rows at ``positions``, the latest one per (person, item, event type)."""
    keys = ["person_id", "item_id", "event_type"]
    rows = df.iloc[positions][keys].reset_index(drop=True)
    rows["at"] = pd.to_datetime(df["event_time"].iloc[positions], utc=True).to_numpy()
    ordered = rows.sort_values("at", kind="stable")
    return positions[ordered.index[~ordered.duplicated(keys, keep="last")]]


def _positions(ids: pd.Series, space: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Position of each id in ``space`` (-1 if absent); the space defaults to the sorted ids."""
    if space is None:
        space = np.sort(ids.unique())
    index = pd.Index(space)
    return index.get_indexer(ids), np.asarray(space)
