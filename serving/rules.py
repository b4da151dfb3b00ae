"""Content rules: which variant, boosts, pins and filters apply to a person in a page slot.

A rules file (conf/rules.yaml) is plain data:

    context_fields: [page, device]     # request context keys rules may test (besides `variant`)
    traits: [loyalty_tier]             # custom profile columns beyond the known ones
    rules:
      - id: vip-banner
        slot: home_banner
        priority: 100                  # higher wins
        group: hero                    # optional exclusive group: at most one rule of it applies
        when: {rfm_segment: {in: [champions, loyal]}, context.device: mobile}
        then: {variant: vip_offer}

A condition maps a field to a value (equality) or to operators: `in`, `not_in`, `gt`, `gte`,
`lt`, `lte`, `contains` (a list field such as rule_segments holds the value) and `exists`.
All conditions of a rule must hold. In a slot, rules are tried by priority: a rule is skipped
when a higher one of its exclusive group already applied, and only the highest applied rule
with a `variant` sets the slot's variant; boosts, pins and filters of every applied rule combine.

Experiments: `variant` is the person's arm in the experiment running on the rule's slot (the
control when they are not enrolled, null when no experiment runs there). A multivariate cell is
one string, `factor=level,factor=level` in the definition's factor order (what exposures and
the analysis report carry); `variant_levels` lists its parts, so a rule on one factor reads
`variant_levels: {contains: "layout=carousel"}`. `consent_personalization` is whether the
person may be personalized (the request's `context.consent_personalization` when sent, else
whether Tailor holds consented data about them, else `consent.default_personalization`).

Actions on catalogue fields: a boost can target a `category`, a `brand`, items `on_sale` or
listed `items`; `in_stock_only: true` drops items the catalogue marks out of stock.
`rank: popularity` ranks /recommend by popularity (in the person's segment when known) instead
of the model: what an experiment arm that tests the model against popularity needs.

Because conditions are a closed set of operators, `check` can reason about them: equal-priority
rules of one slot whose conditions can hold together (their order would be arbitrary), rules
that can never fire (an impossible condition, or a higher-priority competitor whose condition
is wider) and fields nobody provides. The service refuses a file with any of these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Fields about the person that rules may test, whatever profiles/ holds.
PROFILE_FIELDS = (
    "person_id", "user_id", "age", "age_band", "gender", "city", "region", "country", "urban",
    "device_type", "os", "locale", "signup_date", "marketing_opt_in", "first_seen", "last_seen",
)
#: Fields the service derives: segmentation, RFM, rule segments, whether the model knows them,
#: whether they may be personalized.
DERIVED_FIELDS = ("segment", "persona", "rfm_segment", "rule_segments", "known",
                  "consent_personalization")
#: Request fields every slot sees: the experiment variant of the slot and its factor levels.
REQUEST_FIELDS = ("variant", "variant_levels")
CONTEXT_PREFIX = "context."
OPERATORS = {"in", "not_in", "gt", "gte", "lt", "lte", "contains", "exists"}


class RulesError(ValueError):
    """A rules file that can't be read or used; the message names the rule and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Boost(_Strict):
    """Multiplies the score of every item it targets (any of category, brand, on sale, items)."""

    category: str | None = None
    brand: str | None = None
    on_sale: bool = False
    items: list[str] = []
    factor: float = Field(gt=0)

    @model_validator(mode="after")
    def _target(self) -> Boost:
        if self.category is None and self.brand is None and not self.on_sale and not self.items:
            raise ValueError("a boost needs a category, brand, on_sale: true or items")
        return self


class Action(_Strict):
    variant: str | None = None
    boost: Boost | None = None
    pin: list[str] = []
    filter_category: str | None = None
    in_stock_only: bool = False
    rank: Literal["popularity"] | None = None  # instead of the model (an experiment's arm)

    @model_validator(mode="after")
    def _something(self) -> Action:
        if (self.variant is None and self.boost is None and not self.pin
                and not self.filter_category and not self.in_stock_only and self.rank is None):
            raise ValueError("an action needs one of variant, boost, pin, filter_category, "
                             "in_stock_only, rank")
        return self


