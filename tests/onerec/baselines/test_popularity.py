"""Most-popular baseline on a hand-made Amazon-format bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_pipeline.bundle import Bundle
from data_pipeline.examples import ExampleConfig
from data_pipeline.items import ItemEmbeddingConfig
from data_pipeline.prep import PrepConfig, prepare
from data_pipeline.semantic_ids import SemanticIdConfig
from data_pipeline.sessions import SessionConfig
from data_pipeline.sources.amazon_seq import AmazonSeqConfig
from onerec.baselines import item_popularity, popularity_order, popularity_rankings, run_baselines

# user item item ...: the last item is the test target, the one before the validation target.
# Training interactions: 30 ×4, 20 ×3, 10 ×2; 40..90 only appear as valid/test targets.
LINES = ["1 10 20 30 40 50", "2 20 30 60 70", "3 30 20 80 90", "4 30 10 90 80"]


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("toy_amazon")
    source = root / "toy.txt"
    source.write_text("\n".join(LINES) + "\n")
    prepare(
        PrepConfig(
            data=AmazonSeqConfig(path=str(source)),
            out_dir=str(root / "bundle"),
            sessions=SessionConfig(gap_ms=0, target_items=1, watch_time_quantile=0.0, require_engagement=False),
            examples=ExampleConfig(history_length=50),
            items=ItemEmbeddingConfig(dim=4, side_dim=2),
            semantic_ids=SemanticIdConfig(levels=2, codebook_size=3, iterations=5),
            show_progress=False,
        )
    )
    return Bundle.open(root / "bundle")


def test_order_breaks_ties_by_item_index() -> None:
    assert popularity_order(np.array([2, 5, 5, 0])).tolist() == [1, 2, 0, 3]


def test_popularity_counts_training_interactions_only(toy_bundle: Bundle) -> None:
    ids = toy_bundle.item_ids()
    counts = dict(zip(ids, item_popularity(toy_bundle).tolist()))
    assert counts == {"10": 2, "20": 3, "30": 4, "40": 0, "50": 0, "60": 0, "70": 0, "80": 0, "90": 0}
    top = [ids[i] for i in popularity_order(item_popularity(toy_bundle))[:3]]
    assert top == ["30", "20", "10"]


def test_rankings_are_the_same_list_for_everyone(toy_bundle: Bundle) -> None:
    counts = item_popularity(toy_bundle)
    rankings = popularity_rankings(counts, num_users=4, top_k=12)
    assert rankings.items.shape == (4, 12) and rankings.legal_rate == 1.0
    assert (rankings.items == rankings.items[0]).all()
    assert rankings.items[0, :9].tolist() == popularity_order(counts).tolist()
    assert (rankings.items[0, 9:] == -1).all()  # more positions than items
    np.testing.assert_allclose(np.exp(rankings.scores[0, :3]), [4 / 9, 3 / 9, 2 / 9], rtol=1e-6)


def test_run_baselines_scores_popularity(toy_bundle: Bundle, tmp_path: Path) -> None:
    # The test targets 50, 70, 90, 80 have no training interactions: they rank after the
    # three popular items, in item-index order.
    ids = toy_bundle.item_ids()
    order = [ids[i] for i in popularity_order(item_popularity(toy_bundle))]
    results = run_baselines(toy_bundle, "test", ["popularity"], tmp_path)
    metrics = results["popularity"]
    ranks = [order.index(t) for t in ("50", "70", "90", "80")]
    assert metrics["recall@5"] == pytest.approx(np.mean([r < 5 for r in ranks]))
    assert metrics["ndcg@10"] == pytest.approx(np.mean([1 / np.log2(r + 2) for r in ranks]))
    assert metrics["users"] == 4 and metrics["legal_rate"] == 1.0


def test_unknown_baseline_is_named(toy_bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="bm25"):
        run_baselines(toy_bundle, "test", ["bm25"])
