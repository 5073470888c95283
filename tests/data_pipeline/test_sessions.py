"""Sessions, positive events, the high-quality filter and the leave-last-out split, on
hand-made logs."""

from __future__ import annotations

import polars as pl
import pytest

from data_pipeline.sessions import SessionConfig, positive_expr, sessionize, training_cutoff

HOUR = 3_600_000


def _log(rows: list[tuple], columns: list[str]) -> pl.DataFrame:
    """An ingested-style log (sorted by user, then time) from tuples."""
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    return frame.with_columns(pl.col("user_idx", "item_idx").cast(pl.Int32)).sort("user_idx", "timestamp")


def test_gap_equal_to_gap_ms_stays_in_the_session_one_more_splits() -> None:
    log = _log(
        [
            (0, 0, 0),
            (0, 1, 1000),  # gap == gap_ms: same session
            (0, 2, 2001),  # gap == gap_ms + 1: new session
            (0, 3, 2500),
            (1, 4, 2600),  # another user's first event: new session though only 100 ms later
            (1, 5, 3600),
            (2, 6, 3600),  # same timestamp as the previous row, other user: new session
        ],
        ["user_idx", "item_idx", "timestamp"],
    )
    events, sessions, report = sessionize(log, SessionConfig(gap_ms=1000, target_items=1, watch_time_quantile=0.0))
    assert events["session_idx"].to_list() == [0, 0, 1, 1, 2, 2, 3]
    assert sessions.select("session_idx", "user_idx", "start_ms", "num_events").rows() == [
        (0, 0, 0, 2),
        (1, 0, 2001, 2),
        (2, 1, 2600, 2),
        (3, 2, 3600, 1),
    ]
    assert report.sessions == 4 and report.events == 7
    # No session spans two users.
    assert events.group_by("session_idx").agg(pl.col("user_idx").n_unique())["user_idx"].max() == 1


def test_gap_zero_makes_every_distinct_time_a_session() -> None:
    log = _log([(0, 0, 0), (0, 1, 1), (0, 2, 1), (0, 3, 2)], ["user_idx", "item_idx", "timestamp"])
    events, _, _ = sessionize(log, SessionConfig(gap_ms=0, target_items=1, watch_time_quantile=0.0))
    assert events["session_idx"].to_list() == [0, 1, 1, 2]


def _positive(rows: list[tuple], columns: list[str], **config: object) -> list[bool]:
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    positive = positive_expr(columns, SessionConfig(**config))  # type: ignore[arg-type]
    return frame.with_columns(positive.alias("positive"))["positive"].to_list()


def test_positive_by_watch_ratio_or_time_or_engagement() -> None:
    columns = ["watch_time_ms", "duration_ms", "like", "follow"]
    rows = [
        (700.0, 1000.0, 0, 0),  # ratio 0.7: positive
        (699.0, 1000.0, 0, 0),  # ratio 0.699: not
        (5000.0, 100000.0, 0, 0),  # long watch of a long video: only with min_watch_time_ms
        (0.0, 1000.0, 1, 0),  # liked
        (0.0, 1000.0, 0, 1),  # followed
        (10.0, 0.0, 0, 0),  # unknown length: not
        (None, None, None, None),  # nothing known: not
    ]
    assert _positive(rows, columns) == [True, False, False, True, True, False, False]
    assert _positive(rows, columns, min_watch_time_ms=5000.0) == [True, False, True, True, True, False, False]
    assert _positive(rows, columns, engagement_is_positive=False) == [True, False, False, False, False, False, False]


def test_positive_by_rating_overrides_other_signals_and_no_signal_means_all() -> None:
    rows = [(4.0, 0.0, 1000.0), (3.5, 1000.0, 1000.0), (None, 1000.0, 1000.0), (5.0, 0.0, 1000.0)]
    assert _positive(rows, ["rating", "watch_time_ms", "duration_ms"]) == [True, False, False, True]
    assert _positive(rows, ["rating", "watch_time_ms", "duration_ms"], min_rating=4.5) == [False, False, False, True]
    assert _positive([(1,), (2,)], ["item_idx"]) == [True, True]  # Amazon: every event counts


COLUMNS = ["user_idx", "item_idx", "timestamp", "watch_time_ms", "duration_ms", "like", "follow"]


def _session(user: int, start_h: int, events: list[tuple[float, float, int, int]]) -> list[tuple]:
    """Events one second apart, starting at hour ``start_h``: (watch, duration, like, follow)."""
    return [(user, i, start_h * HOUR + i * 1000, *e) for i, e in enumerate(events)]


