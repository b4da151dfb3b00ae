"""The clustering contract, checked for every method (after implicit's recommender_base_test),
plus planted personas recovered and named as training/personas.py documents.

``SegmenterContract`` states what every method must do; each method's class only says how to
build it. The data are three tight blobs of different sizes (40, 30, 20 people) far apart, so
the right answer is obvious: three segments, numbered by size.
"""
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from bench.segments_bench import PERSONA_NAMES, planted_people
from training.clustering import (NOISE, DBSCANSegmenter, KMeansSegmenter, WardSegmenter,
                                 canonical_labels, cluster_metrics, fit_standardizer, knee_point,
                                 profile_table, z_profile)
from training.segmentation import ward_cuts
from training.personas import NOISE_NAME, name_segments

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
SIZES = (40, 30, 20)


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), SIZES)
    return CENTRES[truth] + rng.normal(0, 0.3, (len(truth), 2)), truth


class SegmenterContract:
    def make(self):
        raise NotImplementedError

    @pytest.fixture
    def data(self):
        return blobs()

    @pytest.fixture
    def model(self, data):
        return self.make().fit(data[0])

    def test_fit_finds_the_three_blobs_numbered_by_size(self, model, data):
        X, truth = data
        assert model.labels_.shape == (len(X),)
        # canonical numbering: the largest blob is segment 0, the smallest 2
        np.testing.assert_array_equal(model.labels_, truth)

    def test_assign_puts_new_points_in_their_blob(self, model, data):
        np.testing.assert_array_equal(model.assign(CENTRES + 0.1), [0, 1, 2])
        X, truth = data
        np.testing.assert_array_equal(model.assign(X[truth != NOISE]), model.labels_[truth != NOISE])

    def test_same_seed_same_labels_whatever_the_row_order(self, data):
        X, _ = data
        order = np.random.default_rng(1).permutation(len(X))
        first = self.make().fit(X).labels_
        again = self.make().fit(X).labels_
        shuffled = self.make().fit(X[order]).labels_
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(shuffled, first[order])

    def test_metrics_of_an_obvious_clustering(self, model, data):
        metrics = cluster_metrics(data[0], model.labels_, sample=50, seed=0)
        assert metrics["n_clusters"] == 3 and metrics["noise_share"] == pytest.approx((data[1] == NOISE).mean())
        assert metrics["silhouette"] > 0.9 and metrics["davies_bouldin"] < 0.2

    def test_pickle_round_trip(self, model):
        clone = pickle.loads(pickle.dumps(model))
        np.testing.assert_array_equal(clone.assign(CENTRES), model.assign(CENTRES))


class TestKMeans(SegmenterContract):
    def make(self):
        return KMeansSegmenter((2, 6), seed=7, silhouette_sample=50)

    def test_every_k_scored_and_the_best_chosen(self, model):
        assert sorted(model.scores_) == [2, 3, 4, 5, 6]
        assert model.k_ == 3 == max(model.scores_, key=model.scores_.get)


class TestDBSCAN(SegmenterContract):
    """The blobs plus two far outliers: real data has a tail, and the k-distance knee is where
    it starts (on tail-less blobs the curve has no knee and eps lands inside the blobs)."""

    @pytest.fixture
    def data(self):
        X, truth = blobs()
        return np.vstack([X, [[30.0, 30.0], [-20.0, 25.0]]]), np.r_[truth, NOISE, NOISE]

    def make(self):
        return DBSCANSegmenter(min_samples=5, seed=7)

    def test_far_point_is_noise(self, model):
        assert model.assign(np.array([[50.0, 50.0]])).tolist() == [NOISE]

    def test_sampled_fit_assigns_the_rest_by_nearest_core(self, data):
        X, truth = data
        model = DBSCANSegmenter(min_samples=5, max_sample=70, seed=7).fit(X)
        np.testing.assert_array_equal(model.labels_, truth)


class TestWard(SegmenterContract):
    def make(self):
        return WardSegmenter((2, 6), seed=7, silhouette_sample=50)

    def test_micro_clusters_above_the_sample_limit(self, data):
        X, truth = data
        model = WardSegmenter((2, 6), seed=7, max_sample=50, micro_clusters=12,
                              silhouette_sample=50).fit(X)
        assert model.mode_ == "micro_clusters"
        np.testing.assert_array_equal(model.labels_, truth)


def test_knee_of_a_k_distance_curve():
    # flat for the dense points, then a jump: the knee is the last flat value
    curve = np.r_[np.linspace(0.1, 0.2, 90), np.linspace(2.0, 5.0, 10)]
    assert knee_point(curve) == pytest.approx(0.2)


