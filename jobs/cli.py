"""The `tailor` command: every job, the data tools and the pipeline that chains the stages."""
from __future__ import annotations

import tempfile
from pathlib import Path

import click

from jobs import (analyze_experiment, apply_retention, build_catalogue, build_features, build_profiles,
                  build_service, forget_users, ingest_events, promote, resolve_identities,
                  train_recommender, train_segments)
from jobs.config import REPO_ROOT, TailorConfig
from jobs.runtime import JobError, config_options, execute, report_errors
from jobs.storage import resolve_uri, upload_folder

SAMPLE_DIR = REPO_ROOT / "var" / "raw"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tailor")
def main() -> None:
    """Tailor: batch personalization on Spark, MLflow and BentoML."""


main.add_command(ingest_events.main, "ingest")
main.add_command(resolve_identities.main, "identities")
main.add_command(apply_retention.main, "retention")
main.add_command(forget_users.main, "forget")
main.add_command(build_profiles.main, "profiles")
main.add_command(build_catalogue.main, "catalogue")
main.add_command(build_features.main, "features")
main.add_command(train_recommender.main, "train")
main.add_command(promote.main, "promote")
main.add_command(analyze_experiment.main, "experiments")
main.add_command(train_segments.main, "segment")
main.add_command(build_service.main, "build-service")


def _write_local_or_upload(config: TailorConfig, output: str, write) -> dict:
    """Run `write(folder)` into `output`, or into a temp folder uploaded to an s3a:// output."""
    target = resolve_uri(output)
    if target.startswith("file://"):
        folder = Path(target[len("file://"):])
        folder.mkdir(parents=True, exist_ok=True)
        return write(folder)
    with tempfile.TemporaryDirectory() as tmp:
        summary = write(Path(tmp))
        upload_folder(Path(tmp), target, config)
        return summary


@main.command("sample-data")
@click.option("--users", type=int, default=None, help="People to simulate (default: sample.users).")
@click.option("--days", type=int, default=None, help="Days of history (default: sample.days).")
@click.option("--seed", type=int, default=None, help="Random seed (default: sample.seed).")
@click.option("--output", required=True, help="Folder for the raw dump (path, file:// or s3a://).")
@report_errors
@config_options
def sample_data(config: TailorConfig, users, days, seed, output) -> None:
    """Write a seeded, realistic multi-channel raw dump in every accepted shape."""
    from jobs.sample_data import write_sample

    users = users or config.sample.users
    days = days or config.sample.days
    seed = config.sample.seed if seed is None else seed
    if users <= 0 or days <= 0:
        raise JobError("--users and --days must be positive")
    summary = _write_local_or_upload(
        config, output, lambda folder: write_sample(folder, users=users, days=days, seed=seed))
    click.echo(f"wrote {summary['records']} raw records for {users} people over {days} days "
               f"to {resolve_uri(output)}")


