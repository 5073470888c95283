"""Ranked lists for Recall/NDCG: leaving each user's history items out (``exclude_history``)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from data_pipeline.bundle import Bundle
from onerec.baselines.popularity import popularity_rankings_excluding
from onerec.baselines.sasrec import SASRec, SASRecConfig, rank_next
from onerec.data import ExampleSet
from onerec.generate import SessionGenerator
from onerec.ranking import history_exclusions, rank_items
from onerec.trie import SemanticIdTrie
from tests.onerec.helpers import examples_and_builder, tiny_model


def test_history_exclusions_are_distinct_and_padded() -> None:
    frame = pl.DataFrame(
        {"user_idx": [0, 1, 2], "history": [[7, 4, 7], [2], [5, 5, 5, 9]], "target": [[1], [3], [6]]},
        schema={"user_idx": pl.Int64, "history": pl.List(pl.Int64), "target": pl.List(pl.Int64)},
    )
    examples = ExampleSet(frame, max_history=3, num_items=1)  # user 2 keeps [5, 5, 9]
    assert history_exclusions(examples, np.array([0, 1, 2])).tolist() == [[-1, 4, 7], [-1, -1, 2], [-1, 5, 9]]
    assert history_exclusions(examples, np.array([1])).tolist() == [[2]]


def test_popularity_skips_each_users_history() -> None:
    counts = np.array([2, 5, 5, 0])  # order: 1, 2, 0, 3
    rankings = popularity_rankings_excluding(counts, np.array([[1, -1], [-1, -1], [2, 0]]), top_k=2)
    assert rankings.items.tolist() == [[2, 0], [1, 2], [1, 3]]
    np.testing.assert_allclose(np.exp(rankings.scores[0]), [5 / 12, 2 / 12], rtol=1e-6)
    assert rankings.scores[2, 1] == -np.inf  # item 3 was never consumed: log 0
    # More positions than items left: -1 and -inf past the end.
    short = popularity_rankings_excluding(counts, np.array([[0, 1]]), top_k=4)
    assert short.items.tolist() == [[2, 3, -1, -1]] and short.scores[0, 2] == -np.inf


def test_sasrec_exclusion_removes_exactly_the_excluded_items() -> None:
    torch.manual_seed(0)
    cfg = SASRecConfig(max_len=8, hidden=16, layers=1, heads=2, inner=32, hidden_dropout=0.0, attn_dropout=0.0)
    model = SASRec(20, cfg).eval()
    tokens = torch.randint(1, 21, (3, 8))
    plain, _ = rank_next(model, tokens, top_k=20)  # every item, best first
    exclude = torch.stack([plain[0, :3], plain[1, 5:8], torch.tensor([-1, -1, int(plain[2, 0])])])
    items, scores = rank_next(model, tokens, top_k=5, exclude=exclude)
    for row in range(3):
        banned = set(exclude[row].tolist())
        expected = [i for i in plain[row].tolist() if i not in banned][:5]
        assert items[row].tolist() == expected
    assert torch.isfinite(scores).all()


@pytest.mark.usefixtures("one_torch_thread")
def test_generative_ranking_without_history_items(tiny_bundle_dir) -> None:
    """With a beam as wide as the catalogue the search is exhaustive, so leaving the history
    out must give the plain ranking with the history items struck out, nothing else."""
    bundle = Bundle.open(tiny_bundle_dir)
    model = tiny_model(bundle, session_length=1, seed=1).eval()
    trie = SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes)
    generator = SessionGenerator(model, trie, torch.as_tensor(bundle.codes))
    examples, builder = examples_and_builder(bundle, model, "test")
    users, top_k = 6, 10
    plain = rank_items(generator, builder, examples, top_k=bundle.num_items, beam_size=bundle.num_items, limit=users)
    kept = rank_items(generator, builder, examples, top_k=top_k, beam_size=bundle.num_items, limit=users, exclude_history=True)
    seen = history_exclusions(examples, np.arange(users))
    for row in range(users):
        history = set(seen[row].tolist()) - {-1}
        assert history, "every test user has a history"
        expected = [i for i in plain.items[row].tolist() if i not in history][:top_k]
        assert kept.items[row].tolist() == expected
        np.testing.assert_allclose(kept.scores[row], plain.scores[row][np.isin(plain.items[row], expected)], rtol=1e-5)
    assert kept.legal_rate == 1.0
