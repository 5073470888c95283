"""Generic csv/tsv/parquet logs with a column map, and MovieLens ratings."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from data_pipeline.schema import CANONICAL_COLUMNS, ROW_NUMBER, SchemaError
from data_pipeline.sources.base import SourceData, map_columns, require_file, scan_table

_TIME_UNITS_TO_MS = {"ms": 1, "s": 1000}


def _scale_timestamp(frame: pl.LazyFrame, unit: str) -> pl.LazyFrame:
    if unit not in _TIME_UNITS_TO_MS:
        raise SchemaError(f"timestamp_unit {unit!r} not understood; expected one of {list(_TIME_UNITS_TO_MS)}")
    factor = _TIME_UNITS_TO_MS[unit]
    dtype = frame.collect_schema()["timestamp"]
    if factor == 1 or dtype in (pl.Date, pl.Datetime):
        return frame
    if dtype.is_numeric():  # a typed (parquet) column
        return frame.with_columns((pl.col("timestamp").cast(pl.Float64) * factor).cast(pl.Int64, strict=False))
    # Scale after parsing, keeping unparsable values unparsable for validation to report.
    parsed = pl.col("timestamp").str.strip_chars().cast(pl.Float64, strict=False)
    return frame.with_columns(
        pl.when(parsed.is_not_null())
        .then((parsed * factor).cast(pl.Int64).cast(pl.Utf8))
        .otherwise(pl.col("timestamp"))
        .alias("timestamp")
    )


@dataclass
class TabularConfig:
    """Any table of interactions.

    Attributes:
        path: a .csv, .tsv or .parquet file.
        columns: canonical name -> the file's column name (user_id, item_id and
            timestamp are required; see :mod:`data_pipeline.schema` for the others).
        timestamp_unit: ``ms`` or ``s``.
    """

    path: str = "???"
    columns: dict[str, str] = field(
        default_factory=lambda: {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp"}
    )
    timestamp_unit: str = "ms"

    def read(self) -> SourceData:
        path = require_file(self.path, "interaction log (data.path)")
        unknown = [c for c in self.columns if c not in CANONICAL_COLUMNS]
        if unknown:
            raise SchemaError(f"data.columns maps unknown canonical column(s) {unknown}; expected some of {list(CANONICAL_COLUMNS)}")
        frame, columns = map_columns(scan_table(path), dict(self.columns), path, ("user_id", "item_id", "timestamp"))
        return SourceData(name=str(path), interactions=_scale_timestamp(frame, self.timestamp_unit), columns=columns)


@dataclass
class MovieLensConfig:
    """MovieLens ratings: ``ratings.csv`` (userId,movieId,rating,timestamp) or the
    older ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``). Timestamps are seconds."""

    path: str = "???"

    def read(self) -> SourceData:
        path = require_file(self.path, "MovieLens ratings file (data.path)")
        names = ["user_id", "item_id", "rating", "timestamp"]
        if path.suffix == ".dat":
            lines = pl.scan_csv(
                path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None, infer_schema=False
            ).with_row_index(ROW_NUMBER, offset=1)
            parts = pl.col("line").str.split("::")
            frame = lines.select(ROW_NUMBER, *[parts.list.get(i, null_on_oob=True).alias(n) for i, n in enumerate(names)])
        else:
            frame, _ = map_columns(
                scan_table(path),
                {"user_id": "userId", "item_id": "movieId", "rating": "rating", "timestamp": "timestamp"},
                path,
                ("user_id", "item_id", "timestamp"),
            )
        return SourceData(name=str(path), interactions=_scale_timestamp(frame, "s"), columns=names)
