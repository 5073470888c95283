"""The reward model (OneRec §3.3.1): how much will this user enjoy this session?

Given a user's history and a session of m items it predicts, through sigmoid towers::

    user u   = MLP([attention-pool(history) ; mean(history)])        (B, D)
    e_i      = W [v_i ⊙ u ; v_i]          target-aware items        (B, m, D)
    h_i      = self-attention over the m items (SDPA), L blocks      (B, m, D)
    p_tower  = sigmoid(MLP_tower(mean_i h_i))                        (B,)
    reward   = Σ_tower weight_tower · p_tower                        (B,)
    q_i      = sigmoid(W_item h_i)   auxiliary per-item outputs      (B, m, K)  (training only)

Item vectors ``v_i`` are a learned embedding (plus a projection of the bundle's
collaborative item embeddings when ``pretrained_items``) plus an embedding of the item's
log-duration bucket: watch time scales with length, and a rare item's length is known
even when its embedding is not.

Labels (from the logs; one training example = m consecutive logged events, positives and
negatives alike: the first m events of every session with at least m events and, unless
``session_windows`` limits it, each further full m-event window, whose history then also
holds the session's earlier positives):

=====  ==================================================================================
tower  label
=====  ==================================================================================
swt    session watch time: the m events' total ``watch_time_ms`` as a mid-rank percentile
       among the training sessions' totals, a soft label in [0, 1] (BCE with soft targets)
vtr    view-through rate: share of the m events watched to at least ``vtr_ratio`` of their
       duration (events without a positive duration are left out; soft label)
wtr    follow rate: 1 if any of the m events has ``follow == 1``
ltr    like rate: 1 if any of the m events has ``like == 1``
=====  ==================================================================================

A tower exists only where the log has its columns (swt: watch time; vtr: watch time and
duration; wtr: follow; ltr: like), and a binary tower only with at least
``min_positives`` positive training sessions (KuaiRand's random log has 8 follows).

*Proxy labels* for logs without watch time or engagement (Amazon: every event is a
purchase/review): a real session (its first m logged items, label 1) against
``proxy_negatives`` corrupted copies in which r ~ U{1..m} random slots are replaced by
items drawn by popularity (``train_count ** popularity_power``); tower ``vtr`` =
P(interaction), its label the share of real items, (m - r) / m. With m = 1 this is the
logged next item against popularity-sampled negatives.

The auxiliary per-item heads (``item_heads``) learn each event's own labels: watch ratio
(clipped to [0, 1], soft), watched through, like, follow; in proxy mode whether the slot
holds the logged item. They only shape the shared representation: the reward is the towers'.

For AUC, soft labels count as positive at 0.5 and above (swt: sessions watched more than
the training median; proxy: real sessions against corrupted ones when m = 1).

Example::

    model = load_reward_model("runs/reward")
    r = model.reward(history, lengths, sessions)     # [B]: (B, T) + (B,) + (B, m)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onerec.modules.attention import MultiHeadAttention

TOWERS = ("swt", "vtr", "wtr", "ltr")
# Per-item auxiliary targets: watch ratio (clipped to [0, 1]), viewed through, like,
# follow (logged labels) and "real" (a logged item, not a proxy negative).
ITEM_TARGETS = ("ratio", "through", "like", "follow", "real")
BINARY_TOWERS = ("wtr", "ltr")
REWARD_FILE = "reward.pt"
WATCH_LIST_COLUMNS = ("watch_time_ms",)


@dataclass
class RewardLabelConfig:
    """Attributes:
        mode: ``logged`` (labels from watch time / engagement), ``proxy`` (real vs.
            popularity-corrupted sessions) or ``auto`` (logged where the log has watch time,
            like or follow columns, else proxy).
        vtr_ratio: an item counts as viewed through at this share of its duration.
        min_positives: a binary tower needs this many positive training sessions.
        proxy_negatives: corrupted copies per real session (proxy mode).
        popularity_power: negatives are drawn with probability ∝ train_count ** power.
    """

    mode: str = "auto"
    vtr_ratio: float = 0.7
    min_positives: int = 20
    proxy_negatives: int = 4
    popularity_power: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "logged", "proxy"):
            raise ValueError(f"labels.mode={self.mode!r}; expected auto, logged or proxy")
        if not 0.0 < self.vtr_ratio <= 1.0:
            raise ValueError(f"labels.vtr_ratio must be in (0, 1], got {self.vtr_ratio}")
        if self.proxy_negatives < 1:
            raise ValueError(f"labels.proxy_negatives must be >= 1, got {self.proxy_negatives}")


@dataclass
class RewardModelConfig:
    """Attributes:
        dim: width D of item, user and session representations.
        pool_queries: learned queries of the history attention-pooling.
        num_heads: heads of the session self-attention.
        layers: self-attention blocks across the m items.
        dropout: on representations and attention (training only).
        max_history: the most recent history items read (longer histories are cut).
        duration_buckets: quantile buckets of item log-duration (0: no duration feature).
        pretrained_items: add a projection of the bundle's ``item_embeddings.npy``.
        item_embedding: learn a free vector per item (off: pretrained + duration only).
        item_heads: auxiliary per-item outputs (see :data:`ITEM_TARGETS`), trained on the
            per-event labels: m times the supervision of the session labels, less noisy.
    """

    dim: int = 64
    pool_queries: int = 4
    num_heads: int = 4
    layers: int = 1
    dropout: float = 0.1
    max_history: int = 64
    duration_buckets: int = 16
    pretrained_items: bool = True
    item_embedding: bool = True
    item_heads: bool = True

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.num_heads={self.num_heads}")
        if self.max_history < 1 or self.pool_queries < 1:
            raise ValueError(f"model.max_history and model.pool_queries must be >= 1, got {self.max_history}, {self.pool_queries}")


# ---------------------------------------------------------------------------- labels
def watch_list_column(sessions: pl.DataFrame) -> str | None:
    """The per-item watch-time list of ``sessions.parquet``; None if the log has no watch time."""
    for name in WATCH_LIST_COLUMNS:
        if name in sessions.columns and isinstance(sessions.schema[name], pl.List):
            return name
    return None


def available_towers(sessions: pl.DataFrame) -> list[str]:
    """Towers whose label columns the session table has (logged mode)."""
    watch = watch_list_column(sessions)
    towers = []
    if watch is not None:
        towers.append("swt")
        if "duration_ms" in sessions.columns:
            towers.append("vtr")
    if "follow" in sessions.columns:
        towers.append("wtr")
    if "like" in sessions.columns:
        towers.append("ltr")
    return towers


def session_labels(sessions: pl.DataFrame, m: int, vtr_ratio: float) -> pl.DataFrame:
    """Raw labels of each session's first m events (see the module docstring).

    Args:
        sessions: rows of ``sessions.parquet`` (per-item lists aligned with ``items``).
        m: events per session.
        vtr_ratio: view-through threshold as a share of duration.

    Returns:
        One row per session with ``swt_ms`` (total watch time of the m events), ``vtr``,
        ``wtr``, ``ltr``: those the columns allow, null where a session has no signal.
    """
    exprs: list[pl.Expr] = []
    watch = watch_list_column(sessions)
    if watch is not None:
        total = pl.col(watch).list.head(m).list.eval(pl.element().fill_null(0.0)).list.sum()
        exprs.append(total.cast(pl.Float64).alias("swt_ms"))
    for tower, column in (("wtr", "follow"), ("ltr", "like")):
        if column in sessions.columns:
            any_event = pl.col(column).list.head(m).list.eval(pl.element().fill_null(0) == 1).list.any()
            exprs.append(any_event.cast(pl.Float64).alias(tower))
    out = sessions.select(exprs) if exprs else pl.DataFrame({"_": np.zeros(sessions.height)}).drop("_")
    if watch is not None and "duration_ms" in sessions.columns:
        out = out.with_columns(pl.Series("vtr", view_through_share(sessions, watch, m, vtr_ratio)).fill_nan(None))
    return out.select([c for c in ("swt_ms", "vtr", "wtr", "ltr") if c in out.columns])


def view_through_share(sessions: pl.DataFrame, watch: str, m: int, vtr_ratio: float) -> np.ndarray:
    """Share of each session's first m events watched ≥ ``vtr_ratio`` × duration (NaN: none known)."""
    frame = sessions.select(
        pl.int_range(pl.len()).alias("row"), pl.col(watch).list.head(m).alias("w"), pl.col("duration_ms").list.head(m).alias("d")
    ).explode("w", "d")
    known = frame["d"].fill_null(0.0).to_numpy() > 0
    rows = frame["row"].to_numpy()
    through = (frame["w"].fill_null(0.0).to_numpy() >= vtr_ratio * frame["d"].fill_null(0.0).to_numpy()) & known
    count = np.bincount(rows[known], minlength=sessions.height).astype(np.float64)
    hits = np.bincount(rows[through], minlength=sessions.height).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits / count, np.nan)


