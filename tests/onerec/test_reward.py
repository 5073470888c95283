"""The reward model: labels by hand, the user split, learning a planted signal, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipeline.bundle import Bundle
from data_pipeline.cli import CONF_DIR, UserError
from onerec.reward import (
    RewardModel,
    RewardModelConfig,
    available_towers,
    history_tail,
    load_reward_model,
    percentile_labels,
    session_labels,
)
from onerec.train_reward import (
    ProxyNegatives,
    RewardConfig,
    SessionSet,
    UserHistories,
    binary_auc,
    log_loss,
    session_windows,
    train_reward,
)
from onerec.user_split import GROUPS, UserSplitConfig, before_evaluation, group_masks, sessions_for


def hand_sessions() -> pl.DataFrame:
    """Three sessions as the bundle writes them."""
    return pl.DataFrame(
        {
            "session_idx": [0, 1, 2],
            "user_idx": [0, 0, 1],
            "start_ms": [0, 10, 0],
            "num_events": [3, 2, 2],
            "positives_before": [4, 6, 0],
            "total_watch_time_ms": [135.0, 80.0, 30.0],
            "items": [[1, 2, 3], [4, 5], [6, 7]],
            "watch_time_ms": [[30.0, 100.0, 5.0], [80.0, 0.0], [10.0, 20.0]],
            "duration_ms": [[100.0, 100.0, 10.0], [100.0, 0.0], [100.0, 50.0]],
            "like": [[0, 1, 0], [0, 0], [0, 0]],
            "follow": [[0, 0, 1], [1, 0], [0, 0]],
            "positive": [[True, False, True], [True, False], [False, False]],
        },
        schema_overrides={"like": pl.List(pl.Int8), "follow": pl.List(pl.Int8)},
    )


def test_session_labels_by_hand() -> None:
    sessions = hand_sessions()
    assert available_towers(sessions) == ["swt", "vtr", "wtr", "ltr"]
    labels = session_labels(sessions, m=2, vtr_ratio=0.7)
    # Session 0, first 2 events: watched 30 + 100; 30/100 < 0.7, 100/100 >= 0.7; like at 2; the follow is event 3.
    # Session 1: 80/100 >= 0.7, the second item has no duration (left out); a follow.
    # Session 2: 10/100 and 20/50 both below 0.7.
    assert labels["swt_ms"].to_list() == [130.0, 80.0, 30.0]
    assert labels["vtr"].to_list() == [0.5, 1.0, 0.0]
    assert labels["wtr"].to_list() == [0.0, 1.0, 0.0]
    assert labels["ltr"].to_list() == [1.0, 0.0, 0.0]
    # m = 3: session 0's third event (5 of 10 ms, a follow) now counts.
    three = session_labels(sessions, m=3, vtr_ratio=0.5)
    assert three["swt_ms"][0] == 135.0 and three["vtr"][0] == pytest.approx(2 / 3) and three["wtr"][0] == 1.0
    # swt percentile among the training totals [130, 80, 30]: (#less + #equal / 2) / 3.
    assert percentile_labels(np.array([130.0, 80.0, 30.0, 100.0, 0.0]), np.array([130.0, 80.0, 30.0])) == pytest.approx(
        [2.5 / 3, 1.5 / 3, 0.5 / 3, 2 / 3, 0.0]
    )


def test_logs_without_responses_have_no_towers() -> None:
    bare = hand_sessions().select("session_idx", "user_idx", "items", "positive")
    assert available_towers(bare) == []
    assert session_labels(hand_sessions(), 2, 0.7)["swt_ms"].to_list() == [130.0, 80.0, 30.0]


def test_session_windows_shift_the_history_end() -> None:
    windows = session_windows(hand_sessions(), m=1, max_windows=0)
    first = windows.filter(pl.col("session_idx") == 0).sort("window")
    assert first["items"].to_list() == [[1], [2], [3]]
    assert first["positives_before"].to_list() == [4, 5, 5]  # events 1 and 3 are positive
    assert session_windows(hand_sessions(), m=2, max_windows=1).height == 3
    assert session_windows(hand_sessions(), m=3, max_windows=0)["session_idx"].to_list() == [0]


def test_histories_are_the_last_n_positives_before_the_session() -> None:
    positives = pl.DataFrame({"user_idx": [1, 0], "items": [[7, 8, 9], [1, 2, 3, 4, 5]]})
    histories = UserHistories(positives, num_users=3)
    history, lengths = histories.padded(np.array([0, 1, 2, 0]), np.array([4, 3, 0, 1]), n=2)
    assert history.tolist() == [[3, 4], [8, 9], [0, 0], [1, 0]]
    assert lengths.tolist() == [2, 2, 0, 1]
    tail, tail_lengths = history_tail(torch.tensor([[1, 2, 3, 0], [5, 0, 0, 0]]), torch.tensor([3, 1]), 2)
    assert tail.tolist() == [[2, 3], [5, 0]] and tail_lengths.tolist() == [2, 1]


def test_proxy_negatives_replace_r_slots_and_label_the_real_share() -> None:
    popularity = np.zeros(100)
    popularity[99] = 1e9  # every negative is item 99
    real = SessionSet(np.arange(50), np.zeros(50, np.int64), np.arange(150).reshape(50, 3) % 90, {}, np.full(50, np.nan))
    out = ProxyNegatives(popularity, power=1.0, negatives=2).expand(real, np.random.default_rng(0))
    assert len(out) == 150
    assert (out.labels["vtr"][:50] == 1).all()
    replaced = (out.items[50:] == 99).sum(1)
    assert ((replaced >= 1) & (replaced <= 3)).all()
    assert out.labels["vtr"][50:] == pytest.approx((3 - replaced) / 3)


def test_auc_and_log_loss_by_hand() -> None:
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered.
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert binary_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert binary_auc(np.array([0.5, 0.6]), np.array([1, 1])) is None
    assert log_loss(np.array([0.5, 0.8]), np.array([1.0, 0.5])) == pytest.approx(
        -(np.log(0.5) + 0.5 * np.log(0.8) + 0.5 * np.log(0.2)) / 2
    )


def test_user_groups_are_disjoint_stable_and_salted() -> None:
    users = np.arange(20_000)
    cfg = UserSplitConfig(reward_share=0.5, holdout_share=0.1)
    masks = group_masks(users, cfg)
    stacked = np.stack([masks[g] for g in GROUPS])
    assert (stacked.sum(0) == 1).all()  # every user in exactly one group
    assert not (masks["reward"] & masks["simulator"]).any()
    assert masks["reward"].mean() == pytest.approx(0.5, abs=0.02)
    assert masks["reward_holdout"].mean() == pytest.approx(0.05, abs=0.01)
    again = group_masks(users[::-1].copy(), cfg)["reward"][::-1]
    assert (again == masks["reward"]).all()  # a pure function of the user
    other = group_masks(users, UserSplitConfig(salt="another"))["reward"]
    assert 0.4 < (other == masks["reward"]).mean() < 0.6


def test_reward_and_simulator_training_sessions_share_no_user(tiny_bundle_dir: Path) -> None:
    from onerec.simulators import logged_events

    sessions = Bundle.open(tiny_bundle_dir).sessions()
    cfg = UserSplitConfig()
    reward_users = set(session_windows(sessions_for(sessions, "reward_train", cfg), 3, 0)["user_idx"].to_list())
    simulator_users = set(logged_events(sessions_for(sessions, "simulator_train", cfg), 0.7).users.tolist())
    holdout_users = {g: set(sessions_for(sessions, g, cfg)["user_idx"].to_list()) for g in ("reward_holdout", "simulator_holdout")}
    assert reward_users and simulator_users and all(holdout_users.values())
    assert not reward_users & simulator_users
    assert not (reward_users | simulator_users) & (holdout_users["reward_holdout"] | holdout_users["simulator_holdout"])
    # Training sessions end before the user's first validation/test target.
    train = sessions_for(sessions, "reward_train", cfg)
    assert train.filter(pl.col("split").is_in(["valid", "test"])).height == 0
    assert before_evaluation(train).all()


def test_reward_model_shapes_masks_and_the_shared_history_path() -> None:
    torch.manual_seed(0)
    model = RewardModel(RewardModelConfig(dim=16, num_heads=2, pool_queries=2, max_history=4, duration_buckets=0, pretrained_items=False), 50, ["swt", "ltr"], {"swt": 1.0, "ltr": 0.5}).eval()
    history = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([6, 1, 0])
    sessions = torch.randint(0, 50, (6, 3))
    sessions[5] = -1  # an empty session
    sessions[4, 2] = -1
    probs = model(history.repeat_interleave(2, 0), lengths.repeat_interleave(2, 0), sessions)
    assert set(probs) == {"swt", "ltr"} and probs["swt"].shape == (6,)
    assert all(torch.isfinite(p).all() for p in probs.values())
    expected = probs["swt"] + 0.5 * probs["ltr"]
    assert torch.allclose(model.reward(history.repeat_interleave(2, 0), lengths.repeat_interleave(2, 0), sessions), expected, atol=1e-6)
    # One history row per user and k sessions each gives the same rewards, also in small chunks.
    assert torch.allclose(model.reward(history, lengths, sessions, batch_size=2), expected, atol=1e-6)
    # Only the last max_history=4 items count; padding values do not matter.
    noisy = history.clone()
    noisy[0, :2] = 9
    noisy[1, 1:] = 11
    assert torch.allclose(model.reward(noisy, lengths, sessions), expected, atol=1e-6)
    # -1 slots are ignored: session 4 equals the same 2 items alone.
    assert torch.allclose(model(history[2:3], lengths[2:3], sessions[4:5, :2])["swt"], probs["swt"][4:5], atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        model.reward(history[:2], lengths[:2], sessions[:5])


def small_reward_config(bundle_dir: Path, run_dir: Path, **overrides: object) -> RewardConfig:
    cfg = RewardConfig(data_dir=str(bundle_dir), run_dir=str(run_dir), epochs=5, batch_size=64, lr=5e-3, threads=1, show_progress=False, eval_candidates=8)
    cfg.model = RewardModelConfig(dim=32, num_heads=2, pool_queries=2, max_history=32, duration_buckets=8)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_reward_model_learns_the_planted_signal_and_round_trips(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    cfg = small_reward_config(tiny_bundle_dir, tmp_path / "reward")
    model, metrics = train_reward(cfg)
    assert metrics["label_mode"] == "logged" and metrics["towers_trained"][:2] == ["swt", "vtr"]
    assert metrics["towers"]["swt"]["auc"] > 0.7
    assert metrics["towers"]["vtr"]["auc"] > 0.6
    assert metrics["swt_spearman_truth"] > 0.4
    assert metrics["candidates"]["best_beats_worst"] > 0.8
    on_disk = json.loads((tmp_path / "reward" / "metrics.json").read_text())
    assert on_disk["towers"]["swt"]["auc"] == pytest.approx(metrics["towers"]["swt"]["auc"])
    assert (tmp_path / "reward" / "config.yaml").is_file() and (tmp_path / "reward" / "metrics.jsonl").is_file()

    loaded = load_reward_model(tmp_path / "reward")
    history, lengths = torch.randint(0, 300, (4, 10)), torch.tensor([10, 3, 0, 7])
    sessions = torch.randint(0, 300, (8, 3))
    assert torch.equal(loaded.reward(history, lengths, sessions), model.reward(history, lengths, sessions))
    assert loaded.weights == model.weights


def test_proxy_labels_train_without_watch_time(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    cfg = small_reward_config(tiny_bundle_dir, tmp_path / "proxy", epochs=3, session_windows=1)
    cfg.labels.mode = "proxy"
    cfg.labels.proxy_negatives = 1
    cfg.eval_candidates = 0
    _, metrics = train_reward(cfg)
    assert metrics["towers_trained"] == ["vtr"]
    assert metrics["towers"]["vtr"]["auc"] > 0.6  # real sessions against popularity-corrupted ones


def test_reward_config_composes(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    from onerec.stages import register

    register("reward")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        node = compose(config_name="reward", overrides=[f"data_dir={tiny_bundle_dir}", f"run_dir={tmp_path}", "labels.vtr_ratio=0.5"])
    cfg: RewardConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    assert isinstance(cfg, RewardConfig) and cfg.labels.vtr_ratio == 0.5 and cfg.weights["swt"] == 1.0
    bad = small_reward_config(tiny_bundle_dir, tmp_path, session_items=50)
    with pytest.raises(UserError, match="session_items"):
        train_reward(bad)
