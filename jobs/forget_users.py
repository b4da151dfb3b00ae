"""The right to be forgotten: remove every stored row about a person, provably.

    spark-submit jobs/forget_users.py [--conf …] (--subjects FILE | --user ID)
    tailor forget (--subjects FILE | --user ID)

A subject file holds one JSON object per line: {"user_id": …}, {"email": …} or {"phone": …}
(email and phone are normalized and hashed with TAILOR_PII_KEY before matching). Each subject
is resolved to their person and all of that person's identifiers; their rows are removed from
events, quarantine, identity and every per-person table (features/, segments/,
recommendations/, profiles/, traits/). All new table versions are written first and swapped
in together only when every one is complete (a failed swap puts back the ones already moved),
so a request is applied whole or not at all. The request id is fixed before any work starts
and is in the audit line whatever happens, with the counts per table and never an identifier;
a malformed request writes a failed line saying why and changes nothing. The persons'
identifiers are added to suppression/ (under a key derived only for that list) so the service
stops personalizing for them without a rebuild, and every registered version of the
recommender is tagged stale in MLflow (training/registry.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by spark-submit: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json
import uuid

import click

from features.identity import IDENTIFIER_COLUMNS, resolve_identities
from features.privacy import hmac_sha256_hex, normalize_email, normalize_phone
from jobs.config import TailorConfig
from jobs.runtime import JobError, JobRun, config_options, execute, report_errors
from jobs.suppression import FOLDER as SUPPRESSION_FOLDER, write_list

SUBJECT_KEYS = {"user_id", "email", "phone"}
PERSON_TABLE_ROOTS = ["features", "segments", "recommendations", "profiles", "traits"]
SQLITE = "sqlite:///"


def parse_subjects(lines: list[str]) -> list[dict]:
    """Subjects from JSON lines; any malformed line rejects the whole request."""
    subjects = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            subject = json.loads(line)
        except json.JSONDecodeError:
            raise JobError(f"subjects line {number}: not valid JSON; nothing was deleted") from None
        if (not isinstance(subject, dict) or len(subject) != 1 or not SUBJECT_KEYS >= subject.keys()
                or not isinstance(next(iter(subject.values())), str)
                or not next(iter(subject.values())).strip()):
            raise JobError(f"subjects line {number}: expected one of {sorted(SUBJECT_KEYS)} with a "
                           "non-empty string value; nothing was deleted")
        subjects.append(subject)
    if not subjects:
        raise JobError("no subjects given; nothing was deleted")
    return subjects


def subject_nodes(spark, subjects: list[dict], pii_key: str, country_code: str) -> dict[int, str]:
    """Subject index → identity node ("type:value"), email and phone hashed as in events."""
    from pyspark.sql import functions as F

    rows = [(i, s.get("user_id"), s.get("email"), s.get("phone")) for i, s in enumerate(subjects)]
    frame = spark.createDataFrame(rows, "i int, user_id string, email string, phone string")
    hashed = frame.select(
        "i", "user_id",
        hmac_sha256_hex(normalize_email(F.col("email")), pii_key).alias("email_hash"),
        hmac_sha256_hex(normalize_phone(F.col("phone"), country_code), pii_key).alias("phone_hash"))
    nodes = {}
    for row in hashed.collect():
        for column in ("user_id", "email_hash", "phone_hash"):
            if row[column]:
                nodes[row["i"]] = f"{column}:{row[column]}"
    return nodes


def _person_columns(table) -> list[str]:
    return [c for c in ("person_id", *IDENTIFIER_COLUMNS) if c in table.columns]


def _about(table, identifiers: dict[str, list[str]], person_ids: list[str]):
    """A condition true on rows about the persons: by person_id or any of their identifiers."""
    from pyspark.sql import functions as F

    condition = F.lit(False)
    for column in _person_columns(table):
        values = person_ids if column == "person_id" else identifiers.get(column, [])
        if values:
            condition = condition | F.coalesce(F.col(column).isin(values), F.lit(False))
    return condition


def _parquet_tables(job: JobRun) -> list[str]:
    """Every Parquet data set under the per-person roots (features/rfm, segments/rules, …)."""
    tables = []
    for top in PERSON_TABLE_ROOTS:
        uri = job.storage.uri(top)
        if not job.storage.exists(uri):
            continue
        folders = {f.rsplit("/", 1)[0] for f in job.storage.list_files(uri) if f.endswith(".parquet")}
        tables.extend(sorted({_dataset_root(folder) for folder in folders}))
    return sorted(set(tables))


def _dataset_root(folder: str) -> str:
    """Strip partition folders (key=value) to find the data set a Parquet file belongs to."""
    parts = folder.split("/")
    while "=" in parts[-1]:
        parts.pop()
    return "/".join(parts)


def forget(job: JobRun, subjects: list[dict], request_id: str) -> dict:
    """The job body: resolve the subjects, stage every table without them, then mark the
    recommender versions stale, suppress the identifiers and swap all tables in at once.

    The stale tags and the suppression entry come before the swap, so no outcome leaves the
    data deleted while a model or the service still uses it (an unreachable MLflow fails the
    request with nothing deleted); if the swap then fails, every table is put back and those
    two stay (harmless: a retrain, a person not personalized)."""
    from pyspark.sql import functions as F

    job.request_id = request_id  # also when the caller did not give it to execute()
    config = job.config
    pii_key = config.pii.effective_key()
    events_uri, identity_uri = job.storage.uri("events"), job.storage.uri("identity")
    quarantine_uri = job.storage.uri("quarantine")
    nodes = subject_nodes(job.spark, subjects, pii_key, config.pii.default_phone_country_code)

    if job.storage.has_parquet(identity_uri):
        job.inputs = [identity_uri]
        identity = job.spark.read.parquet(identity_uri)
    elif job.storage.has_parquet(events_uri):
        job.inputs = [events_uri]
        identity = resolve_identities(job.spark.read.parquet(events_uri),
                                      max_links=config.identity.max_links).identity
    else:
        job.say("no events yet: nothing to forget")
        return {"subjects": len(subjects), "unknown_subjects": len(subjects)}
    node = F.concat_ws(":", "identifier_type", "identifier")
    matched = identity.where(node.isin(list(nodes.values()))).select(node.alias("node"), "person_id").collect()
    known_nodes = {row.node for row in matched}
    unknown = sum(1 for n in nodes.values() if n not in known_nodes) + len(subjects) - len(nodes)
    person_ids = sorted({row.person_id for row in matched})
    if not person_ids:
        job.say(f"request {request_id}: none of the {len(subjects)} subjects is known; nothing deleted")
        return {"subjects": len(subjects), "unknown_subjects": unknown}
    person_identifiers = identity.where(F.col("person_id").isin(person_ids)).select(
        "identifier_type", "identifier").collect()
    identifiers: dict[str, list[str]] = {}
    for row in person_identifiers:
        identifiers.setdefault(row.identifier_type, []).append(row.identifier)

    links_uri = job.storage.uri("identity_links")
    tables = [t for t in [events_uri, identity_uri, links_uri, quarantine_uri] + _parquet_tables(job)
              if job.storage.has_parquet(t)]
    job.inputs = tables
    removed, kept = {}, {}
    try:
        for table_uri in tables:
            table = job.spark.read.parquet(table_uri)
            if table_uri == quarantine_uri:
                about = _quarantine_rows_about(table, identifiers)
            else:
                about = _about(table, identifiers, person_ids)
            removed[_table_name(job, table_uri)] = table.where(about).count()
            kept[table_uri] = table.where(~about)
        staged = []
        for unit, members in _swap_units(tables).items():
            if any(removed[_table_name(job, table)] for table in members):
                staged.append((job.storage.stage(
                    unit, lambda uri: _write_kept(uri, unit, members, kept), job.run_id), unit))
        stale = _mark_recommender_stale(job, request_id)
        tokens = write_list(job.storage, request_id, ((row.identifier_type, row.identifier)
                                                      for row in person_identifiers),
                            pii_key, "forgotten", request_id=request_id)
        job.outputs.append(job.storage.uri(SUPPRESSION_FOLDER, f"{request_id}.jsonl"))
        job.storage.swap_in_all(staged)
        job.outputs.extend(table_uri for _, table_uri in staged)
    finally:
        job.storage.clear_staging(job.run_id)

    job.say(f"request {request_id}: {len(person_ids)} person(s), {tokens} identifiers; "
            f"rows removed {removed}; unknown subjects {unknown}; recommender versions marked "
            f"stale: {', '.join(stale) or 'none'}")
    return {"subjects": len(subjects), "unknown_subjects": unknown, "persons": len(person_ids),
            "identifiers": tokens, "rows_removed": removed, "stale_recommender_versions": stale}


def _table_name(job: JobRun, table_uri: str) -> str:
    return table_uri[len(job.storage.root):].strip("/")


def _swap_units(tables: list[str]) -> dict[str, list[str]]:
    """Tables grouped by the folder that moves as one: a table nested in another's folder
    (recommendations/similar_items) moves with it, so it is rewritten with it too."""
    units: dict[str, list[str]] = {}
    for table in sorted(tables):
        parent = next((unit for unit in units if table.startswith(unit + "/")), table)
        units.setdefault(parent, []).append(table)
    return units


def _write_kept(folder: str, unit: str, members: list[str], kept: dict) -> None:
    """Write the kept rows of a swap unit's tables under `folder`, nested as they were."""
    for table in members:
        partitions = [c for c in ("event_date",) if c in kept[table].columns]
        kept[table].write.partitionBy(*partitions).parquet(folder + table[len(unit):])


