"""Which users' logs each learned model may see: the reward model never grades itself.

The reward model steers IPA; the learned simulator scores the result. If both learned
from the same users they would share the same mistakes, and the simulator would reward
the aligned model for exploiting them. So users are split by a salted hash of
``user_idx`` into four disjoint groups::

    unit u = hash(salt, user_idx) in [0, 1)

    [0 ............ a*(1-h))[a*(1-h) .. a)[a ......... a+(1-a)*(1-h))[ ... 1)
         reward_train         reward_holdout    simulator_train      simulator_holdout

with ``a = reward_share`` and ``h = holdout_share``. A model trains on its ``*_train``
users' sessions that start before the user's first validation/test target (the same
cut-off the data pipeline uses for item embeddings, so neither model sees the period that
offline evaluation generates for), and reports its fit on its ``*_holdout`` users, whom it
never saw. The assignment is a pure function of (salt, user_idx): no state to keep.

Example::

    split = UserSplitConfig()
    masks = group_masks(np.arange(5), split)     # {"reward_train": [True, False, ...], ...}
    train = sessions_for(bundle.sessions(), "reward_train", split)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from data_pipeline.sessions import training_cutoff

GROUPS = ("reward_train", "reward_holdout", "simulator_train", "simulator_holdout")


@dataclass
class UserSplitConfig:
    """Attributes:
        salt: any string; another salt gives another (equally valid) split.
        reward_share: share of users whose logs belong to the reward model.
        holdout_share: share of each side's users kept for evaluating its model.
    """

    salt: str = "onerec-user-split"
    reward_share: float = 0.5
    holdout_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.reward_share < 1.0:
            raise ValueError(f"split.reward_share must be in (0, 1), got {self.reward_share}")
        if not 0.0 < self.holdout_share < 1.0:
            raise ValueError(f"split.holdout_share must be in (0, 1), got {self.holdout_share}")


def user_unit(users: np.ndarray, salt: str) -> np.ndarray:
    """A uniform number in ``[0, 1)`` per user: splitmix64 of ``user_idx`` xor a salt key."""
    key = np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little"))
    x = np.asarray(users, dtype=np.int64).astype(np.uint64) ^ key
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_groups(users: np.ndarray, cfg: UserSplitConfig) -> np.ndarray:
    """Index into :data:`GROUPS` of each user (``[B]`` int64)."""
    u = user_unit(users, cfg.salt)
    a, h = cfg.reward_share, cfg.holdout_share
    edges = np.array([a * (1.0 - h), a, a + (1.0 - a) * (1.0 - h)])
    return np.searchsorted(edges, u, side="right").astype(np.int64)


def group_masks(users: np.ndarray, cfg: UserSplitConfig) -> dict[str, np.ndarray]:
    """``{group: bool mask}`` for the four groups, plus ``reward`` and ``simulator`` (train | holdout)."""
    groups = assign_groups(users, cfg)
    masks = {name: groups == k for k, name in enumerate(GROUPS)}
    masks["reward"] = masks["reward_train"] | masks["reward_holdout"]
    masks["simulator"] = masks["simulator_train"] | masks["simulator_holdout"]
    return masks


def before_evaluation(sessions: pl.DataFrame) -> np.ndarray:
    """Sessions that start before their user's first validation/test target session."""
    cutoff = training_cutoff(sessions)
    joined = sessions.select("user_idx", "start_ms").join(cutoff, on="user_idx", how="left", maintain_order="left")
    keep = joined["cutoff_ms"].is_null() | (joined["start_ms"] < joined["cutoff_ms"])
    return keep.to_numpy()


def sessions_for(sessions: pl.DataFrame, group: str, cfg: UserSplitConfig) -> pl.DataFrame:
    """The sessions a group may use: ``*_train`` before the evaluation cut-off, ``*_holdout`` all.

    Args:
        sessions: the bundle's ``sessions.parquet`` (needs ``user_idx, start_ms, split``).
        group: one of :data:`GROUPS`.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown user group {group!r}; expected one of {list(GROUPS)}")
    keep = group_masks(sessions["user_idx"].to_numpy(), cfg)[group]
    if group.endswith("_train"):
        keep = keep & before_evaluation(sessions)
    return sessions.filter(pl.Series(keep))
