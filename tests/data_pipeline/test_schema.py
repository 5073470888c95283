"""Validation of raw rows against the canonical schema, the rejects file and the clear
one-line errors of ``onerec-prep``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from data_pipeline.ingest import ingest, write_rejects
from data_pipeline.schema import SchemaError, TooManyRejectsError
from data_pipeline.sources.tabular import TabularConfig
from tests.data_pipeline.conftest import run_prep

COLUMNS = ["user_id", "item_id", "timestamp", "watch_time_ms", "duration_ms", "like", "rating"]
# Data row numbers count from 1 after the header; each malformed row breaks one rule.
LOG = """\
user_id,item_id,timestamp,watch_time_ms,duration_ms,like,rating
u1,i1,1000,500,1000,0,4
,i2,1000,500,1000,0,4
u1,,1000,500,1000,0,4
u1,i3,yesterday,500,1000,0,4
u1,i4,4000,-1,1000,0,4
u1,i5,5000,10,-3,0,4
u1,i6,6000,10,100,2,4
u1,i7,7000,abc,100,0,4
u1,i8,8000,,,,
u1,i9,9000, 10 ,100,true,4.5
u2,i10,9500,10,100,1,five
  ,i11,9600,10,100,0,4
,i12,soon,10,100,0,4
u2,i13,9700,10,100,1.0,
"""
EXPECTED_REJECTS = [
    (2, "missing_user_id"),
    (3, "missing_item_id"),
    (4, "bad_timestamp"),
    (5, "negative_watch_time_ms"),
    (6, "negative_duration_ms"),
    (7, "bad_like"),
    (8, "bad_watch_time_ms"),
    (11, "bad_rating"),
    (12, "missing_user_id"),  # whitespace only
    (13, "missing_user_id"),  # the first rule broken wins (the timestamp is bad too)
]


def _log_source(tmp_path: Path, text: str = LOG, columns: list[str] = COLUMNS) -> TabularConfig:
    path = tmp_path / "log.csv"
    path.write_text(text)
    return TabularConfig(path=str(path), columns={c: c for c in columns})


def test_each_malformed_row_is_rejected_with_its_reason(tmp_path: Path) -> None:
    ingested = ingest(_log_source(tmp_path).read(), max_reject_share=1.0)
    assert list(ingested.rejects.select("row_number", "reason").iter_rows()) == EXPECTED_REJECTS
    assert ingested.report.rows_read == 14
    assert ingested.report.rows_kept == 4
    assert ingested.report.rejected_by_reason == {
        "missing_user_id": 3,
        "missing_item_id": 1,
        "bad_timestamp": 1,
        "negative_watch_time_ms": 1,
        "negative_duration_ms": 1,
        "bad_like": 1,
        "bad_watch_time_ms": 1,
        "bad_rating": 1,
    }


def test_kept_rows_are_parsed_and_empty_optional_values_are_unknown(tmp_path: Path) -> None:
    ingested = ingest(_log_source(tmp_path).read(), max_reject_share=1.0)
    kept = (
        ingested.interactions.join(ingested.items, on="item_idx")
        .sort("timestamp")
        .select("item_id", "timestamp", "watch_time_ms", "duration_ms", "like", "rating")
    )
    assert kept.schema["timestamp"] == pl.Int64 and kept.schema["like"] == pl.Int8
    assert kept.rows() == [
        ("i1", 1000, 500.0, 1000.0, 0, 4.0),
        ("i8", 8000, None, None, None, None),  # empty optional values are allowed
        ("i9", 9000, 10.0, 100.0, 1, 4.5),  # ' 10 ' is stripped, 'true' is a 1
        ("i13", 9700, 10.0, 100.0, 1, None),  # '1.0' is a 1
    ]
    assert ingested.users.rows() == [(0, "u1"), (1, "u2")]


def test_rejects_csv_has_row_number_reason_and_raw_values(tmp_path: Path) -> None:
    source = _log_source(tmp_path).read()
    ingested = ingest(source, max_reject_share=1.0)
    path = write_rejects(ingested.rejects, tmp_path, source.name)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["row_number"]), r["reason"]) for r in rows] == EXPECTED_REJECTS
    assert {r["source"] for r in rows} == {str(tmp_path / "log.csv")}
    # The raw values exactly as read, the malformed one included.
    assert json.loads(rows[2]["raw"]) == {
        "user_id": "u1",
        "item_id": "i3",
        "timestamp": "yesterday",
        "watch_time_ms": "500",
        "duration_ms": "1000",
        "like": "0",
        "rating": "4",
    }
    assert json.loads(rows[5]["raw"])["like"] == "2"
    assert json.loads(rows[7]["raw"])["rating"] == "five"


def test_too_many_rejects_names_file_reason_and_an_example_row(tmp_path: Path) -> None:
    rows = ["user_id,item_id,timestamp"] + [f"u{i},i{i},{1000 + i}" for i in range(6)]
    rows += ["u1,i1,later", "u2,i2,", "u3,i3,tomorrow", "u4,,5"]  # 3 bad timestamps, 1 missing item
    source = _log_source(tmp_path, "\n".join(rows) + "\n", ["user_id", "item_id", "timestamp"]).read()
    with pytest.raises(TooManyRejectsError) as caught:
        ingest(source, max_reject_share=0.3)
    message = str(caught.value)
    assert str(tmp_path / "log.csv") in message
    assert "40.0% of rows rejected (limit 30.0%)" in message
    assert "'bad_timestamp' (3 rows)" in message
    assert "'row_number': 7" in message and "later" in message  # the first bad_timestamp row
    # At the limit the run goes on.
    assert ingest(source, max_reject_share=0.4).report.rows_kept == 6


def test_unknown_or_missing_columns_are_schema_errors(tmp_path: Path) -> None:
    config = _log_source(tmp_path)
    with pytest.raises(SchemaError, match=r"column 'uid' \(for 'user_id'\) not found; the file has \['user_id'"):
        TabularConfig(path=config.path, columns={"user_id": "uid", "item_id": "item_id", "timestamp": "timestamp"}).read()
    with pytest.raises(SchemaError, match="no source column mapped to required 'timestamp'"):
        TabularConfig(path=config.path, columns={"user_id": "user_id", "item_id": "item_id"}).read()
    with pytest.raises(SchemaError, match=r"unknown canonical column\(s\) \['plays'\]"):
        TabularConfig(path=config.path, columns={**config.columns, "plays": "like"}).read()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data=csv", "data.path=missing.csv"], "onerec-prep: error: interaction log (data.path) not found: missing.csv"),
        (
            ["data=csv", "data.path=log.csv", "data.columns.user_id=uid"],
            "onerec-prep: error: log.csv: column 'uid' (for 'user_id') not found; the file has "
            "['user_id', 'item_id', 'timestamp', 'watch_time_ms', 'duration_ms', 'like', 'rating']",
        ),
        (["data=csv"], "onerec-prep: error: no value for data.path: set it on the command line, e.g. data.path=..."),
    ],
    ids=["missing-file", "missing-column", "no-path"],
)
def test_cli_input_errors_are_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    (tmp_path / "log.csv").write_text(LOG)
    result = run_prep([*args, "out_dir=bundle"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == expected
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "bundle").exists()
