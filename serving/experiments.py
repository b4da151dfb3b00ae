"""Experiment definitions (conf/experiments.yaml) and deterministic assignment.

A person's variant is a pure function of the experiment's salt and the person id (SHA-256,
never Python's per-process `hash()`), so every worker, instance and restart agrees without
shared state. Three independent draws decide an assignment: the traffic position (salted by
the experiment's layer when it has one, so experiments sharing a layer get disjoint slices of
people), then the variant (or, for a multivariate test, one draw per factor: a full factorial
with cell weight = the product of level weights).

Everything a check needs from outside (known segment names, event types, the person's
segments, consent, the suppression list, the clock) is passed in explicitly;
`discover_segment_names` is the shell helper that collects the known names.
"""
from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from itertools import accumulate, combinations, product
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
WEIGHT_TOLERANCE = 1e-6


class ExperimentDefinitionError(ValueError):
    """Definitions that cannot be served; `problems` has one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weighted(_Strict):
    """A variant of an A/B/n test or a level of a factor."""

    name: str = Field(pattern=NAME)
    weight: float = Field(gt=0, le=1)


def _check_weights(owner: str, options: list[Weighted]) -> None:
    names = [option.name for option in options]
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: duplicate names {sorted({n for n in names if names.count(n) > 1})}")
    total = math.fsum(option.weight for option in options)
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise ValueError(f"{owner}: weights sum to {total:g}, not 1")


class Factor(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    levels: list[Weighted] = Field(min_length=2)

    @model_validator(mode="after")
    def _weights(self):
        _check_weights(f"factor {self.name} levels", self.levels)
        return self


class Layer(_Strict):
    """Experiments in one layer never share a person: each gets its own slice of the layer."""

    salt: str = Field(min_length=1)
    description: str = ""


class Experiment(_Strict):
    id: str = Field(pattern=NAME)
    type: Literal["abn", "multivariate"]
    slot: str = Field(min_length=1)
    salt: str = Field(min_length=1)
    layer: str | None = None
    traffic: float = Field(default=1.0, gt=0, le=1)
    target: list[str] = []  # segment or persona names; empty: everyone
    start: date
    stop: date  # inclusive (UTC days)
    conversion_event: str = Field(min_length=1)
    conversion_window_hours: float | None = Field(default=None, gt=0)
    description: str = ""
    control: str | None = None  # A/B/n: default the first variant
    variants: list[Weighted] = []
    factors: list[Factor] = []

    @model_validator(mode="after")
    def _shape(self):
        if self.stop < self.start:
            raise ValueError(f"stop {self.stop} is before start {self.start}")
        if self.type == "abn":
            if self.factors or len(self.variants) < 2:
                raise ValueError("an abn experiment needs at least 2 variants and no factors")
            _check_weights("variants", self.variants)
            if self.control is not None and self.control not in self.variant_names:
                raise ValueError(f"control {self.control!r} is not one of the variants")
        else:
            if self.variants or self.control or len(self.factors) < 2:
                raise ValueError("a multivariate experiment needs at least 2 factors and no "
                                 "variants or control (the control is every factor's first level)")
            names = [factor.name for factor in self.factors]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate factor names {names}")
        return self

    @property
    def variant_names(self) -> list[str]:
        """Every variant (A/B/n) or every cell of the full factorial, control first."""
        if self.type == "abn":
            return [v.name for v in self.variants]
        return [cell_name(dict(zip(self.factor_names, levels))) for levels in
                product(*[[level.name for level in f.levels] for f in self.factors])]

    @property
    def factor_names(self) -> list[str]:
        return [factor.name for factor in self.factors]

    @property
    def control_name(self) -> str:
        return self.control or self.variant_names[0]

    def weights(self) -> dict[str, float]:
        """Expected share of enrolled people per variant (cell weights are products)."""
        if self.type == "abn":
            return {v.name: v.weight for v in self.variants}
        return {cell_name(dict(zip(self.factor_names, [lv.name for lv in cell]))):
                math.prod(lv.weight for lv in cell)
                for cell in product(*[f.levels for f in self.factors])}

    def levels_of(self, variant: str) -> dict[str, str]:
        """A multivariate cell's level per factor ({} for an A/B/n variant)."""
        if self.type == "abn":
            return {}
        return dict(part.split("=", 1) for part in variant.split(","))

    def active_on(self, day: date) -> bool:
        return self.start <= day <= self.stop

    def window_hours(self, default: float) -> float:
        return self.conversion_window_hours or default


def cell_name(levels: dict[str, str]) -> str:
    """A factorial cell as one string, the form exposures carry: `factor=level,factor=level`."""
    return ",".join(f"{factor}={level}" for factor, level in levels.items())


