"""One recommending path for evaluation, batch and serving: whole-history exclusion,
popularity for people the model can't personalize for, ids in and out, save/load."""
import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.evaluation import fit, recipe, score, split_events
from training.fitted import FittedRecommender
from training.interactions import Interactions
from training.recommenders import make_recommender

T0 = pd.Timestamp("2024-03-01")


def events(rows):
    """rows: (person, item, event_type[, rating])."""
    return pd.DataFrame([{"person_id": r[0], "item_id": r[1], "event_type": r[2],
                          "event_time": T0, "value": r[3] if len(r) > 3 else None} for r in rows])


def two_tastes(n_people=20, n_items=10):
    """Even people like even items, odd people odd items; person p misses item p % n_items."""
    return events([(f"p{p:02d}", f"i{i:02d}", "view_item") for p in range(n_people)
                   for i in range(p % 2, n_items, 2) if i != p % n_items])


WEIGHTS = {"view_item": 1.0, "add_to_cart": 3.0, "remove_from_cart": -3.0, "rate": "rating"}
AS_OF = pd.Timestamp("2024-03-02", tz="UTC")


def fitted_on(table, model="item_item", params=None):
    people, items = np.sort(table.person_id.unique()), np.sort(table.item_id.unique())
    return fit(recipe(model, params or {}, WEIGHTS), table, AS_OF, people, items)[0]


def test_cancelled_cart_items_are_history_too():
    table = pd.concat([two_tastes(), events([("p00", "i01", "add_to_cart"),
                                             ("p00", "i01", "remove_from_cart")])])
    fitted = fitted_on(table)
    recs = fitted.recommend(["p00"], k=10)
    assert "i01" not in recs.item_id.tolist()
    touched = set(table.loc[table.person_id == "p00", "item_id"])
    assert not touched & set(recs.item_id)


def test_unknown_and_historyless_people_get_popular_unseen_items():
    table = pd.concat([two_tastes(), events([("ghost", "i03", "add_to_cart"),
                                             ("ghost", "i03", "remove_from_cart")])])
    fitted = fitted_on(table)
    recs = fitted.recommend(["stranger", "ghost"], k=3)
    assert recs.groupby("person_id").size().to_dict() == {"ghost": 3, "stranger": 3}
    assert "i03" not in recs.loc[recs.person_id == "ghost", "item_id"].tolist()
    assert recs.loc[recs.person_id == "stranger", "rank"].tolist() == [1, 2, 3]


def test_ids_in_and_out_and_ranks():
    fitted = fitted_on(two_tastes(), model="ease", params={"lambda_": 1.0})
    recs = fitted.recommend(["p02", "p03"], k=2)
    assert recs.person_id.tolist() == ["p02", "p02", "p03", "p03"]
    assert recs["rank"].tolist() == [1, 2, 1, 2]
    assert recs.loc[recs["rank"] == 1, "item_id"].tolist() == ["i02", "i03"]  # the missed ones
    similar = fitted.similar_items(k=2)
    assert set(similar.columns) == {"item_id", "similar_item_id", "rank", "score"}
    assert (similar.item_id != similar.similar_item_id).all()


def test_explain_names_history_items():
    fitted = fitted_on(two_tastes(), model="item_item")
    recs = fitted.recommend(["p04"], k=1)
    why = fitted.explain("p04", recs.item_id[0])
    assert len(why) and set(why.item_id) <= set(two_tastes().query("person_id == 'p04'").item_id)
    assert fitted.explain("nobody", "i00").empty


def test_save_load_round_trip(tmp_path):
    fitted = fitted_on(two_tastes(), model="ease", params={"lambda_": 1.0})
    fitted.save(tmp_path / "m")
    loaded = FittedRecommender.load(tmp_path / "m")
    people = ["p00", "p01", "new"]
    pd.testing.assert_frame_equal(loaded.recommend(people, 4), fitted.recommend(people, 4))
    assert loaded.recipe == fitted.recipe


