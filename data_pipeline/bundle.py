"""The dataset bundle: the folder every later stage reads.

=====================  ===================================================================
file                   content
=====================  ===================================================================
manifest.json          schema version, config, counts, reports, sha256 of every file
items.parquet          item_idx, item_id (original), codes (list[i64]), train_count,
                       and side features (duration_ms, author_id) where known
users.parquet          user_idx, user_id (original), categorical user features as ints
train/valid/test.parquet  user_idx, session_idx, history, target, target_<label> lists
                       (or ``<split>-00000.parquet, ...`` shards: examples.shard_rows)
sessions.parquet       every session: user_idx, session_idx, start_ms, split, items,
                       positives_before and the logged responses per item (lists)
positives.parquet      user_idx, items: each user's positive items in time order
item_embeddings.npy    the embeddings the semantic IDs were built from
ground_truth.npz       synthetic data only: the exact response model
rejects.csv            every rejected input row with its reason
=====================  ===================================================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from data_pipeline.ground_truth import GroundTruth
from data_pipeline.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
SPLIT_FILES = {"train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet"}


def split_shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


def write_split(out_dir: Path, split: str, frame: pl.DataFrame, shard_rows: int = 0) -> list[Path]:
    """Write a split as one file, or (``shard_rows > 0``) as shards of at most that many
    rows, so that each rank of a distributed run can read only its own shards."""
    if shard_rows <= 0:
        path = out_dir / SPLIT_FILES[split]
        frame.write_parquet(path)
        return [path]
    paths = []
    for index, start in enumerate(range(0, max(frame.height, 1), shard_rows)):
        path = out_dir / split_shard_name(split, index)
        frame.slice(start, shard_rows).write_parquet(path)
        paths.append(path)
    return paths


def remove_splits(out_dir: Path) -> None:
    """Delete every split file and shard (a rewritten bundle must not keep stale ones)."""
    for split, name in SPLIT_FILES.items():
        (out_dir / name).unlink(missing_ok=True)
        for shard in out_dir.glob(f"{split}-*.parquet"):
            shard.unlink()


class BundleError(ValueError):
    """A dataset bundle is missing, incomplete or corrupted."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest with the hashes of every other file in the bundle."""
    files = sorted(p for p in out_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {**manifest, "schema_version": SCHEMA_VERSION, "files": {p.name: sha256(p) for p in files}}
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(out_dir / MANIFEST)


@dataclass
class Bundle:
    """Read access to a dataset bundle.

    Example::

        bundle = Bundle.open("runs/bundle")
        codes = bundle.codes            # [num_items, num_levels] int64
        train = bundle.split("train")   # polars frame of examples
    """

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> "Bundle":
        root = Path(path).expanduser()
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{root} is not a dataset bundle (no {MANIFEST}); make one with onerec-prep out_dir={root}")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise BundleError(
                f"{root}: bundle schema version {manifest.get('schema_version')} != {SCHEMA_VERSION}; rebuild it with onerec-prep"
            )
        bundle = cls(path=root, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every file against the manifest's hashes."""
        for name, expected in self.manifest["files"].items():
            file = self.path / name
            if not file.is_file():
                raise BundleError(f"{self.path}: {name} listed in the manifest is missing")
            if sha256(file) != expected:
                raise BundleError(f"{self.path}: {name} does not match its hash in the manifest")

    @property
    def num_items(self) -> int:
        return int(self.manifest["counts"]["items"])

    @property
    def num_users(self) -> int:
        return int(self.manifest["counts"]["users"])

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(k) for k in self.manifest["semantic_ids"]["codebook_sizes"]]

    @property
    def target_items(self) -> int:
        return int(self.manifest["config"]["sessions"]["target_items"])

    @property
    def history_length(self) -> int:
        return int(self.manifest["config"]["examples"]["history_length"])

    @cached_property
    def items(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "items.parquet")

    @cached_property
    def users(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "users.parquet")

    @cached_property
    def codes(self) -> np.ndarray:
        """``[num_items, num_levels]`` int64: row ``i`` is item ``i``'s semantic ID."""
        return np.stack(self.items["codes"].to_numpy()).astype(np.int64)

    @property
    def user_feature_names(self) -> list[str]:
        return list(self.manifest.get("user_features", {}).keys())

    @property
    def user_feature_cardinalities(self) -> list[int]:
        return [int(v) for v in self.manifest.get("user_features", {}).values()]

    def split_files(self, name: str) -> list[Path]:
        """The split's parquet file, or its shards in order."""
        if name not in SPLIT_FILES:
            raise BundleError(f"unknown split {name!r}; expected one of {list(SPLIT_FILES)}")
        single = self.path / SPLIT_FILES[name]
        if single.is_file():
            return [single]
        shards = sorted(self.path.glob(f"{name}-[0-9][0-9][0-9][0-9][0-9].parquet"))
        if not shards:
            raise BundleError(f"{self.path}: no {SPLIT_FILES[name]} and no {split_shard_name(name, 0)} shards")
        return shards

    def split(self, name: str, rank: int = 0, world_size: int = 1) -> pl.DataFrame:
        """A split's examples; with ``world_size > 1``, only shards ``rank::world_size``
        (scanned lazily: the other ranks' shards are never read)."""
        files = self.split_files(name)
        if world_size > 1:
            if len(files) < world_size:
                raise BundleError(
                    f"{self.path}: split {name!r} has {len(files)} shard(s), fewer than world_size={world_size}; "
                    f"rebuild the bundle with a smaller examples.shard_rows"
                )
            files = files[rank::world_size]
        return pl.scan_parquet(files).collect()

    def sessions(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "sessions.parquet")

    def positives(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / "positives.parquet")

    def item_ids(self) -> list[str]:
        """Original item id of each item index."""
        return self.items["item_id"].to_list()

    def user_ids(self) -> list[str]:
        return self.users["user_id"].to_list()

    @property
    def has_ground_truth(self) -> bool:
        return (self.path / "ground_truth.npz").is_file()

    def ground_truth(self) -> GroundTruth:
        path = self.path / "ground_truth.npz"
        if not path.is_file():
            raise BundleError(f"{self.path} has no ground truth: only synthetic bundles do")
        return GroundTruth.load(path)

    @property
    def label_columns(self) -> list[str]:
        return list(self.manifest.get("labels", []))
