"""KuaiRand logs (Gao et al., CIKM 2022), joined with video and user features."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from data_pipeline.sources.base import SourceData, map_columns, require_file, scan_table

LOG_COLUMNS = {
    "user_id": "user_id",
    "item_id": "video_id",
    "timestamp": "time_ms",
    "watch_time_ms": "play_time_ms",
    "duration_ms": "duration_ms",
    "like": "is_like",
    "follow": "is_follow",
    "share": "is_forward",
    "comment": "is_comment",
}
# Categorical user columns of user_features_*.csv; the raw counts are left out in favour
# of their bucketed `*_range` versions.
USER_FEATURE_COLUMNS = [
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
] + [f"onehot_feat{i}" for i in range(18)]


@dataclass
class KuaiRandConfig:
    """Attributes:
        path: a KuaiRand log csv (``log_*.csv``).
        video_features: optional ``video_features_basic_*.csv`` (duration, author, tags).
        user_features: optional ``user_features_*.csv``.
    """

    path: str = "???"
    video_features: str | None = None
    user_features: str | None = None

    def read(self) -> SourceData:
        return read_kuairand(self)


def read_video_features(path: str) -> pl.DataFrame:
    """``item_id, duration_ms, author_id, tags, video_type, upload_type, music_type``."""
    file = require_file(path, "KuaiRand video features (data.video_features)")
    frame = scan_table(file).collect()
    wanted = ["video_id", "author_id", "video_duration", "tag", "video_type", "upload_type", "music_type"]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        from data_pipeline.schema import SchemaError

        raise SchemaError(f"{file}: missing column(s) {missing}; the file has {frame.columns}")
    return frame.select(
        pl.col("video_id").alias("item_id"),
        pl.col("video_duration").cast(pl.Float64, strict=False).alias("duration_ms"),
        pl.col("author_id"),
        pl.col("tag").fill_null("").str.split(",").list.eval(pl.element().filter(pl.element() != "")).alias("tags"),
        "video_type",
        "upload_type",
        "music_type",
    ).unique("item_id", keep="first")


def read_user_features(path: str) -> pl.DataFrame:
    file = require_file(path, "KuaiRand user features (data.user_features)")
    frame = scan_table(file).collect()
    present = [c for c in USER_FEATURE_COLUMNS if c in frame.columns]
    if "user_id" not in frame.columns:
        from data_pipeline.schema import SchemaError

        raise SchemaError(f"{file}: no user_id column; the file has {frame.columns}")
    return frame.select(["user_id"] + present).unique("user_id", keep="first")


def read_kuairand(cfg: KuaiRandConfig) -> SourceData:
    path = require_file(cfg.path, "KuaiRand log (data.path)")
    raw = scan_table(path)
    available = raw.collect_schema().names()
    column_map = {k: v for k, v in LOG_COLUMNS.items() if v in available or k in ("user_id", "item_id", "timestamp")}
    interactions, columns = map_columns(raw, column_map, path, required=("user_id", "item_id", "timestamp"))
    return SourceData(
        name=str(path),
        interactions=interactions,
        columns=columns,
        item_features=read_video_features(cfg.video_features) if cfg.video_features else None,
        user_features=read_user_features(cfg.user_features) if cfg.user_features else None,
    )
