"""Amazon review sequences in the S3-Rec/TIGER format: ``user item item ...`` per line.

Items are in time order but carry no clock, so each event's ``timestamp`` is its
position in the line and every interaction is its own one-item session. The TIGER
protocol (last item = test target, the one before = validation) then falls out of the
pipeline's leave-last-sessions-out split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import polars as pl

from data_pipeline.schema import REJECT_REASON, ROW_NUMBER, SchemaError
from data_pipeline.sources.base import SourceData, require_file


@dataclass
class AmazonSeqConfig:
    """Attributes:
        path: the sequence file (e.g. ``Beauty.txt``).
        item_attributes: optional JSON ``{item: [attribute ids]}`` (S3-Rec's ``*_item2attributes.json``).
        integer_ids: S3-Rec files use integer ids; a token that is not one is malformed.
    """

    path: str = "???"
    item_attributes: str | None = None
    integer_ids: bool = True

    def read(self) -> SourceData:
        return read_amazon_seq(self)


def read_amazon_seq(cfg: AmazonSeqConfig) -> SourceData:
    path = require_file(cfg.path, "Amazon sequence file (data.path)")
    lines = pl.read_csv(
        path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None, infer_schema=False
    ).with_row_index(ROW_NUMBER, offset=1)
    tokens = lines.with_columns(
        pl.col("line").fill_null("").str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ").alias("tokens")
    ).with_columns(pl.col("tokens").list.eval(pl.element().filter(pl.element() != "")))
    n_tokens = pl.col("tokens").list.len()
    short = tokens.filter(n_tokens < 2).select(
        ROW_NUMBER, pl.lit("line_without_items").alias(REJECT_REASON), pl.col("line")
    )
    events = (
        tokens.filter(n_tokens >= 2)
        .select(
            ROW_NUMBER,
            pl.col("tokens").list.first().alias("user_id"),
            pl.col("tokens").list.slice(1).alias("item_id"),
            pl.int_ranges(0, n_tokens - 1).alias("timestamp"),
            pl.col("line"),
        )
        .explode("item_id", "timestamp")
    )
    bad = pl.lit(False)
    if cfg.integer_ids:
        bad = ~pl.col("item_id").str.contains(r"^\d+$") | ~pl.col("user_id").str.contains(r"^\d+$")
    bad_rows = events.filter(bad).select(
        ROW_NUMBER, pl.lit("non_integer_id").alias(REJECT_REASON), pl.col("line")
    )
    good = events.filter(~bad).select(
        ROW_NUMBER, "user_id", "item_id", pl.col("timestamp").cast(pl.Utf8)
    )
    parse_rejects = pl.concat([short, bad_rows]).sort(ROW_NUMBER)

    item_features = None
    if cfg.item_attributes:
        attr_path = require_file(cfg.item_attributes, "item attribute file (data.item_attributes)")
        try:
            attributes = json.loads(attr_path.read_text())
        except json.JSONDecodeError as err:
            raise SchemaError(f"{attr_path}: not valid JSON ({err})") from None
        item_features = pl.DataFrame(
            {
                "item_id": [str(k) for k in attributes],
                "tags": [[str(a) for a in v] for v in attributes.values()],
            },
            schema={"item_id": pl.Utf8, "tags": pl.List(pl.Utf8)},
        )
    return SourceData(
        name=str(path),
        interactions=good.lazy(),
        columns=["user_id", "item_id", "timestamp"],
        parse_rejects=parse_rejects,
        item_features=item_features,
        sequence_only=True,
    )
