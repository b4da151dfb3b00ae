"""The storage root from a process without Spark (the service): pyarrow's file systems.

file:// and s3a:// roots behave alike, with the same endpoint, addressing and credentials
(from the environment) that Spark's S3A connector uses.
"""
from __future__ import annotations

from urllib.parse import urlparse

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.storage import resolve_uri


def root_filesystem(root: str, s3) -> tuple[pafs.FileSystem, str]:
    """(file system, base path) for a storage root; `s3` is the config's storage.s3 section."""
    uri = resolve_uri(root)
    if uri.startswith("file://"):
        return pafs.LocalFileSystem(), uri[len("file://"):]
    options = {"region": s3.region, "force_virtual_addressing": not s3.path_style_access,
               "scheme": "https" if s3.ssl_enabled else "http"}
    if s3.endpoint:
        endpoint = urlparse(s3.endpoint if "://" in s3.endpoint else f"//{s3.endpoint}")
        options.update(endpoint_override=endpoint.netloc,
                       scheme=endpoint.scheme or options["scheme"])
    return pafs.S3FileSystem(**options), uri[len("s3a://"):]


def data_files(fs: pafs.FileSystem, folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Files below `folder` (recursively), skipping `_`/`.`-prefixed parts and `skip` folders."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    found = []
    for info in fs.get_file_info(selector):
        parts = info.path[len(folder):].strip("/").split("/")
        if (info.type == pafs.FileType.File and not any(p.startswith(("_", ".")) for p in parts)
                and parts[0] not in skip):
            found.append(info.path)
    return sorted(found)


def persona_names(config) -> set[str]:
    """Distinct personas in segments/ (its rules/ subfolder aside); empty before segmentation."""
    fs, base = root_filesystem(config.storage.root, config.storage.s3)
    names: set[str] = set()
    for path in data_files(fs, f"{base}/segments", skip=("rules",)):
        if not path.endswith(".parquet"):
            continue
        schema = pq.read_schema(path, filesystem=fs)
        if "persona" in schema.names:
            column = pq.read_table(path, columns=["persona"], filesystem=fs).column("persona")
            names.update(v for v in column.unique().to_pylist() if v)
    return names
