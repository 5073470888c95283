"""Recall@K and NDCG@K against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from onerec.metrics import recall_ndcg, summarize


def test_single_target_hit_rate_and_ndcg() -> None:
    ranked = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    targets = np.array([[3], [4], [0]])
    recall, ndcg = recall_ndcg(ranked, targets, 3)
    # user 0: hit at rank 2 → 1/log2(3); user 1: rank 3 → 1/log2(4) = 0.5; user 2: miss
    assert recall.tolist() == [1.0, 1.0, 0.0]
    np.testing.assert_allclose(ndcg, [1 / np.log2(3), 0.5, 0.0])
    recall2, _ = recall_ndcg(ranked, targets, 2)
    assert recall2.tolist() == [1.0, 0.0, 0.0]


def test_session_targets() -> None:
    # Target session {3, 4}; ranked [3, 1, 4]: recall@3 = 2/2, DCG = 1 + 1/2, IDCG = 1 + 1/log2(3).
    recall, ndcg = recall_ndcg(np.array([[3, 1, 4]]), np.array([[3, 4]]), 3)
    assert recall[0] == 1.0
    assert ndcg[0] == pytest.approx(1.5 / (1 + 1 / np.log2(3)))
    # At K = 1 only one of two targets fits: recall 1/2, NDCG = 1 / 1.
    recall1, ndcg1 = recall_ndcg(np.array([[3, 1, 4]]), np.array([[3, 4]]), 1)
    assert recall1[0] == 0.5 and ndcg1[0] == 1.0


def test_summary_keys() -> None:
    out = summarize(np.array([[1, 2]]), np.array([[2]]), ks=(1, 2))
    assert out == {"recall@1": 0.0, "ndcg@1": 0.0, "recall@2": 1.0, "ndcg@2": pytest.approx(1 / np.log2(3))}
