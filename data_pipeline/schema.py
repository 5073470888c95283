"""The canonical interaction schema: the one place that says which columns a log has.

Every source adapter maps its own format onto these columns (as strings, exactly as
read); :func:`validate` casts them to the canonical dtypes and separates the rows
that cannot be used, each with the reason, so that nothing is dropped silently.

=============  ========  ========  ==================================================
column         dtype     required  meaning
=============  ========  ========  ==================================================
user_id        Utf8      yes       original user id (kept in ``users.parquet``)
item_id        Utf8      yes       original item id (kept in ``items.parquet``)
timestamp      Int64     yes       event time in milliseconds (or an event counter)
watch_time_ms  Float64   no        time the item was watched
duration_ms    Float64   no        length of the item
like           Int8      no        0/1
follow         Int8      no        0/1
share          Int8      no        0/1
comment        Int8      no        0/1
rating         Float64   no        explicit rating (MovieLens-style)
=============  ========  ========  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

SCHEMA_VERSION = 2  # 2: sessions.parquet names the session total total_watch_time_ms

REQUIRED_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.Utf8(),
    "item_id": pl.Utf8(),
    "timestamp": pl.Int64(),
}
OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "watch_time_ms": pl.Float64(),
    "duration_ms": pl.Float64(),
    "like": pl.Int8(),
    "follow": pl.Int8(),
    "share": pl.Int8(),
    "comment": pl.Int8(),
    "rating": pl.Float64(),
}
CANONICAL_COLUMNS: dict[str, pl.DataType] = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
ENGAGEMENT_COLUMNS = ("like", "follow", "share", "comment")

# Bookkeeping columns carried from the reader to the rejects file.
ROW_NUMBER = "row_number"
REJECT_REASON = "reason"


class SchemaError(ValueError):
    """The input cannot be mapped onto the canonical schema (missing file or column)."""


class TooManyRejectsError(ValueError):
    """More rows were malformed than the configured share allows."""


@dataclass
class ValidationReport:
    """What validation kept and rejected, by reason."""

    rows_read: int
    rows_kept: int
    rejected_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return self.rows_read - self.rows_kept

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected_by_reason.items()))
        return (
            f"{self.rows_read:,} rows read, {self.rows_kept:,} kept, "
            f"{self.rows_rejected:,} rejected" + (f" ({parts})" if parts else "")
        )


def _rule(name: str, condition: pl.Expr) -> pl.Expr:
    return pl.when(condition).then(pl.lit(name)).otherwise(None)


def _to_int_flag(raw: pl.Expr) -> pl.Expr:
    """'0'/'1'/'true'/'false'/'0.0' → 0/1 (null when unparsable)."""
    lowered = raw.cast(pl.Utf8).str.strip_chars().str.to_lowercase()
    as_number = lowered.cast(pl.Float64, strict=False)
    as_bool = (
        pl.when(lowered == "true").then(1.0).when(lowered == "false").then(0.0).otherwise(None)
    )
    return pl.coalesce(as_number, as_bool)


def validate(raw: pl.LazyFrame, present: list[str]) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Cast a raw frame to the canonical dtypes and split off the unusable rows.

    Args:
        raw: frame with the canonical column names (values still as read, usually
            strings) and a ``row_number`` column pointing back into the source.
        present: the canonical columns the source provides (required ones included).

    Returns:
        ``(clean, rejects)``: ``clean`` has the canonical dtypes and only the present
        columns; ``rejects`` has the raw values as strings, the ``row_number`` and a
        ``reason`` (the first rule the row broke).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise SchemaError(f"missing required column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    unknown = [c for c in present if c not in CANONICAL_COLUMNS]
    if unknown:
        raise SchemaError(f"unknown canonical column(s) {unknown}; expected some of {list(CANONICAL_COLUMNS)}")

    schema = raw.collect_schema()
    # Columns read as text are parsed here so that an unparsable value can be reported;
    # columns that already arrive typed (parquet, the synthetic generator) are only cast.
    # Any other type (a list, a duration ...) is validated through its text form.
    datetime_timestamp = "timestamp" in present and schema["timestamp"] in (pl.Date, pl.Datetime)
    typed = [c for c in present if schema[c].is_numeric() or schema[c] == pl.Boolean]
    as_text = [c for c in present if c not in typed and schema[c] != pl.Utf8]
    if datetime_timestamp:
        as_text.remove("timestamp")
    raw = raw.with_columns(pl.col(c).cast(pl.Utf8) for c in as_text)
    textual = [c for c in present if c not in typed and not (c == "timestamp" and datetime_timestamp)]
    casts: list[pl.Expr] = []
    for name in present:
        dtype = CANONICAL_COLUMNS[name]
        col = pl.col(name)
        if name in ("user_id", "item_id"):
            casts.append(col.cast(pl.Utf8).str.strip_chars().alias(name))
        elif name == "timestamp" and datetime_timestamp:
            casts.append(col.dt.epoch("ms").alias(name))
        elif name not in textual:
            # Flags stay Float64 until the end so that 0.5 or 300 is rejected, not truncated.
            casts.append(col.cast(pl.Float64 if dtype == pl.Int8() else dtype, strict=False).alias(name))
        elif name == "timestamp":
            # Timestamps may be written as '1651314030792' or '1.651314030792e12'.
            casts.append(col.str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False))
        elif dtype == pl.Int8():
            casts.append(_to_int_flag(col).alias(name))
        else:
            casts.append(col.str.strip_chars().cast(pl.Float64, strict=False).alias(name))
    typed = raw.with_columns(pl.col(c).alias(f"_raw_{c}") for c in present).with_columns(casts)

    rules: list[pl.Expr] = [
        _rule("missing_user_id", pl.col("user_id").is_null() | (pl.col("user_id") == "")),
        _rule("missing_item_id", pl.col("item_id").is_null() | (pl.col("item_id") == "")),
        _rule("bad_timestamp", pl.col("timestamp").is_null()),
    ]
    for name in present:
        if name in REQUIRED_COLUMNS:
            continue
        if name in textual:
            raw_col = pl.col(f"_raw_{name}")
            # An empty optional value is allowed (unknown); a present but unparsable one is not.
            unparsable = pl.col(name).is_null() & raw_col.is_not_null() & (raw_col.str.strip_chars() != "")
            rules.append(_rule(f"bad_{name}", unparsable))
        if name in ("watch_time_ms", "duration_ms"):
            rules.append(_rule(f"negative_{name}", pl.col(name) < 0))
        if CANONICAL_COLUMNS[name] == pl.Int8():
            rules.append(_rule(f"bad_{name}", (pl.col(name) != 0) & (pl.col(name) != 1)))
    flagged = typed.with_columns(pl.coalesce(rules).alias(REJECT_REASON))

    clean = flagged.filter(pl.col(REJECT_REASON).is_null()).select(
        [pl.col(ROW_NUMBER)] + [pl.col(c).cast(CANONICAL_COLUMNS[c]) for c in present]
    )
    rejects = flagged.filter(pl.col(REJECT_REASON).is_not_null()).select(
        [pl.col(ROW_NUMBER), pl.col(REJECT_REASON)] + [pl.col(f"_raw_{c}").cast(pl.Utf8).alias(c) for c in present]
    )
    return clean, rejects


def check_reject_share(
    report: ValidationReport, max_share: float, source: str, rejects: pl.DataFrame
) -> None:
    """Stop the run when more than ``max_share`` of the rows were rejected.

    The message names the file, the commonest reason (hence the column) and one example row.
    """
    if report.rows_read == 0:
        raise SchemaError(f"{source}: no rows read")
    share = report.rows_rejected / report.rows_read
    if share <= max_share:
        return
    # Ties go to the alphabetically first reason, so the message does not vary run to run.
    top_reason = min(report.rejected_by_reason, key=lambda r: (-report.rejected_by_reason[r], r))
    example = rejects.filter(pl.col(REJECT_REASON) == top_reason).head(1).to_dicts()
    raise TooManyRejectsError(
        f"{source}: {share:.1%} of rows rejected (limit {max_share:.1%}); commonest reason "
        f"{top_reason!r} ({report.rejected_by_reason[top_reason]:,} rows), e.g. row {example[0] if example else '?'}"
    )
