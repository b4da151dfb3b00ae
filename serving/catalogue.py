"""The item catalogue as the service uses it: masks over the model's items, and new arrivals.

Built once at start-up from the model's catalogue side table (`tailor build-service` copies
catalogue/, or derives it from events where the catalogue job has not run). Request filters and
rule actions become boolean masks over the model's item index, so a request never walks the
catalogue: an item is in every one of its `categories`, unknown stock counts as in stock (as in
batch cold start), and an item is on sale when its sale price is below its price.

New arrivals are batch cold start's (training/cold_start.py): catalogue items without
interactions that arrived within `days` before start-up, offered to people in the categories
they prefer, in the last places of their top-k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.cold_start import _item_categories, category_preferences, new_arrivals

#: The catalogue/ columns the service reads (the side table keeps these).
SERVED_COLUMNS = ["item_id", "category", "categories", "brand", "price", "sale_price",
                  "release_date", "in_stock", "first_seen"]


def _frozen(mask: np.ndarray) -> np.ndarray:
    mask.setflags(write=False)  # shared between requests: copy before changing
    return mask


@dataclass(frozen=True)
class Arrival:
    item_id: str
    categories: frozenset[str]


class ItemCatalogue:
    """Catalogue facts about the model's items as masks, and the new arrivals beside them."""

    def __init__(self, item_ids: np.ndarray, table: pd.DataFrame | None,
                 liked: sp.csr_matrix | None = None, now: pd.Timestamp | None = None,
                 arrival_days: int = 0):
        n = len(item_ids)
        self.nothing = _frozen(np.zeros(n, dtype=bool))
        self.in_stock = _frozen(np.ones(n, dtype=bool))
        self.on_sale = self.nothing
        self._categories: dict[str, np.ndarray] = {}
        self._brands: dict[str, np.ndarray] = {}
        #: category -> its new arrivals, newest first; row -> preferred categories, best first
        self.arrivals: dict[str, list[Arrival]] = {}
        self.preferences: dict[int, list[tuple[str, float]]] = {}
        if table is None or not len(table):
            return
        table = table.assign(**{c: None for c in SERVED_COLUMNS if c not in table})
        index = {item: i for i, item in enumerate(item_ids)}
        known = table[table["item_id"].isin(index)]
        rows = known["item_id"].map(index).to_numpy(dtype=np.int64)
        for category, items in _item_categories(known).groupby("category")["item_id"]:
            self._categories[category] = self._mask(n, items.map(index))
        for brand, items in known.dropna(subset=["brand"]).groupby("brand")["item_id"]:
            self._brands[brand] = self._mask(n, items.map(index))
        stock = np.ones(n, dtype=bool)
        stock[rows[known["in_stock"].eq(False).to_numpy()]] = False
        self.in_stock = _frozen(stock)
        sale = pd.to_numeric(known["sale_price"]) < pd.to_numeric(known["price"])
        self.on_sale = self._mask(n, rows[sale.to_numpy(dtype=bool)])
        if arrival_days > 0 and liked is not None:
            self._new_arrivals(table, item_ids, liked, now or pd.Timestamp.now(tz="UTC"),
                               arrival_days)

    @staticmethod
    def _mask(n: int, rows) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(rows, dtype=np.int64)] = True
        return _frozen(mask)

    def _new_arrivals(self, table: pd.DataFrame, item_ids: np.ndarray, liked: sp.csr_matrix,
                      now: pd.Timestamp, days: int) -> None:
        fresh = new_arrivals(table, item_ids, now, days)
        if fresh.empty:
            return
        fresh = fresh.sort_values(["arrived", "item_id"], ascending=[False, True])
        categories = fresh.groupby("item_id")["category"].agg(frozenset)
        for category, items in fresh.groupby("category", sort=False)["item_id"]:
            self.arrivals[category] = [Arrival(item, categories[item]) for item in items]
        positive = liked.tocoo()
        keep = positive.data > 0
        pairs = pd.DataFrame({"person_id": positive.row[keep], "item_id": item_ids[positive.col[keep]]})
        shares = category_preferences(pairs, table)
        shares = shares[shares["category"].isin(self.arrivals)].sort_values(
            ["person_id", "share", "category"], ascending=[True, False, True])
        for row, group in shares.groupby("person_id", sort=False):
            self.preferences[int(row)] = list(zip(group["category"], group["share"].astype(float)))

    def in_category(self, category: str) -> np.ndarray:
        """The items in ``category`` (none for a category the catalogue doesn't have)."""
        return self._categories.get(category, self.nothing)

    def of_brand(self, brand: str) -> np.ndarray:
        return self._brands.get(brand, self.nothing)

    def arrivals_for(self, row: int, slots: int, allowed) -> list[tuple[str, float, str]]:
        """Up to ``slots`` (item id, score, reason) new arrivals for the model's row: from the
        person's preferred categories first, the newest first, each scored by the category's
        share of the person's history; ``allowed(arrival)`` applies the request's filters."""
        picked, taken = [], set()
        for category, share in self.preferences.get(row, ()):
            for arrival in self.arrivals[category]:
                if len(picked) == slots:
                    return picked
                if arrival.item_id not in taken and allowed(arrival):
                    picked.append((arrival.item_id, share, f"new arrival in {category}"))
                    taken.add(arrival.item_id)
        return picked
