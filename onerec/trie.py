"""A prefix trie over the semantic-ID table, flattened into tensors for batched decoding.

Nodes at depth ``l`` are the distinct code prefixes of length ``l`` (depth 0 is the root).
Each node's children are a contiguous run of edges ``[start, start + count)``; an edge
holds the next code and the node it leads to, or at the last level the item index. With
``max_children[l]`` known per level, a batch of beams reads all its candidates with one
gather, and no dense ``[nodes, K]`` mask is ever built (that would be K times larger).

Example, three items with two levels: ``item 0 = (1, 0)``, ``item 1 = (1, 2)``, ``item 2 = (3, 0)``::

    node 0 (root)   edges: code 1 → node 1, code 3 → node 2
    node 1 (1,)     edges: code 0 → item 0, code 2 → item 1
    node 2 (3,)     edges: code 0 → item 2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import numpy as np
import torch


@dataclass
class SemanticIdTrie:
    """Attributes:
        node_start / node_count: ``[num_nodes]`` first edge and number of edges per node.
        edge_code: ``[num_edges]`` the code an edge emits.
        edge_next: ``[num_edges]`` the node it leads to, or the item at the last level.
        max_children: most children of any node, per level.
        item_keys / item_of_key: sorted mixed-radix keys of every item's code tuple and
            the item each belongs to, to look up the item of any tuple (unconstrained
            decoding may emit tuples that are no item).
        radix: ``[L]`` multipliers of the mixed-radix key.
        item_nodes: ``[num_items, L]`` the node of each item's prefix at depth 0..L-1.
        item_edges: ``[num_items, L]`` the edge each item takes out of those nodes (its
            slot among a node's candidates is ``item_edges - node_start``).
        subtree_size: ``[num_nodes]`` items below each node; with :func:`banned_below`
            the search can tell when every item below a prefix is excluded and never
            walk into it (a beam that did would die at the leaf).
    """

    node_start: torch.Tensor
    node_count: torch.Tensor
    edge_code: torch.Tensor
    edge_next: torch.Tensor
    max_children: List[int]
    item_keys: torch.Tensor
    item_of_key: torch.Tensor
    radix: torch.Tensor
    item_nodes: torch.Tensor
    item_edges: torch.Tensor
    subtree_size: torch.Tensor

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: List[int]) -> "SemanticIdTrie":
        """Build from ``codes [num_items, L]`` (one-to-one with items)."""
        codes = np.asarray(codes, dtype=np.int64)
        num_items, levels = codes.shape
        if len(codebook_sizes) != levels:
            raise ValueError(f"{len(codebook_sizes)} codebook sizes for codes with {levels} levels")
        radix = np.ones(levels, dtype=np.int64)
        for level in range(levels - 2, -1, -1):
            radix[level] = radix[level + 1] * codebook_sizes[level + 1]
        keys = codes @ radix
        if np.unique(keys).size != num_items:
            raise ValueError("semantic IDs are not one-to-one with items; rebuild the bundle")

        # Node ids: depth-l prefixes numbered after all shallower nodes.
        prefix_ids = [np.zeros(num_items, dtype=np.int64)]  # depth 0: everyone at the root
        offset = 1
        for level in range(1, levels):
            _, local = np.unique(codes[:, :level], axis=0, return_inverse=True)
            prefix_ids.append(local.ravel().astype(np.int64) + offset)
            offset += int(local.max()) + 1
        num_nodes = offset

        parents, edge_codes, nexts = [], [], []
        for level in range(levels):
            nxt = prefix_ids[level + 1] if level + 1 < levels else np.arange(num_items, dtype=np.int64)
            pairs = np.unique(np.stack([prefix_ids[level], codes[:, level], nxt], axis=1), axis=0)
            parents.append(pairs[:, 0])
            edge_codes.append(pairs[:, 1])
            nexts.append(pairs[:, 2])
        parent = np.concatenate(parents)
        order = np.lexsort((np.concatenate(edge_codes), parent))  # edges grouped by parent
        parent = parent[order]
        edge_code = np.concatenate(edge_codes)[order]
        edge_next = np.concatenate(nexts)[order]
        count = np.bincount(parent, minlength=num_nodes)
        start = np.cumsum(count) - count
        max_children = [int(count[np.unique(p)].max()) for p in parents]
        key_order = np.argsort(keys)
        item_nodes = np.stack(prefix_ids, axis=1)  # (num_items, L)
        # Edges are sorted by (parent, code) and unique in it, so one sorted key finds them.
        code_span = int(codes.max()) + 1
        edge_key = parent * code_span + edge_code
        item_edges = np.searchsorted(edge_key, item_nodes * code_span + codes)  # (num_items, L)
        subtree_size = np.bincount(item_nodes.ravel(), minlength=num_nodes)
        return cls(
            node_start=torch.from_numpy(start),
            node_count=torch.from_numpy(count),
            edge_code=torch.from_numpy(edge_code),
            edge_next=torch.from_numpy(edge_next),
            max_children=max_children,
            item_keys=torch.from_numpy(keys[key_order]),
            item_of_key=torch.from_numpy(key_order.astype(np.int64)),
            radix=torch.from_numpy(radix),
            item_nodes=torch.from_numpy(item_nodes),
            item_edges=torch.from_numpy(item_edges.astype(np.int64)),
            subtree_size=torch.from_numpy(subtree_size.astype(np.int64)),
        )

    def children(self, prefix: List[int]) -> List[tuple[int, int]]:
        """``(code, next node or item)`` pairs below a code prefix (for tests and the
        reference search; not used on the batched path)."""
        node = 0
        for code in prefix:
            match = [(c, n) for c, n in self._edges(node) if c == code]
            if not match:
                return []
            node = match[0][1]
        return self._edges(node)

    def _edges(self, node: int) -> List[tuple[int, int]]:
        start, count = int(self.node_start[node]), int(self.node_count[node])
        return list(zip(self.edge_code[start : start + count].tolist(), self.edge_next[start : start + count].tolist()))


def banned_below(
    banned: torch.Tensor, node: torch.Tensor, level: int, width: int,
    item_nodes: torch.Tensor, item_edges: torch.Tensor, node_start: torch.Tensor,
) -> torch.Tensor:
    """Banned items below each candidate of each beam: ``[N, width]`` counts.

    Args:
        banned: ``[N, X]`` item indices per beam, -1 = padding, no repeats in a row.
        node: ``[N]`` each beam's node at depth ``level`` (-1: a dead beam, counts 0).
        width: candidate slots per beam (``max_children[level]``); slot ``s`` of a beam is
            the edge ``node_start[node] + s``.
        item_nodes / item_edges / node_start: the trie's tables.

    Each banned item under a beam's node adds one to the slot of the edge it takes from
    there: a scatter over ``N * X`` entries rather than a comparison of every candidate
    with every banned item (``N * width * X``, the larger by far at the root, whose
    ``width`` is the whole first codebook).
    """
    known = banned.clamp(min=0)
    under = (banned >= 0) & (item_nodes[known, level] == node[:, None])
    slot = item_edges[known, level] - node_start[node.clamp(min=0)][:, None]
    # Items under other nodes land in a spare column, cut off below.
    slot = torch.where(under, slot, torch.full_like(slot, width))
    counts = torch.zeros((banned.shape[0], width + 1), dtype=torch.long, device=banned.device)
    return counts.scatter_add(1, slot, torch.ones_like(slot))[:, :width]
