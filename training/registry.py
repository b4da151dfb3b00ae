"""The champion gate and the registry moves around it.

``decide`` and ``rollback_target`` are pure; the rest are thin calls on an MlflowClient.
A registered model has at most one ``champion`` (what serving loads) and one ``challenger``
(the latest version that did not beat it). Each version that becomes champion records the
version it replaced in the tag ``previous_champion``, so a rollback can walk back the chain.

A version trained on data of a person who was since forgotten is tagged ``stale`` (with
``stale_reason``): the gate treats a stale champion as no champion, and neither a rollback nor
a promotion brings a stale version back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION_TAG = "previous_champion"
RECIPE_TAG = "recipe"
STALE_TAG = "stale"
STALE_REASON_TAG = "stale_reason"


class RegistryError(RuntimeError):
    """A registry move that can't be made; the message is for the user."""


@dataclass(frozen=True)
class Decision:
    alias: str  # CHAMPION or CHALLENGER
    candidate_score: float
    champion_score: float | None  # None: there was no champion
    champion_version: str | None
    margin: float
    champion_stale: str | None = None  # why the champion may not stay (it is stale), if so

    def as_dict(self, metric: str) -> dict:
        gate = {"decision": self.alias, f"candidate_{metric}": self.candidate_score,
                f"champion_{metric}": self.champion_score,
                "champion_version": self.champion_version, "promotion_margin": self.margin}
        if self.champion_stale:
            gate["champion_stale"] = self.champion_stale
        return gate


def decide(candidate_score: float, champion_score: float | None, margin: float = 0.0,
           champion_version: str | None = None, champion_stale: str | None = None) -> Decision:
    """Champion only if there is none yet, the champion is stale (``champion_stale`` says why)
    or the candidate beats it by MORE than ``margin``: a tie keeps the incumbent, so re-running
    the same recipe on the same data changes nothing."""
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    wins = (champion_score is None or champion_stale is not None
            or candidate_score > champion_score + margin)
    return Decision(CHAMPION if wins else CHALLENGER, candidate_score, champion_score,
                    champion_version, margin, champion_stale)


def rollback_target(current_version: str, previous_champion: str | None,
                    previous_stale: str | None = None) -> str:
    """The version a rollback from ``current_version`` returns to, from its recorded history;
    refused when that version is stale (``previous_stale`` says why)."""
    if not previous_champion:
        raise RegistryError(f"champion version {current_version} has no previous champion "
                            "to roll back to")
    if previous_stale:
        raise RegistryError(f"champion version {current_version} can't be rolled back: the "
                            f"previous champion, version {previous_champion}, is stale "
                            f"({previous_stale}); train a new version instead")
    return previous_champion


def stale_reason(version: ModelVersion | None) -> str | None:
    """Why ``version`` may not serve (it was trained on data since forgotten), else None."""
    if version is None or version.tags.get(STALE_TAG) != "true":
        return None
    return version.tags.get(STALE_REASON_TAG) or "tagged stale"


def mark_stale(client: MlflowClient, name: str, reason: str) -> list[str]:
    """Tag every version of ``name`` that is not stale yet; returns the versions tagged.

    Every version, not only the champion: any of them may have been trained on the data, and
    rollback or promotion could otherwise bring one back. ``stale`` is set last, so a version
    that shows it always has its reason."""
    tagged, page_token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=page_token)
        for version in page:
            if stale_reason(version) is None:
                client.set_model_version_tag(name, version.version, STALE_REASON_TAG, reason)
                client.set_model_version_tag(name, version.version, STALE_TAG, "true")
                tagged.append(str(version.version))
        page_token = page.token
        if not page_token:
            return sorted(tagged, key=int)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version of a registered model; empty when the model is not registered yet."""
    try:
        return {alias: str(version)
                for alias, version in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    version = aliases(client, name).get(CHAMPION)
    return client.get_model_version(name, version) if version else None


def register(model_uri: str, name: str, recipe: dict) -> ModelVersion:
    """A new version of ``name``, carrying its recipe so a later run can refit and re-score it."""
    return mlflow.register_model(model_uri, name,
                                 tags={RECIPE_TAG: json.dumps(recipe, sort_keys=True)})


def recipe_of(version: ModelVersion) -> dict:
    if RECIPE_TAG not in version.tags:
        raise RegistryError(f"{version.name} version {version.version} has no {RECIPE_TAG!r} tag: "
                            "it was not registered by the training job, so it can't be re-scored")
    return json.loads(version.tags[RECIPE_TAG])


def make_champion(client: MlflowClient, name: str, version: str) -> str | None:
    """Point ``champion`` at ``version``, recording the version it replaces; returns that one.
    A stale version is refused."""
    reason = stale_reason(client.get_model_version(name, version))
    if reason:
        raise RegistryError(f"{name} version {version} is stale ({reason}): it was trained on "
                            "data since forgotten; train a new version instead")
    current = aliases(client, name)
    previous_version = current.get(CHAMPION)
    if previous_version == str(version):
        return previous_version
    if previous_version:
        client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, previous_version)
    client.set_registered_model_alias(name, CHAMPION, version)
    if current.get(CHALLENGER) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)
    return previous_version


def apply_decision(client: MlflowClient, name: str, version: str, decision: Decision,
                   metric: str) -> None:
    """Alias the new version as the decision says and keep the decision on the version."""
    for key, value in decision.as_dict(metric).items():
        client.set_model_version_tag(name, version, key, "" if value is None else str(value))
    if decision.alias == CHAMPION:
        make_champion(client, name, version)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)


def rollback(client: MlflowClient, name: str) -> tuple[str, str]:
    """Move ``champion`` back to the version it replaced; returns (from, to) versions.

    The target keeps its own history, so rolling back again goes one step further back. A
    stale target is refused: after a forget every older version is stale, so there is nothing
    safe to skip to.
    """
    champion = current_champion(client, name)
    if champion is None:
        raise RegistryError(f"registered model {name!r} has no champion to roll back")
    previous, previous_version = champion.tags.get(PREVIOUS_CHAMPION_TAG), None
    if previous:
        try:
            previous_version = client.get_model_version(name, previous)
        except MlflowException:
            raise RegistryError(f"previous champion {name} version {previous} no longer exists") from None
    target = rollback_target(str(champion.version), previous, stale_reason(previous_version))
    client.set_model_version_tag(name, champion.version, "rolled_back", "true")
    client.set_registered_model_alias(name, CHAMPION, target)
    return str(champion.version), target

