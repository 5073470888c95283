"""The model's inputs, masking and the two encoder paths (jagged training, dense serving)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.bundle import Bundle
from onerec.data import padded_histories
from onerec.generate import SessionGenerator
from onerec.losses import ntp_loss, session_logprob
from onerec.trie import SemanticIdTrie
from tests.onerec.helpers import examples_and_builder, rows_with_distinct_lengths, tiny_model


@pytest.fixture(scope="module")
def bundle(tiny_bundle_dir) -> Bundle:
    return Bundle.open(tiny_bundle_dir)


def test_logit_shapes_follow_the_levels(bundle: Bundle) -> None:
    model = tiny_model(bundle)
    examples, builder = examples_and_builder(bundle, model)
    batch = builder.from_examples(examples, np.arange(5))
    out = model(batch)
    assert [tuple(l.shape) for l in out.logits] == [(5, 3, k) for k in bundle.codebook_sizes]
    assert out.balance_loss.ndim == 0 and out.balance_loss.item() > 0


def test_unequal_histories_are_masked_not_mixed(bundle: Bundle) -> None:
    """A user's memory is the same alone or batched with longer histories (padding is masked)."""
    model = tiny_model(bundle).eval()
    examples, builder = examples_and_builder(bundle, model)
    rows = rows_with_distinct_lengths(examples, 4)
    lengths = examples.history_lengths[rows]
    assert len(set(lengths.tolist())) == 4
    with torch.no_grad():
        memory, mask = model.encode(builder.from_examples(examples, rows))
        assert mask.shape[-1] == 1 + lengths.max()
        assert mask[:, 0, 0].sum(-1).tolist() == (lengths + 1).tolist()
        for i, row in enumerate(rows):
            alone, _ = model.encode(builder.from_examples(examples, np.array([row])))
            n = lengths[i] + 1
            torch.testing.assert_close(memory[i, :n], alone[0, :n], atol=1e-5, rtol=1e-5)


def test_dense_serving_encoder_equals_jagged_training_encoder(bundle: Bundle) -> None:
    model = tiny_model(bundle).eval()
    examples, builder = examples_and_builder(bundle, model)
    rows = rows_with_distinct_lengths(examples, 5)
    generator = SessionGenerator(model, SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes), torch.as_tensor(bundle.codes))
    history, lengths = padded_histories(examples, rows)
    # Extra right padding must not matter either.
    history = torch.nn.functional.pad(history, (0, 7), value=3)
    with torch.no_grad():
        dense, dense_mask = generator.encode(history, lengths, torch.zeros(len(rows), 0, dtype=torch.long))
        jagged, _ = model.encode(builder.from_examples(examples, rows))
    t = jagged.shape[1]
    torch.testing.assert_close(dense[:, :t][dense_mask[:, 0, 0, :t]], jagged[dense_mask[:, 0, 0, :t]], atol=1e-5, rtol=1e-5)


def test_histories_longer_than_max_history_keep_the_most_recent(bundle: Bundle) -> None:
    model = tiny_model(bundle, max_history=4).eval()
    generator = SessionGenerator(model, SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes), torch.as_tensor(bundle.codes))
    long = torch.tensor([[5, 6, 7, 8, 9, 10]])
    recent = torch.tensor([[7, 8, 9, 10]])
    none = torch.zeros(1, 0, dtype=torch.long)
    with torch.no_grad():
        a, _ = generator.encode(long, torch.tensor([6]), none)
        b, _ = generator.encode(recent, torch.tensor([4]), none)
    torch.testing.assert_close(a, b)


def test_ntp_loss_and_session_logprob_by_hand() -> None:
    # One user, m = 1, two levels with 2 and 3 codes; logits chosen so softmaxes are simple.
    logits = [torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[0.0, 0.0, torch.log(torch.tensor(2.0))]]])]
    target = torch.tensor([[[1, 2]]])
    # level 0: p = 1/2; level 1: p = 2/4 = 1/2  → mean CE = ln 2, log p(session) = 2 ln(1/2)
    assert ntp_loss(logits, target).item() == pytest.approx(np.log(2.0))
    assert session_logprob(logits, target).item() == pytest.approx(2 * np.log(0.5))


def test_label_smoothing_by_hand() -> None:
    # One level, 2 codes, p = (1/4, 3/4) and target 1. Smoothing eps spreads eps/2 on each
    # code: CE = -(1 - eps/2) ln(3/4) - (eps/2) ln(1/4); eps = 0.2 → -0.9 ln .75 - 0.1 ln .25.
    logits = [torch.log(torch.tensor([[[0.25, 0.75]]]))]
    target = torch.tensor([[[1]]])
    expected = -0.9 * np.log(0.75) - 0.1 * np.log(0.25)
    assert ntp_loss(logits, target, label_smoothing=0.2).item() == pytest.approx(expected, rel=1e-5)
    assert ntp_loss(logits, target).item() == pytest.approx(-np.log(0.75), rel=1e-5)