class Rule(_Strict):
    id: str = Field(min_length=1)
    slot: str = Field(min_length=1)
    priority: int
    group: str | None = None
    when: dict[str, Any] = {}
    then: Action
    description: str = ""


class RulesFile(_Strict):
    context_fields: list[str] = []
    traits: list[str] = []
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> RulesFile:
        seen = set()
        for rule in self.rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return self


# -- conditions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Constraint:
    """What one field must satisfy; None / empty means unconstrained on that aspect."""

    values: frozenset | None = None      # one of these
    excluded: frozenset = frozenset()    # none of these
    low: float = -math.inf
    low_open: bool = False
    high: float = math.inf
    high_open: bool = False
    contains: frozenset = frozenset()    # a list holding all of these
    exists: bool | None = None

    @property
    def needs_value(self) -> bool:
        return (self.values is not None or bool(self.contains) or self.exists is True
                or self.low > -math.inf or self.high < math.inf)

    def _in_range(self, value: Any) -> bool:
        if self._unbounded:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    @property
    def _unbounded(self) -> bool:
        return self.low == -math.inf and self.high == math.inf

    def matches(self, value: Any) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return not self.needs_value
        if self.exists is False:
            return False
        if isinstance(value, dict):  # a nested context value only ever "exists"
            return self.values is None and not self.contains and self._unbounded
        if isinstance(value, (list, tuple, set, frozenset)):  # e.g. rule_segments
            held = {v for v in value if not isinstance(v, (dict, list))}
            return (self.contains <= held and (self.values is None or bool(held & self.values))
                    and not held & self.excluded and self._unbounded)
        if self.contains:
            return self.contains <= {value}
        if self.values is not None and value not in self.values:
            return False
        return value not in self.excluded and self._in_range(value)

    def _possible_values(self) -> frozenset | None:
        if self.values is None:
            return None
        return frozenset(v for v in self.values if v not in self.excluded and self._in_range(v))

    def satisfiable(self) -> bool:
        if self.exists is False and self.needs_value:
            return False
        possible = self._possible_values()
        if possible is not None and not possible:
            return False
        if self.low > self.high or (self.low == self.high and (self.low_open or self.high_open)):
            return False
        return True

    def __and__(self, other: Constraint) -> Constraint:
        low, low_open = max((self.low, self.low_open), (other.low, other.low_open))
        high, high_open = min((self.high, not self.high_open), (other.high, not other.high_open))
        values = (other.values if self.values is None else self.values if other.values is None
                  else self.values & other.values)
        exists = (other.exists if self.exists is None else self.exists if other.exists is None
                  else self.exists if self.exists == other.exists else "conflict")
        if exists == "conflict":  # exists: true and exists: false together
            return Constraint(values=frozenset())
        return Constraint(values, self.excluded | other.excluded, low, low_open, high,
                          not high_open, self.contains | other.contains, exists)

    def implies(self, wider: Constraint) -> bool:
        """True when every value meeting this constraint surely meets ``wider`` (sound, not
        complete: False may only mean "can't tell")."""
        if not self.satisfiable():
            return True
        if wider.exists is False:
            return self.exists is False
        if wider.needs_value and not self.needs_value:
            return False
        possible = self._possible_values()
        if wider.values is not None and (possible is None or not possible <= wider.values):
            return False
        if wider.excluded and not (possible is not None and not possible & wider.excluded
                                   or wider.excluded <= self.excluded):
            return False
        if not wider.contains <= self.contains:
            return False
        if possible is not None:
            return all(wider._in_range(v) for v in possible)
        low_ok = (self.low > wider.low or self.low == wider.low
                  and (self.low_open or not wider.low_open))
        high_ok = (self.high < wider.high or self.high == wider.high
                   and (self.high_open or not wider.high_open))
        return low_ok and high_ok


