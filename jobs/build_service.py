"""Package the registry's `champion` recommender as the BentoML service, offline.

    spark-submit jobs/build_service.py [--conf …] [--set …]
    tailor build-service [--conf …] [--set …]

Downloads the champion version of `training.registry.model_name` from MLflow, adds what
serving needs beside it (the item catalogue from catalogue/, or what events/ say about items
where the catalogue job has not run, and the user/anonymous id → person map from identity/),
imports the folder into the BentoML model store under
`serving.bentoml_home` and runs `bentoml build` with serving/bentofile.yaml. The bento is
tagged `v<MLflow version>`, so what is served names the model it came from; rebuilding the same
version replaces it (new events may have changed the catalogue).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os
import shutil
import subprocess
import tempfile

import click

from jobs.config import REPO_ROOT, TailorConfig, checkout_path
from jobs.runtime import JobError, JobRun, config_options, execute, report_errors
from serving.data import CATALOGUE_FILE, CONFIG_ENV, IDENTITIES_FILE, RECOMMENDER_DIR

BENTOFILE = REPO_ROOT / "serving" / "bentofile.yaml"


def bentoml_env(config: TailorConfig) -> dict[str, str]:
    """The environment every bentoml command of this config runs with."""
    home = Path(config.serving.bentoml_home)
    return {**os.environ, "BENTOML_HOME": str(home if home.is_absolute() else Path.cwd() / home),
            "BENTOML_DO_NOT_TRACK": "True"}


def serve_env(config: TailorConfig) -> dict[str, str]:
    """bentoml_env plus the config for the service, with the storage root and configured files
    made absolute here (the service runs from the bento's own folder)."""
    import json

    from jobs.storage import resolve_uri

    resolved = config.model_copy(deep=True)
    resolved.storage.root = resolve_uri(config.storage.root)
    resolved.serving.rules_file = str(checkout_path(config.serving.rules_file))
    resolved.experiments.file = str(checkout_path(config.experiments.file))
    resolved.segmentation.rules_file = str(checkout_path(config.segmentation.rules_file))
    # One worker scores one row at a time: BLAS threads would only add hand-offs.
    return {"OPENBLAS_NUM_THREADS": "1", **bentoml_env(config),
            CONFIG_ENV: json.dumps(resolved.model_dump(mode="json"))}


def download_champion(config: TailorConfig, folder: Path) -> tuple[str, str, Path]:
    """(version, run id, the recommender folder) of the champion, downloaded into ``folder``."""
    import mlflow
    from mlflow import MlflowClient

    from training import registry
    from training.tracking import resolve_tracking_uri

    name = config.training.registry.model_name
    uri = resolve_tracking_uri(config.mlflow.tracking_uri, Path.cwd())
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = registry.current_champion(client, name)
    if champion is None:
        raise JobError(f"registered model {name!r} has no champion yet: run `tailor train` first")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{champion.version}", dst_path=str(folder)))
    recommender = local / "artifacts" / "recommender"
    if not (recommender / "recommender.pkl").is_file():
        raise JobError(f"{name} version {champion.version} has no recommender artifact; "
                       "was it registered by `tailor train`?")
    return str(champion.version), champion.run_id, recommender


def write_side_tables(job: JobRun, folder: Path) -> dict:
    """catalogue.parquet (serving.catalogue.SERVED_COLUMNS) from catalogue/, else built from
    events/ the way the catalogue job does, and identities.parquet (identifier,
    identifier_type, person_id) for user and anonymous ids from identity/."""
    from pyspark.sql import functions as F

    from features.catalogue import build_catalogue
    from serving.catalogue import SERVED_COLUMNS

    counts = {"catalogue_items": 0, "identities": 0}
    catalogue_uri = job.storage.uri("catalogue")
    events_uri, identity_uri = job.storage.uri("events"), job.storage.uri("identity")
    catalogue = None
    if job.storage.has_parquet(catalogue_uri):
        catalogue = job.spark.read.parquet(catalogue_uri)
        job.inputs.append(catalogue_uri)
    elif job.storage.has_parquet(events_uri):
        catalogue = build_catalogue(None, job.spark.read.parquet(events_uri))
        job.inputs.append(events_uri)
    if catalogue is not None:
        table = catalogue.select(*SERVED_COLUMNS).toPandas()
        table.to_parquet(folder / CATALOGUE_FILE, index=False)
        counts["catalogue_items"] = len(table)
    if job.storage.has_parquet(identity_uri):
        identities = (job.spark.read.parquet(identity_uri)
                      .where(F.col("identifier_type").isin("user_id", "anonymous_id"))
                      .select("identifier", "identifier_type", "person_id").toPandas())
        identities.to_parquet(folder / IDENTITIES_FILE, index=False)
        counts["identities"] = len(identities)
        job.inputs.append(identity_uri)
    return counts


def import_model(config: TailorConfig, recommender: Path, extras: Path, version: str,
                 run_id: str) -> str:
    """The BentoML model <serving.model_name>:v<version>: the MLflow recommender folder as
    recommender/ and the side tables beside it."""
    from bentoml._internal.models import ModelStore
    import bentoml
    from bentoml.exceptions import NotFound

    store = ModelStore(Path(bentoml_env(config)["BENTOML_HOME"]) / "models")
    tag = f"{config.serving.model_name}:v{version}"
    try:
        store.delete(tag)
    except NotFound:
        pass
    metadata = {"mlflow_model_name": config.training.registry.model_name,
                "mlflow_version": version, "mlflow_run_id": run_id}
    with bentoml.models.create(tag, metadata=metadata, labels={"source": "mlflow"},
                               _model_store=store) as model:
        shutil.copytree(recommender, Path(model.path) / RECOMMENDER_DIR)
        shutil.copytree(extras, model.path, dirs_exist_ok=True)
    return tag


def build_bento(config: TailorConfig, model_tag: str, version: str) -> str:
    """`bentoml build` the service around ``model_tag``; returns the bento tag."""
    env = bentoml_env(config)
    tag = f"{config.serving.bento_name}:v{version}"
    subprocess.run([str(Path(sys.executable).parent / "bentoml"), "delete", "-y", tag],
                   env=env, capture_output=True)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "bentoml"), "build", "-f", str(BENTOFILE),
         "--name", config.serving.bento_name, "--version", f"v{version}",
         "--arg", f"model_tag={model_tag}", "-o", "tag", str(REPO_ROOT)],
        env={**env, CONFIG_ENV: ""}, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise JobError(f"bentoml build failed: {lines[-1] if lines else result.returncode}")
    return tag


def build(job: JobRun) -> dict:
    """The job body: champion → BentoML model (+ side tables) → bento."""
    config = job.config
    with tempfile.TemporaryDirectory() as tmp:
        version, run_id, recommender = download_champion(config, Path(tmp) / "mlflow")
        extras = Path(tmp) / "extras"
        extras.mkdir()
        counts = write_side_tables(job, extras)
        model_tag = import_model(config, recommender, extras, version, run_id)
    bento_tag = build_bento(config, model_tag, version)
    job.outputs = [bentoml_env(config)["BENTOML_HOME"]]
    job.say(f"built bento {bento_tag} from {config.training.registry.model_name} version "
            f"{version} (BentoML model {model_tag}); serve it with `tailor serve`")
    return {"model_version": version, "bento": bento_tag, "bentoml_model": model_tag, **counts}


@click.command("build-service")
@report_errors
@config_options
def main(config: TailorConfig) -> None:
    """Build the BentoML service from the registry's champion recommender."""
    execute("build_service", config, build)


if __name__ == "__main__":
    main()
