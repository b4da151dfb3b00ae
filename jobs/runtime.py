"""What every job shares: config options, the session, the root lock and the audit line.

A job is a function `run(job: JobRun, **options) -> dict` (its counts). `execute` wraps it:
config is validated before Spark starts, the storage root is locked while it runs, and one
JSON line goes to audit/ whether it succeeds or fails (a job refused because another holds the
lock leaves none, except a deletion request, which is always on record).
User-facing problems become one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import functools
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import click

from jobs.config import ConfigError, TailorConfig, load_config
from jobs.storage import RootLock, Storage, StorageError


class JobError(RuntimeError):
    """A job cannot do what was asked; the message is the one line the user sees."""


@dataclass
class JobRun:
    name: str
    config: TailorConfig
    spark: object
    storage: Storage
    run_id: str
    started_at: datetime
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    request_id: str | None = None  # a deletion request's id, known before any work starts

    def say(self, message: str) -> None:
        click.echo(f"[{self.name}] {message}")


def new_run_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def execute(name: str, config: TailorConfig, body: Callable[[JobRun], dict],
            spark=None, request_id: str | None = None) -> dict:
    """Run `body` under the storage-root lock and record it in audit/. Returns its counts."""
    from jobs.spark import build_spark_session

    started = datetime.now(timezone.utc)
    spark = spark or build_spark_session(config)
    storage = Storage(spark, config.storage.root)
    job = JobRun(name, config, spark, storage, new_run_id(started), started, request_id=request_id)
    clock = time.monotonic()
    status, error, counts = "failed", None, {}
    try:
        with RootLock(storage, name, job.run_id):
            counts = body(job)
            status = "succeeded"
        return counts
    except StorageError as exc:
        if "is locked by" in str(exc):
            status = "refused"
        error = str(exc)
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        raise
    finally:
        # A refused job never held the lock and changed nothing: no line, unless it was a
        # deletion request, whose fate must be on record whatever happens.
        if status != "refused" or job.request_id:
            storage.append_audit({
                "job": name, "run_id": job.run_id, "request_id": job.request_id,
                "status": status, "error": error,
                "started_at": started.isoformat(timespec="microseconds"),
                "duration_s": round(time.monotonic() - clock, 3),
                "config_digest": config.digest(), "inputs": job.inputs,
                "outputs": job.outputs, "counts": counts,
            })


def config_options(command: Callable) -> Callable:
    """--conf and --set on every job command, loaded and validated before anything runs."""

    @click.option("--conf", "conf_file", type=click.Path(dir_okay=False), default=None,
                  help="Environment config over conf/base.yaml (default: conf/local.yaml).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override one config key, e.g. --set storage.root=s3a://bucket/tailor.")
    @functools.wraps(command)
    def wrapper(conf_file, overrides, **kwargs):
        config = load_config(conf_file, list(overrides))
        return command(config=config, **kwargs)

    return wrapper


def report_errors(entry: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and an exit code."""

    @functools.wraps(entry)
    def wrapper(*args, **kwargs):
        try:
            return entry(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (JobError, StorageError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except Exception as exc:  # anything else: still one line; the traceback on request
            if os.environ.get("TAILOR_DEBUG"):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            click.echo(f"error: {type(exc).__name__}: {first_line} "
                       "(set TAILOR_DEBUG=1 for the traceback)", err=True)
            sys.exit(1)

    return wrapper