class ExperimentFile(_Strict):
    layers: dict[str, Layer] = {}
    experiments: list[Experiment] = []


def unit_interval(salt: str, person_id: str) -> float:
    """A uniform position in [0, 1) from SHA-256 of salt and person (stable everywhere)."""
    digest = hashlib.sha256(f"{salt}\x1f{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def _pick(options: list[Weighted], position: float) -> str:
    edges = list(accumulate(option.weight for option in options))
    return options[min(bisect_right(edges, position * edges[-1]), len(options) - 1)].name


@dataclass(frozen=True)
class Assignment:
    """What one person gets in one experiment. Not enrolled: `variant` is the control (the
    default experience) and no exposure is recorded; `reason` says why."""

    experiment_id: str
    slot: str
    variant: str
    enrolled: bool
    reason: Literal["enrolled", "not_consented", "forgotten", "not_targeted", "outside_traffic"]
    levels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentBook:
    """Validated definitions plus each experiment's slice of its layer."""

    experiments: tuple[Experiment, ...]
    layers: dict[str, Layer]
    slices: dict[str, tuple[float, float]]  # experiment id -> [lo, hi) of its traffic position

    def get(self, experiment_id: str) -> Experiment:
        for experiment in self.experiments:
            if experiment.id == experiment_id:
                return experiment
        raise KeyError(f"unknown experiment {experiment_id!r} "
                       f"(defined: {', '.join(e.id for e in self.experiments) or 'none'})")

    def active(self, now: datetime, slot: str | None = None) -> list[Experiment]:
        day = now.astimezone(timezone.utc).date()
        return [e for e in self.experiments
                if e.active_on(day) and (slot is None or e.slot == slot)]

    def traffic_position(self, experiment: Experiment, person_id: str) -> float:
        salt = self.layers[experiment.layer].salt if experiment.layer else f"{experiment.salt}/traffic"
        return unit_interval(salt, person_id)

    def variant_for(self, experiment: Experiment, person_id: str) -> str:
        """The variant a person gets if enrolled (ignores traffic, target and consent)."""
        if experiment.type == "abn":
            return _pick(experiment.variants, unit_interval(experiment.salt, person_id))
        return cell_name({f.name: _pick(f.levels, unit_interval(f"{experiment.salt}/{f.name}", person_id))
                          for f in experiment.factors})

    def assign_one(self, experiment: Experiment, person_id: str, *, segments: Collection[str],
                   consented: bool, suppressed: Collection[str]) -> Assignment:
        def outcome(reason, variant=None):
            variant = variant or experiment.control_name
            return Assignment(experiment.id, experiment.slot, variant, reason == "enrolled",
                              reason, experiment.levels_of(variant))

        if person_id in suppressed:
            return outcome("forgotten")
        if not consented:
            return outcome("not_consented")
        if experiment.target and not set(experiment.target) & set(segments):
            return outcome("not_targeted")
        lo, hi = self.slices[experiment.id]
        if not lo <= self.traffic_position(experiment, person_id) < hi:
            return outcome("outside_traffic")
        return outcome("enrolled", self.variant_for(experiment, person_id))

    def assign(self, person_id: str, *, now: datetime, slot: str | None = None,
               segments: Collection[str] = (), consented: bool,
               suppressed: Collection[str] = frozenset()) -> list[Assignment]:
        """The person's assignment in every experiment active at `now` (on `slot`, if given).

        `consented`: the person's personalization consent; `suppressed`: forgotten or withdrawn
        person ids (the suppression list). Neither kind is ever enrolled.
        """
        return [self.assign_one(e, person_id, segments=segments, consented=consented,
                                suppressed=suppressed) for e in self.active(now, slot)]


def _overlap(a: Experiment, b: Experiment) -> bool:
    return a.start <= b.stop and b.start <= a.stop


def _layer_slices(layer: str, members: list[Experiment], problems: list[str]) -> dict:
    """Each experiment of a layer gets the lowest [lo, lo + traffic) that no earlier, time-
    overlapping member holds, in file order (so append new experiments; never reorder)."""
    slices: dict[str, tuple[float, float]] = {}
    for index, experiment in enumerate(members):
        taken = sorted(slices[m.id] for m in members[:index] if _overlap(m, experiment))
        for lo in [0.0] + [hi for _, hi in taken]:
            hi = lo + experiment.traffic
            if hi <= 1.0 + WEIGHT_TOLERANCE and all(hi <= a or lo >= b for a, b in taken):
                slices[experiment.id] = (lo, min(hi, 1.0))
                break
        else:
            problems.append(f"layer {layer}: no free {experiment.traffic:g} of traffic left for "
                            f"{experiment.id} beside {', '.join(m.id for m in members[:index] if _overlap(m, experiment))}")
            slices[experiment.id] = (0.0, 0.0)
    return slices


def _describe(error: dict) -> str:
    location = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown key"
    if error["type"] == "missing":
        return f"{location}: required value missing"
    return f"{location}: {message}"


def _located(raw: dict, error: dict) -> str:
    """Name experiments by id rather than list index in messages."""
    loc = list(error["loc"])
    if loc[:1] == ["experiments"] and len(loc) > 1 and isinstance(loc[1], int):
        try:
            loc[1] = raw["experiments"][loc[1]].get("id", loc[1])
        except (AttributeError, IndexError, KeyError, TypeError):
            pass
    return _describe({**error, "loc": loc})


def build_book(raw: dict, known_segments: Collection[str],
               event_types: Collection[str] | None = None, source: str = "experiments") -> ExperimentBook:
    """Validate parsed definitions; raises ExperimentDefinitionError naming every problem."""
    try:
        parsed = ExperimentFile.model_validate(raw or {})
    except ValidationError as exc:
        raise ExperimentDefinitionError(source, [_located(raw, e) for e in exc.errors()]) from None
    problems: list[str] = []
    experiments = parsed.experiments
    ids = [e.id for e in experiments]
    for duplicate in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"experiment id {duplicate} is defined more than once")
    for e in experiments:
        unknown = [name for name in e.target if name not in known_segments]
        if unknown:
            problems.append(f"experiments.{e.id}.target: unknown segment or persona "
                            f"{', '.join(unknown)}")
        if event_types is not None and e.conversion_event not in event_types:
            problems.append(f"experiments.{e.id}.conversion_event: unknown event type "
                            f"{e.conversion_event}")
        if e.layer is not None and e.layer not in parsed.layers:
            problems.append(f"experiments.{e.id}.layer: layer {e.layer} is not declared under layers")
    for a, b in combinations(experiments, 2):
        if a.slot == b.slot and _overlap(a, b) and (a.layer is None or a.layer != b.layer):
            problems.append(
                f"experiments {a.id} and {b.id} overlap on slot {a.slot} from "
                f"{max(a.start, b.start)} to {min(a.stop, b.stop)} without a shared layer: "
                f"declare one layer for both so nobody is in both")
    slices = {e.id: (0.0, e.traffic) for e in experiments if e.layer is None}
    for layer in parsed.layers:
        slices.update(_layer_slices(layer, [e for e in experiments if e.layer == layer], problems))
    if problems:
        raise ExperimentDefinitionError(source, problems)
    return ExperimentBook(tuple(experiments), dict(parsed.layers), slices)


