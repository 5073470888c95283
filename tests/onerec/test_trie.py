"""The flattened semantic-ID trie, on the docstring's example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onerec.trie import SemanticIdTrie, banned_below


def test_docstring_example() -> None:
    trie = SemanticIdTrie.from_codes(np.array([[1, 0], [1, 2], [3, 0]]), [4, 3])
    assert trie.children([]) == [(1, 1), (3, 2)]
    assert trie.children([1]) == [(0, 0), (2, 1)]
    assert trie.children([3]) == [(0, 2)]
    assert trie.children([2]) == []
    assert trie.max_children == [2, 2]
    # Mixed-radix keys: (c0, c1) → c0 * 3 + c1.
    assert trie.radix.tolist() == [3, 1]
    assert sorted(trie.item_keys.tolist()) == [3, 5, 9]
    # Edges grouped by parent: 0: root→(1,), 1: root→(3,), 2: (1,)→item 0, 3: (1,)→item 1, 4: (3,)→item 2.
    assert trie.item_nodes.tolist() == [[0, 1], [0, 1], [0, 2]]
    assert trie.item_edges.tolist() == [[0, 2], [0, 3], [1, 4]]


def _below(trie: SemanticIdTrie, banned: list[list[int]], node: list[int], level: int) -> list[list[int]]:
    return banned_below(
        torch.tensor(banned), torch.tensor(node), level, trie.max_children[level],
        trie.item_nodes, trie.item_edges, trie.node_start,
    ).tolist()


def test_banned_items_are_counted_below_each_candidate() -> None:
    trie = SemanticIdTrie.from_codes(np.array([[1, 0], [1, 2], [3, 0]]), [4, 3])
    # At the root (slots: code 1, code 3): items 0 and 1 sit below code 1, item 2 below code 3.
    assert _below(trie, [[0, 1], [2, -1], [-1, -1], [1, 2]], [0, 0, 0, 0], 0) == [[2, 0], [0, 1], [0, 0], [1, 1]]
    # Below prefix (1,) (node 1; slots: code 0 = item 0, code 2 = item 1) and prefix (3,) (node 2).
    # Item 2 is not under node 1 and items 0 / 1 not under node 2: they count nowhere.
    assert _below(trie, [[1, 2], [0, 1], [0, 2], [2, -1]], [1, 1, 2, -1], 1) == [[0, 1], [1, 1], [1, 0], [0, 0]]


def test_duplicate_code_tuples_are_refused() -> None:
    with pytest.raises(ValueError, match="one-to-one"):
        SemanticIdTrie.from_codes(np.array([[1, 0], [1, 0]]), [2, 2])
