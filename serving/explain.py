"""`tailor rules explain`: the service's rule decision for one person, spelled out.

It loads what the service loads (the latest imported model, the storage root's tables, the
rules file, the experiment definitions) through the same ``load_engine``, so the answer is the
one /decide would give, the person's experiment variant included; explaining records no
exposure.
"""
from __future__ import annotations

from pathlib import Path

from jobs.config import TailorConfig
from jobs.runtime import JobError


def explain(config: TailorConfig, user_id: str, slot: str, context: dict) -> str:
    from bentoml._internal.models import ModelStore
    from bentoml.exceptions import NotFound

    from jobs.build_service import bentoml_env
    from serving.service import load_engine

    store = ModelStore(Path(bentoml_env(config)["BENTOML_HOME"]) / "models")
    try:
        model = store.get(f"{config.serving.model_name}:latest")
    except NotFound:
        raise JobError("no service model yet: run `tailor build-service` first") from None
    version = str(model.info.metadata.get("mlflow_version", model.tag.version))
    engine, _ = load_engine(config, Path(model.path), version)
    person = engine.person(user_id, slot, context)
    decision = engine.rules.decide(slot, person.facts)
    lines = [f"user {user_id} (person {person.person_id}), slot {slot}, model version {version}"]
    if person.suppressed:
        lines.append("suppressed (forgotten or consent withdrawn): only request fields are used")
    lines.append(experiment_line(person.assignment, slot))
    lines.append("facts: " + ", ".join(f"{k}={v!r}" for k, v in sorted(person.facts.items())))
    if not decision.why:
        lines.append(f"no rules for slot {slot}")
    lines.extend(f"  {line}" for line in decision.why)
    if decision.variant is not None:
        lines.append(f"winner: {decision.variant_rule} -> content {decision.variant}")
    else:
        lines.append("winner: none (no matching rule sets this slot's content)")
    if decision.applied:
        lines.append(f"applied: {', '.join(decision.applied)}")
    return "\n".join(lines)


def experiment_line(assignment, slot: str) -> str:
    if assignment is None:
        return f"experiment: none active on slot {slot} (variant null)"
    if assignment.enrolled:
        return f"experiment {assignment.experiment_id}: variant {assignment.variant} (enrolled)"
    return (f"experiment {assignment.experiment_id}: variant {assignment.variant} (the control; "
            f"not enrolled: {assignment.reason.replace('_', ' ')})")
