"""Move the recommender's `champion` alias by hand: to a given version, or back one step.

    spark-submit jobs/promote.py [--conf …] [--set …] (--version N | --rollback)
    tailor promote (--version N | --rollback)

Serving follows `champion`, so this is how a bad promotion is undone without retraining.
Each move is a job run like any other: it takes the storage-root lock and leaves an audit line.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import click

from jobs.config import TailorConfig
from jobs.runtime import JobError, JobRun, config_options, execute, report_errors


def promote(job: JobRun, version: str | None = None, rollback: bool = False) -> dict:
    """The job body: `rollback` walks back the champion history, else `version` becomes champion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from training import registry
    from training.tracking import resolve_tracking_uri

    name = job.config.training.registry.model_name
    uri = resolve_tracking_uri(job.config.mlflow.tracking_uri, Path.cwd())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if rollback:
            moved_from, moved_to = registry.rollback(client, name)
        else:
            client.get_model_version(name, version)
            moved_from, moved_to = registry.make_champion(client, name, version), version
    except registry.RegistryError as exc:
        raise JobError(str(exc)) from None
    except MlflowException as exc:
        raise JobError(f"{name}: {exc.message}") from None
    job.say(f"{name}: champion {moved_from or '(none)'} -> {moved_to}")
    return {"registered_model": name, "action": "rollback" if rollback else "promote",
            "from_version": moved_from, "to_version": moved_to}


@click.command("promote")
@click.option("--version", default=None, help="Make this model version the champion.")
@click.option("--rollback", is_flag=True,
              help="Move champion back to the version it replaced.")
@report_errors
@config_options
def main(config: TailorConfig, version: str | None, rollback: bool) -> None:
    """Set or roll back the recommender's champion version."""
    if bool(version) == rollback:
        raise JobError("give exactly one of --version N and --rollback")
    execute("promote", config, lambda job: promote(job, version, rollback))


if __name__ == "__main__":
    main()
