"""The right to be forgotten: remove every stored row about a person, provably.

    spark-submit jobs/forget_users.py [--conf …] (--subjects FILE | --user ID)
    tailor forget (--subjects FILE | --user ID)

A subject file holds one JSON object per line: {"user_id": …}, {"email": …} or {"phone": …}
(email and phone are normalized and hashed with TAILOR_PII_KEY before matching). Each subject
is resolved to their person and all of that person's identifiers; their rows are removed from
events, quarantine, identity and every per-person table (features/, segments/,
recommendations/, profiles/, traits/). All new table versions are written first and swapped in only
when every one is complete, so a request is applied whole or not at all. The audit line holds
the request id and counts per table, never an identifier; the persons' identifiers are added
to suppression/ (under a key derived only for that list) so the service stops personalizing
for them without a rebuild; the champion recommender is tagged stale in MLflow.
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
RECOMMENDER_MODEL = "tailor-recommender"


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
    from pyspark.sql import functions as F

    config = job.config
    pii_key = config.pii.effective_key()
    events_uri, identity_uri = job.storage.uri("events"), job.storage.uri("identity")
    quarantine_uri = job.storage.uri("quarantine")
    nodes = subject_nodes(job.spark, subjects, pii_key, config.pii.default_phone_country_code)

    if job.storage.has_parquet(identity_uri):
        identity = job.spark.read.parquet(identity_uri)
    elif job.storage.has_parquet(events_uri):
        identity = resolve_identities(job.spark.read.parquet(events_uri),
                                      max_links=config.identity.max_links).identity
    else:
        job.say("no events yet: nothing to forget")
        return {"request_id": request_id, "subjects": len(subjects), "unknown_subjects": len(subjects)}
    node = F.concat_ws(":", "identifier_type", "identifier")
    matched = identity.where(node.isin(list(nodes.values()))).select(node.alias("node"), "person_id").collect()
    known_nodes = {row.node for row in matched}
    unknown = sum(1 for n in nodes.values() if n not in known_nodes) + len(subjects) - len(nodes)
    person_ids = sorted({row.person_id for row in matched})
    if not person_ids:
        job.say(f"request {request_id}: none of the {len(subjects)} subjects is known; nothing deleted")
        return {"request_id": request_id, "subjects": len(subjects), "unknown_subjects": unknown}
    person_identifiers = identity.where(F.col("person_id").isin(person_ids)).select(
        "identifier_type", "identifier").collect()
    identifiers: dict[str, list[str]] = {}
    for row in person_identifiers:
        identifiers.setdefault(row.identifier_type, []).append(row.identifier)

    links_uri = job.storage.uri("identity_links")
    tables = [t for t in [events_uri, identity_uri, links_uri, quarantine_uri] + _parquet_tables(job)
              if job.storage.has_parquet(t)]
    removed, staged = {}, []
    try:
        for table_uri in tables:
            table = job.spark.read.parquet(table_uri)
            if table_uri == quarantine_uri:
                about = _quarantine_rows_about(table, identifiers)
            else:
                about = _about(table, identifiers, person_ids)
            count = table.where(about).count()
            name = table_uri[len(job.storage.root):].strip("/")
            removed[name] = count
            if count:
                kept = table.where(~about)
                partitions = [c for c in ("event_date",) if c in table.columns]
                staged.append((job.storage.stage(
                    table_uri, lambda uri, kept=kept, partitions=partitions:
                    kept.write.partitionBy(*partitions).parquet(uri), job.run_id), table_uri))
        for staged_uri, table_uri in staged:
            job.storage.swap_in(staged_uri, table_uri)
    finally:
        job.storage.clear_staging(job.run_id)

    tokens = write_list(job.storage, request_id, ((row.identifier_type, row.identifier)
                                                  for row in person_identifiers),
                        pii_key, "forgotten", request_id=request_id)
    stale = _mark_recommender_stale(config, request_id)
    job.outputs = tables + [job.storage.uri(SUPPRESSION_FOLDER)]
    job.say(f"request {request_id}: {len(person_ids)} person(s), {tokens} identifiers; "
            f"rows removed {removed}; unknown subjects {unknown}; recommender {stale}")
    return {"request_id": request_id, "subjects": len(subjects), "unknown_subjects": unknown,
            "persons": len(person_ids), "identifiers": tokens, "rows_removed": removed,
            "recommender": stale}


def _quarantine_rows_about(table, identifiers: dict[str, list[str]]):
    """Quarantined raw text that names one of the person's raw ids (email and phone are
    already masked there)."""
    from pyspark.sql import functions as F

    raw_ids = identifiers.get("user_id", []) + identifiers.get("anonymous_id", [])
    condition = F.lit(False)
    for value in raw_ids:
        condition = condition | F.col("raw").contains(json.dumps(value))
    return condition


def _mark_recommender_stale(config: TailorConfig, request_id: str) -> str:
    """Tag the champion recommender version stale so the next training run replaces it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        client = MlflowClient(tracking_uri=config.mlflow.tracking_uri)
        version = client.get_model_version_by_alias(RECOMMENDER_MODEL, "champion")
    except MlflowException:
        return "none registered"
    client.set_model_version_tag(RECOMMENDER_MODEL, version.version, "stale", "true")
    client.set_model_version_tag(RECOMMENDER_MODEL, version.version, "stale_reason",
                                 f"forget request {request_id}")
    return f"version {version.version} marked stale"


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
    if subjects_file:
        if not Path(subjects_file).is_file():
            raise JobError(f"subjects file {subjects_file} does not exist; nothing was deleted")
        subjects = parse_subjects(Path(subjects_file).read_text().splitlines())
    else:
        subjects = [{"user_id": user_id}]
    config.pii.effective_key()
    request_id = "forget-" + uuid.uuid4().hex[:12]
    execute("forget_users", config, lambda job: forget(job, subjects, request_id))


if __name__ == "__main__":
    main()
