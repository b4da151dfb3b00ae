"""Runtime scoring behind the HTTP API, free of BentoML so it can be tested and explained
directly (`tailor rules explain` uses it too).

The model is the registry's FittedRecommender; on top of it the engine adds what a live
request needs: person resolution (once per request), consent and suppression, the person's
experiment arm in the request's slot (and its exposure), request filters (excluded items,
category, in stock), the slot's rules (filters, boosts, pins), popularity per segment for cold
start, new catalogue arrivals, and a reason for every item. Nothing here does I/O: exposures
go to the writer's buffer, which its own thread writes out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from serving.catalogue import Arrival, ItemCatalogue
from serving.data import People, Suppression
from serving.experiments import Assignment, ExperimentBook
from serving.exposures import ExposureWriter
from serving.rules import CONTEXT_PREFIX, Boost, Decision, RuleSet
from training.fitted import FittedRecommender
from training.metrics import PAD
from training.recommenders import PopularityRecommender

RECOMMENDATIONS_SLOT = "recommendations"
#: The request context key (and rule field) for the caller's current consent state.
CONSENT = "consent_personalization"


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
    facts: dict              # what rules see (request fields only without consent or suppressed)
    suppressed: bool
    assignment: Assignment | None = None  # the arm in the request slot's experiment, if any

    @property
    def segment(self) -> str | None:
        return self.facts.get("segment")

    def arm(self) -> dict:
        """The experiment fields of an answer: the arm served, its experiment, enrolled or not."""
        served = self.assignment
        return {"variant": served.variant if served else None,
                "experiment_id": served.experiment_id if served else None,
                "enrolled": bool(served and served.enrolled)}


@dataclass(frozen=True)
class RecommendQuery:
    """One /recommend request's fields."""

    user_id: str
    k: int
    exclude_items: tuple[str, ...] = ()
    category: str | None = None
    context: dict = field(default_factory=dict)
    in_stock_only: bool = False


@dataclass
class _Plan:
    """A /recommend request once its person, rules and item filters are known."""

    query: RecommendQuery
    person: Person
    decision: Decision
    blocked: np.ndarray              # item indices never to show
    shown: np.ndarray | None         # the mask of items the filters leave (None: all)
    fallback: bool                   # the model can't score them: the cold-start answer
    personal: bool                   # scored by the model (else popular items)


