"""Cold start: a new item with no interactions reaches the people who like its category."""
import pandas as pd

from training.cold_start import (NEW_ARRIVAL, category_preferences, new_arrivals,
                                 with_new_arrivals)

AS_OF = pd.Timestamp("2024-03-31T12:00:00Z")


def catalogue() -> pd.DataFrame:
    rows = [  # item, category, categories, release_date, first_seen, in_stock
        ("old-shoe", "shoes", None, "2023-01-01", "2024-01-01", True),
        ("old-book", "books", ["books", "gifts"], None, "2024-01-01", True),
        ("new-shoe", "shoes", None, "2024-03-25", "2024-03-30", None),      # new arrival
        ("new-book", None, ["books"], None, "2024-03-20", True),           # first seen counts
        ("sold-out", "shoes", None, "2024-03-26", "2024-03-30", False),    # out of stock
        ("stale-shoe", "shoes", None, "2024-01-02", "2024-01-02", True),   # too old, no views
        ("future-shoe", "shoes", None, "2024-05-01", "2024-03-30", True),  # not released yet
    ]
    frame = pd.DataFrame(rows, columns=["item_id", "category", "categories", "release_date",
                                        "first_seen", "in_stock"])
    frame["release_date"] = pd.to_datetime(frame["release_date"]).dt.date
    frame["first_seen"] = pd.to_datetime(frame["first_seen"], utc=True)
    return frame


def test_new_arrivals_are_fresh_uninteracted_in_stock_and_released():
    arrivals = new_arrivals(catalogue(), ["old-shoe", "old-book"], AS_OF, days=30)
    assert sorted(arrivals.item_id.unique()) == ["new-book", "new-shoe"]
    assert set(arrivals.loc[arrivals.item_id == "new-shoe", "category"]) == {"shoes"}
    # an item that has interactions is no longer a cold-start item
    assert "new-shoe" not in set(new_arrivals(catalogue(), ["new-shoe"], AS_OF, 30).item_id)


def test_new_arrival_takes_the_last_slots_of_people_who_like_its_category():
    interactions = pd.DataFrame({"person_id": ["shoe-fan", "shoe-fan", "reader"],
                                 "item_id": ["old-shoe", "old-shoe", "old-book"]})
    prefs = category_preferences(interactions, catalogue())
    assert prefs.set_index(["person_id", "category"])["share"].to_dict() == {
        ("reader", "books"): 0.5, ("reader", "gifts"): 0.5, ("shoe-fan", "shoes"): 1.0}
    recs = pd.DataFrame({"person_id": ["shoe-fan"] * 3 + ["reader"] * 3 + ["nobody"] * 3,
                         "user_id": ["u1"] * 3 + ["u2"] * 3 + ["u3"] * 3,
                         "item_id": ["a", "b", "c"] * 3, "rank": [1, 2, 3] * 3,
                         "score": [0.9, 0.8, 0.7] * 3, "model_version": "1"})
    arrivals = new_arrivals(catalogue(), interactions.item_id, AS_OF, days=30)
    out = with_new_arrivals(recs, prefs, arrivals, k=3, slots=1)
    by_person = {p: list(zip(g["rank"], g.item_id, g.reason)) for p, g in out.groupby("person_id")}
    assert by_person["shoe-fan"] == [(1, "a", "model"), (2, "b", "model"), (3, "new-shoe", NEW_ARRIVAL)]
    assert by_person["reader"] == [(1, "a", "model"), (2, "b", "model"), (3, "new-book", NEW_ARRIVAL)]
    assert by_person["nobody"] == [(1, "a", "model"), (2, "b", "model"), (3, "c", "model")]
    assert list(out.columns) == [*recs.columns, "reason"]
    assert set(out.loc[out.person_id == "reader", "user_id"]) == {"u2"}
    assert with_new_arrivals(recs, prefs, arrivals, k=3, slots=0).reason.eq("model").all()
