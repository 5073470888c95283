"""Examples from a dataset bundle → batches of torchrec ``KeyedJaggedTensor`` inputs.

A batch of two users with histories of 3 and 1 items and 3 semantic-ID levels::

    key          user 0        user 1
    hist_c0      [12, 4, 200]  [7]
    hist_c1      [3, 3, 91]    [0]
    hist_c2      [0, 1, 5]     [2]
    hist_item    [55, 9, 310]  [17]     (when model.history_item_embedding)
    user         [u0]          [u1]     (when model.user_embedding_buckets > 0)
    uf_<name>    [f0]          [f1]     (one per categorical user feature)

Histories are oldest first. Targets are dense: ``target_items [B, m]`` and
``target_codes [B, m, L]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import polars as pl
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from data_pipeline.bundle import Bundle


@dataclass
class Batch:
    """Attributes:
        features: sparse inputs (see the module docstring).
        history_lengths: ``[B]`` items in each history.
        target_items: ``[B, m]`` item indices of the target session.
        target_codes: ``[B, m, L]`` their semantic IDs.
        users: ``[B]`` user indices.
    """

    features: KeyedJaggedTensor
    history_lengths: torch.Tensor
    target_items: torch.Tensor
    target_codes: torch.Tensor
    users: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            features=self.features.to(device),
            history_lengths=self.history_lengths.to(device),
            target_items=self.target_items.to(device),
            target_codes=self.target_codes.to(device),
            users=self.users.to(device),
        )

    @property
    def size(self) -> int:
        return int(self.users.numel())

    @property
    def num_tokens(self) -> int:
        """History items + target codes + target items: what tokens/s counts everywhere."""
        return int(self.history_lengths.sum()) + self.target_codes.numel() + self.target_items.numel()


class ExampleSet:
    """One split of a bundle held as flat numpy arrays (histories as values + offsets).

    Args:
        frame: a split's examples (``user_idx, history, target``).
        max_history: keep only the most recent items of longer histories.
        num_items: m; targets are cut to it (the bundle's sessions have at least m items).
    """

    def __init__(self, frame: pl.DataFrame, max_history: int, num_items: int) -> None:
        histories = frame["history"].list.tail(max_history)
        lengths = histories.list.len().to_numpy().astype(np.int64)
        self.history_values = histories.explode().drop_nulls().to_numpy().astype(np.int64)
        self.history_offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.users = frame["user_idx"].to_numpy().astype(np.int64)
        targets = frame["target"].list.head(num_items)
        short = int((targets.list.len() < num_items).sum())
        if short:
            raise ValueError(f"{short} examples have fewer than m={num_items} target items; lower generation.num_items")
        self.targets = np.stack(targets.to_numpy()).astype(np.int64).reshape(len(frame), num_items)
        self.frame = frame

    def __len__(self) -> int:
        return int(self.users.size)

    @property
    def history_lengths(self) -> np.ndarray:
        return np.diff(self.history_offsets)

    def histories(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated histories of ``rows`` and their lengths (no Python loop)."""
        starts = self.history_offsets[rows]
        lengths = self.history_offsets[rows + 1] - starts
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return self.history_values[np.repeat(starts, lengths) + within], lengths


class BatchBuilder:
    """Builds :class:`Batch` objects for a bundle's code table and feature set."""

    def __init__(
        self,
        codes: np.ndarray,
        history_item_embedding: bool,
        user_buckets: int,
        user_features: np.ndarray | None = None,
        user_feature_names: list[str] | None = None,
    ) -> None:
        self.codes = torch.as_tensor(codes, dtype=torch.long)
        self.num_levels = int(codes.shape[1])
        self.history_item_embedding = history_item_embedding
        self.user_buckets = user_buckets
        self.user_features = None if user_features is None else torch.as_tensor(user_features, dtype=torch.long)
        self.user_feature_names = list(user_feature_names or [])
        self.keys = [f"hist_c{level}" for level in range(self.num_levels)]
        self.keys += [f"tgt_c{level}" for level in range(self.num_levels)]
        if history_item_embedding:
            self.keys.append("hist_item")
        if user_buckets > 0:
            self.keys.append("user")
        self.keys += [f"uf_{name}" for name in self.user_feature_names]

    def build(self, history: torch.Tensor, lengths: torch.Tensor, users: torch.Tensor, targets: torch.Tensor) -> Batch:
        """Args:
            history: ``[sum(lengths)]`` concatenated item indices, oldest first per user.
            lengths: ``[B]``.
            users: ``[B]`` user indices.
            targets: ``[B, m]`` target item indices.
        """
        if bool((targets < 0).any()):
            raise ValueError("every example needs m target items; got a session shorter than the model's m")
        history_codes = self.codes[history]  # (N_hist, L)
        target_codes = self.codes[targets]  # (B, m, L)
        m = targets.shape[1]
        values = [history_codes[:, level] for level in range(self.num_levels)]
        values += [target_codes[:, :, level].reshape(-1) for level in range(self.num_levels)]
        per_key_lengths = [lengths] * self.num_levels + [torch.full_like(lengths, m)] * self.num_levels
        if self.history_item_embedding:
            values.append(history)
            per_key_lengths.append(lengths)
        ones = torch.ones_like(users)
        if self.user_buckets > 0:
            values.append(users % self.user_buckets)
            per_key_lengths.append(ones)
        if self.user_feature_names:
            assert self.user_features is not None
            feats = self.user_features[users]  # (B, F)
            for column in range(feats.shape[1]):
                values.append(feats[:, column])
                per_key_lengths.append(ones)
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys, values=torch.cat(values), lengths=torch.cat(per_key_lengths)
        )
        return Batch(
            features=features, history_lengths=lengths, target_items=targets, target_codes=target_codes, users=users
        )

    def from_examples(self, examples: ExampleSet, rows: np.ndarray) -> Batch:
        history, lengths = examples.histories(rows)
        return self.build(
            torch.from_numpy(history),
            torch.from_numpy(lengths),
            torch.from_numpy(examples.users[rows]),
            torch.from_numpy(examples.targets[rows]),
        )

    @classmethod
    def for_bundle(cls, bundle: Bundle, history_item_embedding: bool, user_buckets: int) -> "BatchBuilder":
        names = bundle.user_feature_names
        features = None
        if names:
            users = bundle.users.sort("user_idx")
            features = users.select([f"uf_{n}" for n in names]).to_numpy().astype(np.int64)
        return cls(bundle.codes, history_item_embedding, user_buckets, features, names)


