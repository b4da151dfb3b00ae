"""Cold start from the catalogue: new items nobody has interacted with yet, recommended as new
arrivals in the categories each person prefers.

Why: a collaborative model can only rank items that have interactions, so a new item would
never be recommended until someone finds it by other means. The catalogue knows its category
and when it arrived; a person's history says which categories they like. Pure pandas
functions: the train job passes the catalogue and the interaction table in.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

MODEL, NEW_ARRIVAL = "model", "new_arrival"


def _item_categories(catalogue: pd.DataFrame) -> pd.DataFrame:
    """(item_id, category) for every category an item is in (`categories`, else `category`)."""
    listed = catalogue[["item_id"]].assign(category=[
        list(many) if many is not None and len(many) else ([one] if isinstance(one, str) else [])
        for many, one in zip(catalogue["categories"], catalogue["category"])])
    return listed.explode("category").dropna(subset=["category"]).drop_duplicates()


def new_arrivals(catalogue: pd.DataFrame, interacted: Iterable[str], as_of: pd.Timestamp,
                 days: int) -> pd.DataFrame:
    """(item_id, category, arrived) of items without interactions that arrived (release date,
    else first seen) no more than `days` before `as_of`: not out of stock, not released after
    `as_of`. One row per category of the item."""
    as_of = pd.Timestamp(as_of).tz_localize(None) if pd.Timestamp(as_of).tzinfo else pd.Timestamp(as_of)
    release = pd.to_datetime(catalogue["release_date"])
    first_seen = pd.to_datetime(catalogue["first_seen"], utc=True).dt.tz_localize(None)
    arrived = release.fillna(first_seen)
    fresh = (~catalogue["item_id"].isin(set(interacted))
             & catalogue["in_stock"].ne(False)
             & ~(release > as_of)
             & (arrived >= as_of - pd.Timedelta(days=days)))
    items = catalogue.loc[fresh].assign(arrived=arrived[fresh])
    return _item_categories(items).merge(items[["item_id", "arrived"]], on="item_id")


def category_preferences(interactions: pd.DataFrame, catalogue: pd.DataFrame) -> pd.DataFrame:
    """(person_id, category, share): each person's share of interacted items per category."""
    pairs = interactions[["person_id", "item_id"]].drop_duplicates().merge(
        _item_categories(catalogue), on="item_id")
    counts = pairs.groupby(["person_id", "category"]).size().rename("items").reset_index()
    counts["share"] = counts["items"] / counts.groupby("person_id")["items"].transform("sum")
    return counts[["person_id", "category", "share"]]


def with_new_arrivals(recommendations: pd.DataFrame, preferences: pd.DataFrame,
                      arrivals: pd.DataFrame, k: int, slots: int) -> pd.DataFrame:
    """The top-k with up to `slots` of each person's last places given to new arrivals in
    their preferred categories (highest category share first, then the newest); `reason`
    says which rows are the model's. A new arrival's score is the category share."""
    recommendations = recommendations.assign(reason=MODEL)
    if slots == 0 or arrivals.empty or preferences.empty:
        return recommendations
    candidates = (preferences.merge(arrivals, on="category")
                  .sort_values(["person_id", "share", "arrived", "item_id"],
                               ascending=[True, False, False, True])
                  .drop_duplicates(["person_id", "item_id"]))
    already = recommendations[["person_id", "item_id"]].assign(_known=True)
    candidates = candidates.merge(already, on=["person_id", "item_id"], how="left")
    candidates = candidates[candidates["_known"].isna()].groupby("person_id").head(slots)
    picked = candidates.groupby("person_id").size().rename("_new")
    kept = recommendations.merge(picked, left_on="person_id", right_index=True, how="left")
    kept = kept[kept["rank"] <= k - kept["_new"].fillna(0)].drop(columns="_new")
    extra_columns = [c for c in recommendations.columns
                     if c not in ("item_id", "rank", "score", "reason", "person_id")]
    per_person = recommendations.drop_duplicates("person_id")[["person_id", *extra_columns]]
    added = candidates[["person_id", "item_id", "share"]].rename(columns={"share": "score"}).merge(
        per_person, on="person_id").assign(reason=NEW_ARRIVAL)
    merged = pd.concat([kept, added], ignore_index=True)
    order = merged.assign(_new=merged["reason"] == NEW_ARRIVAL).sort_values(
        ["person_id", "_new", "rank", "score"], ascending=[True, True, True, False], na_position="last")
    order["rank"] = order.groupby("person_id").cumcount() + 1
    return order.drop(columns="_new").reset_index(drop=True)[list(recommendations.columns)]
