"""The importers turn public data into flat events whose numbers later tests compare with plain
pandas on the source files, so they are checked against pandas here, on the real files and on
tiny ones."""
import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from jobs.datasets import cdnow_records, import_dataset, movielens_records

DATASETS = Path("/work/shared/datasets")
real_data = pytest.mark.skipif(not DATASETS.is_dir(), reason="shared public data sets not available")


@real_data
def test_movielens_real_file_matches_pandas():
    records = [json.loads(line) for line in movielens_records(DATASETS / "ml-100k")]
    source = pd.read_csv(DATASETS / "ml-100k" / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    assert len(records) == len(source) == 100_000
    assert len({r["event_id"] for r in records}) == 100_000
    events = pd.DataFrame({"user": [int(r["user_id"]) for r in records],
                           "item": [int(r["item_id"]) for r in records],
                           "rating": [int(r["properties"]["rating"]) for r in records],
                           "ts": [r["timestamp"] for r in records]})
    pd.testing.assert_frame_equal(events, source)
    assert {r["event_type"] for r in records} == {"rate"}
    assert all(r["consent"] == {"personalization": True, "analytics": True} for r in records)


@real_data
def test_cdnow_real_file_matches_pandas():
    records = [json.loads(line) for line in cdnow_records(DATASETS / "cdnow")]
    source = pd.read_csv(DATASETS / "cdnow" / "CDNOW_sample.txt", sep=r"\s+", header=None,
                         names=["original", "customer", "date", "cds", "dollars"])
    assert len(records) == len(source) == 6_919
    assert len({r["event_id"] for r in records}) == 6_919
    events = pd.DataFrame(records)
    assert events["user_id"].nunique() == source["customer"].nunique() == 2_357
    revenue = events.groupby(events["user_id"].astype(int))["revenue"].sum()
    pd.testing.assert_series_equal(revenue, source.groupby("customer")["dollars"].sum(),
                                   check_names=False, check_index_type=False)
    assert (events["quantity"] == source["cds"]).all()
    days = pd.to_datetime(events["timestamp"], format="%Y-%m-%dT%H:%M:%SZ")
    assert (days.dt.strftime("%Y%m%d").astype(int) == source["date"]).all()
    free = events[events["revenue"] == 0]
    assert len(free) == 8 and (free["price"] == 0).all()
    assert set(events["item_id"]) == {"cd"} and set(events["event_type"]) == {"purchase"}


def test_movielens_tiny_file(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n7\t9\t5\t874000000\n")
    first, second = map(json.loads, movielens_records(tmp_path))
    assert first == {
        "event_id": "ml-196-242", "event_type": "rate", "timestamp": 881250949, "user_id": "196",
        "item_id": "242", "channel": "web", "properties": {"rating": "3"},
        "consent": {"personalization": True, "analytics": True},
    }
    assert second["event_id"] == "ml-7-9"


def test_cdnow_tiny_file_with_zero_cds_and_crlf(tmp_path):
    (tmp_path / "CDNOW_sample.txt").write_bytes(
        b" 00004 0001 19970101  2   29.33\r\n 00021 0042 19970315  0    0.00\r\n 00021 0042 19970315  3   30.00\r\n")
    one, zero, three = map(json.loads, cdnow_records(tmp_path))
    assert one == {
        "event_id": "cdnow-1-1", "event_type": "purchase", "timestamp": "1997-01-01T00:00:00Z",
        "user_id": "1", "item_id": "cd", "channel": "web", "quantity": 2, "revenue": 29.33,
        "price": 14.66, "currency": "USD", "properties": {"original_customer_id": "00004"},
        "consent": {"personalization": True, "analytics": True},
    }
    assert zero["user_id"] == "42" and zero["quantity"] == 0 and "price" not in zero
    assert (three["event_id"], three["price"]) == ("cdnow-42-3", 10.0)


def test_import_dataset_writes_gzipped_lines(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "u.data").write_text("1\t2\t4\t881250949\n1\t3\t5\t881250950\n")
    result = import_dataset("movielens", tmp_path / "in", tmp_path / "out")
    path = tmp_path / "out" / "movielens.jsonl.gz"
    assert result == {"kind": "movielens", "path": str(path), "records": 2}
    with gzip.open(path, "rt") as f:
        assert [json.loads(line)["event_id"] for line in f] == ["ml-1-2", "ml-1-3"]


def test_import_dataset_rejects_unknown_kind_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind 'netflix'.*cdnow, movielens"):
        import_dataset("netflix", tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="CDNOW_sample.txt"):
        import_dataset("cdnow", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
