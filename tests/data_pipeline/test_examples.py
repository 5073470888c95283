"""Train/valid/test examples: the TIGER leave-last-out protocol on a toy file worked out
by hand, and on the real Amazon Beauty file through ``onerec-prep``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipeline.bundle import Bundle
from data_pipeline.prep import prepare
from data_pipeline.sources.amazon_seq import AmazonSeqConfig
from tests.data_pipeline.conftest import run_prep, sequence_prep_config, shared_file

# user 1: 3 items, user 2: 5 items, user 3: 6 items (item 10 shared by users 1 and 3).
TOY = "1 10 11 12\n2 20 21 22 23 24\n3 10 20 30 40 50 60\n"


def _examples_by_id(bundle: Bundle, split: str) -> list[tuple[str, list[str], list[str]]]:
    """(user id, history item ids, target item ids) of a split, in bundle order."""
    items, users = bundle.item_ids(), bundle.user_ids()
    return [
        (users[u], [items[i] for i in history], [items[i] for i in target])
        for u, history, target in bundle.split(split).select("user_idx", "history", "target").iter_rows()
    ]


def test_tiger_split_on_a_toy_file(tmp_path: Path) -> None:
    path = tmp_path / "toy.txt"
    path.write_text(TOY)
    manifest = prepare(sequence_prep_config(AmazonSeqConfig(path=str(path)), tmp_path / "bundle", history_length=3))
    bundle = Bundle.open(tmp_path / "bundle")
    # Last item = test target, the one before = validation target, the history is what
    # came before (at most 3 items, the most recent).
    assert _examples_by_id(bundle, "test") == [
        ("1", ["10", "11"], ["12"]),
        ("2", ["21", "22", "23"], ["24"]),
        ("3", ["30", "40", "50"], ["60"]),
    ]
    assert _examples_by_id(bundle, "valid") == [
        ("1", ["10"], ["11"]),
        ("2", ["20", "21", "22"], ["23"]),
        ("3", ["20", "30", "40"], ["50"]),
    ]
    # Every earlier item is a training target; each user's first has no history and is skipped.
    assert _examples_by_id(bundle, "train") == [
        ("2", ["20"], ["21"]),
        ("2", ["20", "21"], ["22"]),
        ("3", ["10"], ["20"]),
        ("3", ["10", "20"], ["30"]),
        ("3", ["10", "20", "30"], ["40"]),
    ]
    assert manifest["counts"]["examples"] == {"train": 5, "valid": 3, "test": 3}
    assert manifest["counts"]["examples_skipped_short_history"] == {"train": 3, "valid": 0, "test": 0}
    assert manifest["sequence_only"] is True


@pytest.fixture(scope="module")
def beauty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, dict[str, list[str]]]:
    """Beauty.txt through ``onerec-prep data=amazon_seq`` (the whole file, once per module)."""
    path = shared_file("amazon/Beauty.txt")
    out = tmp_path_factory.mktemp("beauty") / "bundle"
    result = run_prep(["data=amazon_seq", f"data.path={path}", f"out_dir={out}"], cwd=out.parent)
    assert result.returncode == 0, result.stderr
    sequences = {}
    for line in path.read_text().splitlines():
        user, *items = line.split()
        sequences[user] = items
    return Bundle.open(out, verify=True), sequences


def test_beauty_follows_the_tiger_protocol(beauty: tuple[Bundle, dict[str, list[str]]]) -> None:
    bundle, sequences = beauty
    assert (bundle.num_users, bundle.num_items) == (22_363, 12_101)
    assert bundle.manifest["counts"]["rows_kept"] == 198_502
    test = _examples_by_id(bundle, "test")
    valid = _examples_by_id(bundle, "valid")
    assert len(test) == len(valid) == 22_363
    for user, history, target in test:
        items = sequences[user]
        assert target == items[-1:] and history == items[:-1][-50:], user
    for user, history, target in valid:
        items = sequences[user]
        assert target == items[-2:-1] and history == items[:-2][-50:], user
    # Training targets: every item but the last two and each user's first (no history).
    assert bundle.manifest["counts"]["examples"]["train"] == 198_502 - 3 * 22_363


def test_beauty_items_have_distinct_code_tuples(beauty: tuple[Bundle, dict[str, list[str]]]) -> None:
    bundle, _ = beauty
    codes = bundle.codes
    assert codes.shape[0] == 12_101
    assert np.unique(codes, axis=0).shape[0] == 12_101
    sizes = bundle.codebook_sizes
    assert sizes[:3] == [256, 256, 256]
    assert (codes < np.array(sizes)).all() and (codes >= 0).all()
    for level in bundle.manifest["semantic_ids"]["levels"]:  # balanced: 12,101 / 256 = 47.3
        assert (level["min_cluster"], level["max_cluster"], level["codes_used"]) == (47, 48, 256)
