"""Bundles whose splits are written as parquet shards (``examples.shard_rows``), read
whole or per rank, and rewritten without stale shards."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from data_pipeline.bundle import Bundle, BundleError
from data_pipeline.prep import prepare
from tests.conftest import tiny_prep_config


@pytest.fixture(scope="module")
def sharded_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same small log as one file per split and as shards of 100 rows."""
    root = tmp_path_factory.mktemp("shards")
    plain = tiny_prep_config(root / "plain", num_users=200)
    prepare(plain)
    prepare(dataclasses.replace(plain, out_dir=str(root / "sharded"), examples=dataclasses.replace(plain.examples, shard_rows=100)))
    return root / "plain", root / "sharded"


def test_shards_hold_the_same_examples_as_one_file(sharded_bundle: tuple[Path, Path]) -> None:
    plain, sharded = (Bundle.open(p, verify=True) for p in sharded_bundle)
    files = sharded.split_files("train")
    assert [f.name for f in files][:2] == ["train-00000.parquet", "train-00001.parquet"]
    assert not (sharded.path / "train.parquet").exists()
    assert all(pl.read_parquet(f).height <= 100 for f in files)
    for split in ("train", "valid", "test"):
        assert sharded.split(split).equals(plain.split(split)), split


def test_each_rank_reads_only_its_own_shards(sharded_bundle: tuple[Path, Path]) -> None:
    bundle = Bundle.open(sharded_bundle[1])
    shards = [pl.read_parquet(f) for f in bundle.split_files("train")]
    assert len(shards) >= 3
    parts = [bundle.split("train", rank, 3) for rank in range(3)]
    assert parts[1].equals(pl.concat(shards[1::3]))
    assert sum(p.height for p in parts) == bundle.split("train").height
    with pytest.raises(BundleError, match="fewer than world_size"):
        bundle.split("train", 0, len(shards) + 1)
    with pytest.raises(BundleError, match="unknown split"):
        bundle.split_files("holdout")


def test_rewriting_a_bundle_as_one_file_removes_its_shards(tmp_path: Path) -> None:
    cfg = tiny_prep_config(tmp_path / "bundle", num_users=120)
    prepare(dataclasses.replace(cfg, examples=dataclasses.replace(cfg.examples, shard_rows=50)))
    assert list((tmp_path / "bundle").glob("train-*.parquet"))
    prepare(cfg)
    assert not list((tmp_path / "bundle").glob("train-*.parquet"))
    assert Bundle.open(tmp_path / "bundle", verify=True).split_files("train") == [tmp_path / "bundle" / "train.parquet"]
