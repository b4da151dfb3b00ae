"""Hand-computed cases for training.metrics.

Fixture at k=3 (item ids are arbitrary):
  A: recommended [1, 2, 3], relevant {1, 3, 5, 7}  -> hits at ranks 1 and 3
  B: recommended [4, 5, 6], relevant {6}           -> hit at rank 3
  C: no recommendations,    relevant {9}           -> counts as zero
  D: recommended [1, 2, 3], no relevant items      -> excluded from user averages
"""

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.metrics import (
    PAD,
    catalog_coverage,
    evaluate,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

RECOMMENDED = {"A": [1, 2, 3], "B": [4, 5, 6], "D": [1, 2, 3]}
RELEVANT = {"A": {1, 3, 5, 7}, "B": {6}, "C": {9}, "D": set()}
K = 3

NDCG_A = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
NDCG_B = (1 / math.log2(4)) / 1.0


def test_precision_divides_by_k():
    assert precision_at_k(RECOMMENDED, RELEVANT, K) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)


def test_recall_divides_by_number_relevant():
    assert recall_at_k(RECOMMENDED, RELEVANT, K) == pytest.approx((2 / 4 + 1 / 1 + 0) / 3)


def test_ndcg_binary_gain_and_ideal_over_min_k_relevant():
    assert ndcg_at_k(RECOMMENDED, RELEVANT, K) == pytest.approx((NDCG_A + NDCG_B + 0) / 3)


def test_map_divides_by_all_relevant_not_min_k():
    # A: (1/1 + 2/3) / 4 relevant (min(k, n) would give / 3); B: (1/3) / 1.
    assert map_at_k(RECOMMENDED, RELEVANT, K) == pytest.approx((5 / 12 + 1 / 3 + 0) / 3)


def test_perfect_ranking_scores_one():
    recs = {"u": [7, 8, 9]}
    rel = {"u": {7, 8}}
    assert ndcg_at_k(recs, rel, 3) == pytest.approx(1.0)
    assert map_at_k(recs, rel, 3) == pytest.approx(1.0)
    assert recall_at_k(recs, rel, 3) == pytest.approx(1.0)
    assert precision_at_k(recs, rel, 3) == pytest.approx(2 / 3)


def test_only_top_k_counts():
    recs = {"u": [1, 2, 3, 4]}
    rel = {"u": {4}}
    assert precision_at_k(recs, rel, 3) == 0.0
    assert precision_at_k(recs, rel, 4) == pytest.approx(1 / 4)


def test_catalog_coverage_counts_every_recommended_user():
    # D has no test items but its recommendations were still shown.
    assert catalog_coverage(RECOMMENDED, K, n_items=10) == pytest.approx(6 / 10)
    assert catalog_coverage(RECOMMENDED, 1, n_items=10) == pytest.approx(2 / 10)


def test_evaluate_matches_the_single_metrics():
    result = evaluate(RECOMMENDED, RELEVANT, K, n_items=10)
    assert result == {
        "precision_at_3": pytest.approx(precision_at_k(RECOMMENDED, RELEVANT, K)),
        "recall_at_3": pytest.approx(recall_at_k(RECOMMENDED, RELEVANT, K)),
        "ndcg_at_3": pytest.approx(ndcg_at_k(RECOMMENDED, RELEVANT, K)),
        "map_at_3": pytest.approx(map_at_k(RECOMMENDED, RELEVANT, K)),
        "coverage_at_3": pytest.approx(0.6),
        "n_users": 3,
    }


def test_array_and_sparse_inputs_equal_dict_inputs():
    # Users by row: 0 = A, 1 = B, 2 = C (only padding), 3 = D; items 1..9 as columns.
    recommended = np.array([[1, 2, 3], [4, 5, 6], [PAD, PAD, PAD], [1, 2, 3]])
    rows = [0, 0, 0, 0, 1, 2]
    cols = [1, 3, 5, 7, 6, 9]
    relevant = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(4, 10))
    assert evaluate(recommended, relevant, K, 10) == evaluate(RECOMMENDED, RELEVANT, K, 10)


def test_padding_in_dict_lists_is_not_an_item():
    padded = {"A": np.array([1, 2, 3, PAD]), "B": np.array([4, 5, 6, PAD]), "D": [1, 2, 3]}
    assert evaluate(padded, RELEVANT, 4, 10) == evaluate(RECOMMENDED, RELEVANT, 4, 10)


def test_no_test_users_gives_zero():
    assert evaluate({"u": [1]}, {}, 1, 5)["ndcg_at_1"] == 0.0


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        precision_at_k(RECOMMENDED, RELEVANT, 0)
