"""What every source adapter hands to the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from data_pipeline.schema import ROW_NUMBER, SchemaError

if TYPE_CHECKING:
    from data_pipeline.ground_truth import GroundTruth


@dataclass
class SourceData:
    """A log mapped onto the canonical column names, values still as read.

    Attributes:
        name: where the rows came from (a path, or ``synthetic``), used in messages.
        interactions: canonical column names (see :mod:`data_pipeline.schema`) plus
            ``row_number`` (position in the source, for the rejects file).
        columns: the canonical columns this source provides.
        parse_rejects: rows that could not even be split into columns (raw line,
            ``row_number``, ``reason``), or ``None``.
        item_features: ``item_id`` (Utf8) plus side features of items (``duration_ms``,
            ``author_id``, ``tags`` as a list of strings ...), or ``None``.
        user_features: ``user_id`` (Utf8) plus categorical user features, or ``None``.
        ground_truth: the generator's exact response model (synthetic data only).
        sequence_only: events carry an order but no real clock (Amazon sequence files).
    """

    name: str
    interactions: pl.LazyFrame
    columns: list[str]
    parse_rejects: pl.DataFrame | None = None
    item_features: pl.DataFrame | None = None
    user_features: pl.DataFrame | None = None
    ground_truth: "GroundTruth | None" = None
    sequence_only: bool = False
    notes: dict[str, object] = field(default_factory=dict)


def require_file(path: str | Path | None, what: str) -> Path:
    """One clear line instead of a traceback when an input file is missing."""
    if path is None or str(path) in ("", "???"):
        raise SchemaError(f"no {what} given: set it on the command line, e.g. data.path=/path/to/file")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise SchemaError(f"{what} not found: {resolved}")
    return resolved


def scan_table(path: Path) -> pl.LazyFrame:
    """Lazily scan a csv/tsv/parquet file: text columns as strings, parquet with its types.

    Reading text as strings lets validation see (and report) the exact malformed values;
    parquet columns are already typed, and turning them into strings only to parse them
    back cost most of the ingest time of a 10M-row log.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = pl.scan_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt", ".dat"):
        separator = "\t" if suffix == ".tsv" else ","
        frame = pl.scan_csv(path, separator=separator, infer_schema=False, quote_char='"')
    else:
        raise SchemaError(f"{path}: unsupported file type {suffix!r}; expected .csv, .tsv or .parquet")
    return frame.with_row_index(ROW_NUMBER, offset=1)


def map_columns(
    frame: pl.LazyFrame, column_map: dict[str, str], path: Path, required: tuple[str, ...]
) -> tuple[pl.LazyFrame, list[str]]:
    """Rename source columns to canonical ones, failing clearly on a missing column.

    Args:
        column_map: canonical name -> source column name.
        required: canonical names that must be mapped.
    """
    available = frame.collect_schema().names()
    for canonical in required:
        if canonical not in column_map:
            raise SchemaError(f"{path}: no source column mapped to required {canonical!r}")
    for canonical, source in column_map.items():
        if source not in available:
            columns = [c for c in available if c != ROW_NUMBER]
            raise SchemaError(f"{path}: column {source!r} (for {canonical!r}) not found; the file has {columns}")
    selected = frame.select(
        [pl.col(ROW_NUMBER)] + [pl.col(src).alias(canon) for canon, src in column_map.items()]
    )
    return selected, list(column_map)
