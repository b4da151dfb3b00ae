"""The storage root: URIs, small files, the writer lock — through Hadoop's FileSystem API.

Going through the JVM's FileSystem means `file://` and `s3a://` roots behave the same for the
small files (lock, audit lines) as they do for Spark's own Parquet reads and writes.
"""
from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path


class StorageError(RuntimeError):
    """A storage problem phrased for the user (locked root, missing input, bad URI)."""


def resolve_uri(location: str) -> str:
    """A plain path becomes an absolute file:// URI; s3:// is read as s3a://."""
    if location.startswith("s3a://"):
        return location.rstrip("/")
    if location.startswith("s3://"):
        return "s3a://" + location[len("s3://"):].rstrip("/")
    if location.startswith("file://"):
        return "file://" + str(Path(location[len("file://"):]).resolve())
    if "://" in location:
        raise StorageError(f"unsupported storage URI {location!r}: use a path, file:// or s3a://")
    return "file://" + str(Path(location).resolve())


def _full_uri(hadoop_path: str) -> str:
    """Hadoop prints local paths as file:/x; the rest of Tailor writes file:///x."""
    if hadoop_path.startswith("file:/") and not hadoop_path.startswith("file:///"):
        return "file:///" + hadoop_path[len("file:/"):]
    return hadoop_path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def _rename(fs, source, target) -> str | None:
    """Hadoop rename, which reports failure by returning false or raising; returns why it
    failed, or None when it worked."""
    try:
        renamed = fs.rename(source, target)
    except Exception as exc:  # py4j wraps FileNotFoundException and the like
        return str(getattr(exc, "java_exception", exc)).splitlines()[0]
    return None if renamed else "the file system refused the rename"


class Storage:
    """Small-file access to one storage root, with the Spark session's Hadoop settings."""

    def __init__(self, spark, root: str):
        self.spark = spark
        self.root = resolve_uri(root)
        self._jvm = spark.sparkContext._jvm
        self._hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()

    def uri(self, *parts: str) -> str:
        return join(self.root, *parts)

    def _fs_path(self, uri: str):
        path = self._jvm.org.apache.hadoop.fs.Path(uri)
        return path.getFileSystem(self._hadoop_conf), path

    def exists(self, uri: str) -> bool:
        fs, path = self._fs_path(uri)
        return fs.exists(path)

    def has_parquet(self, uri: str) -> bool:
        """True when `uri` holds a Parquet data set with at least one data file."""
        return self.exists(uri) and any(name.endswith(".parquet") for name in self.list_files(uri))

    def list_files(self, uri: str) -> list[str]:
        """Every data file below `uri` (recursively), skipping `_`- and `.`-prefixed names."""
        fs, path = self._fs_path(uri)
        if not fs.exists(path):
            raise StorageError(f"input {uri} does not exist")
        if fs.getFileStatus(path).isFile():
            return [_full_uri(path.toString())]
        found = []
        iterator = fs.listFiles(path, True)
        while iterator.hasNext():
            file_path = iterator.next().getPath().toString()
            relative = file_path[len(path.toString()):]
            if not any(part.startswith(("_", ".")) for part in relative.split("/") if part):
                found.append(_full_uri(file_path))
        return sorted(found)

    def read_text(self, uri: str) -> str:
        fs, path = self._fs_path(uri)
        stream = fs.open(path)
        try:
            reader = self._jvm.java.io.BufferedReader(
                self._jvm.java.io.InputStreamReader(stream, "UTF-8"))
            lines = []
            line = reader.readLine()
            while line is not None:
                lines.append(line)
                line = reader.readLine()
            return "\n".join(lines)
        finally:
            stream.close()

    def write_text(self, uri: str, text: str, overwrite: bool = True) -> bool:
        """Write a small file; with overwrite=False, False if it already exists."""
        fs, path = self._fs_path(uri)
        try:
            stream = fs.create(path, overwrite)
        except Exception as exc:  # py4j wraps FileAlreadyExistsException
            if "FileAlreadyExists" in str(exc) or "already exists" in str(exc):
                return False
            raise
        try:
            stream.write(bytearray(text.encode("utf-8")))
        finally:
            stream.close()
        return True

    def delete(self, uri: str, recursive: bool = False) -> None:
        fs, path = self._fs_path(uri)
        fs.delete(path, recursive)

    def subfolders(self, uri: str) -> list[str]:
        """Names of the folders directly under `uri` (empty when it does not exist)."""
        fs, path = self._fs_path(uri)
        if not fs.exists(path):
            return []
        return sorted(status.getPath().getName() for status in fs.listStatus(path)
                      if status.isDirectory())

    def stage(self, uri: str, write, run_id: str) -> str:
        """Write a new version of the data set at `uri` under _staging/; returns where."""
        staged = self.uri("_staging", run_id, uri[len(self.root):].strip("/").replace("/", "__"))
        write(staged)
        return staged

    def swap_in(self, staged: str, uri: str) -> None:
        """Move a staged version into place, retiring the current one."""
        self.swap_in_all([(staged, uri)])

    def swap_in_all(self, moves: list[tuple[str, str]]) -> None:
        """Move several staged versions (staged, uri) into place, all or none: when one can't
        move in, every data set touched so far gets its previous version back before the
        error is raised.

        Current versions are moved aside to _retired/ (beside _staging/, so clearing the
        staging area never touches them) and deleted only once every new version is in place.
        """
        touched = []
        try:
            for staged, uri in moves:
                touched.append((uri, self._move_aside(staged, uri)))
                self._move_into_place(staged, uri)
        except Exception:
            self._move_back(reversed(touched))  # raises, keeping _retired/, if one can't go back
            self._drop_retired(moves)
            raise
        self._drop_retired(moves)

    def _retired_uri(self, staged: str) -> str:
        """Where the current version goes while `staged` (under _staging/) moves in."""
        return self.uri("_retired", staged[len(self.uri("_staging")):])

    def _drop_retired(self, moves: list[tuple[str, str]]) -> None:
        """Delete the _retired/RUN folders of a swap, once nothing in them is needed."""
        for folder in {self._retired_uri(staged).rsplit("/", 1)[0] for staged, _ in moves}:
            self.delete(folder, recursive=True)

    def _move_aside(self, staged: str, uri: str) -> str | None:
        """Move the current version of `uri` to _retired/; returns where (None: there was none)."""
        fs, target = self._fs_path(uri)
        if not fs.exists(target):
            return None
        retired = self._retired_uri(staged)
        retired_path = self._jvm.org.apache.hadoop.fs.Path(retired)
        fs.mkdirs(retired_path.getParent())
        failure = _rename(fs, target, retired_path)
        if failure:
            raise StorageError(f"could not move {uri} aside: {failure}")
        return retired

    def _move_into_place(self, staged: str, uri: str) -> None:
        fs, target = self._fs_path(uri)
        _, staged_path = self._fs_path(staged)
        fs.mkdirs(target.getParent())
        failure = _rename(fs, staged_path, target)
        if failure:
            raise StorageError(f"could not move the new {uri} into place: {failure}")

    def _move_back(self, moved) -> None:
        """Put the previous versions of (uri, retired) pairs back in place; one that can't be
        put back stays under _retired/ and the error says where."""
        stuck = []
        for uri, retired in moved:
            fs, target = self._fs_path(uri)
            if fs.exists(target) and not fs.delete(target, True):
                stuck.append(f"{uri} (the new version could not be removed)")
            elif retired is not None and _rename(fs, self._jvm.org.apache.hadoop.fs.Path(retired), target):
                stuck.append(f"{uri} (its previous version is at {retired})")
        if stuck:
            raise StorageError("could not restore " + ", ".join(stuck))

    def clear_staging(self, run_id: str) -> None:
        self.delete(self.uri("_staging", run_id), recursive=True)

    def replace(self, uri: str, write, run_id: str) -> None:
        """Replace the data set at `uri` with what `write(staging_uri)` writes.

        The new version is complete under _staging/ before it moves in, so a failed run
        leaves the previous version readable.
        """
        try:
            self.swap_in(self.stage(uri, write, run_id), uri)
        finally:
            self.clear_staging(run_id)

    def append_audit(self, record: dict) -> str:
        """One JSON line per job run under audit/job_runs/, partitioned by day."""
        day = record["started_at"][:10]
        uri = self.uri("audit", "job_runs", f"date={day}", f"{record['run_id']}.jsonl")
        self.write_text(uri, json.dumps(record, sort_keys=True) + "\n")
        return uri


