"""MLflow tracking helpers: where runs go, and what a training run logs besides the model.

Explicit parameters only (the job passes config values in). A relative ``sqlite:///var/x.db``
is resolved against the working directory and its folder created, and an experiment created
on a local SQLite store keeps its artifacts beside the database (``var/mlartifacts``) rather
than in MLflow's default ``./mlruns`` wherever the job happened to start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import matplotlib

matplotlib.use("Agg")  # no display in jobs and tests; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.data.spark_dataset_source import SparkDatasetSource  # noqa: E402

from training.tuning import Trial  # noqa: E402

_SQLITE = "sqlite:///"


def resolve_tracking_uri(uri: str, cwd: Path) -> str:
    """Make a relative SQLite path absolute (against ``cwd``); other URIs are unchanged."""
    if not uri.startswith(_SQLITE) or uri.startswith(_SQLITE + "/"):
        return uri
    return _SQLITE + str((cwd / uri[len(_SQLITE):]).resolve())


def local_artifact_location(uri: str, experiment: str) -> str | None:
    """``mlartifacts/<experiment>`` beside an (absolute) SQLite database; None for servers and
    other stores, which have their own artifact roots."""
    if not uri.startswith(_SQLITE + "/"):
        return None
    folder = Path(uri[len(_SQLITE):]).parent / "mlartifacts" / quote(experiment, safe="")
    return folder.as_uri()


def open_experiment(tracking_uri: str, experiment: str, cwd: Path) -> str:
    """Point MLflow at the store and the experiment (created if needed); returns its id."""
    uri = resolve_tracking_uri(tracking_uri, cwd)
    if uri.startswith(_SQLITE):
        Path(uri[len(_SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        experiment_id = mlflow.create_experiment(
            experiment, artifact_location=local_artifact_location(uri, experiment))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flat_params(prefix: str, params: Mapping) -> dict:
    """Nested config as MLflow params: {"a": {"b": 1}} -> {"<prefix>.a.b": 1}."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(name, value))
        else:
            flat[name] = value
    return flat


def log_trial(number: int, trial: Trial) -> None:
    """One tuning trial as a nested run: its parameters, validation metrics and fit time."""
    with mlflow.start_run(run_name=f"trial-{number:03d}", nested=True):
        mlflow.set_tag("role", "tuning_trial")
        mlflow.log_params(flat_params("", {"model": trial.model, **trial.weighting, **trial.params}))
        mlflow.log_metrics({f"validation_{name}": value for name, value in trial.metrics.items()})
        mlflow.log_metric("fit_seconds", trial.fit_seconds)


def log_scored(name: str, role: str, spec: Mapping, metrics: Mapping, fit_seconds: float) -> None:
    """A recipe scored on the test split (a baseline, a re-scored champion) as a nested run."""
    with mlflow.start_run(run_name=name, nested=True):
        mlflow.set_tag("role", role)
        mlflow.log_params(flat_params("", {"model": spec["model"], **spec["params"]}))
        mlflow.log_metrics({**metrics, "fit_seconds": fit_seconds})


def metrics_figure(results: Mapping[str, Mapping[str, float]], k: int):
    """A grouped bar chart of the @k ranking metrics, one bar colour per scored model."""
    names = ["precision", "recall", "ndcg", "map", "coverage"]
    keys = [f"{name}_at_{k}" for name in names]
    table = pd.DataFrame({model: [metrics.get(key, 0.0) for key in keys]
                          for model, metrics in results.items()}, index=names)
    figure, axes = plt.subplots(figsize=(8, 4))
    table.plot.bar(ax=axes, rot=0)
    axes.set_ylabel(f"metric @ {k} (test split)")
    axes.set_title("Recommenders on the held-out split")
    figure.tight_layout()
    return figure


def log_figure(figure, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)


def events_digest(count: int, fingerprint: int) -> str:
    """A short, stable digest of the events a run read (their count and XOR of row hashes)."""
    return hashlib.sha256(f"{count}:{fingerprint}".encode()).hexdigest()[:16]


def log_events_input(table: pd.DataFrame, source: str, digest: str, name: str) -> None:
    """The training input as an MLflow dataset: the collected table, named by where it came
    from and identified by the digest of all events read (not just a sample of rows)."""
    dataset = mlflow.data.from_pandas(table, source=SparkDatasetSource(path=source), name=name,
                                      digest=digest)
    mlflow.log_input(dataset, context="training")
