"""Ingest: duplicates, contiguous indices and the order of the canonical log."""

from __future__ import annotations

import json
from pathlib import Path

from data_pipeline.ingest import ingest
from data_pipeline.sources.tabular import TabularConfig

LOG = """\
user_id,item_id,timestamp,like
u1,i1,100,0
u1,i2,100,1
u1,i1,100,1
u1,i1,200,0
u0,i1,100,0
u1,i2,100,1
u1,i3,50,0
"""


def _ingest(tmp_path: Path, max_reject_share: float = 1.0):  # type: ignore[no-untyped-def]
    path = tmp_path / "log.csv"
    path.write_text(LOG)
    columns = {c: c for c in ("user_id", "item_id", "timestamp", "like")}
    return ingest(TabularConfig(path=str(path), columns=columns).read(), max_reject_share)


def test_repeated_events_are_kept_once_and_the_copies_rejected(tmp_path: Path) -> None:
    ingested = _ingest(tmp_path)
    # Row 3 repeats row 1 (user, item, time) though row 2 lies between; row 6 repeats row 2.
    # Row 4 (other time) and row 5 (other user) are not repeats.
    assert ingested.rejects.select("row_number", "reason").rows() == [(3, "duplicate_event"), (6, "duplicate_event")]
    assert json.loads(ingested.rejects["raw"][0]) == {"user_id": "u1", "item_id": "i1", "timestamp": 100, "like": 1}
    assert (ingested.report.rows_read, ingested.report.rows_kept) == (7, 5)
    assert ingested.report.rejected_by_reason == {"duplicate_event": 2}


def test_indices_follow_sorted_ids_and_events_sort_by_user_then_time(tmp_path: Path) -> None:
    ingested = _ingest(tmp_path)
    assert ingested.users.rows() == [(0, "u0"), (1, "u1")]
    assert ingested.items.rows() == [(0, "i1"), (1, "i2"), (2, "i3")]
    assert ingested.interactions.columns == ["user_idx", "item_idx", "timestamp", "like"]
    # u0's event; then u1's by time, ties (t=100) in source order: row 1 before row 2.
    assert ingested.interactions.rows() == [(0, 0, 100, 0), (1, 2, 50, 0), (1, 0, 100, 0), (1, 1, 100, 1), (1, 0, 200, 0)]
