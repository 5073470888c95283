"""Training, validation and test examples: (positive history, target session).

The encoder reads the user's last ``history_length`` positive items before the target
session started (oldest first); the decoder's target is the session's first
``target_items`` positive items, with their logged responses for reward modelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from data_pipeline.schema import ENGAGEMENT_COLUMNS
from data_pipeline.sessions import SPLITS

LABEL_COLUMNS = ("watch_time_ms", "duration_ms", *ENGAGEMENT_COLUMNS)


@dataclass
class ExampleConfig:
    """Attributes:
        history_length: n, the most recent positive items the encoder sees.
        min_history: targets with a shorter history are skipped (counted in the manifest).
        shard_rows: write each split as ``<split>-00000.parquet, ...`` shards of at most
            this many rows (0: one ``<split>.parquet``); a distributed run can then read
            only its rank's shards (``trainer.shard_examples``).
    """

    history_length: int = 256
    min_history: int = 1
    shard_rows: int = 0

    def __post_init__(self) -> None:
        if self.history_length < 1:
            raise ValueError(f"examples.history_length must be >= 1, got {self.history_length}")
        if self.min_history < 0:
            raise ValueError(f"examples.min_history must be >= 0, got {self.min_history}")
        if self.shard_rows < 0:
            raise ValueError(f"examples.shard_rows must be >= 0 (0: one file per split), got {self.shard_rows}")


def user_positives(events: pl.DataFrame) -> pl.DataFrame:
    """``user_idx, items``: every user's positive items in time order."""
    return (
        events.filter(pl.col("positive"))
        .group_by("user_idx", maintain_order=True)
        .agg(pl.col("item_idx").alias("items"))
    )


def history_slice(positives_before: pl.Expr, n: int) -> tuple[pl.Expr, pl.Expr]:
    """Offset and length into a user's positive list for the last ``n`` before an event."""
    offset = pl.max_horizontal(positives_before - n, pl.lit(0))
    return offset, positives_before - offset


def build_examples(
    events: pl.DataFrame, sessions: pl.DataFrame, positives: pl.DataFrame, target_items: int, cfg: ExampleConfig
) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """One example per target session, grouped by split.

    Returns:
        ``({split: frame}, skipped_by_split)``; each frame has ``user_idx, session_idx,
        history (list[i32]), target (list[i32], length m)`` and, where the log has them,
        ``target_<label>`` lists aligned with ``target``.
    """
    labels = [c for c in LABEL_COLUMNS if c in events.columns]
    targets = (
        # maintain_order: a session's first m positives are taken in time order below.
        events.join(
            sessions.filter(pl.col("split").is_not_null()).select("session_idx", "split"),
            on="session_idx",
            maintain_order="left",
        )
        .filter(pl.col("positive"))
        .group_by("session_idx", maintain_order=True)
        .agg(
            pl.col("user_idx").first(),
            pl.col("split").first(),
            pl.col("positives_before").first(),
            pl.col("item_idx").head(target_items).alias("target"),
            *[pl.col(c).head(target_items).alias(f"target_{c}") for c in labels],
        )
    )
    # positives_before of the session's first positive event = positives before the session.
    offset, length = history_slice(pl.col("positives_before"), cfg.history_length)
    examples = targets.join(positives, on="user_idx", how="left").with_columns(
        pl.col("items").list.slice(offset, length).alias("history")
    )
    has_history = pl.col("history").list.len() >= cfg.min_history
    skipped = dict(examples.filter(~has_history).group_by("split").len().iter_rows())
    examples = examples.filter(has_history)
    columns = ["user_idx", "session_idx", "history", "target", *[f"target_{c}" for c in labels]]
    out = {
        split: examples.filter(pl.col("split") == split)
        .select(columns)
        .with_columns(pl.col("history").cast(pl.List(pl.Int32)), pl.col("target").cast(pl.List(pl.Int32)))
        .sort("user_idx", "session_idx")
        for split in SPLITS
    }
    return out, {s: int(skipped.get(s, 0)) for s in SPLITS}