@main.command("import-dataset")
@click.argument("kind", type=click.Choice(["movielens", "cdnow"]))
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--output", required=True, help="Folder for the raw dump (path, file:// or s3a://).")
@report_errors
@config_options
def import_dataset(config: TailorConfig, kind: str, path: str, output: str) -> None:
    """Turn a public data set (MovieLens u.data, CDNOW) into a raw dump the ingest job reads."""
    from jobs.datasets import import_dataset as convert

    summary = _write_local_or_upload(
        config, output, lambda folder: convert(kind, Path(path), folder))
    click.echo(f"wrote {summary['records']} {kind} records to {resolve_uri(output)}")


def ensure_sample(config: TailorConfig) -> str:
    """The generated sample dump used when the pipeline gets no --input (made once)."""
    from jobs.sample_data import write_sample
    from jobs.sample_profiles import IDENTIFY_FILE, write_profile_inputs

    sample = config.sample
    folder = SAMPLE_DIR / f"sample-u{sample.users}-d{sample.days}-s{sample.seed}"
    marker = folder / "_SUCCESS"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_sample(folder, users=sample.users, days=sample.days, seed=sample.seed)
        marker.touch()
    if not (folder / IDENTIFY_FILE).exists():  # also for samples made before profiles existed
        write_profile_inputs(folder, users=sample.users, days=sample.days, seed=sample.seed)
    return str(folder)


@main.command("pipeline")
@click.option("--input", "input_uri", default=None,
              help="Raw dump to run on (default: the generated sample under ./var/raw/).")
@report_errors
@config_options
def pipeline(config: TailorConfig, input_uri: str | None) -> None:
    """Run every stage in order on one raw input: ingest, then each later stage."""
    from jobs.spark import build_spark_session

    config.pii.effective_key()
    train_segments.load_rules(config)
    input_uri = input_uri or ensure_sample(config)
    spark = build_spark_session(config)
    stages = [
        ("ingest_events", lambda job: ingest_events.ingest(job, input_uri)),
        ("apply_retention", apply_retention.apply_retention),
        ("resolve_identities", resolve_identities.resolve),
        ("build_profiles", build_profiles.build),
        ("build_catalogue", build_catalogue.build),
        ("build_features", build_features.build),
        ("train_segments", train_segments.segment),
        ("train_recommender", train_recommender.train),
    ]
    for name, body in stages:
        click.echo(f"== {name}")
        execute(name, config, body, spark=spark)
    root = resolve_uri(config.storage.root)
    click.echo(f"\nOutputs under {root}: events/, quarantine/, identity/, profiles/, catalogue/, "
               "features/, segments/, recommendations/, audit/")
    click.echo(f"MLflow runs: {config.mlflow.tracking_uri}  (open the UI with `make mlflow-ui`)")



@main.command("serve")
@click.option("--port", type=int, default=None, help="Port (default: serving.port).")
@click.option("--host", default=None, help="Interface (default: serving.host, 127.0.0.1).")
@click.option("--bento", default=None,
              help="Bento tag to serve (default: the latest build, <serving.bento_name>:latest).")
@report_errors
@config_options
def serve(config: TailorConfig, port: int | None, host: str | None, bento: str | None) -> None:
    """Serve the built recommendation service in the foreground (Ctrl-C stops it)."""
    import os
    import sys

    command = [str(Path(sys.executable).parent / "bentoml"), "serve",
               bento or f"{config.serving.bento_name}:latest",
               "--host", host or config.serving.host, "--port", str(port or config.serving.port)]
    click.echo(f"serving {command[2]} on http://{command[4]}:{command[6]}", err=True)
    os.execve(command[0], command, build_service.serve_env(config))


@main.group("rules")
def rules() -> None:
    """Check a rules file, or explain the rules' decision for a person."""


@rules.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@report_errors
@config_options
def rules_check(config: TailorConfig, path: str) -> None:
    """Report overlapping, shadowed and impossible rules and unknown fields (exit 1 on any).

    Profile columns found in the storage root's profiles/ count as known fields."""
    from serving.data import Root
    from serving.rules import load_rules
    from jobs.storage import resolve_uri

    if not Path(path).is_file():
        raise JobError(f"rules file {path} does not exist")
    ruleset = load_rules(path)
    problems = ruleset.check(Root(resolve_uri(config.storage.root), config.storage.s3)
                             .columns("profiles"))
    for problem in problems:
        click.echo(f"{problem.kind}: {problem.message}")
    if problems:
        raise JobError(f"{path}: {len(problems)} problem(s)")
    click.echo(f"{path}: {len(ruleset.rules)} rules in {len(ruleset.by_slot)} slots, no problems")


@rules.command("explain")
@click.option("--user", "user_id", required=True, help="The user (or anonymous) id.")
@click.option("--slot", required=True, help="The page slot, e.g. home_banner or recommendations.")
@click.option("--context", "context_json", default="{}", help='Request context as JSON, e.g. \'{"page": "home"}\'.')
@report_errors
@config_options
def rules_explain(config: TailorConfig, user_id: str, slot: str, context_json: str) -> None:
    """Print which rules match the person in the slot, which won and why, as the built
    service would decide (it loads the service's model and the storage root's tables)."""
    import json

    from serving.explain import explain

    try:
        context = json.loads(context_json)
    except json.JSONDecodeError:
        raise JobError("--context must be a JSON object") from None
    if not isinstance(context, dict):
        raise JobError("--context must be a JSON object")
    click.echo(explain(config, user_id, slot, context))


if __name__ == "__main__":
    main()