def load_experiments(path: str | Path, known_segments: Collection[str],
                     event_types: Collection[str] | None = None) -> ExperimentBook:
    """Read and validate a definitions file (see build_book)."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentDefinitionError(str(path), ["file does not exist"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ExperimentDefinitionError(str(path), [f"invalid YAML ({exc.__class__.__name__})"]) from None
    if raw is not None and not isinstance(raw, dict):
        raise ExperimentDefinitionError(str(path), ["top level must be a mapping"])
    return build_book(raw, known_segments, event_types, source=str(path))


def rule_segment_ids(path: Path) -> set[str]:
    """Rule ids of a segments file (a `rules:` mapping keyed by id, or a list of {id: …})."""
    if not path.is_file():
        return set()
    raw = yaml.safe_load(path.read_text()) or {}
    rules = raw.get("rules", raw) if isinstance(raw, dict) else raw
    if isinstance(rules, dict):
        return {str(key) for key in rules}
    return {str(rule.get("id") or rule.get("name")) for rule in rules or []
            if isinstance(rule, dict) and (rule.get("id") or rule.get("name"))}


def known_segment_names(rfm_segments: Iterable[str], rule_ids: Iterable[str],
                        personas: Iterable[str]) -> frozenset[str]:
    return frozenset(rfm_segments) | frozenset(rule_ids) | frozenset(p for p in personas if p)


def load_configured(config, path: Path | None = None) -> ExperimentBook:
    """The shell's entry: `experiments.file` (or `path`), checked against the known segment
    names and the configured event types. The service loads it once at startup and refuses
    to start on ExperimentDefinitionError."""
    from jobs.config import checkout_path

    path = path or checkout_path(config.experiments.file)
    return load_experiments(path, discover_segment_names(config), config.ingest.event_types)


def discover_segment_names(config) -> frozenset[str]:
    """The shell's known names: RFM segments, ids of the rules in `segmentation.rules_file` and
    personas in segments/."""
    from features.rfm import SEGMENTS
    from jobs.config import checkout_path
    from serving.rootfs import persona_names

    rfm = {name for row in SEGMENTS.values() for name in row}
    rules = rule_segment_ids(checkout_path(config.segmentation.rules_file))
    return known_segment_names(rfm, rules, persona_names(config))
