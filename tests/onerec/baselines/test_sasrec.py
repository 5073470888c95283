"""SASRec: causality, padding invariance, training windows, learning a toy task, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pytest
import torch

from data_pipeline.bundle import Bundle
from onerec.baselines import SASRec, SASRecConfig, load_sasrec, run_baselines, sasrec_rankings, train_sasrec
from onerec.baselines.sasrec import left_pad, rank_next, sequence_loss, train_epoch, training_sequences
from onerec.data import ExampleSet

@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and far slower on a CPU shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = SASRecConfig(max_len=12, hidden=32, layers=2, heads=2, inner=64, hidden_dropout=0.0, attn_dropout=0.0)


def tiny_model(num_items: int = 30, **overrides: object) -> SASRec:
    torch.manual_seed(0)
    return SASRec(num_items, SASRecConfig(**{**TINY.__dict__, **overrides})).eval()


def test_output_at_t_ignores_later_items() -> None:
    model = tiny_model()
    tokens = torch.randint(1, 31, (3, 10))
    changed = tokens.clone()
    changed[:, 6:] = torch.randint(1, 31, (3, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :6], model(changed)[:, :6])


def test_left_padding_changes_nothing() -> None:
    model = tiny_model()
    items = torch.tensor([[4, 17, 9, 23]])
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), items], dim=1)
    batch = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 8, 2], [0, 0, 0, 0, 0, 4, 17, 9, 23]])  # two lengths together
    with torch.no_grad():
        alone = model(items)
        torch.testing.assert_close(model(padded)[:, -4:], alone)
        torch.testing.assert_close(model(batch)[1, -1], alone[0, -1])
        assert torch.isfinite(model(batch)).all()  # padding rows do not turn into NaN


def test_left_pad_keeps_the_most_recent_items() -> None:
    padded = left_pad(np.array([5, 6, 7, 1, 2, 3, 4]), np.array([3, 4]), width=3)
    assert padded.tolist() == [[6, 7, 8], [3, 4, 5]]  # tokens are item + 1


def test_training_windows_tile_each_sequence() -> None:
    # One user with items 0..6; histories cut to 3 items like a bundle with history_length=3.
    seq = list(range(7))
    train = pl.DataFrame(
        {
            "user_idx": [0] * 6,
            "session_idx": list(range(1, 7)),
            "history": [seq[max(0, j + 1 - 3) : j + 1] for j in range(6)],
            "target": [[seq[j + 1]] for j in range(6)],
        }
    )
    windows = training_sequences(train, max_len=3, history_length=3) - 1  # back to items, -1 = pad
    targets = sorted(int(t) for w in windows for t, prev in zip(w[1:], w[:-1]) if t >= 0 and prev >= 0)
    assert targets == seq[1:]  # every transition once
    assert windows.shape == (2, 4)


def test_learns_a_deterministic_next_item_rule() -> None:
    num_items, rng = 20, np.random.default_rng(0)
    successor = rng.permutation(num_items)  # next item = successor[current]

    def chains(count: int, length: int) -> np.ndarray:
        out = np.empty((count, length), dtype=np.int64)
        out[:, 0] = rng.integers(0, num_items, count)
        for t in range(1, length):
            out[:, t] = successor[out[:, t - 1]]
        return out

    lengths = rng.integers(2, 10, 512)
    flat = chains(512, 9)
    sequences = left_pad(np.concatenate([row[:n] for row, n in zip(flat, lengths)]), lengths, 10)
    model = tiny_model(num_items, max_len=9, hidden_dropout=0.1, attn_dropout=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        before = float(sequence_loss(model.eval(), torch.from_numpy(sequences)))
    for epoch in range(15):
        train_epoch(model, optimizer, sequences, 64, seed=0, epoch=epoch)
    with torch.no_grad():
        after = float(sequence_loss(model.eval(), torch.from_numpy(sequences)))
    assert after < 0.2 * before, (before, after)

    history = chains(200, 5)
    items, _ = rank_next(model.eval(), torch.from_numpy(history + 1), top_k=1)
    recall_at_1 = float((items[:, 0].numpy() == successor[history[:, -1]]).mean())
    assert recall_at_1 > 0.95


def test_train_save_load_and_score(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(tiny_bundle_dir)
    cfg = SASRecConfig(**{**TINY.__dict__, "max_len": 16, "max_epochs": 2, "batch_size": 64})
    path = train_sasrec(bundle, tmp_path, cfg)
    again = train_sasrec(bundle, tmp_path / "again", cfg)
    model, same_seed = load_sasrec(path, bundle), load_sasrec(again.parent)
    for (name, a), b in zip(model.state_dict().items(), same_seed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"training is not deterministic: {name}")

    examples = ExampleSet(bundle.split("test"), cfg.max_len, bundle.target_items)
    rankings = sasrec_rankings(model, examples, top_k=10, limit=30)
    assert rankings.items.shape == (30, 10)
    assert ((rankings.items >= 0) & (rankings.items < bundle.num_items)).all()
    assert all(len(set(row)) == 10 for row in rankings.items.tolist())
    assert (np.diff(rankings.scores, axis=1) <= 0).all()

    results = run_baselines(bundle, "test", ["popularity", "sasrec"], tmp_path, limit=30, sasrec_config=cfg)
    assert set(results) == {"popularity", "sasrec"} and results["sasrec"]["users"] == 30


def test_checkpoint_from_other_data_is_refused(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = Bundle.open(tiny_bundle_dir)
    model = tiny_model(bundle.num_items + 1)
    torch.save(
        {"config": TINY.__dict__, "num_items": model.num_items, "bundle": "x", "state_dict": model.state_dict()},
        tmp_path / "sasrec.pt",
    )
    with pytest.raises(ValueError, match="another bundle"):
        load_sasrec(tmp_path, bundle)


def test_last_only_scores_the_final_position() -> None:
    model = tiny_model()
    sequences = torch.tensor([[0, 0, 3, 7, 9], [2, 5, 1, 4, 8]])
    with torch.no_grad():
        hidden = model(sequences[:, :-1])[:, -1]  # (2, D)
        expected = torch.nn.functional.cross_entropy(model.logits(hidden), sequences[:, -1] - 1)
        torch.testing.assert_close(sequence_loss(model, sequences, last_only=True), expected)
