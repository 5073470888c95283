"""Constrained beam search: the batched search agrees with the plain reference and only
ever emits real, non-repeated items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.bundle import Bundle
from onerec.data import padded_histories
from onerec.generate import SessionGenerator, reference_beam_search
from onerec.modules.attention import key_padding_mask
from onerec.modules.decoder import SessionDecoder
from onerec.modules.moe import MoEArguments
from onerec.trie import SemanticIdTrie
from tests.onerec.helpers import examples_and_builder, tiny_model


@pytest.fixture(scope="module")
def setup(tiny_bundle_dir):
    bundle = Bundle.open(tiny_bundle_dir)
    model = tiny_model(bundle, seed=3).eval()
    trie = SemanticIdTrie.from_codes(bundle.codes, bundle.codebook_sizes)
    generator = SessionGenerator(model, trie, torch.as_tensor(bundle.codes))
    examples, _ = examples_and_builder(bundle, model, "test")
    return bundle, model, trie, generator, examples


def _generate(generator, examples, rows, m, beam, **kwargs):
    history, lengths = padded_histories(examples, rows)
    with torch.no_grad():
        return generator.generate(history, lengths, torch.zeros(len(rows), 0, dtype=torch.long), m, beam, **kwargs)


@pytest.mark.parametrize("m,beam", [(1, 6), (2, 4), (3, 3)])
def test_batched_search_equals_reference(setup, m: int, beam: int) -> None:
    bundle, model, trie, generator, examples = setup
    rows = np.arange(3)
    items, scores = _generate(generator, examples, rows, m, beam)
    history, lengths = padded_histories(examples, rows)
    for i in range(len(rows)):
        reference = reference_beam_search(model, trie, torch.as_tensor(bundle.codes), history[i, : lengths[i]].tolist(), m, beam)
        assert [r[1] for r in reference] == items[i].tolist()
        np.testing.assert_allclose([r[0] for r in reference], scores[i].numpy(), rtol=1e-4, atol=1e-4)


def test_every_item_is_legal_and_sessions_do_not_repeat(setup) -> None:
    bundle, _, _, generator, examples = setup
    items, scores = _generate(generator, examples, np.arange(20), 3, 8)
    assert torch.isfinite(scores).all()
    assert ((items >= 0) & (items < bundle.num_items)).all()
    for session in items.view(-1, 3).tolist():
        assert len(set(session)) == 3
    # Beams come sorted best first.
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_exclusions_are_never_emitted(setup) -> None:
    bundle, _, _, generator, examples = setup
    rows = np.arange(4)
    first, _ = _generate(generator, examples, rows, 1, 5)
    exclude = first[:, :, 0]  # (B, 5): ban every item the first search returned
    again, scores = _generate(generator, examples, rows, 1, 5, exclude=exclude)
    assert torch.isfinite(scores).all()
    assert not (again[:, :, 0, None] == exclude[:, None, :]).any()


def test_beams_survive_when_sessions_exhaust_narrow_prefixes(setup) -> None:
    """Long sessions with a beam wider than most prefixes' item counts: the search must not
    walk into prefixes whose items are all used, or beams die and users get no session."""
    bundle, _, _, generator, examples = setup
    items, scores = _generate(generator, examples, np.arange(16), 3, 24)
    assert torch.isfinite(scores).all()
    assert (items >= 0).all()


@pytest.mark.parametrize("extra", [0, 7])
def test_a_beam_wider_than_the_catalogue_returns_every_item_once(setup, extra: int) -> None:
    """More beams than legal sessions: the surplus beams hold dead slots (score -inf, item
    -1). Slots past a trie node's own children read the next level's edges, whose codes
    and targets are out of this level's range; the search must blank them, not index with them."""
    bundle, _, _, generator, examples = setup
    beam = bundle.num_items + extra
    rows = np.arange(20)
    items, scores = _generate(generator, examples, rows, 1, beam)
    for row in rows:
        live = torch.isfinite(scores[row])
        assert int(live.sum()) == bundle.num_items
        assert sorted(items[row, live, 0].tolist()) == list(range(bundle.num_items))
        assert (items[row, ~live] == -1).all()
    # Exclusions shrink the live set by exactly the excluded items.
    exclude = torch.tensor([[0, 5, -1], [1, 2, 3], [-1, -1, -1]])
    items, scores = _generate(generator, examples, np.arange(3), 1, beam, exclude=exclude)
    assert torch.isfinite(scores).sum(1).tolist() == [bundle.num_items - 2, bundle.num_items - 3, bundle.num_items]


def test_unconstrained_search_can_emit_illegal_tuples(setup) -> None:
    """The trie is what guarantees legality: without it, an untrained model emits code
    tuples that are no item (marked -1)."""
    bundle, _, _, generator, examples = setup
    items, _ = _generate(generator, examples, np.arange(10), 1, 10, constrained=False)
    assert (items == -1).any()
    legal = items[items >= 0]
    assert (legal < bundle.num_items).all()


def test_item_lookup_from_codes(setup) -> None:
    bundle, _, _, generator, _ = setup
    codes = torch.as_tensor(bundle.codes)
    assert generator.item_of_codes(codes).tolist() == list(range(bundle.num_items))
    bogus = codes[:1].clone()
    bogus[0, -1] = bundle.codebook_sizes[-1] - 1 + 0  # may or may not exist: check against the table
    exists = any((codes == bogus[0]).all(1).tolist())
    assert (generator.item_of_codes(bogus).item() >= 0) == exists


