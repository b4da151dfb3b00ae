"""Train/test splits of interaction tables, shared by training jobs, tuning and benchmarks.

Both splits keep every (user, item) pair on one side only: a repeated view of an item can never
sit in train while the same item is "predicted" in test. Both return ``(train, test)`` as row
subsets of the input, index preserved; users without a test side are train-only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def per_user_random_split(
    df: pd.DataFrame,
    ratio: float = 0.75,
    seed: int = 42,
    user_col: str = "person_id",
    item_col: str = "item_id",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified per-user random split, as Microsoft Recommenders' ``python_stratified_split``.

    Each user's distinct items are shuffled and ``round(ratio * n)`` of them (half rounds up)
    go to train, the rest to test, so every user is represented in both sides in proportion.
    A user keeps at least one item in train: a user with a single item (or so few that rounding
    leaves none for test, e.g. 2 items at 0.75) is train-only, can't be evaluated, but still
    informs the model. The shuffle depends only on ``seed`` and the set of pairs, not on row
    order, so the same data always splits the same way.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be strictly between 0 and 1, got {ratio}")
    pairs = df[[user_col, item_col]].drop_duplicates().sort_values([user_col, item_col])
    pairs = pairs.assign(_key=np.random.default_rng(seed).random(len(pairs)))
    pairs = pairs.sort_values([user_col, "_key"], kind="stable")
    rank = pairs.groupby(user_col, sort=False).cumcount().to_numpy()
    size = pairs.groupby(user_col, sort=False)[item_col].transform("size").to_numpy()
    n_train = np.clip(np.floor(ratio * size + 0.5), 1, size)
    return _split_by_pairs(df, pairs[rank < n_train], user_col, item_col)


def time_split(
    df: pd.DataFrame,
    last_days: float,
    time_col: str = "event_time",
    user_col: str = "person_id",
    item_col: str = "item_id",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-user temporal split: what each person did in the last ``last_days`` of THEIR history.

    A person's test window is (their latest event - last_days, their latest event]; a global
    cut-off would leave less active people with no test data at all. Train keeps only events
    before the window, so it never sees the future. In-window events on an item the person
    already had before the window are dropped from both sides (a recommender never
    re-recommends a seen item, so they would be guaranteed misses). A person whose whole
    history falls inside the window is train-only, like single-item users in
    ``per_user_random_split``.
    """
    if last_days <= 0:
        raise ValueError(f"last_days must be positive, got {last_days}")
    times = pd.to_datetime(df[time_col])
    cutoff = times.groupby(df[user_col]).transform("max") - pd.Timedelta(days=last_days)
    before = times <= cutoff
    train_only_user = ~df[user_col].isin(df.loc[before, user_col])
    train = df[before | train_only_user]
    _, test = _split_by_pairs(df[~(before | train_only_user)], train, user_col, item_col)
    return train, test


def _split_by_pairs(
    df: pd.DataFrame, train_pairs: pd.DataFrame, user_col: str, item_col: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows whose (user, item) pair is in ``train_pairs`` -> train, the rest -> test."""
    keys = pd.MultiIndex.from_frame(df[[user_col, item_col]])
    in_train = keys.isin(pd.MultiIndex.from_frame(train_pairs[[user_col, item_col]]))
    return df[in_train], df[~in_train]