def padded_histories(examples: ExampleSet, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[B, T]`` histories (right-padded with 0) and ``[B]`` lengths, for generation."""
    values, lengths = examples.histories(rows)
    width = max(int(lengths.max()) if lengths.size else 0, 1)
    padded = np.zeros((rows.size, width), dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    padded[mask] = values
    return torch.from_numpy(padded), torch.from_numpy(lengths)


def user_feature_matrix(builder: "BatchBuilder", users: np.ndarray) -> torch.Tensor:
    """``[B, F]`` categorical user features of ``users`` (F = 0 when the bundle has none)."""
    if builder.user_features is None:
        return torch.zeros((users.size, 0), dtype=torch.long)
    return builder.user_features[torch.from_numpy(users)]


def epoch_batches(
    history_lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    bucket_batches: int = 32,
) -> np.ndarray:
    """The batches of one epoch as ``[num_batches, batch_size // world_size]`` example rows.

    A function of (seed, epoch) alone, so that a resumed run sees exactly the batches an
    uninterrupted one would. Examples are shuffled, then sorted by history length inside
    windows of ``bucket_batches`` batches: a batch is padded to its longest history, and
    with skewed lengths (Amazon: mean 8, max 50) random batches would be mostly padding.
    The batch order is shuffled again so that lengths do not trend through the epoch.
    The last incomplete batch is dropped (stable shapes).

    ``batch_size`` is the global batch: under data parallelism rank ``r`` takes the
    strided columns ``r::world_size`` of every batch, so the ranks together see exactly
    the batches of a single-process run (and, the columns being length-sorted, equally
    long histories), whatever the number of ranks.
    """
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} must be divisible by world_size={world_size}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(history_lengths.size)
    num_batches = order.size // batch_size
    order = order[: num_batches * batch_size]
    window = max(1, bucket_batches) * batch_size
    for start in range(0, order.size, window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(history_lengths[chunk], kind="stable")]
    batches = order.reshape(num_batches, batch_size)
    return batches[rng.permutation(num_batches)][:, rank::world_size]


def iterate_batches(
    builder: BatchBuilder, examples: ExampleSet, batches: np.ndarray, start_batch: int = 0
) -> Iterator[Batch]:
    """Batches for the rows of ``batches [num_batches, batch_size]``, from ``start_batch``."""
    for b in range(start_batch, batches.shape[0]):
        yield builder.from_examples(examples, batches[b])


def sequential_batches(builder: BatchBuilder, examples: ExampleSet, batch_size: int, limit: int = 0) -> Iterator[Batch]:
    """All examples (or the first ``limit``) in file order, for evaluation."""
    total = len(examples) if limit <= 0 else min(limit, len(examples))
    for start in range(0, total, batch_size):
        yield builder.from_examples(examples, np.arange(start, min(total, start + batch_size)))
