"""Ranking metrics over all items: Recall@K and NDCG@K against a target session.

A user's target is the set T of the session's items (one item under the TIGER
protocol). For a ranked list R of distinct items::

    Recall@K = |R[:K] ∩ T| / |T|
    NDCG@K   = sum_{i < K, R[i] in T} 1 / log2(i + 2)  /  sum_{i < min(K, |T|)} 1 / log2(i + 2)

With |T| = 1 these are the usual hit rate and NDCG of leave-one-out evaluation.
"""

from __future__ import annotations

import numpy as np


def recall_ndcg(ranked: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user Recall@k and NDCG@k.

    Args:
        ranked: ``[U, R]`` item indices, best first (-1 = no item).
        targets: ``[U, m]`` target items (-1 = padding).
        k: cut-off.

    Returns:
        ``([U], [U])`` float64 arrays.
    """
    top = ranked[:, :k]
    hits = (top[:, :, None] == targets[:, None, :]) & (targets[:, None, :] >= 0)
    hit = hits.any(-1)  # (U, k): position i holds a target item
    n_targets = (targets >= 0).sum(1)
    recall = hit.sum(1) / np.maximum(n_targets, 1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit * discounts[None, : top.shape[1]]).sum(1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(n_targets, k)]
    ndcg = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
    return recall, ndcg


def summarize(ranked: np.ndarray, targets: np.ndarray, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    """Mean Recall@K and NDCG@K for each K."""
    out: dict[str, float] = {}
    for k in ks:
        recall, ndcg = recall_ndcg(ranked, targets, k)
        out[f"recall@{k}"] = float(recall.mean()) if recall.size else 0.0
        out[f"ndcg@{k}"] = float(ndcg.mean()) if ndcg.size else 0.0
    return out