@pytest.mark.parametrize("broadcast_cached", [False, True])
def test_decoder_step_reproduces_the_teacher_forced_pass(setup, broadcast_cached: bool) -> None:
    """Stepping with a KV cache gives the teacher-forced outputs, with the self-attention on
    SDPA or as the broadcast product the AOTInductor programs compile."""
    bundle, model, _, generator, examples = setup
    _, builder = examples_and_builder(bundle, model, "test")
    batch = builder.from_examples(examples, np.arange(2))
    for layer in model.decoder.layers:
        layer.self_attn.broadcast_cached = broadcast_cached
    try:
        _check_steps(model, batch)
    finally:
        for layer in model.decoder.layers:
            layer.self_attn.broadcast_cached = False


def _check_steps(model, batch) -> None:
    with torch.no_grad():
        memory, mask = model.encode(batch)
        d = model.config.d_model
        codes = torch.stack([model.embeddings.table(f"code_{l}")(batch.target_codes[:, :, l]) for l in range(model.num_levels)], 2)
        x = model.session_inputs(codes)
        full, _ = model.decoder(x, memory, mask)
        keys, values = model.decoder.empty_cache(2, torch.device("cpu"), torch.float32)
        mk, mv = model.decoder.memory_kv(memory)
        steps = []
        # One token, then two at once (the generator's last-code + BOS step), then the rest.
        bounds = [0, 1, 3] + list(range(4, x.shape[1] + 1))
        for start, end in zip(bounds[:-1], bounds[1:]):
            h, keys, values = model.decoder.step(x[:, start:end], keys, values, mk, mv, mask)
            steps.append(h)
    assert [s.shape[1] for s in steps[:2]] == [1, 2]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert d == full.shape[-1]
    # last_only (what the search runs): each step's last token alone, same values, same caches.
    with torch.no_grad():
        keys_last, values_last = model.decoder.empty_cache(2, torch.device("cpu"), torch.float32)
        for start, end in zip(bounds[:-1], bounds[1:]):
            h, keys_last, values_last = model.decoder.step(x[:, start:end], keys_last, values_last, mk, mv, mask, 1, True)
            assert h.shape[1] == 1
            torch.testing.assert_close(h[:, 0], full[:, end - 1], atol=1e-5, rtol=1e-5)
    for a, b in zip(keys_last + values_last, keys + values):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_beams_share_the_memory_of_their_user() -> None:
    """Two users × three beams over unrepeated memory = the same six rows with the memory repeated."""
    torch.manual_seed(0)
    decoder = SessionDecoder(16, 2, 2, MoEArguments(hidden_size=16, ffn_hidden_size=8, moe_num_experts=2, moe_top_k=1), 0.0).eval()
    beams, users = 3, 2
    memory = torch.randn(users, 5, 16)
    mask = key_padding_mask(torch.tensor([5, 2]), 5)  # the second user has 2 real keys
    x = torch.randn(users * beams, 2, 16)
    with torch.no_grad():
        mk, mv = decoder.memory_kv(memory)
        keys, values = decoder.empty_cache(users * beams, torch.device("cpu"), torch.float32)
        shared, _, _ = decoder.step(x, keys, values, mk, mv, mask, beams)
        rk = [m.repeat_interleave(beams, 0) for m in mk]
        rv = [m.repeat_interleave(beams, 0) for m in mv]
        repeated, _, _ = decoder.step(x, keys, values, rk, rv, mask.repeat_interleave(beams, 0), 1)
    torch.testing.assert_close(shared, repeated, atol=1e-6, rtol=1e-6)
    # and the memory mask matters: the second user's padded keys are not read
    with torch.no_grad():
        unmasked, _, _ = decoder.step(x, keys, values, mk, mv, torch.ones_like(mask), beams)
    assert torch.allclose(unmasked[:beams], shared[:beams], atol=1e-6)
    assert not torch.allclose(unmasked[beams:], shared[beams:], atol=1e-4)


def test_decoder_step_continues_the_cache_rows_it_is_given() -> None:
    """``cache_rows`` (a beam search's reorder, done inside the next step) is the same as
    reordering the caches first: here two of three sequences continue row 2, one row 0."""
    torch.manual_seed(0)
    decoder = SessionDecoder(16, 2, 2, MoEArguments(hidden_size=16, ffn_hidden_size=8, moe_num_experts=2, moe_top_k=1), 0.0).eval()
    memory = torch.randn(3, 5, 16)
    mask = key_padding_mask(torch.tensor([5, 4, 3]), 5)
    with torch.no_grad():
        mk, mv = decoder.memory_kv(memory)
        keys, values = decoder.empty_cache(3, torch.device("cpu"), torch.float32)
        _, keys, values = decoder.step(torch.randn(3, 2, 16), keys, values, mk, mv, mask)
        rows = torch.tensor([2, 0, 2])
        x = torch.randn(3, 1, 16)
        inside, keys_inside, values_inside = decoder.step(x, keys, values, mk, mv, mask, 1, False, rows)
        first = ([k.index_select(0, rows) for k in keys], [v.index_select(0, rows) for v in values])
        outside, keys_outside, values_outside = decoder.step(x, first[0], first[1], mk, mv, mask)
    torch.testing.assert_close(inside, outside)
    for a, b in zip(keys_inside + values_inside, keys_outside + values_outside):
        assert a.shape == (3, 2, 3, 8)
        torch.testing.assert_close(a, b)
    assert not torch.allclose(inside[0], inside[1])  # rows 2 and 0 really differ
