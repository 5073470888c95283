"""Simulators: the ground truth by hand, the learned one's fit, determinism and files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.stats import norm

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from data_pipeline.ground_truth import GroundTruth, ResponseCoefficients
from onerec.simulators import (
    GroundTruthSimulator,
    LearnedSimulatorConfig,
    load_learned_simulator,
    logged_events,
    make_simulator,
    train_learned_simulator,
)
from onerec.train_reward import UserHistories
from onerec.user_split import UserSplitConfig, sessions_for


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + np.exp(-x))


def test_ground_truth_simulator_by_hand() -> None:
    c = ResponseCoefficients()  # affinity_scale 3, watch_affinity 1.2, duration_slope 0.5, watch_bias -0.2, noise 1
    truth = GroundTruth(
        user_vec=np.array([[1.0, 0.0], [0.0, 1.0]]),
        item_vec=np.array([[0.5, 0.0], [0.0, 0.0]]),
        item_quality=np.array([0.0, 0.2]),
        duration_ms=np.array([60_000.0, 120_000.0]),
        coefficients=c,
    )
    # Affinities: a(0,0) = 3 * 0.5 = 1.5, a(0,1) = a(1,1) = 0.2 (quality), a(1,0) = 0.
    # Watch logits: item 0 is 60 s (the mean log-duration): z = 1.2 a - 0.2;
    # item 1 is twice as long: z = 1.2 a - 0.5 ln 2 - 0.2.
    z = {(0, 0): 1.6, (0, 1): 0.24 - 0.5 * np.log(2) - 0.2, (1, 1): 0.24 - 0.5 * np.log(2) - 0.2}
    a = {(0, 0): 1.5, (0, 1): 0.2, (1, 1): 0.2}

    def expected_ratio(logit: float) -> float:  # E[sigmoid(z + eps)], eps ~ N(0, 1)
        return quad(lambda e: sigmoid(logit + e) * norm.pdf(e), -12, 12)[0]

    watch = {k: truth.duration_ms[k[1]] * expected_ratio(v) for k, v in z.items()}
    sim = GroundTruthSimulator(truth, vtr_ratio=0.7)
    r = sim.score(np.array([0, 1]), None, None, np.array([[0, 1], [1, -1]]))
    assert r.watch_ms == pytest.approx(np.array([[watch[0, 0], watch[0, 1]], [watch[1, 1], 0.0]]), rel=1e-6)
    assert r.swt == pytest.approx([watch[0, 0] + watch[0, 1], watch[1, 1]], rel=1e-6)
    assert r.like == pytest.approx(np.array([[sigmoid(-3.5 + a[0, 0]), sigmoid(-3.5 + a[0, 1])], [sigmoid(-3.5 + a[1, 1]), 0.0]]))
    assert r.follow[0, 0] == pytest.approx(sigmoid(-5.5 + 1.5))
    # P(sigmoid(z + eps) >= 0.7) = P(eps >= logit(0.7) - z).
    threshold = np.log(0.7 / 0.3)
    assert r.view_through[0] == pytest.approx([norm.sf(threshold - z[0, 0]), norm.sf(threshold - z[0, 1])])
    assert r.vtr[1] == pytest.approx(norm.sf(threshold - z[1, 1]))  # the empty slot is not averaged in
    # The same numbers as GroundTruth's own methods.
    assert r.swt == pytest.approx(truth.session_watch_ms(np.array([0, 1]), np.array([[0, 1], [1, 1]])) - [0, watch[1, 1]], rel=1e-9)
    # Tensors are accepted.
    again = sim.score(torch.tensor([0, 1]), None, None, torch.tensor([[0, 1], [1, -1]]))
    assert np.array_equal(again.watch_ms, r.watch_ms)


def small_simulator_config(seed: int = 1, **overrides: object) -> LearnedSimulatorConfig:
    base = dict(dim=16, pool_queries=2, hidden=32, max_history=16, duration_buckets=8, epochs=2, batch_size=256, threads=1, show_progress=False, device="cpu")
    return LearnedSimulatorConfig(seed=seed, **{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def learned(tiny_bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("simulator")
    sim = train_learned_simulator(Bundle.open(tiny_bundle_dir), small_simulator_config(epochs=4), out)
    return out, sim


def test_learned_simulator_fits_held_out_logs(learned: tuple[Path, object]) -> None:
    _, sim = learned
    fit = sim.metrics["holdout"]  # type: ignore[attr-defined]
    assert fit["events"] > 0 and fit["users"] > 0
    assert fit["watch_ms_vs_observed"]["spearman"] > 0.5
    assert fit["truth"]["watch_ms"]["spearman"] > 0.6
    assert fit["view_through_auc"] > 0.6
    assert {"like_auc", "follow_auc", "watch_ratio_log_loss"} <= set(fit)


def test_learned_simulator_round_trip(learned: tuple[Path, object], tiny_bundle_dir: Path) -> None:
    out, sim = learned
    loaded = load_learned_simulator(out)
    assert (out / "metrics.json").is_file() and (out / "config.yaml").is_file()
    assert loaded.metrics == sim.metrics  # type: ignore[attr-defined]
    bundle = Bundle.open(tiny_bundle_dir)
    users = np.array([0, 5, 9])
    history, lengths = UserHistories(bundle.positives(), bundle.num_users).padded(users, np.array([10, 0, 3]), 16)
    sessions = np.array([[1, 2, 3], [4, -1, 6], [7, 8, 9]])
    a = sim.score(users, history, lengths, sessions)  # type: ignore[attr-defined]
    b = loaded.score(users, history, lengths, sessions)
    for field in ("watch_ms", "view_through", "like", "follow"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert a.watch_ms[1, 1] == 0 and a.swt[1] == a.watch_ms[1].sum()
    assert (a.watch_ms[a.real] > 0).all() and ((a.like >= 0) & (a.like <= 1)).all()
    assert make_simulator("learned", bundle, out).net.state_dict().keys() == loaded.net.state_dict().keys()
    with pytest.raises(UserError, match="user split"):  # a simulator fitted on another split is not reused
        make_simulator("learned", bundle, out, small_simulator_config(split=UserSplitConfig(salt="other")))


def test_learned_simulator_is_deterministic_with_a_seed(tiny_bundle_dir: Path) -> None:
    bundle = Bundle.open(tiny_bundle_dir)
    one = train_learned_simulator(bundle, small_simulator_config(seed=3, epochs=1))
    two = train_learned_simulator(bundle, small_simulator_config(seed=3, epochs=1))
    other = train_learned_simulator(bundle, small_simulator_config(seed=4, epochs=1))
    for key, value in one.net.state_dict().items():
        assert torch.equal(value, two.net.state_dict()[key]), key
    assert one.metrics["holdout"] == two.metrics["holdout"]
    assert not torch.equal(one.net.mlp[0].weight, other.net.mlp[0].weight)


def test_simulator_events_come_from_the_simulator_group_only(tiny_bundle_dir: Path) -> None:
    sessions = Bundle.open(tiny_bundle_dir).sessions()
    cfg = UserSplitConfig()
    train = logged_events(sessions_for(sessions, "simulator_train", cfg), 0.7)
    reward_side = set(sessions_for(sessions, "reward_train", cfg)["user_idx"].to_list()) | set(
        sessions_for(sessions, "reward_holdout", cfg)["user_idx"].to_list()
    )
    assert len(train) > 0 and not set(train.users.tolist()) & reward_side
    # labels: watch ratio clipped to [0, 1], view-through 0/1, like/follow 0/1
    ratio = train.labels[:, 0][~np.isnan(train.labels[:, 0])]
    assert ((ratio >= 0) & (ratio <= 1)).all()
    assert set(np.unique(train.labels[:, 2])) <= {0.0, 1.0}


def test_make_simulator_needs_ground_truth_for_ground_truth(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    assert isinstance(make_simulator("ground_truth", Bundle.open(tiny_bundle_dir)), GroundTruthSimulator)
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, copy)
    (copy / "ground_truth.npz").unlink()
    with pytest.raises(UserError, match="ground truth"):
        make_simulator("ground_truth", Bundle.open(copy))
    with pytest.raises(UserError, match="expected one of"):
        make_simulator("oracle", Bundle.open(copy))
