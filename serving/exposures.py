"""Exposure events: who was served which variant, buffered and written as raw dumps.

Each enrolled assignment the service serves becomes one raw `exposure` record in the flat
canonical shape (DESIGN.md), so `tailor ingest --input <root>/raw/exposures` turns it into an
ordinary event with `properties.experiment_id`, `.variant` and `.slot`. Records are buffered
and written as one JSON-lines file per batch — when the batch is full, when its oldest record
is older than the age limit (checked by a background thread), and on close — because one
object-store write per request would be slow and costly.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone

import pyarrow.fs as pafs

from serving.experiments import Assignment

log = logging.getLogger(__name__)
EXPOSURES_FOLDER = "raw/exposures"


def exposure_record(assignment: Assignment, *, user_id: str | None, person_id: str,
                    at: datetime, anonymous_id: str | None = None,
                    channel: str | None = None) -> dict:
    """The raw record of one exposure. Enrollment required personalization consent, so the
    record says so (ingest would otherwise apply the opt-in default)."""
    record = {
        "event_id": uuid.uuid4().hex,
        "event_type": "exposure",
        "timestamp": at.astimezone(timezone.utc).isoformat(timespec="milliseconds"),
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "channel": channel,
        "consent": {"personalization": True},
        "properties": {"experiment_id": assignment.experiment_id,
                       "variant": assignment.variant, "slot": assignment.slot,
                       "person_id": person_id},
    }
    return {key: value for key, value in record.items() if value is not None}


class RootSink:
    """Writes whole batch files under <root>/raw/exposures/date=YYYY-MM-DD/ (atomically:
    a hidden temporary name, then a rename, so ingest never reads half a file)."""

    def __init__(self, fs: pafs.FileSystem, base: str):
        self.fs, self.base = fs, base.rstrip("/")
        self.prefix = f"{socket.gethostname()}-{os.getpid()}"
        self.sequence = itertools.count()  # files of one writer sort in write order

    def write(self, records: list[dict], now: datetime) -> str:
        folder = f"{self.base}/{EXPOSURES_FOLDER}/date={now:%Y-%m-%d}"
        name = (f"exposures-{now:%H%M%S}-{self.prefix}-{next(self.sequence):06d}-"
                f"{uuid.uuid4().hex[:8]}.jsonl")
        self.fs.create_dir(folder, recursive=True)
        text = "".join(json.dumps(record, sort_keys=True) + "\n" for record in records)
        temporary = f"{folder}/.{name}.tmp"
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(text.encode("utf-8"))
        self.fs.move(temporary, f"{folder}/{name}")
        return f"{folder}/{name}"


class ExposureWriter:
    """Thread-safe buffer of exposure records, written in batches of `batch_size` or when the
    oldest is `max_age_seconds` old; `close()` flushes. With the background thread (the
    default) `record()` never does I/O itself, so a slow store does not slow requests down. A
    failed write keeps the batch for the next attempt (logged), except at close, where the
    error is raised."""

    def __init__(self, sink: RootSink, batch_size: int = 500, max_age_seconds: float = 60.0,
                 clock: Callable[[], float] = time.time, background: bool = True):
        if batch_size < 1 or max_age_seconds <= 0:
            raise ValueError("batch_size must be >= 1 and max_age_seconds > 0")
        self.sink, self.batch_size, self.max_age = sink, batch_size, max_age_seconds
        self.clock = clock
        self.written: deque[str] = deque(maxlen=1000)  # the latest files (a service runs for weeks)
        self._buffer: list[dict] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()  # the buffer
        self._writing = threading.Lock()  # one flush at a time, so batches keep their order
        self._wake = threading.Event()
        self._closed = False
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(cls, config, **kwargs) -> "ExposureWriter":
        from serving.rootfs import root_filesystem

        fs, base = root_filesystem(config.storage.root, config.storage.s3)
        settings = config.experiments
        return cls(RootSink(fs, base), batch_size=settings.exposure_batch_size,
                   max_age_seconds=settings.exposure_max_age_seconds, **kwargs)

    def record(self, assignment: Assignment, *, person_id: str, user_id: str | None = None,
               at: datetime | None = None, anonymous_id: str | None = None,
               channel: str | None = None) -> bool:
        """Buffer the exposure of an enrolled assignment; False (nothing recorded) otherwise."""
        if not assignment.enrolled:
            return False
        if self._closed:
            raise RuntimeError("exposure writer is closed")
        at = at or datetime.fromtimestamp(self.clock(), timezone.utc)
        record = exposure_record(assignment, user_id=user_id, person_id=person_id, at=at,
                                 anonymous_id=anonymous_id, channel=channel)
        with self._lock:
            self._buffer.append(record)
            self._oldest = self._oldest if self._oldest is not None else self.clock()
            full = len(self._buffer) >= self.batch_size
        if full:
            self._wake.set() if self._thread else self.flush()
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def _due(self) -> bool:
        with self._lock:
            return len(self._buffer) >= self.batch_size or (
                self._oldest is not None and self.clock() - self._oldest >= self.max_age)

    def flush_if_due(self) -> None:
        """Flush when a batch is full or its oldest record has reached the age limit."""
        if self._due():
            self.flush()

    def flush(self, raise_errors: bool = False) -> None:
        """Write everything buffered, in files of at most `batch_size` records."""
        with self._writing:
            with self._lock:
                pending, self._buffer, oldest, self._oldest = self._buffer, [], self._oldest, None
            while pending:
                batch = pending[:self.batch_size]
                try:
                    path = self.sink.write(batch, datetime.fromtimestamp(self.clock(), timezone.utc))
                except Exception:
                    with self._lock:  # back in front of anything recorded meanwhile
                        self._buffer[:0] = pending
                        self._oldest = oldest
                    if raise_errors:
                        raise
                    log.exception("writing %d exposures failed; kept for the next flush", len(pending))
                    return
                del pending[:len(batch)]
                self.written.append(path)

    def _run(self) -> None:
        interval = min(self.max_age / 4, 5.0)
        while not self._closed:
            self._wake.wait(interval)
            self._wake.clear()
            if not self._closed:
                self.flush_if_due()

    def close(self) -> None:
        """Stop the background thread and write what is left (raising if that fails)."""
        self._closed = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join()
        self.flush(raise_errors=True)

    def __enter__(self) -> "ExposureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