def parse_condition(value: Any) -> Constraint:
    """A rule's condition on one field: a plain value (equality) or a mapping of operators."""
    if not isinstance(value, dict):
        if isinstance(value, list):
            raise RulesError(f"a list ({value!r}) needs an operator such as `in`")
        return Constraint(values=frozenset([value]))
    unknown = set(value) - OPERATORS
    if unknown:
        raise RulesError(f"unknown operator(s) {sorted(unknown)}; use {sorted(OPERATORS)}")
    constraint = Constraint()
    for operator, operand in value.items():
        if operator in ("in", "not_in"):
            if not isinstance(operand, list) or not operand:
                raise RulesError(f"`{operator}` needs a non-empty list, got {operand!r}")
            part = (Constraint(values=frozenset(operand)) if operator == "in"
                    else Constraint(excluded=frozenset(operand)))
        elif operator in ("gt", "gte", "lt", "lte"):
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise RulesError(f"`{operator}` needs a number, got {operand!r}")
            part = (Constraint(low=operand, low_open=operator == "gt") if operator[0] == "g"
                    else Constraint(high=operand, high_open=operator == "lt"))
        elif operator == "contains":
            part = Constraint(contains=frozenset(operand if isinstance(operand, list) else [operand]))
        else:
            if not isinstance(operand, bool):
                raise RulesError(f"`exists` needs true or false, got {operand!r}")
            part = Constraint(exists=operand)
        constraint = constraint & part
    return constraint


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    conditions: dict[str, Constraint]

    @property
    def id(self) -> str:
        return self.rule.id

    def matches(self, facts: dict) -> bool:
        return all(c.matches(facts.get(name)) for name, c in self.conditions.items())

    def failing(self, facts: dict) -> list[str]:
        return [name for name, c in self.conditions.items() if not c.matches(facts.get(name))]

    def competes_with(self, other: CompiledRule) -> bool:
        """Only one of two competing rules can apply: same exclusive group, or both set the
        slot's variant."""
        return (self.rule.group is not None and self.rule.group == other.rule.group
                or self.rule.then.variant is not None and other.rule.then.variant is not None)


def _both(a: CompiledRule, b: CompiledRule) -> bool:
    return all((a.conditions.get(n, Constraint()) & b.conditions.get(n, Constraint())).satisfiable()
               for n in set(a.conditions) | set(b.conditions))


def _wider(wide: CompiledRule, narrow: CompiledRule) -> bool:
    return all(narrow.conditions.get(n, Constraint()).implies(c) for n, c in wide.conditions.items())


# -- the rule set ----------------------------------------------------------------------------

@dataclass
class Problem:
    kind: str  # overlap | shadowed | never | unknown_field
    rules: tuple[str, ...]
    message: str


@dataclass
class Decision:
    slot: str
    matched: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    variant: str | None = None
    variant_rule: str | None = None
    boosts: list[tuple[str, Boost]] = field(default_factory=list)
    pins: list[tuple[str, str]] = field(default_factory=list)   # (rule id, item id)
    filtered_categories: list[tuple[str, str]] = field(default_factory=list)
    in_stock_only: bool = False
    rank_rule: str | None = None  # the rule that ranks the slot by popularity, not the model
    why: list[str] = field(default_factory=list)  # one line per rule of the slot


