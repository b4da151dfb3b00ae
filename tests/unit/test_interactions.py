import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight

from training.interactions import Interactions, build_interactions

T0 = pd.Timestamp("2024-03-01T12:00:00Z")
WEIGHTS = {"view_item": 1.0, "add_to_cart": 3.0, "purchase": 5.0, "rate": "rating"}


def _events(rows):
    return pd.DataFrame(rows, columns=["person_id", "item_id", "event_type", "event_time", "value"])


def _day(n):
    return T0 + pd.Timedelta(days=n)


@pytest.fixture
def events():
    return _events(
        [
            ("a", "x", "view_item", _day(0), None),
            ("a", "x", "view_item", _day(1), None),
            ("a", "x", "purchase", _day(2), None),
            ("a", "y", "add_to_cart", _day(2), None),
            ("b", "y", "rate", _day(0), 4.0),
            ("b", "z", "page_view", _day(2), None),  # no weight: ignored
        ]
    )


def _dense(inter):
    return pd.DataFrame(inter.matrix.toarray(), index=inter.person_ids, columns=inter.item_ids)


def test_event_weights_are_summed_per_pair(events):
    inter = build_interactions(events, WEIGHTS)
    dense = _dense(inter)
    assert list(inter.person_ids) == ["a", "b"]
    assert list(inter.item_ids) == ["x", "y"]  # z only had an unweighted event
    assert dense.loc["a", "x"] == 1 + 1 + 5
    assert dense.loc["a", "y"] == 3
    assert dense.loc["b", "y"] == 4  # the rating value
    assert dense.loc["b", "x"] == 0
    assert inter.matrix.dtype == np.float32 and sp.isspmatrix_csr(inter.matrix)


def test_event_counts_multiply_their_weight():
    """A collected row standing for three views weighs as three view rows do."""
    rows = _events([("a", "x", "view_item", _day(0), None), ("a", "x", "purchase", _day(0), None)])
    counted = build_interactions(rows.assign(event_count=[3, 2]), WEIGHTS)
    assert _dense(counted).loc["a", "x"] == 3 * 1 + 2 * 5


def test_only_the_latest_rating_of_an_item_counts():
    rows = _events([
        ("b", "y", "rate", _day(1), 5.0),
        ("b", "y", "rate", _day(0), 2.0),   # older, listed later: replaced, not added
        ("b", "z", "rate", _day(0), 3.0),
        ("b", "z", "rate", _day(1), "n/a"),  # a later rating that isn't a number is ignored
    ])
    dense = _dense(build_interactions(rows.assign(event_count=2), WEIGHTS))
    assert dense.loc["b", "y"] == 5 and dense.loc["b", "z"] == 3  # counts don't scale ratings


def test_half_life_decays_from_latest_event_by_default(events):
    dense = _dense(build_interactions(events, WEIGHTS, half_life_days=1.0))
    # latest event is day 2: views at age 2 and 1 days, purchase at age 0
    assert dense.loc["a", "x"] == pytest.approx(0.25 + 0.5 + 5)
    assert dense.loc["b", "y"] == pytest.approx(4 * 0.25)


def test_as_of_drops_later_events_and_anchors_decay(events):
    dense = _dense(build_interactions(events, WEIGHTS, half_life_days=1.0, as_of=_day(1)))
    assert dense.loc["a", "x"] == pytest.approx(0.5 + 1)  # purchase on day 2 is after as_of
    assert dense.loc["a", "y"] == 0


def test_non_positive_totals_are_dropped():
    events = _events(
        [
            ("a", "x", "add_to_cart", _day(0), None),
            ("a", "x", "remove_from_cart", _day(1), None),
            ("a", "y", "view_item", _day(1), None),
        ]
    )
    inter = build_interactions(events, {"add_to_cart": 3, "remove_from_cart": -3, "view_item": 1})
    assert inter.matrix.nnz == 1
    assert _dense(inter).loc["a", "y"] == 1


def test_binarize(events):
    inter = build_interactions(events, WEIGHTS, binarize=True)
    assert set(inter.matrix.data) == {1.0}
    assert inter.matrix.nnz == 3


def test_bm25_matches_implicit_with_items_as_documents(events):
    raw = build_interactions(events, WEIGHTS).matrix
    weighted = build_interactions(events, WEIGHTS, bm25={"K1": 100, "B": 0.8}).matrix
    expected = bm25_weight(raw.T, K1=100, B=0.8).T.toarray()
    np.testing.assert_allclose(weighted.toarray(), expected, rtol=1e-6)


def test_tfidf_and_bm25_are_exclusive(events):
    with pytest.raises(ValueError):
        build_interactions(events, WEIGHTS, bm25={}, tfidf=True)


def test_rating_weight_needs_value_column(events):
    with pytest.raises(ValueError):
        build_interactions(events.drop(columns="value"), WEIGHTS)


def test_unknown_weight_string_rejected(events):
    with pytest.raises(ValueError):
        build_interactions(events, {"view_item": "lots"})


def test_fixed_id_space_aligns_matrices(events):
    inter = build_interactions(
        events, WEIGHTS, person_ids=np.array(["b", "c"]), item_ids=np.array(["w", "y"])
    )
    assert inter.matrix.shape == (2, 2)
    assert inter.matrix.toarray().tolist() == [[0, 4], [0, 0]]  # a and x are outside the space


def test_id_mappings(events):
    inter = build_interactions(events, WEIGHTS)
    assert inter.person_index == {"a": 0, "b": 1}
    assert inter.item_index == {"x": 0, "y": 1}


@pytest.mark.parametrize("ids", [["p1", "p2"], [10, 20]])
def test_save_load_round_trip(tmp_path, ids):
    matrix = sp.csr_matrix(np.array([[1.5, 0.0], [0.0, 2.0]], dtype=np.float32))
    inter = Interactions(matrix, np.array(ids), np.array(ids[::-1]))
    inter.save(tmp_path / "interactions")
    loaded = Interactions.load(tmp_path / "interactions")
    assert (loaded.matrix != matrix).nnz == 0
    assert loaded.person_ids.tolist() == ids
    assert loaded.item_index == inter.item_index


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        Interactions(sp.csr_matrix((2, 2)), np.array(["a"]), np.array(["x", "y"]))