class Engine:
    """Loaded once per worker; every method answers one request (recommend_many several)."""

    def __init__(self, fitted: FittedRecommender, model_version: str, rules: RuleSet,
                 people: People, suppression: Suppression,
                 catalogue: pd.DataFrame | None = None, *,
                 experiments: ExperimentBook | None = None,
                 exposures: ExposureWriter | None = None, default_consent: bool = False,
                 arrival_days: int = 0, arrival_slots: int = 0):
        self.fitted, self.model_version, self.rules = fitted, model_version, rules
        self.people, self.suppression = people, suppression
        self.experiments, self.exposures = experiments, exposures
        self.default_consent, self.arrival_slots = default_consent, arrival_slots
        interactions = fitted.interactions
        self.item_ids = interactions.item_ids
        self.item_names = [str(item) for item in self.item_ids]  # answers name items often
        self.matrix = interactions.matrix
        self.n_items = len(self.item_ids)
        self.item_index = interactions.item_index
        self.person_index = interactions.person_index
        self.catalogue = ItemCatalogue(self.item_ids, catalogue, interactions.matrix,
                                       arrival_days=arrival_days)
        self.boosted = {compiled.id: self._boost_mask(compiled.rule.then.boost)
                        for compiled in rules.rules if compiled.rule.then.boost is not None}
        self.popular = self._popular_order(interactions.matrix)
        self.segment_popular = self._segment_popularity()
        factors = getattr(fitted.recommender, "item_factors", None)
        self.unit_factors = self.item_factors_by_column = None
        if factors is not None:
            self.item_factors_by_column = np.ascontiguousarray(factors.T)
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

    def _boost_mask(self, boost: Boost) -> np.ndarray:
        """The model items a rule's boost targets (computed once per rule)."""
        mask = self.catalogue.nothing.copy()
        if boost.category:
            mask |= self.catalogue.in_category(boost.category)
        if boost.brand:
            mask |= self.catalogue.of_brand(boost.brand)
        if boost.on_sale:
            mask |= self.catalogue.on_sale
        mask[[self.item_index[i] for i in boost.items if i in self.item_index]] = True
        return mask

    def _segment_popularity(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        rows_by_segment: dict[str, list[int]] = {}
        for person, facts in self.people.facts.items():
            row = self.person_index.get(person)
            if row is not None and facts.get("segment") is not None:
                rows_by_segment.setdefault(str(facts["segment"]), []).append(row)
        matrix = self.matrix
        return {segment: self._popular_order(matrix[sorted(rows)])
                for segment, rows in rows_by_segment.items()}

    # -- who is asking -------------------------------------------------------------------------

    def person(self, user_id: str, slot: str | None = None, context: dict | None = None) -> Person:
        """Resolve a request's user once: what rules may see, consent, and the arm of the
        experiment running on ``slot`` (its exposure recorded when enrolled).

        Consent: the request's ``context.consent_personalization`` when the caller sends it
        (its current state wins), else whether Tailor holds data about the person (only
        consented people have any), else ``consent.default_personalization``. A suppressed
        person, or one whose request declines, keeps only request-level facts."""
        context = context or {}
        person_id = self.people.resolve(user_id)
        suppressed = self.suppression.suppressed(user_id, person_id)
        given = context.get(CONSENT)
        personal = not suppressed and given is not False
        stored = self.people.facts.get(person_id) if personal else None
        facts = dict(stored or {})
        row = self.person_index.get(person_id) if personal else None
        facts["known"] = row is not None
        facts[CONSENT] = personal and (given is True or stored is not None or row is not None
                                       or self.default_consent)
        person = Person(user_id, person_id, row, facts, suppressed)
        person.assignment = self._assign(person, slot)
        facts["variant"] = person.assignment.variant if person.assignment else None
        facts["variant_levels"] = ([f"{factor}={level}" for factor, level
                                    in person.assignment.levels.items()]
                                   if person.assignment else [])
        facts.update({CONTEXT_PREFIX + key: value for key, value in context.items()})
        return person

    def _assign(self, person: Person, slot: str | None) -> Assignment | None:
        """The arm served on ``slot``: the enrolled assignment (a layer keeps a person in at
        most one experiment per slot), else the first active experiment's control; None when
        no experiment runs there. Enrolled assignments are recorded as exposures."""
        if self.experiments is None or slot is None:
            return None
        facts = person.facts
        segments = [name for name in (facts.get("rfm_segment"), facts.get("persona")) if name]
        assignments = self.experiments.assign(
            person.person_id, now=datetime.now(timezone.utc), slot=slot,
            segments=[*segments, *(facts.get("rule_segments") or [])],
            consented=facts[CONSENT], suppressed=(person.person_id,) if person.suppressed else ())
        enrolled = [a for a in assignments if a.enrolled]
        if self.exposures is not None:
            key = "anonymous_id" if person.user_id in self.people.anonymous_ids else "user_id"
            for assignment in enrolled:
                self.exposures.record(assignment, person_id=person.person_id,
                                      **{key: person.user_id})
        return (enrolled or assignments or [None])[0]

    # -- the API -------------------------------------------------------------------------------

    def recommend(self, user_id: str, k: int, exclude_items=(), category: str | None = None,
                  context: dict | None = None, in_stock_only: bool = False) -> dict:
        return self.recommend_many([RecommendQuery(user_id, k, tuple(exclude_items), category,
                                                   context or {}, in_stock_only)])[0]

    def recommend_many(self, queries: list[RecommendQuery]) -> list[dict]:
        """The answers to several /recommend requests, their personal scores computed in one
        matrix product: one pass over the item factors for all of them instead of one each,
        which is most of the scoring's cost when requests arrive together."""
        plans = [self._plan(query) for query in queries]
        rows = [plan.person.row for plan in plans if plan.personal]
        scores = iter(self._scores(np.asarray(rows)) if rows else ())
        return [self._answer(plan, next(scores) if plan.personal else None) for plan in plans]

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        """The model's scores of every item for the rows' people. A factor model multiplies
        by its item factors stored column by column: OpenBLAS took 1.3-2.5x as long on the
        transposed row-major matrix for 1-16 rows here (the model's own _score_users)."""
        if self.item_factors_by_column is not None:
            return self.fitted.recommender.user_factors[rows] @ self.item_factors_by_column
        return self.fitted.recommender._score_users(rows, self.matrix)

    def _plan(self, query: RecommendQuery) -> _Plan:
        person = self.person(query.user_id, RECOMMENDATIONS_SLOT, query.context)
        decision = self.rules.decide(RECOMMENDATIONS_SLOT, person.facts)
        fallback = not (person.row is not None and self.personal
                        and self.matrix.indptr[person.row + 1] > self.matrix.indptr[person.row])
        return _Plan(query, person, decision, self._blocked(person, query.exclude_items),
                     self._filter(query.category, decision, query.in_stock_only), fallback,
                     personal=not fallback and decision.rank_rule is None)

    def _answer(self, plan: _Plan, scores: np.ndarray | None) -> dict:
        """One request's answer from its plan and, for a personal one, its row of scores."""
        query, person, decision = plan.query, plan.person, plan.decision
        blocked, shown, k = plan.blocked, plan.shown, query.k
        if scores is not None:
            items, scores = self._personal(scores, k, blocked, shown, decision)
            reasons = self._anchor_reasons(person.row, items)
        else:
            segment = person.segment or query.context.get("segment")
            popular = self.segment_popular.get(str(segment)) if segment is not None else None
            reason = f"popular in segment {segment}" if popular is not None else "popular"
            if decision.rank_rule is not None:
                reason += f"; ranked by rule {decision.rank_rule}"
            order, shares = self.popular if popular is None else popular
            allowed = np.ones(self.n_items, dtype=bool) if shown is None else shown.copy()
            allowed[blocked] = False
            items, scores = order[allowed[order]][:k], shares[allowed[order]][:k]
            reasons = [reason] * len(items)
        ranked = [(self.item_names[i], s, r) for i, s, r in
                  self._pin(decision, blocked, shown, list(zip(items, scores, reasons)), k)]
        if plan.personal and self.arrival_slots:
            arrivals = self._arrivals(person.row, k, query.exclude_items, query.category,
                                      decision)
            ranked = ranked[:k - len(arrivals)] + arrivals
        return {"user_id": query.user_id,
                "items": [{"item_id": i, "score": round(float(s), 6), "reason": r}
                          for i, s, r in ranked],
                "fallback": plan.fallback, "segment": person.segment, **person.arm(),
                "model_version": self.model_version}

    def _arrivals(self, row: int, k: int, exclude_items, category: str | None,
                  decision: Decision) -> list[tuple[str, float, str]]:
        """New catalogue arrivals for the last places, under the request's and rules' filters
        (the catalogue already leaves out-of-stock items out)."""
        if row not in self.catalogue.preferences:
            return []
        excluded = set(exclude_items)
        filtered = {name for _, name in decision.filtered_categories}

        def allowed(arrival: Arrival) -> bool:
            return (arrival.item_id not in excluded and not arrival.categories & filtered
                    and (category is None or category in arrival.categories))

        return self.catalogue.arrivals_for(row, min(self.arrival_slots, k), allowed)

    def _blocked(self, person: Person, exclude_items) -> np.ndarray:
        """Item indices never to show this person: their whole history and the excluded ones."""
        excluded = [self.item_index[i] for i in exclude_items if i in self.item_index]
        if person.row is None:
            return np.asarray(excluded, dtype=np.int64)
        seen = self.fitted.seen
        history = seen.indices[seen.indptr[person.row]:seen.indptr[person.row + 1]]
        return np.concatenate([history, np.asarray(excluded, dtype=history.dtype)])

    def _filter(self, category: str | None, decision: Decision,
                in_stock_only: bool) -> np.ndarray | None:
        """Items the request's category and stock filter and the rules' filters leave (None:
        all of them)."""
        masks = [~self.catalogue.in_category(name) for _, name in decision.filtered_categories]
        if category is not None:
            masks.append(self.catalogue.in_category(category))
        if in_stock_only or decision.in_stock_only:
            masks.append(self.catalogue.in_stock)
        if not masks:
            return None
        shown = masks[0].copy()
        for mask in masks[1:]:
            shown &= mask
        return shown

    def _personal(self, scores: np.ndarray, k: int, blocked: np.ndarray,
                  shown: np.ndarray | None, decision: Decision):
        """The model's top items from the person's row of scores (overwritten), boosts
        applied."""
        scores[blocked] = -np.inf
        if shown is not None:
            scores[~shown] = -np.inf
        fetch = k + len(decision.pins) if not decision.boosts else self.n_items
        items = _best(scores, fetch)
        best = scores[items].astype(np.float64)
        for rule_id, boost in decision.boosts:
            hit = self.boosted[rule_id][items]
            best = np.where(hit, np.where(best > 0, best * boost.factor, best / boost.factor), best)
        order = np.argsort(-best, kind="stable")[:k]
        return items[order], best[order]

    def _anchor_reasons(self, row: int, items: np.ndarray) -> list[str]:
        """"similar to X": the history item most like each recommended item."""
        matrix = self.matrix
        history = matrix.indices[matrix.indptr[row]:matrix.indptr[row + 1]]
        if not len(items) or not len(history):
            return ["recommended for you"] * len(items)
        if self.unit_factors is not None:
            similarity = self.unit_factors[items] @ self.unit_factors[history].T
            anchors = history[np.argmax(similarity, axis=1)]
            return [f"similar to {self.item_names[a]} you engaged with" for a in anchors]
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
        for rule_id, _ in decision.boosts:
            for i, _, _ in ranked:
                if self.boosted[rule_id][i]:
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
        keep = (items[0] != PAD) & np.isfinite(scores[0])  # a zero vector's similarity is NaN
        return {"item_id": item_id,
                "items": [{"item_id": self.item_names[i], "score": round(float(s), 6)}
                          for i, s in zip(items[0][keep], scores[0][keep])],
                "model_version": self.model_version}

    def segment(self, user_id: str) -> dict:
        person = self.person(user_id)
        facts = person.facts
        return {"user_id": user_id, "known": facts["known"],
                "segment": person.segment, "persona": facts.get("persona"),
                "rfm_segment": facts.get("rfm_segment"),
                "rule_segments": list(facts.get("rule_segments") or []),
                "traits": self.people.traits(facts),
                "model_version": self.model_version}

    def decide(self, user_id: str, slot: str, context: dict | None = None) -> dict:
        person = self.person(user_id, slot, context)
        decision = self.rules.decide(slot, person.facts)
        return {"user_id": user_id, "slot": slot, "content": decision.variant,
                "rule": decision.variant_rule, "matched_rules": decision.matched,
                "applied_rules": decision.applied, **person.arm(),
                "model_version": self.model_version}