def test_evaluation_never_counts_training_items_and_scores_structure():
    split = split_events(two_tastes(40, 20), WEIGHTS, AS_OF, ratio=0.75, seed=42)
    fitted = fit(recipe("ease", {"lambda_": 1.0}, WEIGHTS), split.train, AS_OF,
                 split.person_ids, split.item_ids)[0]
    popular = fit(recipe("popularity", {}, WEIGHTS), split.train, AS_OF,
                  split.person_ids, split.item_ids)[0]
    ndcg = {name: score(model, split.relevant, 5)["ndcg_at_5"]
            for name, model in [("ease", fitted), ("popularity", popular)]}
    assert ndcg["ease"] > ndcg["popularity"]
    rows = np.flatnonzero(np.diff(split.relevant.indptr))
    items, _ = fitted.recommend_rows(rows, 5)
    for row, recommended in zip(rows, items):
        assert not set(recommended) & set(fitted.seen[row].indices)


def test_removed_items_do_not_count_as_relevant():
    table = events([("a", "x", "add_to_cart"), ("a", "x", "remove_from_cart"),
                    ("a", "y", "view_item"), ("a", "z", "view_item"), ("a", "w", "view_item")])
    split = split_events(table, WEIGHTS, AS_OF, ratio=0.5, seed=1)
    assert split.relevant.sum() <= 2
    assert "x" not in split.item_ids[split.relevant.nonzero()[1]].tolist()


def test_seen_matrix_must_match():
    interactions = Interactions(sp.csr_matrix((2, 2)), np.array(["a", "b"]), np.array(["x", "y"]))
    try:
        FittedRecommender(make_recommender("popularity"), interactions, sp.csr_matrix((1, 2)), {})
    except ValueError as exc:
        assert "does not match" in str(exc)
    else:
        raise AssertionError("mismatched seen matrix accepted")


def test_time_split_tests_on_each_persons_latest_days_and_decays_from_as_of():
    table = pd.DataFrame({
        "person_id": ["a", "a", "a", "b", "b"], "item_id": ["x", "y", "z", "x", "y"],
        "event_type": "view_item", "value": None,
        "event_time": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-20",
                                      "2024-01-01", "2024-01-19"])})
    as_of = pd.Timestamp("2024-01-21", tz="UTC")
    split = split_events(table, WEIGHTS, as_of, method="time", test_days=7)
    relevant = {(split.person_ids[r], split.item_ids[c]) for r, c in zip(*split.relevant.nonzero())}
    assert relevant == {("a", "z"), ("b", "y")}
    spec = recipe("popularity", {}, WEIGHTS, half_life_days=1.0)
    fitted = fit(spec, split.train, as_of, split.person_ids, split.item_ids)[0]
    confidence = fitted.interactions.matrix.toarray()
    assert 0 < confidence.max() < 0.5 ** 18  # 19-20 days old at a one-day half-life


def test_tuning_searches_models_and_weightings_on_one_validation_split():
    """Popularity can't tell the two tastes apart; item-item can, so it must win the search,
    and the winning recipe carries the weighting it was validated with."""
    from training.evaluation import tune_recipe

    table = pd.concat([two_tastes(n_people=40, n_items=12),
                       events([(f"p{p:02d}", "i00", "rate", 4.0) for p in range(0, 40, 4)])])
    split = split_events(table, WEIGHTS, AS_OF, "per_user", 0.75, 7)
    spec = recipe("popularity", {}, WEIGHTS)
    trials, best = tune_recipe(
        spec, split, {"popularity": {}, "item_item": {"K": [5, 50]}},
        [{"weighting": "none", "binarize": False}, {"weighting": "none", "binarize": True}],
        n_trials=1, seed=7, k=3, method="grid")
    assert len(trials) == 2 * (1 + 2)
    assert [t.metrics["ndcg_at_3"] for t in trials] == sorted((t.metrics["ndcg_at_3"] for t in trials),
                                                              reverse=True)
    assert best["model"] == "item_item" and best["params"] == trials[0].params
    assert best["binarize"] == trials[0].weighting["binarize"]
    assert {t.model for t in trials[-2:]} == {"popularity"}
