"""The dataset bundle: manifest hashes, tampering and missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.bundle import MANIFEST, Bundle, BundleError, sha256
from data_pipeline.prep import prepare
from data_pipeline.sources.amazon_seq import AmazonSeqConfig
from tests.data_pipeline.conftest import sequence_prep_config


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    path = tmp_path / "seq.txt"
    path.write_text("1 10 11 12 13\n2 10 11 14\n3 12 13 14 10\n")
    out = tmp_path / "bundle"
    prepare(sequence_prep_config(AmazonSeqConfig(path=str(path)), out))
    return out


def test_manifest_lists_every_file_with_its_hash(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    on_disk = {p.name for p in bundle_dir.iterdir() if p.name != MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert {"items.parquet", "users.parquet", "train.parquet", "valid.parquet", "test.parquet"} <= on_disk
    for name, digest in manifest["files"].items():
        assert sha256(bundle_dir / name) == digest
    bundle = Bundle.open(bundle_dir, verify=True)
    assert (bundle.num_users, bundle.num_items, bundle.target_items) == (3, 5, 1)
    assert bundle.codes.shape == (5, len(bundle.codebook_sizes))
    assert not bundle.has_ground_truth


def test_a_tampered_file_fails_verification(bundle_dir: Path) -> None:
    with open(bundle_dir / "test.parquet", "ab") as f:
        f.write(b"\0")
    Bundle.open(bundle_dir)  # not verified: opens
    with pytest.raises(BundleError, match="test.parquet does not match its hash in the manifest"):
        Bundle.open(bundle_dir, verify=True)


def test_a_missing_file_fails_verification(bundle_dir: Path) -> None:
    (bundle_dir / "items.parquet").unlink()
    with pytest.raises(BundleError, match="items.parquet listed in the manifest is missing"):
        Bundle.open(bundle_dir, verify=True)


def test_a_folder_without_manifest_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"is not a dataset bundle \(no manifest.json\); make one with onerec-prep"):
        Bundle.open(tmp_path)


def test_an_old_schema_version_asks_for_a_rebuild(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    (bundle_dir / MANIFEST).write_text(json.dumps({**manifest, "schema_version": 0}))
    with pytest.raises(BundleError, match="schema version 0 != 1; rebuild it with onerec-prep"):
        Bundle.open(bundle_dir)


def test_unknown_split_and_missing_ground_truth_are_bundle_errors(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    with pytest.raises(BundleError, match="unknown split 'dev'"):
        bundle.split("dev")
    with pytest.raises(BundleError, match="has no ground truth"):
        bundle.ground_truth()
