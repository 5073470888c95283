"""The dataset bundle: manifest hashes, tampering and missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.bundle import MANIFEST, Bundle, BundleError, sha256
from data_pipeline.items import ItemEmbeddingConfig
from data_pipeline.prep import PrepConfig, prepare
from data_pipeline.schema import SCHEMA_VERSION
from data_pipeline.semantic_ids import SemanticIdConfig
from data_pipeline.sessions import SessionConfig
from data_pipeline.sources.amazon_seq import AmazonSeqConfig
from data_pipeline.sources.tabular import TabularConfig
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
    with pytest.raises(BundleError, match=f"schema version 0 != {SCHEMA_VERSION}; rebuild it with onerec-prep"):
        Bundle.open(bundle_dir)


def test_unknown_split_and_missing_ground_truth_are_bundle_errors(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    with pytest.raises(BundleError, match="unknown split 'dev'"):
        bundle.split("dev")
    with pytest.raises(BundleError, match="has no ground truth"):
        bundle.ground_truth()


def test_sessions_table_holds_each_sessions_items_and_responses(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    # u1: two events 1 s apart, then one 3 hours later (gap 30 min: two sessions); u2: one event.
    log.write_text(
        "user_id,item_id,timestamp,watch_time_ms,duration_ms,like\n"
        "u1,a,0,900,1000,0\nu1,b,1000,100,1000,1\nu1,c,10800000,50,1000,0\nu2,a,0,1000,1000,0\n"
    )
    columns = {c: c for c in ("user_id", "item_id", "timestamp", "watch_time_ms", "duration_ms", "like")}
    prepare(
        PrepConfig(
            data=TabularConfig(path=str(log), columns=columns),
            out_dir=str(tmp_path / "bundle"),
            sessions=SessionConfig(target_items=1, watch_time_quantile=0.0, require_engagement=False),
            items=ItemEmbeddingConfig(dim=2, side_dim=2),
            semantic_ids=SemanticIdConfig(levels=1, codebook_size=2, iterations=2),
            show_progress=False,
        )
    )
    sessions = Bundle.open(tmp_path / "bundle", verify=True).sessions()
    assert sessions.select(
        "user_idx", "items", "total_watch_time_ms", "watch_time_ms", "like", "positive", "split"
    ).rows() == [
        (0, [0, 1], 1000.0, [900.0, 100.0], [0, 1], [True, True], "test"),  # ratio 0.9; liked
        (0, [2], 50.0, [50.0], [0], [False], None),  # ratio 0.05: no positive, not a target
        (1, [0], 1000.0, [1000.0], [0], [True], "test"),
    ]
