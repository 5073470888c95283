"""The data pipeline end to end: source → validated log → sessions → semantic IDs → bundle."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from data_pipeline.bundle import remove_splits, write_manifest, write_split
from data_pipeline.examples import LABEL_COLUMNS, ExampleConfig, build_examples, user_positives
from data_pipeline.ingest import ingest, write_rejects
from data_pipeline.items import ItemEmbeddingConfig, item_embeddings
from data_pipeline.semantic_ids import SemanticIdConfig, build_semantic_ids
from data_pipeline.sessions import SessionConfig, sessionize, training_cutoff
from data_pipeline.sources.base import SourceData

log = logging.getLogger(__name__)


@dataclass
class PrepConfig:
    """Everything ``onerec-prep`` needs; ``data`` is a source config with a ``read()``."""

    data: Any = None
    out_dir: str = "runs/bundle"
    max_reject_share: float = 0.01
    sessions: SessionConfig = field(default_factory=SessionConfig)
    examples: ExampleConfig = field(default_factory=ExampleConfig)
    items: ItemEmbeddingConfig = field(default_factory=ItemEmbeddingConfig)
    semantic_ids: SemanticIdConfig = field(default_factory=SemanticIdConfig)
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_reject_share <= 1.0:
            raise ValueError(f"max_reject_share must be in [0, 1], got {self.max_reject_share}")


def encode_user_features(users: pl.DataFrame, features: pl.DataFrame | None) -> tuple[pl.DataFrame, dict[str, int]]:
    """Categorical user features as ints (0 = unknown), one ``uf_<name>`` column each.

    Returns the users table with those columns and ``{name: cardinality incl. unknown}``.
    """
    if features is None:
        return users, {}
    # maintain_order: the encoded columns are put beside ``users`` row by row below.
    joined = users.join(
        features.with_columns(pl.all().cast(pl.Utf8)), on="user_id", how="left", maintain_order="left"
    )
    cardinalities: dict[str, int] = {}
    encoded = []
    for name in features.columns:
        if name == "user_id":
            continue
        values = joined[name].drop_nulls().unique().sort()
        mapping = pl.DataFrame({name: values, f"uf_{name}": np.arange(1, values.len() + 1, dtype=np.int32)})
        encoded.append(
            joined.select("user_idx", name)
            .join(mapping, on=name, how="left", maintain_order="left")
            .select(pl.col(f"uf_{name}").fill_null(0))
        )
        cardinalities[name] = values.len() + 1
    return pl.concat([users, *encoded], how="horizontal"), cardinalities


def _session_table(events: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """One row per session with its items and logged responses as aligned lists."""
    labels = [c for c in (*LABEL_COLUMNS, "positive") if c in events.columns]
    per_session = events.group_by("session_idx", maintain_order=True).agg(
        pl.col("item_idx").alias("items"), *[pl.col(c) for c in labels]
    )
    # Both tables list the sessions in event order, so they are put side by side (a join
    # and a sort of the list columns took 2.5x longer). The per-item lists keep the event
    # columns' names; the session's total watch time is ``total_watch_time_ms``.
    assert per_session["session_idx"].equals(sessions["session_idx"]), "sessions out of event order"
    per_session = per_session.drop("session_idx")
    if "watch_time_ms" in sessions.columns:
        sessions = sessions.rename({"watch_time_ms": "total_watch_time_ms"})
    return pl.concat([sessions, per_session], how="horizontal")


def prepare(cfg: PrepConfig, source: SourceData | None = None) -> dict[str, Any]:
    """Run the whole pipeline and write the bundle to ``cfg.out_dir``.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).
    """
    out_dir = Path(cfg.out_dir).expanduser()
    steps = ["read", "ingest", "sessions", "embeddings", "semantic ids", "examples", "write"]
    bar = tqdm(total=len(steps), desc="onerec-prep", disable=not cfg.show_progress, unit="step")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def done(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 3)
        clock = now
        bar.set_postfix_str(step)
        bar.update(1)

    if source is None:
        source = cfg.data.read()
    done("read")

    ingested = ingest(source, cfg.max_reject_share)
    if out_dir.exists():
        # A bundle is rewritten as a whole; stale split files must not survive.
        (out_dir / "manifest.json").unlink(missing_ok=True)
        remove_splits(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejects_path = write_rejects(ingested.rejects, out_dir, source.name)
    done("ingest")

    events, sessions, session_report = sessionize(ingested.interactions, cfg.sessions)
    done("sessions")

    cutoff = training_cutoff(sessions)
    train_events = (
        # maintain_order: co-occurrence reads each user's positives in time order.
        events.join(cutoff, on="user_idx", how="left", maintain_order="left")
        .filter(pl.col("cutoff_ms").is_null() | (pl.col("timestamp") < pl.col("cutoff_ms")))
    )
    train_positives = train_events.filter(pl.col("positive")).select("user_idx", "item_idx")
    embeddings, embedding_report = item_embeddings(train_positives, ingested.items, source.item_features, cfg.items)
    done("embeddings")

    semantic = build_semantic_ids(embeddings, cfg.semantic_ids)
    done("semantic ids")

    positives = user_positives(events)
    examples, skipped = build_examples(events, sessions, positives, cfg.sessions.target_items, cfg.examples)
    done("examples")

    train_count = train_events.group_by("item_idx").len("train_count")
    items = (
        ingested.items.with_columns(pl.Series("codes", semantic.codes.tolist(), dtype=pl.List(pl.Int64)))
        .join(train_count, on="item_idx", how="left")
        .with_columns(pl.col("train_count").fill_null(0).cast(pl.Int64))
    )
    if source.item_features is not None:
        side = [c for c in ("duration_ms", "author_id") if c in source.item_features.columns]
        if side:
            items = items.join(source.item_features.select("item_id", *side), on="item_id", how="left")
    items.sort("item_idx").write_parquet(out_dir / "items.parquet")
    users, user_feature_cards = encode_user_features(ingested.users, source.user_features)
    users.write_parquet(out_dir / "users.parquet")
    for split, frame in examples.items():
        write_split(out_dir, split, frame, cfg.examples.shard_rows)
    _session_table(events, sessions).write_parquet(out_dir / "sessions.parquet")
    positives.write_parquet(out_dir / "positives.parquet")
    np.save(out_dir / "item_embeddings.npy", embeddings)
    if source.ground_truth is not None:
        user_order = ingested.users["user_id"].cast(pl.Int64).to_numpy()
        item_order = ingested.items["item_id"].cast(pl.Int64).to_numpy()
        source.ground_truth.reindexed(user_order, item_order).save(out_dir / "ground_truth.npz")

    labels = [c for c in LABEL_COLUMNS if c in ingested.interactions.columns]
    manifest: dict[str, Any] = {
        "source": source.name,
        "source_config": {"type": type(cfg.data).__name__, **dataclasses.asdict(cfg.data)} if cfg.data is not None else {},
        "config": {
            "sessions": dataclasses.asdict(cfg.sessions),
            "examples": dataclasses.asdict(cfg.examples),
            "items": dataclasses.asdict(cfg.items),
            "semantic_ids": dataclasses.asdict(cfg.semantic_ids),
            "max_reject_share": cfg.max_reject_share,
        },
        "counts": {
            "rows_read": ingested.report.rows_read,
            "rows_kept": ingested.report.rows_kept,
            "users": ingested.users.height,
            "items": ingested.items.height,
            "sessions": session_report.sessions,
            "examples": {s: f.height for s, f in examples.items()},
            "examples_skipped_short_history": skipped,
        },
        "rejects": {"file": rejects_path.name, "by_reason": ingested.report.rejected_by_reason},
        "sessions_report": dataclasses.asdict(session_report),
        "labels": labels,
        "sequence_only": source.sequence_only,
        "user_features": user_feature_cards,
        "item_embeddings": embedding_report,
        "semantic_ids": {"codebook_sizes": semantic.codebook_sizes, **semantic.report},
        "timings_s": timings,
    }
    write_manifest(out_dir, manifest)
    done("write")
    bar.close()
    manifest["timings_s"] = timings
    return manifest


def summary(manifest: dict[str, Any], out_dir: str) -> str:
    """The few lines a user reads after ``onerec-prep``."""
    counts = manifest["counts"]
    sem = manifest["semantic_ids"]
    rejected = manifest["rejects"]["by_reason"]
    lines = [
        f"bundle: {out_dir}",
        f"  rows: {counts['rows_read']:,} read, {counts['rows_kept']:,} kept, "
        f"{counts['rows_read'] - counts['rows_kept']:,} rejected"
        + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(rejected.items()))}; see {manifest['rejects']['file']})" if rejected else ""),
        f"  users: {counts['users']:,}  items: {counts['items']:,}  sessions: {counts['sessions']:,}",
        "  high-quality rules removed: "
        + ", ".join(f"{k}: {v:,}" for k, v in manifest["sessions_report"]["removed_by_rule"].items()),
        "  examples: " + ", ".join(f"{k}: {v:,}" for k, v in counts["examples"].items()),
        f"  semantic IDs: {len(sem['codebook_sizes'])} levels {sem['codebook_sizes']}, "
        f"collision rate {sem['collision_rate']:.2%} (dedup level: {sem['dedup_level']})",
    ]
    return "\n".join(lines)
