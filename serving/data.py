"""What the service reads under the storage root, without Spark: small Parquet tables and the
suppression list, through pyarrow's filesystems so file:// and s3a:// roots behave alike.

Every table is optional: a root where segmentation or profiles have not run yet gives people
with fewer facts, never an error.
"""
from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from features.privacy import suppression_token

#: The BentoML model folder: the MLflow recommender folder and the side tables beside it.
RECOMMENDER_DIR = "recommender"
CATALOGUE_FILE = "catalogue.parquet"
IDENTITIES_FILE = "identities.parquet"
#: The environment variable carrying the validated config (JSON) into the service.
CONFIG_ENV = "TAILOR_CONFIG_JSON"
#: Identifier types a request's user_id can be (see features.identity.IDENTIFIER_COLUMNS).
REQUEST_IDENTIFIER_TYPES = ("user_id", "anonymous_id")


class Root:
    """One storage root opened with pyarrow; ``s3`` is the config's storage.s3 section."""

    def __init__(self, uri: str, s3=None):
        if uri.startswith("s3a://"):
            self.fs = pafs.S3FileSystem(
                endpoint_override=s3.endpoint if s3 else None,
                region=s3.region if s3 else "us-east-1",
                scheme="https" if (s3 is None or s3.ssl_enabled) else "http",
                force_virtual_addressing=bool(s3 and not s3.path_style_access and not s3.endpoint))
            self.base = uri[len("s3a://"):].rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = uri[len("file://"):] if uri.startswith("file://") else uri
            self.base = self.base.rstrip("/")

    def _files(self, folder: str) -> list[pafs.FileInfo]:
        """Data files of the data set in ``folder``: its own files and partition (k=v) folders,
        not nested data sets (segments/rules/ is not part of segments/)."""
        selector = pafs.FileSelector(f"{self.base}/{folder}", recursive=True, allow_not_found=True)
        files = []
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            parts = info.path[len(self.base) + len(folder) + 2:].split("/")
            if (not any(p.startswith(("_", ".")) for p in parts)
                    and all("=" in p for p in parts[:-1])):
                files.append(info)
        return files

    def table(self, folder: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        """The Parquet data set in ``folder`` (only the ``columns`` it has), None when absent."""
        paths = [f.path for f in self._files(folder) if f.path.endswith(".parquet")]
        if not paths:
            return None
        dataset = ds.dataset(paths, format="parquet", filesystem=self.fs,
                             partitioning="hive", partition_base_dir=f"{self.base}/{folder}")
        names = dataset.schema.names
        return dataset.to_table(columns=[c for c in columns if c in names] if columns else None
                                ).to_pandas()

    def columns(self, folder: str) -> list[str]:
        paths = [f.path for f in self._files(folder) if f.path.endswith(".parquet")]
        if not paths:
            return []
        return ds.dataset(paths, format="parquet", filesystem=self.fs).schema.names

    def text_files(self, folder: str, suffix: str) -> dict[str, tuple]:
        """path -> (mtime, size) of the ``suffix`` files in ``folder``."""
        return {f.path: (f.mtime_ns, f.size) for f in self._files(folder) if f.path.endswith(suffix)}

    def read_text(self, path: str) -> str:
        with self.fs.open_input_stream(path) as stream:
            return stream.read().decode("utf-8")


class Suppression:
    """The suppression list (forgotten persons, withdrawn consent) as a set of tokens.

    ``refresh`` re-reads only files that are new or changed; ``start`` does it every
    ``period`` seconds in a daemon thread, so a person is suppressed without a restart.
    """

    def __init__(self, root: Root, pii_key: str | None, folder: str = "suppression"):
        self.root, self.pii_key, self.folder = root, pii_key, folder
        self.tokens: frozenset[str] = frozenset()
        self.refreshed_at: float | None = None
        self._by_file: dict[str, tuple[tuple, frozenset]] = {}
        self._stop = threading.Event()

    def refresh(self) -> None:
        current = self.root.text_files(self.folder, ".jsonl")
        by_file = {}
        for path, stamp in current.items():
            known = self._by_file.get(path)
            by_file[path] = known if known and known[0] == stamp else (stamp, self._read(path))
        self._by_file = by_file
        self.tokens = frozenset().union(*(tokens for _, tokens in by_file.values()))
        self.refreshed_at = time.time()

    def _read(self, path: str) -> frozenset:
        tokens = set()
        for line in self.root.read_text(path).splitlines():
            try:
                token = json.loads(line).get("token") if line.strip() else None
            except (json.JSONDecodeError, AttributeError):
                token = None
            if isinstance(token, str):
                tokens.add(token)
        return frozenset(tokens)

    def start(self, period: float) -> None:
        def loop() -> None:
            while not self._stop.wait(period):
                try:
                    self.refresh()
                except Exception as exc:  # keep the last good list; say why
                    print(f"[serving] suppression list refresh failed: {exc}", flush=True)

        threading.Thread(target=loop, name="suppression-refresh", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def suppressed(self, *identifiers: str) -> bool:
        """Whether any of the request's identifiers is on the list (as a user or anonymous id)."""
        if not self.tokens or not self.pii_key:
            return False
        return any(suppression_token(kind, identifier, self.pii_key) in self.tokens
                   for identifier in identifiers if identifier
                   for kind in REQUEST_IDENTIFIER_TYPES)


def _native(value):
    """A rules-comparable Python value: NaN/NaT/NA → None, numpy values → Python, dates → ISO."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if (value is None or value is pd.NaT or value is pd.NA
            or (isinstance(value, float) and math.isnan(value))):
        return None
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


#: Profile columns kept from answers (rules still see what profiles/ has): internal ids and
#: provenance, and the exact age, which answers give only as its band.
UNSHARED_PROFILE_COLUMNS = frozenset({"person_id", "user_id", "trait_sources", "age",
                                      "birth_date", "email_hash", "phone_hash", "postcode"})


def segment_label(value) -> str | None:
    """A segment as answers and rules see it: a string ("3", even when Parquet gave 3.0), or None."""
    value = _native(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return None if value is None else str(value)


@dataclass
class People:
    """Facts per person (profile columns, segment, persona, rfm_segment, rule_segments) and the
    user_id → person_id map; built once at start-up. Every one of these tables holds only
    personalization-consented people, so having facts is evidence of consent."""

    facts: dict[str, dict] = field(default_factory=dict)
    person_of: dict[str, str] = field(default_factory=dict)
    anonymous_ids: frozenset[str] = frozenset()
    profile_columns: list[str] = field(default_factory=list)

    def resolve(self, user_id: str) -> str:
        """The person behind a user or anonymous id; unresolved ids are their own person."""
        return self.person_of.get(user_id, user_id)

    def traits(self, facts: dict) -> dict:
        """The profile traits among a person's facts, as answers show them (none without a
        profiles/ row; see UNSHARED_PROFILE_COLUMNS)."""
        return {column: facts[column] for column in self.profile_columns
                if column in facts and column not in UNSHARED_PROFILE_COLUMNS}

    @classmethod
    def load(cls, root: Root, identities: pd.DataFrame | None = None) -> People:
        people = cls()
        if identities is not None:
            people.person_of.update(zip(identities["identifier"], identities["person_id"]))
            if "identifier_type" in identities:
                people.anonymous_ids = frozenset(
                    identities.loc[identities["identifier_type"] == "anonymous_id", "identifier"])
        profiles = root.table("profiles")
        if profiles is not None:
            people.profile_columns = [c for c in profiles.columns if c != "trait_sources"]
            people._merge(profiles[people.profile_columns])
        people._merge(root.table("features/rfm", ["person_id", "user_id", "rfm_segment"]))
        segments = root.table("segments", ["person_id", "user_id", "segment", "persona"])
        if segments is not None and "segment" in segments:
            segments["segment"] = segments["segment"].map(segment_label)
        people._merge(segments)
        rules = root.table("segments/rules", ["person_id", "user_id", "rule_segment"])
        if rules is not None:
            people._merge(rules[["person_id", "user_id"]].drop_duplicates("person_id"))
            for person, group in rules.groupby("person_id")["rule_segment"]:
                people.facts[person]["rule_segments"] = sorted(group.dropna().unique().tolist())
        return people

    def _merge(self, table: pd.DataFrame | None) -> None:
        if table is None or "person_id" not in table:
            return
        for row in table.to_dict("records"):
            person = row.get("person_id")
            if person is None:
                continue
            person = str(person)
            facts = self.facts.setdefault(person, {})
            facts.update({k: _native(v) for k, v in row.items() if k != "person_id"})
            if facts.get("user_id"):
                self.person_of.setdefault(str(facts["user_id"]), person)
