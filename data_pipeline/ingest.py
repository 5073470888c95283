"""Raw source → canonical, validated interactions with contiguous user and item indices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from data_pipeline.schema import (
    REJECT_REASON,
    ROW_NUMBER,
    ValidationReport,
    check_reject_share,
    validate,
)
from data_pipeline.sources.base import SourceData

REJECTS_FILE = "rejects.csv"


@dataclass
class Ingested:
    """Attributes:
        interactions: ``user_idx, item_idx, timestamp`` + the optional canonical columns,
            sorted by user then time.
        users: ``user_idx, user_id`` (original id).
        items: ``item_idx, item_id`` (original id).
        report: rows read / kept / rejected by reason.
        rejects: every rejected row: ``row_number, reason, raw`` (the raw values as JSON).
    """

    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame
    report: ValidationReport
    rejects: pl.DataFrame


def _rejects_as_raw_json(frame: pl.DataFrame) -> pl.DataFrame:
    """Keep the row number and reason; fold every other column into one JSON string."""
    value_cols = [c for c in frame.columns if c not in (ROW_NUMBER, REJECT_REASON)]
    raw = pl.struct(value_cols).struct.json_encode() if value_cols else pl.lit("{}")
    return frame.select(pl.col(ROW_NUMBER).cast(pl.Int64), pl.col(REJECT_REASON), raw.alias("raw"))


def ingest(source: SourceData, max_reject_share: float) -> Ingested:
    """Validate, deduplicate and index a source's interactions.

    Exact duplicate events (same user, item and timestamp) are kept once; the extra copies
    are rejected with reason ``duplicate_event`` so that the row count always adds up.
    """
    clean_lazy, rejects_lazy = validate(source.interactions, source.columns)
    clean, rejects = pl.collect_all([clean_lazy, rejects_lazy])
    duplicated = clean.select(pl.struct("user_id", "item_id", "timestamp").is_first_distinct()).to_series()
    duplicates = clean.filter(~duplicated)
    clean = clean.filter(duplicated)

    reject_parts = [_rejects_as_raw_json(rejects)]
    if duplicates.height:
        reject_parts.append(
            _rejects_as_raw_json(duplicates.with_columns(pl.lit("duplicate_event").alias(REJECT_REASON)))
        )
    if source.parse_rejects is not None and source.parse_rejects.height:
        reject_parts.append(_rejects_as_raw_json(source.parse_rejects))
    all_rejects = pl.concat(reject_parts).sort(ROW_NUMBER)

    by_reason = dict(all_rejects.group_by(REJECT_REASON).len().iter_rows())
    report = ValidationReport(
        rows_read=clean.height + all_rejects.height, rows_kept=clean.height, rejected_by_reason=by_reason
    )
    check_reject_share(report, max_reject_share, source.name, all_rejects)

    users = clean.select(pl.col("user_id").unique().sort()).with_row_index("user_idx")
    items = clean.select(pl.col("item_id").unique().sort()).with_row_index("item_idx")
    interactions = (
        clean.join(users, on="user_id")
        .join(items, on="item_id")
        .drop("user_id", "item_id")
        .with_columns(pl.col("user_idx").cast(pl.Int32), pl.col("item_idx").cast(pl.Int32))
        .sort("user_idx", "timestamp", ROW_NUMBER)
    )
    columns = ["user_idx", "item_idx"] + [c for c in source.columns if c not in ("user_id", "item_id")]
    return Ingested(
        interactions=interactions.select(columns),
        users=users.with_columns(pl.col("user_idx").cast(pl.Int32)),
        items=items.with_columns(pl.col("item_idx").cast(pl.Int32)),
        report=report,
        rejects=all_rejects,
    )


def write_rejects(rejects: pl.DataFrame, out_dir: Path, source_name: str) -> Path:
    """Write every rejected row, with its source and reason, next to the bundle."""
    path = out_dir / REJECTS_FILE
    rejects.with_columns(pl.lit(source_name).alias("source")).write_csv(path)
    return path


def report_json(report: ValidationReport) -> str:
    return json.dumps(
        {"rows_read": report.rows_read, "rows_kept": report.rows_kept, "rejected": report.rejected_by_reason}
    )
