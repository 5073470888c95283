"""Iterative Preference Alignment: pair selection, user sampling, the frozen reference,
and a two-iteration run end to end on the tiny bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from onerec.align import AlignConfig, Aligner, sample_users, select_pairs
from onerec.checkpoint import load_run
from onerec.train import Trainer
from onerec.train_reward import RewardConfig, train_reward
from tests.onerec.helpers import tiny_train_config


def test_chosen_is_the_best_and_rejected_the_worst_existing_session() -> None:
    rewards = torch.tensor([[0.2, 0.9, 0.1, 0.5], [float("-inf"), 0.3, 0.7, 0.4]])
    chosen, rejected = select_pairs(rewards, num_rejected=2)
    assert chosen.tolist() == [1, 2]
    # Worst first; a session that does not exist (-inf) is never a rejected one.
    assert rejected.tolist() == [[2, 0], [1, 3]]


def test_r_dpo_draws_that_share_of_users_reproducibly() -> None:
    a = sample_users(10_000, 0.01, 0, seed=0, iteration=0)
    assert a.size == 100 and np.unique(a).size == 100 and (np.diff(a) > 0).all()
    assert np.array_equal(a, sample_users(10_000, 0.01, 0, seed=0, iteration=0))
    assert not np.array_equal(a, sample_users(10_000, 0.01, 0, seed=0, iteration=1))
    assert sample_users(10_000, 0.01, 256, seed=0, iteration=0).size == 256  # the floor
    assert sample_users(50, 0.5, 256, seed=0, iteration=0).size == 50  # never more than exist


@pytest.mark.parametrize("bad", [{"r_dpo": 0.0}, {"num_rejected": 2}, {"loss": "nope"}, {"num_rejected": 16}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        AlignConfig(**bad)


@pytest.fixture(scope="module")
def trained(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("align")
    Trainer(tiny_train_config(tiny_bundle_dir, root / "ntp", max_steps=30, eval_every=100)).run()
    reward_cfg = RewardConfig(data_dir=str(tiny_bundle_dir), run_dir=str(root / "reward"), show_progress=False)
    reward_cfg.epochs = 1
    train_reward(reward_cfg)
    return root / "ntp", root / "reward"


def test_two_iterations_keep_snapshots_and_a_frozen_previous_reference(
    trained: tuple[Path, Path], tiny_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ntp, reward = trained
    cfg = AlignConfig(
        data_dir=str(tiny_bundle_dir), init_run=str(ntp), reward_run=str(reward), run_dir=str(tmp_path / "ipa"),
        iterations=2, r_dpo=0.2, min_users=16, num_sessions=4, epochs=1, pair_batch_size=8, ntp_batch_size=8,
        eval_users=20, show_progress=False, lr=1e-3,
    )
    aligner = Aligner(cfg)
    seen_references: list[dict[str, torch.Tensor]] = []
    original = Aligner.make_pairs

    def spy(self: Aligner, iteration: int, reference):  # type: ignore[no-untyped-def]
        # The reference of iteration t is M_t: the policy as it stood when t began.
        current = {k: v.clone() for k, v in self.policy.state_dict().items()}
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(value, current[key])
        assert not any(p.requires_grad for p in reference.parameters())
        seen_references.append({k: v.clone() for k, v in reference.state_dict().items()})
        pairs = original(self, iteration, reference)
        spy.reference = reference  # type: ignore[attr-defined]
        return pairs

    monkeypatch.setattr(Aligner, "make_pairs", spy)
    summary = aligner.run()
    assert [r["iteration"] for r in summary["iterations"]] == [1, 2]
    # Training moved the policy but never the frozen reference it was compared against.
    for key, value in spy.reference.state_dict().items():  # type: ignore[attr-defined]
        torch.testing.assert_close(value, seen_references[-1][key])
    # Iteration 2's reference is iteration 1's snapshot, which differs from M_0.
    m1 = load_run(tmp_path / "ipa" / "iter_1").model.state_dict()
    m0 = load_run(tmp_path / "ipa" / "iter_0").model.state_dict()
    assert all(torch.equal(seen_references[1][k], m1[k]) for k in m1)
    assert any(not torch.equal(m0[k], m1[k]) for k in m1)
    record = summary["iterations"][0]
    for key in ("reward_chosen", "reward_rejected", "reward_greedy", "reward_margin", "reward_accuracy", "kl_to_reference", "ntp", "valid_recall@10"):
        assert key in record
    assert record["reward_chosen"] >= record["reward_greedy"] >= record["reward_rejected"]
    # The align folder is a run folder every later stage accepts.
    assert load_run(tmp_path / "ipa").model is not None
    assert (tmp_path / "ipa" / "iter_2" / "done.json").is_file()


def test_resume_skips_finished_iterations(trained: tuple[Path, Path], tiny_bundle_dir: Path, tmp_path: Path) -> None:
    ntp, reward = trained
    base = dict(
        data_dir=str(tiny_bundle_dir), init_run=str(ntp), reward_run=str(reward), run_dir=str(tmp_path / "ipa"),
        r_dpo=0.2, min_users=16, num_sessions=4, epochs=1, pair_batch_size=8, ntp_batch_size=8, eval_users=20,
        show_progress=False,
    )
    Aligner(AlignConfig(iterations=1, **base)).run()
    first = json.loads((tmp_path / "ipa" / "iter_1" / "done.json").read_text())
    with pytest.raises(Exception, match="resume=true"):
        Aligner(AlignConfig(iterations=2, **base)).run()
    summary = Aligner(AlignConfig(iterations=2, resume=True, **base)).run()
    assert summary["iterations"][0] == first
    assert len(summary["iterations"]) == 2
