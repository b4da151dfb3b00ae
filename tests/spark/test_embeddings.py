"""Embeddings from co-occurrence: two groups of people who each buy within one group of items.

Similar-item look-ups (`similar_items`, cosine of item vectors) must stay inside an item's
group, person vectors must separate the two groups of people, and with as many dimensions as the
matrix's rank the vectors reproduce the weights exactly.
"""
import numpy as np
import pandas as pd
import pytest

from features.embeddings import person_item_weights, similar_items, svd_embeddings
from jobs.build_features import VECTOR_SCHEMA

GROUPS = {"a": ["a1", "a2", "a3"], "b": ["b1", "b2", "b3", "b4"]}
# Each person touches two or three items of one group; p1 views a1 three times.
PEOPLE = {"p1": ["a1", "a1", "a1", "a2"], "p2": ["a2", "a3"], "p3": ["a1", "a3"],
          "p4": ["a1", "a2", "a3"], "q1": ["b1", "b2"], "q2": ["b2", "b3", "b4"],
          "q3": ["b1", "b3"], "q4": ["b4", "b1"]}


@pytest.fixture(scope="module")
def weights(spark):
    rows = [(person, item) for person, items in PEOPLE.items() for item in items]
    rows += [(None, "a1"), ("p2", None)]  # nobody's, no item: ignored
    return person_item_weights(spark.createDataFrame(rows, "person_id string, item_id string")).toPandas()


def vectors(frame, key):
    return {k: np.array(v) for k, v in zip(frame[key], frame["vector"])}


def cosine(u, v):
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_weights_are_log_one_plus_count(weights):
    got = {(r.person_id, r.item_id): r.weight for r in weights.itertuples()}
    assert len(got) == sum(len(set(items)) for items in PEOPLE.values())
    assert got[("p1", "a1")] == pytest.approx(np.log(4)) and got[("p2", "a2")] == pytest.approx(np.log(2))


def test_similar_items_stay_in_their_group_and_people_separate(weights):
    persons, items = svd_embeddings(weights, dims=2, seed=7)
    person_vectors = vectors(persons, "person_id")
    assert {len(v) for v in items["vector"]} == {2}
    group_of = {item: group for group, members in GROUPS.items() for item in members}
    nearest = similar_items(items, k=2)
    assert len(nearest) == 2 * len(group_of) and (nearest["item_id"] != nearest["similar_item_id"]).all()
    assert (nearest["item_id"].map(group_of) == nearest["similar_item_id"].map(group_of)).all()
    assert cosine(person_vectors["p1"], person_vectors["p2"]) > 0.9
    assert abs(cosine(person_vectors["p1"], person_vectors["q1"])) < 0.1


def test_similar_items_by_cosine_best_first_for_the_items_asked():
    items = pd.DataFrame({"item_id": ["a", "b", "c", "zero"],
                          "vector": [[1.0, 0.0], [3.0, 0.3], [0.0, 2.0], [0.0, 0.0]]})
    got = similar_items(items, k=5, item_ids=["c", "a"], block=1)
    assert got["item_id"].tolist() == ["c"] * 3 + ["a"] * 3  # k capped at the 3 other items
    assert got.query("item_id == 'a'")["similar_item_id"].tolist() == ["b", "c", "zero"]
    assert got.query("item_id == 'c'")["similar_item_id"].tolist() == ["b", "a", "zero"]
    assert got["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert got.iloc[3]["score"] == pytest.approx(cosine(np.array([1.0, 0.0]), np.array([3.0, 0.3])))
    assert (got.query("similar_item_id == 'zero'")["score"] == 0).all()
    with pytest.raises(KeyError, match="no embedding for item.*nope"):
        similar_items(items, k=2, item_ids=["a", "nope"])
    assert similar_items(items.iloc[:1], k=3).empty


def test_full_rank_reproduces_the_weights_and_dims_are_capped(weights):
    persons, items = svd_embeddings(weights, dims=50, seed=7)
    assert len(persons["vector"][0]) == len(GROUPS["a"]) + len(GROUPS["b"])  # rank ≤ 7 items
    p, i = vectors(persons, "person_id"), vectors(items, "item_id")
    for row in weights.itertuples():
        assert p[row.person_id] @ i[row.item_id] == pytest.approx(row.weight, abs=1e-9)
    assert p["p1"] @ i["b1"] == pytest.approx(0.0, abs=1e-9)


def test_nothing_to_factor_gives_empty_frames_the_job_can_still_write(spark, weights):
    persons, items = svd_embeddings(weights.iloc[:0], dims=4, seed=7)
    assert persons.empty and items.empty
    assert spark.createDataFrame(persons, VECTOR_SCHEMA.format(key="person_id")).count() == 0
