"""Runtime scoring behind the HTTP API, free of BentoML so it can be tested and explained
directly (`tailor rules explain` uses it too).

The model is the registry's FittedRecommender; on top of it the engine adds what a live
request needs: person resolution, suppression, request filters (excluded items, category),
the rules of the `recommendations` slot (filters, boosts, pins), popularity per segment for
cold start, and a reason for every item.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from serving.data import People, Suppression
from serving.rules import CONTEXT_PREFIX, Decision, RuleSet
from training.fitted import FittedRecommender
from training.metrics import PAD
from training.recommenders import PopularityRecommender, top_k

RECOMMENDATIONS_SLOT = "recommendations"

@dataclass
class Person:
    """Who a request is about, as far as the service may use it."""

    user_id: str
    person_id: str
    row: int | None          # the model's row, None when the model does not know them
    facts: dict              # what rules see (empty for a suppressed person)
    suppressed: bool

    @property
    def segment(self) -> str | None:
        return self.facts.get("segment")


class Engine:
    def __init__(self, fitted: FittedRecommender, model_version: str, rules: RuleSet,
                 people: People, suppression: Suppression,
                 catalogue: pd.DataFrame | None = None):
        self.fitted, self.model_version, self.rules = fitted, model_version, rules
        self.people, self.suppression = people, suppression
        interactions = fitted.interactions
        self.item_ids = interactions.item_ids
        self.n_items = len(self.item_ids)
        self.item_index = interactions.item_index
        self.person_index = interactions.person_index
        self.category = np.full(self.n_items, None, dtype=object)
        if catalogue is not None and len(catalogue):
            known = catalogue[catalogue["item_id"].isin(self.item_index)]
            self.category[[self.item_index[i] for i in known["item_id"]]] = known["category"].values
        self._category_masks: dict[str, np.ndarray] = {}
        self.popular = self._popular_order(interactions.matrix)
        self.segment_popular = self._segment_popularity()
        factors = getattr(fitted.recommender, "item_factors", None)
        self.unit_factors = None
        if factors is not None:
            norms = np.linalg.norm(factors, axis=1, keepdims=True)
            self.unit_factors = factors / np.where(norms == 0, 1.0, norms)
        self.personal = not isinstance(fitted.recommender, PopularityRecommender)

    # -- set-up --------------------------------------------------------------------------------

    @staticmethod
    def _popular_order(matrix) -> tuple[np.ndarray, np.ndarray]:
        """Item indices with a positive interaction, most people first, and the share of the
        matrix's people behind each (the score a popular item is shown with)."""
        popularity = PopularityRecommender().fit(matrix).popularity
        order = np.argsort(-popularity, kind="stable")
        order = order[popularity[order] > 0]
        return order, popularity[order] / max(matrix.shape[0], 1)

    def _segment_popularity(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rows_by_segment: dict[str, list[int]] = {}
        for person, facts in self.people.facts.items():
            row = self.person_index.get(person)
            if row is not None and facts.get("segment") is not None:
                rows_by_segment.setdefault(str(facts["segment"]), []).append(row)
        matrix = self.fitted.interactions.matrix
        return {segment: self._popular_order(matrix[sorted(rows)])
                for segment, rows in rows_by_segment.items()}

    # -- who is asking -------------------------------------------------------------------------

    def person(self, user_id: str, context: dict | None = None, variant: str | None = None) -> Person:
        """Resolve a request's user; a suppressed person keeps only request-level facts."""
        person_id = self.people.resolve(user_id)
        suppressed = self.suppression.suppressed(user_id, person_id)
        facts = {} if suppressed else dict(self.people.facts.get(person_id, {}))
        row = None if suppressed else self.person_index.get(person_id)
        facts["known"] = row is not None
        facts["variant"] = variant
        facts.update({CONTEXT_PREFIX + key: value for key, value in (context or {}).items()})
        return Person(user_id, person_id, row, facts, suppressed)

    # -- the API -------------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, exclude_items=(), category: str | None = None,
                  context: dict | None = None, variant: str | None = None) -> dict:
        person = self.person(user_id, context, variant)
        decision = self.rules.decide(RECOMMENDATIONS_SLOT, person.facts)
        allowed = self._allowed(person, exclude_items, category, decision)
        has_history = (person.row is not None and self.personal
                       and self.fitted.interactions.matrix.indptr[person.row + 1]
                       > self.fitted.interactions.matrix.indptr[person.row])
        if has_history:
            items, scores = self._personal(person.row, k, allowed, decision)
            reasons = self._anchor_reasons(person.row, items)
            fallback = False
        else:
            segment = person.segment or (context or {}).get("segment")
            popular = self.segment_popular.get(str(segment)) if segment is not None else None
            reason = f"popular in segment {segment}" if popular is not None else "popular"
            order, shares = self.popular if popular is None else popular
            items, scores = order[allowed[order]][:k], shares[allowed[order]][:k]
            reasons = [reason] * len(items)
            fallback = True
        ranked = self._pin(decision, allowed, list(zip(items, scores, reasons)), k)
        return {"user_id": user_id,
                "items": [{"item_id": str(self.item_ids[i]), "score": round(float(s), 6),
                           "reason": r} for i, s, r in ranked],
                "fallback": fallback, "segment": person.segment, "variant": variant,
                "model_version": self.model_version}

    def _allowed(self, person: Person, exclude_items, category, decision: Decision) -> np.ndarray:
        """Items that may be shown: not seen, not excluded, in the category, not rule-filtered."""
        allowed = np.ones(self.n_items, dtype=bool)
        if person.row is not None:
            seen = self.fitted.seen
            allowed[seen.indices[seen.indptr[person.row]:seen.indptr[person.row + 1]]] = False
        excluded = [self.item_index[i] for i in exclude_items if i in self.item_index]
        allowed[excluded] = False
        if category is not None:
            allowed &= self._in_category(category)
        for _, filtered in decision.filtered_categories:
            allowed &= ~self._in_category(filtered)
        return allowed

    def _personal(self, row: int, k: int, allowed: np.ndarray, decision: Decision):
        """The model's top items for the row among ``allowed`` (which already excludes the
        person's history), boosts applied.

        One row scored directly through the model's scoring function and the shared top_k:
        FittedRecommender.recommend_rows is built for batches and costs ~5 ms per call in
        sparse-matrix bookkeeping, more than the whole HTTP request should."""
        matrix = self.fitted.interactions.matrix
        scores = self.fitted.recommender._score_users(np.array([row]), matrix)[0]
        scores[~allowed] = -np.inf
        fetch = k + len(decision.pins) if not decision.boosts else self.n_items
        items, best = top_k(scores[None, :], min(fetch, self.n_items))
        keep = items[0] != PAD
        items, best = items[0][keep], best[0][keep].astype(np.float64)
        for _, boost in decision.boosts:
            hit = np.isin(self.item_ids[items], boost.items)
            if boost.category:
                hit |= self._in_category(boost.category)[items]
            best = np.where(hit, np.where(best > 0, best * boost.factor, best / boost.factor), best)
        order = np.argsort(-best, kind="stable")[:k]
        return items[order], best[order]

    def _in_category(self, category: str) -> np.ndarray:
        """Which items are in ``category`` (computed once per category)."""
        mask = self._category_masks.get(category)
        if mask is None:
            mask = self._category_masks[category] = self.category == category
        return mask

    def _anchor_reasons(self, row: int, items: np.ndarray) -> list[str]:
        """"similar to X": the history item most like each recommended item."""
        matrix = self.fitted.interactions.matrix
        history = matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]
        if not len(items) or not len(history):
            return ["recommended for you"] * len(items)
        if self.unit_factors is not None:
            similarity = self.unit_factors[items] @ self.unit_factors[history].T
            anchors = history[np.argmax(similarity, axis=1)]
            return [f"similar to {self.item_ids[a]} you engaged with" for a in anchors]
        reasons = []
        for item in items:
            why = self.fitted.explain(self.fitted.interactions.person_ids[row], self.item_ids[item], 1)
            reasons.append(f"similar to {why.item_id.iloc[0]} you engaged with" if len(why)
                           else "recommended for you")
        return reasons

    def _pin(self, decision: Decision, allowed: np.ndarray, ranked: list, k: int) -> list:
        """Rule pins first (in rule order), then the ranked items, boosted ones marked."""
        boosted = {}
        for rule_id, boost in decision.boosts:
            for i, _, _ in ranked:
                if self.item_ids[i] in boost.items or (boost.category and self.category[i] == boost.category):
                    boosted.setdefault(i, rule_id)
        pinned, seen = [], set()
        top = float(ranked[0][1]) if ranked else 1.0
        for rule_id, item_id in decision.pins:
            i = self.item_index.get(item_id)
            if i is not None and allowed[i] and i not in seen:
                pinned.append((i, top, f"pinned by rule {rule_id}"))
                seen.add(i)
        rest = [(i, s, f"{r}; boosted by rule {boosted[i]}" if i in boosted else r)
                for i, s, r in ranked if i not in seen]
        return (pinned + rest)[:k]

    def similar_items(self, item_id: str, k: int) -> dict | None:
        index = self.item_index.get(item_id)
        if index is None:
            return None
        items, scores = self.fitted.recommender.similar_items([index], k)
        keep = items[0] != PAD
        return {"item_id": item_id,
                "items": [{"item_id": str(self.item_ids[i]), "score": round(float(s), 6)}
                          for i, s in zip(items[0][keep], scores[0][keep])],
                "model_version": self.model_version}

    def segment(self, user_id: str) -> dict:
        person = self.person(user_id)
        facts = person.facts
        return {"user_id": user_id, "known": facts["known"],
                "segment": facts.get("segment"), "persona": facts.get("persona"),
                "rfm_segment": facts.get("rfm_segment"),
                "rule_segments": list(facts.get("rule_segments") or []),
                "model_version": self.model_version}

    def decide(self, user_id: str, slot: str, context: dict | None = None,
               variant: str | None = None) -> tuple[dict, Decision]:
        person = self.person(user_id, context, variant)
        decision = self.rules.decide(slot, person.facts)
        return ({"user_id": user_id, "slot": slot, "content": decision.variant,
                 "rule": decision.variant_rule, "matched_rules": decision.matched,
                 "applied_rules": decision.applied, "variant": variant,
                 "model_version": self.model_version}, decision)