class RootLock:
    """One writer per storage root: `_lock` is created only if absent.

    A lock left behind by a dead process on this host is taken over; any other holder makes
    the job stop with a clear "locked by …" error.
    """

    def __init__(self, storage: Storage, job: str, run_id: str):
        self.storage = storage
        self.uri = storage.uri("_lock")
        self.holder = {"job": job, "run_id": run_id, "host": socket.gethostname(),
                       "pid": os.getpid(),
                       "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def __enter__(self) -> "RootLock":
        payload = json.dumps(self.holder)
        if self.storage.write_text(self.uri, payload, overwrite=False):
            return self
        try:
            holder = json.loads(self.storage.read_text(self.uri))
        except Exception:
            holder = {}
        if self._stale(holder):
            self.storage.write_text(self.uri, payload, overwrite=True)
            return self
        raise StorageError(
            f"storage root {self.storage.root} is locked by {holder.get('job', '?')} "
            f"(run {holder.get('run_id', '?')}, pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')}); "
            f"if that job is gone, delete {self.uri}")

    def __exit__(self, *exc) -> None:
        self.storage.delete(self.uri)


def upload_folder(folder: Path, target: str, config) -> None:
    """Copy a local folder's files to an s3a:// prefix (used for generated dumps, no Spark).

    The endpoint, addressing style and credentials are the ones Spark's S3A connector uses.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    bucket, _, prefix = target[len("s3a://"):].partition("/")
    s3 = config.storage.s3
    client = boto3.client(
        "s3", endpoint_url=s3.endpoint, region_name=s3.region, use_ssl=s3.ssl_enabled,
        config=BotoConfig(s3={"addressing_style": "path" if s3.path_style_access else "auto"}))
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = "/".join(filter(None, [prefix.strip("/"), str(file.relative_to(folder))]))
        client.upload_file(str(file), bucket, key)