class RuleSet:
    """Rules compiled once; ``decide`` is what the service calls on every request."""

    def __init__(self, spec: RulesFile):
        self.spec = spec
        self.rules: list[CompiledRule] = []
        for rule in spec.rules:
            try:
                conditions = {name: parse_condition(value) for name, value in rule.when.items()}
            except RulesError as exc:
                raise RulesError(f"rule {rule.id}: {exc}") from None
            self.rules.append(CompiledRule(rule, conditions))
        self.rules.sort(key=lambda r: (-r.rule.priority, r.id))
        self.by_slot: dict[str, list[CompiledRule]] = {}
        for compiled in self.rules:
            self.by_slot.setdefault(compiled.rule.slot, []).append(compiled)

    @classmethod
    def empty(cls) -> RuleSet:
        return cls(RulesFile())

    def known_fields(self, profile_columns=()) -> set[str]:
        return ({*PROFILE_FIELDS, *DERIVED_FIELDS, *REQUEST_FIELDS, *self.spec.traits,
                 *profile_columns} | {CONTEXT_PREFIX + name for name in self.spec.context_fields})

    def check(self, profile_columns=()) -> list[Problem]:
        """Every problem of the file (empty when it is fine); see the module docstring."""
        problems = []
        known = self.known_fields(profile_columns)
        for compiled in self.rules:
            for name in compiled.conditions:
                if name not in known:
                    hint = ("declare it under context_fields" if name.startswith(CONTEXT_PREFIX)
                            else "not a profile, segment or request field (declare custom "
                                 "profile columns under traits)")
                    problems.append(Problem("unknown_field", (compiled.id,),
                                            f"rule {compiled.id}: unknown field {name!r}: {hint}"))
            impossible = [n for n, c in compiled.conditions.items() if not c.satisfiable()]
            if impossible:
                problems.append(Problem("never", (compiled.id,),
                                        f"rule {compiled.id} can never fire: its condition on "
                                        f"{', '.join(impossible)} can't hold"))
        for slot, rules in self.by_slot.items():
            # an impossible rule is reported once above, not again against every other rule
            possible = [r for r in rules if all(c.satisfiable() for c in r.conditions.values())]
            for high, low in combinations(possible, 2):
                if high.rule.priority == low.rule.priority and _both(high, low):
                    problems.append(Problem(
                        "overlap", (high.id, low.id),
                        f"slot {slot}: rules {high.id} and {low.id} have equal priority "
                        f"{high.rule.priority} and can both match; give them distinct priorities"))
                elif (high.rule.priority > low.rule.priority and high.competes_with(low)
                      and _wider(high, low)):
                    reason = (f"shares group {low.rule.group}" if high.rule.group == low.rule.group
                              and low.rule.group else "also sets the variant")
                    problems.append(Problem(
                        "shadowed", (low.id, high.id),
                        f"slot {slot}: rule {low.id} can never fire: {high.id} (priority "
                        f"{high.rule.priority} > {low.rule.priority}) matches whenever it does "
                        f"and {reason}"))
        return problems

    def decide(self, slot: str, facts: dict) -> Decision:
        """Apply the slot's rules to ``facts`` (person fields, ``context.*`` and request fields)."""
        decision = Decision(slot)
        groups: dict[str, str] = {}
        for compiled in self.by_slot.get(slot, []):
            rule = compiled.rule
            if not compiled.matches(facts):
                decision.why.append(f"{rule.id}: not matched ({', '.join(compiled.failing(facts))})")
                continue
            decision.matched.append(rule.id)
            if rule.group is not None and rule.group in groups:
                decision.why.append(f"{rule.id}: matched, skipped: {groups[rule.group]} already "
                                    f"applied in group {rule.group}")
                continue
            action = rule.then
            if action.variant is not None and decision.variant_rule is not None:
                decision.why.append(f"{rule.id}: matched, skipped: variant already set by "
                                    f"{decision.variant_rule} (higher priority)")
                continue
            decision.applied.append(rule.id)
            if rule.group is not None:
                groups[rule.group] = rule.id
            if action.variant is not None:
                decision.variant, decision.variant_rule = action.variant, rule.id
            if action.boost is not None:
                decision.boosts.append((rule.id, action.boost))
            decision.pins.extend((rule.id, item) for item in action.pin)
            if action.filter_category:
                decision.filtered_categories.append((rule.id, action.filter_category))
            decision.in_stock_only |= action.in_stock_only
            if action.rank == "popularity" and decision.rank_rule is None:
                decision.rank_rule = rule.id
            decision.why.append(f"{rule.id}: matched, applied (priority {rule.priority})")
        return decision


def load_rules(path: str | Path | None) -> RuleSet:
    """Parse a rules file (no file or an empty one: no rules)."""
    if path is None or not Path(path).is_file():
        if path is not None and Path(path).exists():
            raise RulesError(f"rules file {path} is not a file")
        return RuleSet.empty()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return RuleSet(RulesFile.model_validate(raw))
    except yaml.YAMLError as exc:
        raise RulesError(f"rules file {path}: invalid YAML ({exc.__class__.__name__})") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise RulesError(f"rules file {path}: {where}: {error['msg']}") from None


def checked_rules(path: str | Path | None, profile_columns=()) -> RuleSet:
    """The rules, or RulesError listing every problem: what the service starts with."""
    rules = load_rules(path)
    problems = rules.check(profile_columns)
    if problems:
        raise RulesError(f"rules file {path} fails the check:\n" +
                         "\n".join(p.message for p in problems))
    return rules
