"""Public data sets as raw flat events, so they go through the same ingest as our own dumps.

Why: MovieLens-100k and CDNOW give recommender and RFM results that can be checked against
published numbers and plain pandas, which synthetic data cannot. Both become flat events
(docs/input-shapes.md, shape 1) with full consent, since they are published research data.

* MovieLens `u.data` (user, item, rating, unix time; tab-separated) → one `rate` event per
  rating; ids are kept as given ("196", "242") so results join back to the source files.
* CDNOW `CDNOW_sample.txt` (original id, sample id, YYYYMMDD, CDs, dollars; whitespace-
  separated) → one `purchase` event per line. `user_id` is the sample customer id as an integer
  string, leading zeros dropped ("0001" → "1"), because that is the key pandas' `read_csv`
  (and the `lifetimes` loaders) produce; the original id is kept in `properties`. CDNOW has no
  products, so every purchase has `item_id` "cd" (ingest requires one). A line is a day's
  purchases, so the same customer can have several lines per day; `event_id` carries the
  1-based line number to keep them apart. Eight lines have $0.00 for one CD (free or fully
  discounted CDs): they are kept as purchases with price and revenue 0, which are valid. A line
  with 0 CDs (none in the shipped file) would get no `price`, since no unit price exists.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path
from typing import Callable, Iterator

_CONSENT = {"personalization": True, "analytics": True}
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def _require(data_dir: Path, name: str) -> Path:
    path = Path(data_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found in {data_dir} (expected {path})")
    return path


def movielens_records(data_dir: Path) -> Iterator[str]:
    """One flat `rate` event (JSON line, no newline) per rating in `data_dir/u.data`."""
    with _require(data_dir, "u.data").open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            user, item, rating, ts = line.split("\t")
            yield _ENCODE({
                "event_id": f"ml-{user}-{item}", "event_type": "rate", "timestamp": int(ts),
                "user_id": user, "item_id": item, "channel": "web",
                "properties": {"rating": rating}, "consent": _CONSENT,
            })


def cdnow_records(data_dir: Path) -> Iterator[str]:
    """One flat `purchase` event (JSON line, no newline) per line of `data_dir/CDNOW_sample.txt`."""
    with _require(data_dir, "CDNOW_sample.txt").open(encoding="ascii") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            original, sample, date, cds, dollars = line.split()
            user = str(int(sample))
            quantity, revenue = int(cds), float(dollars)
            day = dt.datetime.strptime(date, "%Y%m%d").date()
            record = {
                "event_id": f"cdnow-{user}-{number}", "event_type": "purchase",
                "timestamp": f"{day.isoformat()}T00:00:00Z", "user_id": user, "item_id": "cd",
                "channel": "web", "quantity": quantity, "revenue": revenue, "currency": "USD",
                "properties": {"original_customer_id": original}, "consent": _CONSENT,
            }
            if quantity > 0:
                record["price"] = round(revenue / quantity, 2)
            yield _ENCODE(record)


# Files copied beside the events when present: MovieLens' users.csv is a CRM export and its
# items.csv a catalogue feed, read by ingest through the mappings in conf/base.yaml.
_COMPANIONS = {"movielens": ("users.csv", "items.csv")}
_IMPORTERS: dict[str, tuple[str, Callable[[Path], Iterator[str]]]] = {
    "movielens": ("u.data", movielens_records),
    "cdnow": ("CDNOW_sample.txt", cdnow_records),
}


def import_dataset(kind: str, data_dir: Path, output_dir: Path) -> dict:
    """Write `<kind>.jsonl.gz` (and copy its companion files) into `output_dir`; returns the
    kind, the file and its record count."""
    if kind not in _IMPORTERS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of: {', '.join(sorted(_IMPORTERS))}")
    source, records = _IMPORTERS[kind]
    _require(data_dir, source)  # before creating anything, so a missing file leaves no output
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{kind}.jsonl.gz"
    count = 0
    with open(path, "wb") as raw, gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, mtime=0) as out:
        for line in records(Path(data_dir)):
            out.write(line.encode() + b"\n")
            count += 1
    for name in _COMPANIONS.get(kind, ()):
        if (Path(data_dir) / name).is_file():
            shutil.copyfile(Path(data_dir) / name, output_dir / name)
    return {"kind": kind, "path": str(path), "records": count}
