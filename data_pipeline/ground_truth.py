"""The synthetic generator's exact user-response model.

On synthetic logs the expected watch time and engagement of any (user, item) pair are
known, so later stages can score generated sessions exactly instead of with a learned
model. Arrays are indexed by the bundle's contiguous ``user_idx`` / ``item_idx``.

Response model (all arrays float64)::

    affinity  a(u, i) = affinity_scale * <user_vec[u], item_vec[i]> + item_quality[i]
    logit     z(u, i) = watch_affinity * a - duration_slope * (log(duration[i]) - log_duration_mean) + watch_bias
    watch ratio       = sigmoid(z + eps),  eps ~ N(0, watch_noise^2)
    watch time (ms)   = duration[i] * watch ratio
    P(like)           = sigmoid(like_bias + engagement_affinity * a)     (follow, share alike)

The expectation over ``eps`` has no closed form; it is computed by Gauss-Hermite
quadrature (32 nodes, exact to ~1e-12 for this smooth integrand).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ResponseCoefficients:
    """Scalars of the response model (see the module docstring)."""

    affinity_scale: float = 3.0
    watch_affinity: float = 1.2
    duration_slope: float = 0.5
    log_duration_mean: float = float(np.log(60_000.0))
    watch_bias: float = -0.2
    watch_noise: float = 1.0
    engagement_affinity: float = 1.0
    like_bias: float = -3.5
    follow_bias: float = -5.5
    share_bias: float = -5.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(32)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()  # probabilists' Hermite: weights of N(0, 1)


@dataclass
class GroundTruth:
    """Exact expected responses of the synthetic users.

    Attributes:
        user_vec: ``[U, d]`` latent tastes.
        item_vec: ``[I, d]`` latent item vectors.
        item_quality: ``[I]`` item bias in the affinity.
        duration_ms: ``[I]`` item lengths.
        coefficients: the response model's scalars.
    """

    user_vec: np.ndarray
    item_vec: np.ndarray
    item_quality: np.ndarray
    duration_ms: np.ndarray
    coefficients: ResponseCoefficients

    @property
    def num_users(self) -> int:
        return int(self.user_vec.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.item_vec.shape[0])

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Affinity of broadcastable index arrays ``users`` and ``items`` (same shape out)."""
        users, items = np.broadcast_arrays(np.asarray(users), np.asarray(items))
        dot = np.einsum("...d,...d->...", self.user_vec[users], self.item_vec[items])
        return self.coefficients.affinity_scale * dot + self.item_quality[items]

    def watch_logit(
        self, users: np.ndarray, items: np.ndarray, affinity: np.ndarray | None = None
    ) -> np.ndarray:
        """The watch-ratio logit before noise; pass ``affinity`` if already computed."""
        c = self.coefficients
        if affinity is None:
            affinity = self.affinity(users, items)
        log_dur = np.log(self.duration_ms[np.asarray(items)])
        return c.watch_affinity * affinity - c.duration_slope * (log_dur - c.log_duration_mean) + c.watch_bias

    def expected_watch_ratio(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """E[watch ratio] over the watch noise, by Gauss-Hermite quadrature."""
        z = self.watch_logit(users, items)[..., None]
        return (_sigmoid(z + self.coefficients.watch_noise * _GH_NODES) * _GH_WEIGHTS).sum(-1)

    def expected_watch_ms(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """E[watch time in ms] of each (user, item) pair; broadcastable index arrays."""
        users, items = np.broadcast_arrays(np.asarray(users), np.asarray(items))
        return self.duration_ms[items] * self.expected_watch_ratio(users, items)

    def engagement_prob(self, users: np.ndarray, items: np.ndarray, kind: str) -> np.ndarray:
        """P(like | follow | share) of each pair."""
        biases = {
            "like": self.coefficients.like_bias,
            "follow": self.coefficients.follow_bias,
            "share": self.coefficients.share_bias,
        }
        if kind not in biases:
            raise ValueError(f"unknown engagement {kind!r}; expected one of {list(biases)}")
        a = self.affinity(users, items)
        return _sigmoid(biases[kind] + self.coefficients.engagement_affinity * a)

    def session_watch_ms(self, users: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """Expected session watch time: ``users [B]``, ``sessions [B, m]`` → ``[B]``."""
        return self.expected_watch_ms(np.asarray(users)[:, None], sessions).sum(-1)

    def reindexed(self, user_order: np.ndarray, item_order: np.ndarray) -> "GroundTruth":
        """Rows reordered so that row ``k`` is generator user/item ``order[k]``."""
        return GroundTruth(
            user_vec=self.user_vec[user_order],
            item_vec=self.item_vec[item_order],
            item_quality=self.item_quality[item_order],
            duration_ms=self.duration_ms[item_order],
            coefficients=self.coefficients,
        )

    def save(self, path: str | Path) -> None:
        np.savez(
            path,
            user_vec=self.user_vec,
            item_vec=self.item_vec,
            item_quality=self.item_quality,
            duration_ms=self.duration_ms,
            **{f"coef_{k}": np.float64(v) for k, v in asdict(self.coefficients).items()},
        )

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        with np.load(path) as data:
            coefs = {k[len("coef_"):]: float(data[k]) for k in data.files if k.startswith("coef_")}
            return cls(
                user_vec=data["user_vec"],
                item_vec=data["item_vec"],
                item_quality=data["item_quality"],
                duration_ms=data["duration_ms"],
                coefficients=ResponseCoefficients(**coefs),
            )
