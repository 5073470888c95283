"""Most-popular baseline: every user gets the items with the most training interactions.

Popularity is ``train_count`` from the bundle's ``items.parquet``: interactions before each
user's validation cut-off, so neither validation nor test targets leak into the order.
Nothing is excluded from the list (the standard protocol) unless ``exclude_history`` asks
for each user's list without its history items. The order itself is also the serving
fallback for users without a history.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.bundle import Bundle
from onerec.ranking import Rankings


def item_popularity(bundle: Bundle) -> np.ndarray:
    """``[num_items]`` int64: training interactions of each item index."""
    items = bundle.items.sort("item_idx")
    if items.height != bundle.num_items:
        raise ValueError(f"{bundle.path}: items.parquet has {items.height} rows, the manifest says {bundle.num_items} items")
    return items["train_count"].to_numpy().astype(np.int64)


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Item indices, most popular first; ties go to the lower item index.

    Example::

        popularity_order(np.array([2, 5, 5, 0]))  # array([1, 2, 0, 3])
    """
    return np.argsort(-np.asarray(counts), kind="stable")


def _log_shares(counts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``log(count / total)`` of the items in ``order`` (float32; -inf for never-consumed items)."""
    share = counts[order] / max(int(counts.sum()), 1)
    with np.errstate(divide="ignore"):
        return np.log(share).astype(np.float32)


def popularity_rankings(counts: np.ndarray, num_users: int, top_k: int = 10) -> Rankings:
    """The same top-``top_k`` list for each of ``num_users`` users.

    Args:
        counts: ``[num_items]`` training interactions per item.
        num_users: rows of the result (the examples of a split).
        top_k: list length; positions past the catalogue are -1.

    Returns:
        :class:`Rankings` with ``items [num_users, top_k]`` and scores ``log(count / total)``.
    """
    order = popularity_order(counts)[:top_k]
    log_share = _log_shares(counts, order)
    items = np.full(top_k, -1, dtype=np.int64)
    scores = np.full(top_k, -np.inf, dtype=np.float32)
    items[: order.size], scores[: order.size] = order, log_share
    return Rankings(
        items=np.tile(items, (num_users, 1)), scores=np.tile(scores, (num_users, 1)), legal_rate=1.0
    )


def popularity_rankings_excluding(counts: np.ndarray, exclude: np.ndarray, top_k: int = 10) -> Rankings:
    """Each user's top-``top_k`` most popular items that are not in its ``exclude`` row.

    Args:
        counts: ``[num_items]`` training interactions per item.
        exclude: ``[U, E]`` item indices per user (-1 = padding), e.g.
            :func:`onerec.ranking.history_exclusions`.

    Example: counts ``[2, 5, 5, 0]``, top 2, excluding ``[[1], [-1]]`` → ``[[2, 0], [1, 2]]``.
    """
    num_users, width = exclude.shape
    # Every user keeps at least top_k of the first top_k + E popular items.
    order = popularity_order(counts)[: top_k + width]
    log_share = _log_shares(counts, order)
    banned = (order[None, :, None] == exclude[:, None, :]).any(-1)  # (U, top_k + E)
    # A stable sort of the banned flags moves each user's allowed items to the front in order.
    keep = np.argsort(banned, axis=1, kind="stable")[:, :top_k]
    allowed = ~np.take_along_axis(banned, keep, 1)
    items = np.where(allowed, order[keep], -1)
    scores = np.where(allowed, log_share[keep], -np.inf).astype(np.float32)
    pad = top_k - items.shape[1]
    if pad > 0:  # a catalogue smaller than top_k
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return Rankings(items=items.astype(np.int64), scores=scores, legal_rate=1.0)
