"""Sessions, positive behaviours and the high-quality sessions used as generation targets.

A user's time-ordered log is cut into sessions wherever two events are more than
``gap_ms`` apart. An event is *positive* when the user liked what they saw: a rating at
or above ``min_rating``; else a watch ratio or watch time above a threshold, or any
like/follow/share/comment; logs without any such signal (Amazon) count every event.
A session is *high quality* when it has at least ``target_items`` positive events, a
total watch time at or above the ``watch_time_quantile`` of all sessions (where watch
time exists) and at least one like/follow/share (where those columns exist and
``require_engagement`` is set). Each rule is reported with the sessions it removed.

The last high-quality session of each user is the test target, the one before it the
validation target, earlier ones are training targets (the TIGER protocol when every
event is its own session).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from data_pipeline.schema import ENGAGEMENT_COLUMNS

SPLITS = ("train", "valid", "test")


@dataclass
class SessionConfig:
    """Attributes:
        gap_ms: a gap longer than this starts a new session (0: every event is a session).
        min_watch_ratio / min_watch_time_ms: positive when watched this much (either).
        engagement_is_positive: like/follow/share/comment make an event positive.
        min_rating: positive rating threshold for explicit-feedback logs.
        target_items: m, the items of a target session.
        watch_time_quantile: high-quality sessions watch at least this quantile of all
            sessions' total watch time (0 disables the rule).
        require_engagement: high-quality sessions need a like/follow/share.
    """

    gap_ms: int = 30 * 60 * 1000
    min_watch_ratio: float = 0.7
    min_watch_time_ms: float | None = None
    engagement_is_positive: bool = True
    min_rating: float = 4.0
    target_items: int = 5
    watch_time_quantile: float = 0.3
    require_engagement: bool = True

    def __post_init__(self) -> None:
        if self.target_items < 1:
            raise ValueError(f"sessions.target_items must be >= 1, got {self.target_items}")
        if not 0.0 <= self.watch_time_quantile < 1.0:
            raise ValueError(f"sessions.watch_time_quantile must be in [0, 1), got {self.watch_time_quantile}")
        if self.gap_ms < 0:
            raise ValueError(f"sessions.gap_ms must be >= 0, got {self.gap_ms}")


@dataclass
class SessionReport:
    """Counts of sessions and of the ones each high-quality rule removed (in order)."""

    sessions: int = 0
    positive_events: int = 0
    events: int = 0
    removed_by_rule: dict[str, int] = field(default_factory=dict)
    high_quality: int = 0
    targets_by_split: dict[str, int] = field(default_factory=dict)
    users_without_target: int = 0


def positive_expr(columns: list[str], cfg: SessionConfig) -> pl.Expr:
    """Boolean expression marking positive events, given which columns the log has."""
    if "rating" in columns:
        return pl.col("rating").fill_null(0.0) >= cfg.min_rating
    signals: list[pl.Expr] = []
    if "watch_time_ms" in columns:
        if "duration_ms" in columns:
            ratio = pl.col("watch_time_ms") / pl.col("duration_ms")
            signals.append((pl.col("duration_ms") > 0) & (ratio >= cfg.min_watch_ratio))
        if cfg.min_watch_time_ms is not None:
            signals.append(pl.col("watch_time_ms") >= cfg.min_watch_time_ms)
    if cfg.engagement_is_positive:
        signals.extend(pl.col(c) == 1 for c in ENGAGEMENT_COLUMNS if c in columns)
    if not signals:
        return pl.lit(True)
    return pl.any_horizontal(signals).fill_null(False)


def sessionize(interactions: pl.DataFrame, cfg: SessionConfig) -> tuple[pl.DataFrame, pl.DataFrame, SessionReport]:
    """Cut the log into sessions and choose the target sessions.

    Args:
        interactions: ``user_idx, item_idx, timestamp, ...`` sorted by user then time.

    Returns:
        ``(events, sessions, report)``. ``events`` adds ``session_idx``, ``positive`` and
        ``positives_before`` (the user's positive events strictly before this one).
        ``sessions`` has one row per session: ``user_idx, session_idx, start_ms,
        num_events, num_positive, watch_time_ms (total, if known), engaged,
        high_quality, split`` (``split`` is null for sessions that are not targets) and
        ``positives_before`` (positive events of the user before the session started).
    """
    columns = interactions.columns
    new_user = pl.col("user_idx") != pl.col("user_idx").shift(1)
    gap = (pl.col("timestamp") - pl.col("timestamp").shift(1)) > cfg.gap_ms
    events = (
        interactions.with_columns(positive_expr(columns, cfg).alias("positive"))
        .with_columns(
            ((new_user | gap).fill_null(True).cum_sum() - 1).cast(pl.Int64).alias("session_idx"),
            (pl.col("positive").cast(pl.Int32).cum_sum().over("user_idx") - pl.col("positive").cast(pl.Int32)).alias(
                "positives_before"
            ),
        )
    )
    engagement = [c for c in ENGAGEMENT_COLUMNS if c in columns]
    aggregations = [
        pl.col("user_idx").first(),
        pl.col("timestamp").first().alias("start_ms"),
        pl.len().alias("num_events"),
        pl.col("positive").sum().alias("num_positive"),
        pl.col("positives_before").first(),
    ]
    if "watch_time_ms" in columns:
        aggregations.append(pl.col("watch_time_ms").sum().alias("watch_time_ms"))
    aggregations.append(
        (pl.any_horizontal([pl.col(c) == 1 for c in engagement]).any() if engagement else pl.lit(True)).alias("engaged")
    )
    sessions = events.group_by("session_idx", maintain_order=True).agg(aggregations)

    report = SessionReport(sessions=sessions.height, events=events.height, positive_events=int(events["positive"].sum()))
    keep = pl.col("num_positive") >= cfg.target_items
    report.removed_by_rule[f"fewer_than_{cfg.target_items}_positive_events"] = int(sessions.filter(~keep).height)
    if "watch_time_ms" in columns and cfg.watch_time_quantile > 0:
        threshold = float(sessions["watch_time_ms"].quantile(cfg.watch_time_quantile))
        rule = pl.col("watch_time_ms") >= threshold
        report.removed_by_rule[f"watch_time_below_q{cfg.watch_time_quantile:g}_{threshold:.0f}ms"] = int(
            sessions.filter(keep & ~rule).height
        )
        keep = keep & rule
    if engagement and cfg.require_engagement:
        rule = pl.col("engaged")
        report.removed_by_rule["no_like_follow_share"] = int(sessions.filter(keep & ~rule).height)
        keep = keep & rule
    sessions = sessions.with_columns(keep.alias("high_quality"))

    # Leave-last-out over each user's high-quality sessions: last = test, previous = valid.
    from_end = pl.col("session_idx").cum_count(reverse=True).over("user_idx", "high_quality")
    split = (
        pl.when(~pl.col("high_quality"))
        .then(None)
        .when(from_end == 1)
        .then(pl.lit("test"))
        .when(from_end == 2)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    sessions = sessions.with_columns(split.alias("split"))
    report.high_quality = int(sessions["high_quality"].sum())
    counts = dict(sessions.filter(pl.col("split").is_not_null()).group_by("split").len().iter_rows())
    report.targets_by_split = {s: int(counts.get(s, 0)) for s in SPLITS}
    users_with_target = sessions.filter(pl.col("high_quality"))["user_idx"].n_unique()
    report.users_without_target = int(events["user_idx"].n_unique() - users_with_target)
    return events, sessions, report


def training_cutoff(sessions: pl.DataFrame) -> pl.DataFrame:
    """``user_idx, cutoff_ms``: the start of each user's first evaluation session.

    Interactions at or after the cutoff are validation/test data and must not shape
    anything learned before the model (item embeddings, popularity).
    """
    return (
        sessions.filter(pl.col("split").is_in(["valid", "test"]))
        .group_by("user_idx")
        .agg(pl.col("start_ms").min().alias("cutoff_ms"))
    )
