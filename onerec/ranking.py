"""Ranked next-item lists from the generative model, for Recall@K / NDCG@K.

The ranked list of a user is the items of a one-item beam search (``beam ≥ K``) in
score order: distinct trie leaves, so distinct items. The legal-item rate counts the
emitted items that exist in the catalogue (always 1 with the constrained search; the
unconstrained ablation shows what the trie buys).

``exclude_history=True`` keeps the items of a user's history out of its list (the model's
search never emits them; the baselines mask them before their top-K). Use it on data where
nobody consumes an item twice, e.g. the Amazon 5-core sets, whose sequences hold no repeats:
there a history item in the list is a sure miss. It is off by default (the standard
protocol, and re-consumption logs such as KuaiRand need it off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from onerec.data import BatchBuilder, ExampleSet, padded_histories, user_feature_matrix
from onerec.generate import SessionGenerator
from onerec.metrics import summarize


@dataclass
class Rankings:
    """Attributes:
        items: ``[U, K]`` item indices, best first (-1 where none).
        scores: ``[U, K]`` log-probabilities.
        legal_rate: share of emitted items that exist.
    """

    items: np.ndarray
    scores: np.ndarray
    legal_rate: float


def history_exclusions(examples: ExampleSet, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), S]`` int64: each row's distinct history items (as the examples hold
    them, i.e. the last ``max_history``), ascending, -1 for padding and repeats; S ≥ 1.
    (The beam search's ``exclude`` wants no duplicates: it counts banned items per prefix.)

    Example: histories ``[7, 4, 7]`` and ``[2]`` → ``[[-1, 4, 7], [-1, -1, 2]]``.
    """
    values, lengths = examples.histories(rows)
    width = max(int(lengths.max()) if lengths.size else 0, 1)
    out = np.full((rows.size, width), -1, dtype=np.int64)
    out[np.arange(width)[None, :] < lengths[:, None]] = values
    out.sort(axis=1)
    out[:, 1:][out[:, 1:] == out[:, :-1]] = -1
    out.sort(axis=1)
    return out


@torch.no_grad()
def rank_items(
    generator: SessionGenerator,
    builder: BatchBuilder,
    examples: ExampleSet,
    top_k: int,
    beam_size: int,
    batch_size: int = 256,
    limit: int = 0,
    constrained: bool = True,
    show_progress: bool = False,
    device: torch.device | None = None,
    exclude_history: bool = False,
) -> Rankings:
    """Top-``top_k`` next items for the first ``limit`` examples (0: all); with
    ``exclude_history`` none of them is in the example's history."""
    generator.eval()
    device = device or torch.device("cpu")
    total = len(examples) if limit <= 0 else min(limit, len(examples))
    beam = max(beam_size, top_k)
    items_out, scores_out = [], []
    emitted = legal = 0
    # Batches of similar history length pad little; the order is restored at the end.
    by_length = np.argsort(examples.history_lengths[:total], kind="stable")
    starts = range(0, total, batch_size)
    for start in tqdm(starts, desc="ranking", disable=not show_progress, unit="batch"):
        rows = by_length[start : start + batch_size]
        history, lengths = padded_histories(examples, rows)
        features = user_feature_matrix(builder, examples.users[rows])
        exclude = torch.from_numpy(history_exclusions(examples, rows)).to(device) if exclude_history else None
        items, scores = generator.generate(
            history.to(device), lengths.to(device), features.to(device), 1, beam, exclude, constrained
        )
        items, scores = items[:, :, 0].cpu(), scores.cpu()
        alive = torch.isfinite(scores)
        emitted += int(alive.sum())
        legal += int((alive & (items >= 0)).sum())
        items_out.append(items[:, :top_k].numpy())
        scores_out.append(scores[:, :top_k].numpy())
    items = np.zeros((total, top_k), dtype=np.int64)
    scores = np.zeros((total, top_k), dtype=np.float32)
    if items_out:
        items[by_length] = np.concatenate(items_out)
        scores[by_length] = np.concatenate(scores_out)
    return Rankings(items=items, scores=scores, legal_rate=legal / max(emitted, 1))


def evaluate_rankings(rankings: Rankings, examples: ExampleSet, ks: tuple[int, ...] = (5, 10)) -> dict[str, float]:
    targets = examples.targets[: rankings.items.shape[0]]
    metrics = summarize(rankings.items, targets, ks)
    metrics["legal_rate"] = rankings.legal_rate
    metrics["users"] = int(rankings.items.shape[0])
    return metrics
