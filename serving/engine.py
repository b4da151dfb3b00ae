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
from training.recommenders import PopularityRecommender

RECOMMENDATIONS_SLOT = "recommendations"


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of one score row's ``k`` best finite scores, best first (for one row this is
    half the time of training's batch top_k, which negates and gathers whole matrices)."""
    k = min(k, len(scores))
    if k == 0:
        return np.empty(0, dtype=np.int64)
    part = np.argpartition(scores, len(scores) - k)[len(scores) - k:]
    part = part[np.argsort(-scores[part], kind="stable")]
    return part[np.isfinite(scores[part])]


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
    """Loaded once per worker; every method answers one request."""

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
        blocked = self._blocked(person, exclude_items)
        shown = self._filter(category, decision)
        matrix = self.fitted.interactions.matrix
        if (person.row is not None and self.personal
                and matrix.indptr[person.row + 1] > matrix.indptr[person.row]):
            items, scores = self._personal(person.row, k, blocked, shown, decision)
            reasons = self._anchor_reasons(person.row, items)
            fallback = False
        else:
            segment = person.segment or (context or {}).get("segment")
            popular = self.segment_popular.get(str(segment)) if segment is not None else None
            reason = f"popular in segment {segment}" if popular is not None else "popular"
            order, shares = self.popular if popular is None else popular
            allowed = np.ones(self.n_items, dtype=bool) if shown is None else shown.copy()
            allowed[blocked] = False
            items, scores = order[allowed[order]][:k], shares[allowed[order]][:k]
            reasons = [reason] * len(items)
            fallback = True
        ranked = self._pin(decision, blocked, shown, list(zip(items, scores, reasons)), k)
        return {"user_id": user_id,
                "items": [{"item_id": str(self.item_ids[i]), "score": round(float(s), 6),
                           "reason": r} for i, s, r in ranked],
                "fallback": fallback, "segment": person.segment, "variant": variant,
                "model_version": self.model_version}

    def _blocked(self, person: Person, exclude_items) -> np.ndarray:
        """Item indices never to show this person: their whole history and the excluded ones."""
        excluded = [self.item_index[i] for i in exclude_items if i in self.item_index]
        if person.row is None:
            return np.asarray(excluded, dtype=np.int64)
        seen = self.fitted.seen
        history = seen.indices[seen.indptr[person.row]:seen.indptr[person.row + 1]]
        return np.concatenate([history, np.asarray(excluded, dtype=history.dtype)])

    def _filter(self, category: str | None, decision: Decision) -> np.ndarray | None:
        """Items the request's category and the rules' filters leave (None: all of them)."""
        shown = None if category is None else self._in_category(category).copy()
        for _, filtered in decision.filtered_categories:
            kept = ~self._in_category(filtered)
            shown = kept if shown is None else shown & kept
        return shown

    def _personal(self, row: int, k: int, blocked: np.ndarray, shown: np.ndarray | None,
                  decision: Decision):
        """The model's top items for the row, boosts applied.

        One row is scored directly through the model's scoring function:
        FittedRecommender.recommend_rows is built for batches and costs ~5 ms per call in
        sparse-matrix bookkeeping, more than the whole HTTP request should."""
        scores = self.fitted.recommender._score_users(np.array([row]), self.fitted.interactions.matrix)[0]
        scores[blocked] = -np.inf
        if shown is not None:
            scores[~shown] = -np.inf
        fetch = k + len(decision.pins) if not decision.boosts else self.n_items
        items = _best(scores, fetch)
        best = scores[items].astype(np.float64)
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

    def _pin(self, decision: Decision, blocked: np.ndarray, shown: np.ndarray | None,
             ranked: list, k: int) -> list:
        """Rule pins first (in rule order), then the ranked items, boosted ones marked."""
        boosted = {}
        for rule_id, boost in decision.boosts:
            for i, _, _ in ranked:
                if (self.item_ids[i] in boost.items
                        or boost.category and self.category[i] == boost.category):
                    boosted.setdefault(i, rule_id)
        pinned, taken = [], set(blocked.tolist()) if decision.pins else set()
        top = float(ranked[0][1]) if ranked else 1.0
        for rule_id, item_id in decision.pins:
            i = self.item_index.get(item_id)
            if i is not None and (shown is None or shown[i]) and i not in taken:
                pinned.append((i, top, f"pinned by rule {rule_id}"))
                taken.add(i)
        pinned_items = {i for i, _, _ in pinned}
        rest = [(i, s, f"{r}; boosted by rule {boosted[i]}" if i in boosted else r)
                for i, s, r in ranked if i not in pinned_items]
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
