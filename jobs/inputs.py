"""What later stages read: the events with person_id from identity/ when it has been written."""
from __future__ import annotations

from features.identity import with_person_id
from jobs.runtime import JobRun


def resolved_events(job: JobRun):
    """events/ with `person_id` (identity/ if resolved, else the fallback); None without events."""
    events_uri, identity_uri = job.storage.uri("events"), job.storage.uri("identity")
    if not job.storage.has_parquet(events_uri):
        return None
    events = job.spark.read.parquet(events_uri)
    identity = (job.spark.read.parquet(identity_uri)
                if job.storage.has_parquet(identity_uri) else None)
    job.inputs = [events_uri] + ([identity_uri] if identity is not None else [])
    return with_person_id(events, identity)