def _quarantine_rows_about(table, identifiers: dict[str, list[str]]):
    """Quarantined raw text that names one of the person's raw ids (email and phone are
    already masked there)."""
    from pyspark.sql import functions as F

    raw_ids = identifiers.get("user_id", []) + identifiers.get("anonymous_id", [])
    condition = F.lit(False)
    for value in raw_ids:
        condition = condition | F.coalesce(F.col("raw"), F.lit("")).contains(json.dumps(value))
    return condition


def _mark_recommender_stale(job: JobRun, request_id: str) -> list[str]:
    """Tag every version of the recommender stale (training/registry.py), so the next training
    run replaces the champion and no rollback brings a model back that learnt from the person.
    A SQLite store that does not exist yet has no models: it is not created."""
    from mlflow import MlflowClient

    from training import registry
    from training.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(job.config.mlflow.tracking_uri, Path.cwd())
    if uri.startswith(SQLITE) and not Path(uri[len(SQLITE):]).exists():
        return []
    name = job.config.training.registry.model_name
    versions = registry.mark_stale(MlflowClient(tracking_uri=uri, registry_uri=uri), name,
                                   f"forget request {request_id}")
    if versions:
        job.outputs.append(f"models:/{name}")
    return versions


def read_subjects(subjects_file: str | None, user_id: str | None) -> list[dict]:
    """The request's subjects: one --user, or a subject file, whole or not at all."""
    if user_id:
        return [{"user_id": user_id}]
    if not Path(subjects_file).is_file():
        raise JobError(f"subjects file {subjects_file} does not exist; nothing was deleted")
    return parse_subjects(Path(subjects_file).read_text().splitlines())


@click.command("forget")
@click.option("--subjects", "subjects_file", type=click.Path(dir_okay=False), default=None,
              help="JSON lines of {\"user_id\"|\"email\"|\"phone\": value}.")
@click.option("--user", "user_id", default=None, help="One user_id to forget.")
@report_errors
@config_options
def main(config: TailorConfig, subjects_file: str | None, user_id: str | None) -> None:
    """Remove every stored row about the given people, audit it and suppress them in serving."""
    if bool(subjects_file) == bool(user_id):
        raise JobError("give exactly one of --subjects FILE or --user ID")
    config.pii.effective_key()
    request_id = "forget-" + uuid.uuid4().hex[:12]
    # The subjects are read inside the job, so a malformed request is audited (and changes nothing).
    execute("forget_users", config,
            lambda job: forget(job, read_subjects(subjects_file, user_id), request_id),
            request_id=request_id)


if __name__ == "__main__":
    main()
