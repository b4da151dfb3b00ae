"""Embeddings from co-occurrence: two groups of people who each buy within one group of items.

Similar-item look-ups (cosine of item vectors) must stay inside an item's group, person vectors
must separate the two groups of people, and with as many dimensions as the matrix's rank the
vectors reproduce the weights exactly.
"""
import numpy as np
import pytest

from features.embeddings import person_item_weights, svd_embeddings
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
    item_vectors, person_vectors = vectors(items, "item_id"), vectors(persons, "person_id")
    assert {len(v) for v in item_vectors.values()} == {2}
    for group, members in GROUPS.items():
        for item in members:
            nearest = max((other for other in item_vectors if other != item),
                          key=lambda other: cosine(item_vectors[item], item_vectors[other]))
            assert nearest in members, (item, nearest)
    assert cosine(person_vectors["p1"], person_vectors["p2"]) > 0.9
    assert abs(cosine(person_vectors["p1"], person_vectors["q1"])) < 0.1


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