def percentile_labels(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each value among ``reference``: (#less + #equal / 2) / n."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    values = np.asarray(values, dtype=np.float64)
    less = np.searchsorted(ref, values, side="left")
    not_more = np.searchsorted(ref, values, side="right")
    return (less + 0.5 * (not_more - less)) / max(ref.size, 1)


def duration_buckets(duration_ms: np.ndarray, num_buckets: int) -> np.ndarray:
    """Quantile bucket of each item's log-duration, 1..num_buckets; 0 = unknown length."""
    duration = np.asarray(duration_ms, dtype=np.float64)
    known = np.isfinite(duration) & (duration > 0)
    out = np.zeros(duration.size, dtype=np.int64)
    if num_buckets < 1 or not known.any():
        return out
    logs = np.log(duration[known])
    edges = np.quantile(logs, np.linspace(0, 1, num_buckets + 1)[1:-1])
    out[known] = 1 + np.searchsorted(edges, logs, side="right")
    return out


# ---------------------------------------------------------------------------- modules
def history_tail(history: Tensor, lengths: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """The last ``max_len`` items of right-padded histories: ``[B, T]`` → ``[B, min(T, max_len)]``."""
    if history.shape[1] <= max_len:
        return history, lengths.clamp(max=history.shape[1])
    new_lengths = lengths.clamp(max=max_len)
    positions = (lengths - new_lengths)[:, None] + torch.arange(max_len, device=history.device)[None, :]
    tail = history.gather(1, positions.clamp(max=history.shape[1] - 1))
    return tail, new_lengths


class ItemFeatures(nn.Module):
    """Item vectors: learned embedding (+ projected pretrained vector) + duration-bucket embedding.

    Args:
        num_items: catalogue size.
        dim: output width D.
        buckets: ``[num_items]`` duration bucket per item (0 = unknown), or None.
        num_buckets: buckets besides "unknown".
        pretrained_dim: width of the fixed pretrained item vectors (0: none).
        learned: a free learned vector per item.
    """

    def __init__(self, num_items: int, dim: int, num_buckets: int = 0, pretrained_dim: int = 0, learned: bool = True) -> None:
        super().__init__()
        if not learned and pretrained_dim == 0:
            raise ValueError("items need a learned embedding or pretrained vectors (item_embedding=false needs pretrained_items=true)")
        self.embedding = nn.Embedding(num_items, dim) if learned else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=0.02)
        self.register_buffer("bucket", torch.zeros(num_items, dtype=torch.long))
        self.duration = nn.Embedding(num_buckets + 1, dim) if num_buckets > 0 else None
        if pretrained_dim > 0:
            self.register_buffer("pretrained", torch.zeros(num_items, pretrained_dim))
            self.project = nn.Linear(pretrained_dim, dim, bias=False)
        else:
            self.pretrained = None
            self.project = None
        self.norm = nn.LayerNorm(dim)

    def set_tables(self, buckets: np.ndarray | None, pretrained: np.ndarray | None) -> None:
        """Fill the fixed per-item tables (bucket ids, pretrained vectors standardised)."""
        if buckets is not None:
            self.bucket.copy_(torch.as_tensor(buckets, dtype=torch.long))
        if pretrained is not None and self.pretrained is not None:
            p = np.asarray(pretrained, dtype=np.float32)
            p = (p - p.mean(0)) / (p.std(0) + 1e-6)
            self.pretrained.copy_(torch.from_numpy(p))

    def forward(self, items: Tensor) -> Tensor:
        """``items [...]`` (valid indices) → ``[..., D]``."""
        x = self.embedding(items) if self.embedding is not None else 0.0
        if self.duration is not None:
            x = x + self.duration(self.bucket[items])
        if self.project is not None:
            x = x + self.project(self.pretrained[items])
        return self.norm(x)


class HistoryPooling(nn.Module):
    """User vector from a padded history: attention pooling with learned queries (plus a
    learned null slot, so an empty history is well defined) and a masked mean, then an MLP.

    Args:
        dim: D.
        queries: Q learned pooling queries.
        dropout: on the MLP's hidden layer.
    """

    def __init__(self, dim: int, queries: int, dropout: float) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(queries, dim) * dim**-0.5)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.mlp = nn.Sequential(
            nn.Linear((queries + 1) * dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, items: Tensor, lengths: Tensor) -> Tensor:
        """``items [B, T, D]`` (right-padded), ``lengths [B]`` → ``[B, D]``."""
        b, t, d = items.shape
        real = torch.arange(t, device=items.device)[None, :] < lengths[:, None]  # (B, T)
        keys = torch.cat([self.null.expand(b, 1, d), items], dim=1)  # (B, T+1, D)
        mask = torch.cat([torch.ones_like(real[:, :1]), real], dim=1)[:, None, None, :]  # (B, 1, 1, T+1)
        q = self.queries[None, None].expand(b, 1, -1, -1)  # (B, 1, Q, D)
        pooled = F.scaled_dot_product_attention(q, keys[:, None], keys[:, None], attn_mask=mask)  # (B, 1, Q, D)
        mean = (items * real[..., None]).sum(1) / lengths.clamp(min=1)[:, None].to(items.dtype)  # (B, D)
        x = torch.cat([pooled.reshape(b, -1), mean], dim=-1)
        return self.norm(self.mlp(x))


class SessionBlock(nn.Module):
    """Pre-norm self-attention + feed-forward across the items of a session."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x [B, m, D]``, ``mask [B, 1, 1, m]`` (True = a real item)."""
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, h, mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class RewardModel(nn.Module):
    """Session reward: towers ``swt, vtr, wtr, ltr`` (those trained) and their weighted sum.

    Args:
        cfg: sizes.
        num_items: catalogue size.
        towers: the towers to build, a subset of :data:`TOWERS` in that order.
        weights: ``{tower: weight}`` of the combined reward (missing towers weigh 0).
        pretrained_dim: width of the bundle's item embeddings (0: not used).

    Example::

        probs = model(history, lengths, sessions)   # {"swt": [B], "vtr": [B], ...}
        r = model.reward(history, lengths, sessions)  # [B], no grad, batched
    """

    def __init__(
        self,
        cfg: RewardModelConfig,
        num_items: int,
        towers: list[str],
        weights: dict[str, float],
        pretrained_dim: int = 0,
        item_targets: list[str] | None = None,
    ) -> None:
        super().__init__()
        unknown = [t for t in towers if t not in TOWERS]
        if unknown or not towers:
            raise ValueError(f"reward towers {towers}: expected a non-empty subset of {list(TOWERS)}")
        self.cfg = cfg
        self.num_items = num_items
        self.towers = [t for t in TOWERS if t in towers]
        self.weights = {t: float(weights.get(t, 0.0)) for t in self.towers}
        d = cfg.dim
        self.items = ItemFeatures(
            num_items, d, cfg.duration_buckets, pretrained_dim if cfg.pretrained_items else 0, cfg.item_embedding
        )
        self.user = HistoryPooling(d, cfg.pool_queries, cfg.dropout)
        self.item_targets = [t for t in ITEM_TARGETS if t in (item_targets or [])] if cfg.item_heads else []
        self.item_head = nn.Linear(d, len(self.item_targets)) if self.item_targets else None
        self.target = nn.Linear(2 * d, d)
        self.blocks = nn.ModuleList(SessionBlock(d, cfg.num_heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict(
            {t: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, 1)) for t in self.towers}
        )

    def user_vectors(self, history: Tensor, lengths: Tensor) -> Tensor:
        """``history [B, T]`` right-padded, ``lengths [B]`` → ``[B, D]``."""
        history, lengths = history_tail(history, lengths, self.cfg.max_history)
        real = torch.arange(history.shape[1], device=history.device)[None, :] < lengths[:, None]
        return self.user(self.items(torch.where(real, history, 0)), lengths)

    def tower_logits(self, history: Tensor, lengths: Tensor, sessions: Tensor) -> dict[str, Tensor]:
        """Logits of every tower (``{tower: [S]}``; shapes as :meth:`encode`)."""
        pooled, _ = self.encode(history, lengths, sessions)
        return {t: head(pooled).squeeze(-1) for t, head in self.heads.items()}

    def training_logits(self, history: Tensor, lengths: Tensor, sessions: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Tower logits and the per-item auxiliary logits ``[S, m, len(item_targets)]`` (or None)."""
        pooled, items = self.encode(history, lengths, sessions)
        towers = {t: head(pooled).squeeze(-1) for t, head in self.heads.items()}
        return towers, self.item_head(items) if self.item_head is not None else None

    def encode(self, history: Tensor, lengths: Tensor, sessions: Tensor) -> tuple[Tensor, Tensor]:
        """Session and item representations.

        Args:
            history: ``[B, T]`` item indices, oldest first, right-padded (any pad value).
            lengths: ``[B]`` real items per history (0 allowed).
            sessions: ``[S, m]`` item indices, -1 = no item; ``S`` a multiple of ``B``:
                with ``S = k·B`` rows ``k·b .. k·b + k - 1`` are user ``b``'s sessions.

        Returns:
            ``(pooled [S, D], items [S, m, D])``.
        """
        s, m = sessions.shape
        user = self.user_vectors(history, lengths)  # (B, D)
        if s != user.shape[0]:
            if s % user.shape[0]:
                raise ValueError(f"sessions have {s} rows; expected a multiple of the {user.shape[0]} histories")
            user = user.repeat_interleave(s // user.shape[0], dim=0)  # (S, D)
        real = sessions >= 0  # (S, m)
        v = self.items(sessions.clamp(min=0))  # (S, m, D)
        x = self.target(torch.cat([v * user[:, None, :], v], dim=-1))  # (S, m, D): target-aware items
        mask = real[:, None, None, :] | ~real.any(1)[:, None, None, None]  # an empty session attends to itself
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        pooled = (x * real[..., None]).sum(1) / real.sum(1).clamp(min=1)[:, None].to(x.dtype)  # (S, D)
        return pooled, x

    def forward(self, history: Tensor, lengths: Tensor, sessions: Tensor) -> dict[str, Tensor]:
        """Tower probabilities ``{tower: [S]}`` (see :meth:`tower_logits` for the shapes)."""
        return {t: torch.sigmoid(z) for t, z in self.tower_logits(history, lengths, sessions).items()}

    def combine(self, probs: dict[str, Tensor]) -> Tensor:
        """Weighted sum of tower probabilities."""
        total = torch.zeros_like(next(iter(probs.values())))
        for tower, weight in self.weights.items():
            if weight:
                total = total + weight * probs[tower]
        return total

    @torch.no_grad()
    def reward(self, history: Tensor, lengths: Tensor, sessions: Tensor, batch_size: int = 8192) -> Tensor:
        """Combined reward ``[S]`` in eval mode, without grad, in chunks of ``batch_size`` sessions.

        Inputs are moved to the model's device; the result stays there.
        """
        was_training = self.training
        self.eval()
        device = self.target.weight.device
        history, lengths, sessions = history.to(device), lengths.to(device), sessions.to(device)
        s, b = sessions.shape[0], history.shape[0]
        per_user = s // b if s != b else 1
        if s % b:
            raise ValueError(f"sessions have {s} rows; expected a multiple of the {b} histories")
        step = max(per_user, (batch_size // per_user) * per_user)
        out = []
        for start in range(0, s, step):
            users = slice(start // per_user, (start + step) // per_user)
            out.append(self.combine(self(history[users], lengths[users], sessions[start : start + step])))
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, device=device)


# ---------------------------------------------------------------------------- files
def save_reward_model(model: RewardModel, path: Path, meta: dict[str, Any]) -> None:
    """``reward.pt``: weights, sizes, towers, weights of the combination and ``meta``."""
    state = {
        "model": model.state_dict(),
        "model_config": asdict(model.cfg),
        "num_items": model.num_items,
        "towers": model.towers,
        "weights": model.weights,
        "pretrained_dim": int(model.items.pretrained.shape[1]) if model.items.pretrained is not None else 0,
        "item_targets": model.item_targets,
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_reward_model(run_dir: str | Path, weights: dict[str, float] | None = None) -> RewardModel:
    """The reward model of an ``onerec-reward`` run folder, on CPU in eval mode.

    Args:
        run_dir: the folder with ``reward.pt``.
        weights: override the combination weights saved with the model.
    """
    from data_pipeline.cli import UserError

    path = Path(run_dir).expanduser() / REWARD_FILE
    if not path.is_file():
        raise UserError(f"no reward model at {path}; train one with onerec-reward data_dir=BUNDLE run_dir={run_dir}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = RewardModel(
        RewardModelConfig(**state["model_config"]),
        state["num_items"],
        state["towers"],
        weights if weights is not None else state["weights"],
        state["pretrained_dim"],
        state.get("item_targets"),
    )
    model.load_state_dict(state["model"])
    model.meta = state.get("meta", {})  # type: ignore[assignment]
    return model.eval()


def default_weights() -> dict[str, float]:
    return {"swt": 1.0, "vtr": 0.2, "wtr": 0.1, "ltr": 0.1}


__all__ = [
    "TOWERS",
    "ITEM_TARGETS",
    "RewardLabelConfig",
    "RewardModelConfig",
    "RewardModel",
    "load_reward_model",
    "save_reward_model",
    "available_towers",
    "session_labels",
    "percentile_labels",
    "watch_list_column",
]