def test_ward_cuts_merge_leaves_into_their_blobs_weighing_their_sizes():
    # blob A in two leaves, blob B in three, blob C in one
    centres = np.array([[0.0, 0.0], [0.5, 0.0], [10.0, 0.0], [10.0, 0.5], [10.5, 0.0], [0.0, 10.0]])
    cuts = ward_cuts(centres, np.array([100, 100, 50, 50, 50, 40]), [2, 3, 6])
    assert sorted(cuts) == [2, 3, 6] and len(set(cuts[6])) == 6
    blobs_of = cuts[3]
    assert blobs_of[0] == blobs_of[1] and blobs_of[2] == blobs_of[3] == blobs_of[4]
    assert len({blobs_of[0], blobs_of[2], blobs_of[5]}) == 3
    # sizes count: two one-person leaves 1.2 apart merge before one of them joins a leaf of
    # 1000 people 1.0 away (its merge would add far more variance); alone, distance decides
    line = np.array([[0.0], [1.0], [2.2]])
    weighted, plain = (ward_cuts(line, np.array(sizes), [2])[2] for sizes in ([1000, 1, 1], [1, 1, 1]))
    assert weighted[1] == weighted[2] != weighted[0]
    assert plain[0] == plain[1] != plain[2]


def test_canonical_labels_keep_noise_and_order_by_size():
    X = np.arange(6, dtype=float)[:, None]
    assert canonical_labels(np.array([5, 5, 9, -1, 9, 9]), X).tolist() == [1, 1, 0, -1, 0, 0]


# -- planted personas --------------------------------------------------------------------------

LOG_COLUMNS = ["events", "days_active", "recency_weighted_events", "sessions", "mean_session_seconds",
               "frequency", "monetary_total", "devices"]


@pytest.mark.parametrize("make", [
    lambda: KMeansSegmenter((2, 8), seed=42, silhouette_sample=1000),
    lambda: WardSegmenter((2, 8), seed=42, silhouette_sample=1000),
], ids=["kmeans", "ward"])
def test_planted_personas_recovered_and_named(make):
    """ARI ≥ 0.9: the personas differ by ≥ 3 noise widths in at least two traits, so a method
    that finds them should misplace well under 5% of people (ARI 0.9 allows about that); a
    method that merged two personas would score about 0.5 to 0.8."""
    frame, personas = planted_people(1000, seed=3)
    standardizer = fit_standardizer(frame, list(frame.columns), log_columns=LOG_COLUMNS)
    X = standardizer.transform(frame)
    model = make().fit(X)
    ari = adjusted_rand_score(personas, model.labels_)
    print(f"adjusted Rand index {model.__class__.__name__}: {ari:.3f}")
    assert ari >= 0.9
    names = name_segments(z_profile(profile_table(frame, X, model.labels_)))
    for persona, expected in PERSONA_NAMES.items():
        majority = pd.Series(model.labels_[personas == persona]).mode()[0]
        assert names[majority] == expected
    # the same data again: the same names for the same people
    again = make().fit(X)
    assert name_segments(z_profile(profile_table(frame, X, again.labels_))) == names


def test_names_follow_the_documented_rules():
    z = pd.DataFrame({
        "new_arrival_purchase_share": [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],
        "days_active": [0.5, 0.0, -0.5, 0.0, 0.0, -0.1, 0.0, 0.0],
        "discounted_purchase_share": [0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.7, 0.0],
        "mean_session_seconds": [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
        "category_concentration": [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0],
        "recency_days": [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        "monetary_total": [0.0, 0.0, 0.0, 0.0, 0.3, 1.5, 1.2, -0.2],
        "frequency": [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.9, 0.0],
    })
    z.loc[-1] = 0.0
    assert name_segments(z) == {
        -1: NOISE_NAME,
        0: "Trendsetters",
        1: "Deal Seekers",
        2: "Occasional Browsers",
        3: "Lapsed Customers",
        4: "High spend",  # fits no rule: its one trait beyond |z| 0.25
        5: "High spend, low frequency",  # Champions needs frequency too
        6: "Deal Seekers (high spend, high frequency)",  # the larger segment 1 keeps the name
        7: "Average profile",
    }


def test_a_rule_needing_a_missing_feature_is_skipped():
    z = pd.DataFrame({"recency_days": [1.0], "discounted_purchase_share": [float("nan")]})
    assert name_segments(z) == {0: "Lapsed Customers"}
