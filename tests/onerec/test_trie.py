"""The flattened semantic-ID trie, on the docstring's example."""

from __future__ import annotations

import numpy as np
import pytest

from onerec.trie import SemanticIdTrie


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


def test_duplicate_code_tuples_are_refused() -> None:
    with pytest.raises(ValueError, match="one-to-one"):
        SemanticIdTrie.from_codes(np.array([[1, 0], [1, 0]]), [2, 2])
