"""The benchmark's single-process ingest baseline (bench/ingest_baseline.py) must do the same
work as the Spark ingest, or the benchmark compares different things: its counts reconcile and
match what the generator put in the dump, and its rules stay in step with features/."""
import collections
import hashlib
import hmac
from datetime import datetime, timezone

import pyarrow.dataset as ds
import pytest

from bench import ingest_baseline as baseline
from features.events import CANONICAL_COLUMNS
from jobs.config import load_config
from jobs.ingest_events import ingest_params
from jobs.sample_data import write_sample

# The reason each of the generator's bad-record kinds must be quarantined with.
REASON_OF_KIND = {
    "malformed_json": "malformed_json", "missing_timestamp": "missing_field",
    "unparseable_timestamp": "unparseable_timestamp", "future_timestamp": "future_timestamp",
    "no_identifier": "missing_identifier", "missing_item_id": "missing_field",
    "negative_price": "negative_value", "negative_quantity": "negative_value",
    "non_numeric_price": "bad_type", "unknown_event_type": "unknown_event_type",
}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    summary = write_sample(tmp / "dump", users=50, days=10)
    now = datetime.now(timezone.utc)
    params = ingest_params(load_config(), now)
    counts = baseline.ingest(tmp / "dump", tmp / "out", params, "test-run")
    return summary, counts, tmp / "out", params


def test_counts_reconcile_and_match_the_generator(ingested):
    summary, counts, _, _ = ingested
    assert counts["raw_records"] == summary["records"]
    assert counts["raw_records"] == counts["accepted"] + counts["quarantined"] + counts["duplicates"]
    assert counts["accepted"] == summary["good_records"]
    assert counts["quarantined"] == summary["bad_records"]
    assert counts["duplicates"] == summary["duplicates"]
    expected = collections.Counter()
    for kind, n in summary["bad"].items():
        expected[REASON_OF_KIND[kind]] += n
    assert counts["quarantined_by_reason"] == {k: v for k, v in expected.items() if v}


def test_output_is_partitioned_canonical_events_and_quarantine(ingested):
    _, counts, out, params = ingested
    events = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table()
    assert events.column_names == CANONICAL_COLUMNS + ["event_date"]
    assert events.num_rows == counts["event_rows_written"] > counts["accepted"]  # items exploded
    ids = events.column("event_id").to_pylist()
    assert len(set(ids)) == len(ids)
    quarantine = ds.dataset(out / "quarantine", format="parquet").to_table()
    assert quarantine.num_rows == counts["quarantined"]
    assert quarantine.column_names[:6] == baseline.QUARANTINE_COLUMNS
    hashes = set(events.column("email_hash").drop_null().to_pylist())
    assert hashes and all(len(h) == 64 for h in hashes)


def test_pseudonymization_is_python_hmac_of_the_normalized_value():
    pseudo = baseline.Pseudonymizer("k" * 100, "1")  # longer than a block: the key is hashed first
    assert pseudo.hash("ann@example.com") == hmac.new(b"k" * 100, b"ann@example.com", hashlib.sha256).hexdigest()
    assert [pseudo.phone(p) for p in ("+1 (555) 010-1234", "555-010-1234", "0044 20 7946 0958", "12")] == [
        "+15550101234", "+15550101234", "+442079460958", None]


def test_values_are_read_as_sparks_from_json_reads_them():
    assert [baseline.java_double(x) for x in (35.0, 1e5, 1e7, 1.5e-5, 12.5, 1709287200.5)] == [
        "35.0", "100000.0", "1.0E7", "1.5E-5", "12.5", "1.7092872005E9"]
    assert baseline.text_of({"a": 1.0, "b": [1, "x", None]}) == '{"a":1.0,"b":[1,"x",null]}'
    assert baseline.decode_object(' {"a": 1} trailing') == {"a": 1}
    assert baseline.decode_object("[1, 2]") is None
