import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.splits import per_user_random_split, time_split
from training.tuning import validation_split


def _pairs(df):
    return set(zip(df["person_id"], df["item_id"]))


@pytest.fixture
def events():
    """20 people with 1..20 distinct items each, plus a repeated row per person with >2 items."""
    rows = [(f"p{u}", f"i{i}") for u in range(1, 21) for i in range(u)]
    rows += [(f"p{u}", "i0") for u in range(3, 21)]
    return pd.DataFrame(rows, columns=["person_id", "item_id"])


def test_random_split_no_pair_on_both_sides(events):
    train, test = per_user_random_split(events)
    assert not _pairs(train) & _pairs(test)
    assert len(train) + len(test) == len(events)
    assert set(train.index) | set(test.index) == set(events.index)


def test_random_split_is_75_percent_per_user(events):
    train, test = per_user_random_split(events, ratio=0.75)
    n_train = train.drop_duplicates().groupby("person_id").size()
    n_test = test.drop_duplicates().groupby("person_id").size()
    assert n_train["p20"] == 15 and n_test["p20"] == 5
    assert n_train["p4"] == 3 and n_test["p4"] == 1  # 0.75 * 4 = 3
    assert n_train["p10"] == 8 and n_test["p10"] == 2  # 7.5 rounds half up


def test_random_split_small_users_stay_in_train(events):
    train, test = per_user_random_split(events, ratio=0.75)
    # 1 item: train only; 2 items: 1.5 rounds to 2, nothing left for test.
    assert {"p1", "p2"} <= set(train["person_id"])
    assert not {"p1", "p2"} & set(test["person_id"])
    assert set(test["person_id"]) == {f"p{u}" for u in range(3, 21)}


def test_random_split_reproducible_and_independent_of_row_order(events):
    train_a, _ = per_user_random_split(events, seed=7)
    train_b, _ = per_user_random_split(events.sample(frac=1, random_state=1), seed=7)
    assert _pairs(train_a) == _pairs(train_b)
    train_c, _ = per_user_random_split(events, seed=8)
    assert _pairs(train_a) != _pairs(train_c)


def test_random_split_rejects_bad_ratio(events):
    with pytest.raises(ValueError):
        per_user_random_split(events, ratio=1.0)


@pytest.fixture
def timed():
    day = pd.Timestamp("2024-01-01", tz="UTC")
    rows = [
        # a: history over 10 days; last 3 days -> i3, i4 in test; i1 seen again in window.
        ("a", "i1", day),
        ("a", "i2", day + pd.Timedelta(days=5)),
        ("a", "i1", day + pd.Timedelta(days=8)),
        ("a", "i3", day + pd.Timedelta(days=8)),
        ("a", "i4", day + pd.Timedelta(days=10)),
        # b: active much earlier; her window is relative to her own last event.
        ("b", "i1", day - pd.Timedelta(days=100)),
        ("b", "i5", day - pd.Timedelta(days=90)),
        # c: everything inside one window -> train only.
        ("c", "i1", day),
        ("c", "i2", day + pd.Timedelta(days=1)),
    ]
    return pd.DataFrame(rows, columns=["person_id", "item_id", "event_time"])


def test_time_split_uses_each_persons_own_history(timed):
    train, test = time_split(timed, last_days=3)
    assert _pairs(test) == {("a", "i3"), ("a", "i4"), ("b", "i5")}
    assert _pairs(train) == {("a", "i1"), ("a", "i2"), ("b", "i1"), ("c", "i1"), ("c", "i2")}


def test_time_split_train_never_sees_the_window(timed):
    train, test = time_split(timed, last_days=3)
    assert not _pairs(train) & _pairs(test)
    assert train["event_time"].max() <= timed["event_time"].max() - pd.Timedelta(days=3)
    in_window_repeat = 2  # (a, i1) on day 8
    assert in_window_repeat not in set(train.index) | set(test.index)


def test_time_split_boundary_is_exclusive_of_the_cutoff(timed):
    # a's cut-off is day 5 exactly: the day-5 event stays in train.
    train, _ = time_split(timed, last_days=5)
    assert ("a", "i2") in _pairs(train)


def test_time_split_accepts_iso_strings(timed):
    as_strings = timed.assign(event_time=timed.event_time.map(lambda t: t.isoformat()))
    train, test = time_split(as_strings, last_days=3)
    expected_train, expected_test = time_split(timed, last_days=3)
    assert np.array_equal(train.index, expected_train.index)
    assert np.array_equal(test.index, expected_test.index)


def test_validation_split_carves_only_from_training_matrix():
    rng = np.random.default_rng(0)
    train = sp.random(30, 40, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    fit, validation = validation_split(train, ratio=0.75, seed=3)
    assert fit.shape == validation.shape == train.shape
    assert fit.multiply(validation).nnz == 0  # no pair on both sides
    assert abs(fit + validation - train).max() == 0  # nothing invented, nothing lost
    again, _ = validation_split(train, ratio=0.75, seed=3)
    assert (again != fit).nnz == 0