# Session totals of watch time: S0 3000, S4 2500, S1 100, S2 200, S3 3000. With
# quantile 0.5 ('nearest') of [100, 200, 2500, 3000, 3000] the threshold is 2500.
HQ_LOG = (
    _session(0, 0, [(1000, 1000, 1, 0), (1000, 1000, 0, 0), (1000, 1000, 0, 0)])  # S0: 3 positives, liked
    + _session(0, 2, [(1250, 1250, 0, 1), (1250, 1250, 0, 0)])  # S4: 2 positives, followed
    + _session(0, 4, [(100, 100, 1, 0), (0, 100, 0, 0)])  # S1: 1 positive
    + _session(1, 0, [(100, 100, 1, 0), (100, 100, 0, 0)])  # S2: watch total 200 < 2500
    + _session(1, 2, [(1500, 1500, 0, 0), (1500, 1500, 0, 0)])  # S3: no like/follow/share
)
HQ_CONFIG = SessionConfig(gap_ms=HOUR, target_items=2, watch_time_quantile=0.5, require_engagement=True)


def test_high_quality_rules_count_what_each_removed() -> None:
    _, sessions, report = sessionize(_log(HQ_LOG, COLUMNS), HQ_CONFIG)
    assert sessions.select("num_events", "num_positive", "watch_time_ms", "engaged").rows() == [
        (3, 3, 3000.0, True),
        (2, 2, 2500.0, True),
        (2, 1, 100.0, True),
        (2, 2, 200.0, True),
        (2, 2, 3000.0, False),
    ]
    # Each rule counts only the sessions the earlier rules kept.
    assert report.removed_by_rule == {
        "fewer_than_2_positive_events": 1,
        "watch_time_below_q0.5_2500ms": 1,
        "no_like_follow_share": 1,
    }
    assert sessions["high_quality"].to_list() == [True, True, False, False, False]
    assert report.high_quality == 2
    assert report.positive_events == 10  # 3 + 2 + 1 + 2 + 2
    assert report.users_without_target == 1


def test_rules_that_do_not_apply_are_skipped() -> None:
    relaxed = SessionConfig(gap_ms=HOUR, target_items=2, watch_time_quantile=0.0, require_engagement=False)
    _, sessions, report = sessionize(_log(HQ_LOG, COLUMNS), relaxed)
    assert report.removed_by_rule == {"fewer_than_2_positive_events": 1}
    assert sessions["high_quality"].to_list() == [True, True, False, True, True]


def test_last_high_quality_session_is_test_the_one_before_valid() -> None:
    _, sessions, report = sessionize(_log(HQ_LOG, COLUMNS), HQ_CONFIG)
    # User 0: S0 and S4 are high quality; S1 (the user's last session) is not a target.
    assert sessions["split"].to_list() == ["valid", "test", None, None, None]
    assert report.targets_by_split == {"train": 0, "valid": 1, "test": 1}
    cutoff = training_cutoff(sessions)
    assert cutoff.rows() == [(0, 0)]  # user 0's first evaluation session starts at 0


def test_leave_last_out_over_many_users() -> None:
    # Every event its own session and positive (an Amazon-style log).
    rows = [(0, i, i) for i in range(4)] + [(1, 10, 0)] + [(2, 20, 0), (2, 21, 5)]
    _, sessions, report = sessionize(
        _log(rows, ["user_idx", "item_idx", "timestamp"]),
        SessionConfig(gap_ms=0, target_items=1, watch_time_quantile=0.0, require_engagement=False),
    )
    assert sessions.select("user_idx", "split").rows() == [
        (0, "train"),
        (0, "train"),
        (0, "valid"),
        (0, "test"),
        (1, "test"),  # one high-quality session: test only
        (2, "valid"),
        (2, "test"),
    ]
    assert report.targets_by_split == {"train": 2, "valid": 2, "test": 3}
    assert report.users_without_target == 0
    assert sessions["positives_before"].to_list() == [0, 1, 2, 3, 0, 0, 1]
    assert training_cutoff(sessions).sort("user_idx").rows() == [(0, 2), (1, 0), (2, 0)]


@pytest.mark.parametrize(
    "field, value", [("target_items", 0), ("watch_time_quantile", 1.0), ("gap_ms", -1)]
)
def test_bad_session_settings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"sessions.{field}"):
        SessionConfig(**{field: value})  # type: ignore[arg-type]
