"""``onerec-reward``: train the reward model on the reward group's logged sessions.

    onerec-reward data_dir=BUNDLE run_dir=REWARD_RUN [epochs=N] [labels.mode=auto|logged|proxy]
    (until the console script is registered: python -m onerec.train_reward ...)

Set-up → examples (sessions of the ``reward_train`` users before their evaluation period,
see :mod:`onerec.user_split`) → epochs of BCE on every tower → report on the
``reward_holdout`` users' sessions: AUC and log-loss per tower, the Spearman correlation
of the predicted swt with the observed session watch time and, on synthetic bundles, with
the generator's expected session watch time; plus a check of what IPA needs: for held-out
users, ``eval_candidates`` popularity-drawn sessions each, does the reward's best session
beat its worst under the ground truth? Writes ``reward.pt``, ``config.yaml``,
``metrics.json`` and ``metrics.jsonl`` (one line per epoch) to ``run_dir``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from scipy.stats import rankdata, spearmanr
from tqdm.auto import tqdm

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from onerec.reward import (
    BINARY_TOWERS,
    ITEM_TARGETS,
    REWARD_FILE,
    RewardLabelConfig,
    RewardModel,
    RewardModelConfig,
    available_towers,
    default_weights,
    duration_buckets,
    percentile_labels,
    save_reward_model,
    session_labels,
    watch_list_column,
)
from onerec.run_log import RunLogger
from onerec.user_split import UserSplitConfig, sessions_for

log = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    """``onerec-reward``.

    Attributes:
        data_dir / run_dir: the bundle and the output folder.
        seed: weights, batch order and proxy negatives.
        session_items: m (0: the bundle's target session length).
        session_windows: m-event windows used per training session (1: its first m
            events only; 0: every full window); held-out scoring uses first windows only.
        item_loss_weight: weight of the per-item auxiliary losses (``model.item_heads``).
        weights: combined reward = Σ weight · tower probability.
        eval_candidates: popularity-drawn candidate sessions per held-out user for the
            best-vs-worst check (synthetic bundles; 0: skip).
        eval_users: held-out users in that check (0: all).
    """

    data_dir: str = "???"
    run_dir: str = "runs/reward"
    seed: int = 0
    session_items: int = 0
    session_windows: int = 0
    item_loss_weight: float = 1.0
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    labels: RewardLabelConfig = field(default_factory=RewardLabelConfig)
    split: UserSplitConfig = field(default_factory=UserSplitConfig)
    weights: dict[str, float] = field(default_factory=default_weights)
    epochs: int = 6
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eval_candidates: int = 16
    eval_users: int = 500
    device: str = "auto"
    threads: int = 0
    show_progress: bool = True


# ---------------------------------------------------------------------------- data
class UserHistories:
    """Every user's positive items (``positives.parquet``) as flat values + offsets.

    A session's history is ``positives[user][max(0, k - n) : k]`` with ``k`` the user's
    positive events before it.
    """

    def __init__(self, positives: pl.DataFrame, num_users: int) -> None:
        users = positives["user_idx"].to_numpy().astype(np.int64)
        lengths = np.zeros(num_users, dtype=np.int64)
        lengths[users] = positives["items"].list.len().to_numpy()
        self.values = positives.sort("user_idx")["items"].explode().drop_nulls().to_numpy().astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])

    def count(self, users: np.ndarray) -> np.ndarray:
        return self.offsets[users + 1] - self.offsets[users]

    def padded(self, users: np.ndarray, ends: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T]`` right-padded (0) histories and ``[B]`` lengths: the last ``n``
        positives before position ``ends`` of each user's list."""
        ends = np.minimum(np.asarray(ends, np.int64), self.count(users))
        starts = np.maximum(ends - n, 0)
        lengths = ends - starts
        width = max(int(lengths.max()) if lengths.size else 0, 1)
        cols = np.arange(width)[None, :]
        mask = cols < lengths[:, None]
        index = np.where(mask, self.offsets[users][:, None] + starts[:, None] + cols, 0)
        padded = np.where(mask, self.values[index] if self.values.size else 0, 0)
        return torch.from_numpy(padded), torch.from_numpy(lengths)


def session_windows(sessions: pl.DataFrame, m: int, max_windows: int) -> pl.DataFrame:
    """Consecutive m-event windows of every session with at least m events.

    Window j holds events ``j*m .. j*m + m - 1``; its ``positives_before`` counts the
    session's positive events before it too. ``max_windows`` 0 = every full window.
    """
    lists = [c for c, dtype in sessions.schema.items() if isinstance(dtype, pl.List)]
    longest = int(sessions["num_events"].max() or 0) // m if sessions.height else 0
    count = longest if max_windows <= 0 else min(longest, max_windows)
    frames = []
    for j in range(count):
        frame = sessions.filter(pl.col("num_events") >= (j + 1) * m)
        before = pl.col("positive").list.head(j * m).list.sum() if "positive" in sessions.columns else pl.lit(0)
        frames.append(
            frame.with_columns(
                *[pl.col(c).list.slice(j * m, m) for c in lists],
                (pl.col("positives_before") + before.fill_null(0)).cast(pl.Int64).alias("positives_before"),
                pl.lit(j, dtype=pl.Int32).alias("window"),
            )
        )
    if not frames:
        return sessions.head(0).with_columns(pl.col("positives_before").cast(pl.Int64), pl.lit(0, dtype=pl.Int32).alias("window"))
    return pl.concat(frames)


@dataclass
class SessionSet:
    """Examples: ``users [S]``, ``ends [S]`` (history end), ``items [S, m]``,
    ``labels {tower: [S] float32, NaN = unknown}``, ``swt_ms [S]`` (NaN without watch
    time) and ``item_labels [S, m, len(ITEM_TARGETS)]`` (NaN = unknown)."""

    users: np.ndarray
    ends: np.ndarray
    items: np.ndarray
    labels: dict[str, np.ndarray]
    swt_ms: np.ndarray
    item_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.users.size)

    def take(self, rows: np.ndarray) -> "SessionSet":
        item_labels = self.item_labels[rows] if self.item_labels is not None else None
        return SessionSet(self.users[rows], self.ends[rows], self.items[rows], {t: v[rows] for t, v in self.labels.items()}, self.swt_ms[rows], item_labels)


def item_labels(windows: pl.DataFrame, m: int, vtr_ratio: float) -> np.ndarray:
    """Per-event labels ``[S, m, len(ITEM_TARGETS)]`` of m-event windows (NaN = unknown):
    watch ratio clipped to [0, 1], watched ≥ ``vtr_ratio`` of the duration, like, follow;
    every logged item is "real"."""
    s = windows.height
    out = np.full((s, m, len(ITEM_TARGETS)), np.nan, dtype=np.float32)
    out[..., ITEM_TARGETS.index("real")] = 1.0

    def column(name: str) -> np.ndarray:
        return windows[name].list.head(m).explode().cast(pl.Float64).fill_null(np.nan).to_numpy().reshape(s, m)

    watch = watch_list_column(windows)
    if watch is not None and "duration_ms" in windows.columns:
        w, d = column(watch), column("duration_ms")
        known = (d > 0) & ~np.isnan(w)
        ratio = np.where(known, w / np.where(known, d, 1.0), np.nan)
        out[..., ITEM_TARGETS.index("ratio")] = np.clip(ratio, 0.0, 1.0)
        out[..., ITEM_TARGETS.index("through")] = np.where(known, ratio >= vtr_ratio, np.nan)
    for name in ("like", "follow"):
        if name in windows.columns:
            out[..., ITEM_TARGETS.index(name)] = np.nan_to_num(column(name)) == 1
    return out


def logged_set(windows: pl.DataFrame, m: int, towers: list[str], cfg: RewardLabelConfig, swt_reference: np.ndarray | None) -> SessionSet:
    """Examples with labels from the logs; swt as a percentile of ``swt_reference``."""
    raw = session_labels(windows, m, cfg.vtr_ratio)
    swt_ms = raw["swt_ms"].to_numpy().astype(np.float64) if "swt_ms" in raw.columns else np.full(windows.height, np.nan)
    labels: dict[str, np.ndarray] = {}
    for tower in towers:
        if tower == "swt":
            reference = swt_ms if swt_reference is None else swt_reference
            labels[tower] = np.where(np.isnan(swt_ms), np.nan, percentile_labels(np.nan_to_num(swt_ms), reference[~np.isnan(reference)]))
        else:
            labels[tower] = raw[tower].fill_null(np.nan).to_numpy().astype(np.float64)
    return SessionSet(
        users=windows["user_idx"].to_numpy().astype(np.int64),
        ends=windows["positives_before"].to_numpy().astype(np.int64),
        items=np.stack(windows["items"].to_numpy()).astype(np.int64).reshape(windows.height, m) if windows.height else np.zeros((0, m), np.int64),
        labels={t: v.astype(np.float32) for t, v in labels.items()},
        swt_ms=swt_ms,
        item_labels=item_labels(windows, m, cfg.vtr_ratio) if windows.height else np.zeros((0, m, len(ITEM_TARGETS)), np.float32),
    )


class ProxyNegatives:
    """Corrupted copies of real sessions (proxy labels, see :mod:`onerec.reward`).

    Args:
        popularity: ``[num_items]`` counts; negatives are drawn ∝ count ** power (+1 smoothing).
        negatives: copies per real session.
    """

    def __init__(self, popularity: np.ndarray, power: float, negatives: int) -> None:
        weights = (np.asarray(popularity, np.float64) + 1.0) ** power
        self.cdf = np.cumsum(weights) / weights.sum()
        self.negatives = negatives

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return np.searchsorted(self.cdf, rng.random(shape), side="right").clip(max=self.cdf.size - 1)

    def expand(self, real: SessionSet, rng: np.random.Generator) -> SessionSet:
        """Real sessions (label 1) + ``negatives`` corrupted copies each (label (m - r) / m)."""
        s, m = real.items.shape
        k = self.negatives
        rows = np.concatenate([np.arange(s), np.repeat(np.arange(s), k)])
        items = real.items[rows].copy()
        replaced = rng.integers(1, m + 1, size=s * k)  # r slots per copy
        slot_rank = rng.random((s * k, m)).argsort(1).argsort(1)  # a random permutation rank per slot
        swap = slot_rank < replaced[:, None]  # (S*k, m): r random slots
        fake = self.sample(rng, (s * k, m))
        items[s:] = np.where(swap, fake, items[s:])
        label = np.concatenate([np.ones(s), (m - replaced) / m]).astype(np.float32)
        per_item = np.full((rows.size, m, len(ITEM_TARGETS)), np.nan, dtype=np.float32)
        per_item[:, :, ITEM_TARGETS.index("real")] = np.concatenate([np.ones((s, m)), ~swap])
        return SessionSet(real.users[rows], real.ends[rows], items, {"vtr": label}, np.full(rows.size, np.nan), per_item)


# ---------------------------------------------------------------------------- metrics
def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties count half); None when a class is missing."""
    labels = np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with (soft) labels."""
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def tower_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUC (label ≥ 0.5 is positive), log-loss and means, on the rows with a label."""
    known = ~np.isnan(labels)
    p, y = probs[known], labels[known]
    return {
        "auc": binary_auc(p, y >= 0.5),
        "log_loss": log_loss(p, y) if y.size else None,
        "label_mean": float(y.mean()) if y.size else None,
        "pred_mean": float(p.mean()) if p.size else None,
        "sessions": int(y.size),
    }


# ---------------------------------------------------------------------------- training
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is available; use device=cpu")
    return torch.device(name)


def batch_loss(
    model: RewardModel,
    logits: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    item_logits: torch.Tensor | None = None,
    item_labels: torch.Tensor | None = None,
    item_weight: float = 1.0,
) -> torch.Tensor:
    """Σ over towers of the mean soft-target BCE over the rows that have the tower's label,
    plus ``item_weight`` · Σ over item targets of the mean BCE over known (row, slot) pairs."""
    total = logits[model.towers[0]].new_zeros(())
    for tower in model.towers:
        y = labels[tower]
        known = ~torch.isnan(y)
        if known.any():
            total = total + F.binary_cross_entropy_with_logits(logits[tower][known], y[known])
    if item_logits is not None and item_labels is not None and item_weight > 0:
        for k, target in enumerate(model.item_targets):
            y = item_labels[..., ITEM_TARGETS.index(target)]
            known = ~torch.isnan(y)
            if known.any():
                total = total + item_weight * F.binary_cross_entropy_with_logits(item_logits[..., k][known], y[known])
    return total


@torch.no_grad()
def predict(model: RewardModel, data: SessionSet, histories: UserHistories, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Tower probabilities and the combined reward of every example (``{name: [S]}``)."""
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[np.ndarray]] = {t: [] for t in [*model.towers, "reward"]}
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(len(data), start + batch_size))
        history, lengths = histories.padded(data.users[rows], data.ends[rows], model.cfg.max_history)
        probs = model(history.to(device), lengths.to(device), torch.from_numpy(data.items[rows]).to(device))
        probs["reward"] = model.combine(probs)
        for name, value in probs.items():
            out[name].append(value.float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def candidate_check(
    model: RewardModel, bundle: Bundle, users: np.ndarray, histories: UserHistories, proxy: ProxyNegatives, cfg: RewardConfig, m: int
) -> dict[str, Any]:
    """Ground-truth check of the reward's choices among popularity-drawn candidate sessions.

    For each user (their whole positive history), ``eval_candidates`` sessions of m items:
    per-user Spearman of reward and swt with the expected session watch time, and how often
    the reward's best session beats its worst one and by how much (what IPA relies on).
    """
    truth = bundle.ground_truth()
    rng = np.random.default_rng([cfg.seed, 7])
    c = cfg.eval_candidates
    sessions = proxy.sample(rng, (users.size, c, m))  # (U, C, m)
    history, lengths = histories.padded(users, histories.count(users), model.cfg.max_history)
    device = next(model.parameters()).device
    with torch.no_grad():
        model.eval()
        probs = model(history.to(device), lengths.to(device), torch.from_numpy(sessions.reshape(-1, m)).to(device))
        reward = model.combine(probs).view(users.size, c).cpu().numpy()
        swt = probs["swt"].view(users.size, c).cpu().numpy() if "swt" in probs else reward
    expected = truth.session_watch_ms(np.repeat(users, c), sessions.reshape(-1, m)).reshape(users.size, c)
    # Likes depend on affinity alone: does the reward see taste, not just item length?
    likes = truth.engagement_prob(np.repeat(users, c)[:, None], sessions.reshape(-1, m), "like").sum(1).reshape(users.size, c)
    rows = np.arange(users.size)
    best, worst = reward.argmax(1), reward.argmin(1)
    per_user = [spearman(reward[u], expected[u]) for u in rows]
    per_user_swt = [spearman(swt[u], expected[u]) for u in rows]
    per_user_like = [spearman(reward[u], likes[u]) for u in rows]
    return {
        "users": int(users.size),
        "candidates": c,
        "reward_spearman_within_user": float(np.nanmean([v for v in per_user if v is not None])),
        "swt_spearman_within_user": float(np.nanmean([v for v in per_user_swt if v is not None])),
        "reward_spearman_like_truth_within_user": float(np.nanmean([v for v in per_user_like if v is not None])),
        "best_beats_worst": float((expected[rows, best] > expected[rows, worst]).mean()),
        "best_gain_over_mean": float(expected[rows, best].mean() / expected.mean() - 1.0),
        "oracle_gain_over_mean": float(expected.max(1).mean() / expected.mean() - 1.0),
    }


def evaluate(
    model: RewardModel, data: SessionSet, histories: UserHistories, bundle: Bundle, proxy: ProxyNegatives, cfg: RewardConfig, m: int
) -> dict[str, Any]:
    """Held-out metrics (see the module docstring)."""
    preds = predict(model, data, histories)
    out: dict[str, Any] = {"towers": {t: tower_metrics(preds[t], data.labels[t]) for t in model.towers}}
    if "swt" in model.towers:
        known = ~np.isnan(data.swt_ms)
        out["swt_spearman_observed"] = spearman(preds["swt"][known], data.swt_ms[known])
    if bundle.has_ground_truth and len(data):
        truth = bundle.ground_truth()
        expected = truth.session_watch_ms(data.users, data.items)
        if "swt" in model.towers:
            out["swt_spearman_truth"] = spearman(preds["swt"], expected)
        out["reward_spearman_truth"] = spearman(preds["reward"], expected)
        if cfg.eval_candidates > 1:
            users = np.unique(data.users)
            if cfg.eval_users > 0:
                users = np.random.default_rng([cfg.seed, 3]).permutation(users)[: cfg.eval_users]
            out["candidates"] = candidate_check(model, bundle, np.sort(users), histories, proxy, cfg, m)
    return out


def label_mode(cfg: RewardLabelConfig, sessions: pl.DataFrame) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "logged" if available_towers(sessions) else "proxy"


def train_reward(cfg: RewardConfig) -> tuple[RewardModel, dict[str, Any]]:
    """Train and evaluate; writes the run folder. Returns the model and its metrics."""
    clock = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    bundle = Bundle.open(cfg.data_dir)
    run_dir = Path(cfg.run_dir).expanduser()
    m = cfg.session_items or bundle.target_items
    if m < 1:
        raise UserError(f"session_items={cfg.session_items}; expected >= 1 (0: the bundle's {bundle.target_items})")

    sessions = bundle.sessions()
    mode = label_mode(cfg.labels, sessions)
    histories = UserHistories(bundle.positives(), bundle.num_users)
    proxy = ProxyNegatives(bundle.items.sort("item_idx")["train_count"].to_numpy(), cfg.labels.popularity_power, cfg.labels.proxy_negatives)
    train_windows = session_windows(sessions_for(sessions, "reward_train", cfg.split), m, cfg.session_windows)
    holdout_windows = session_windows(sessions_for(sessions, "reward_holdout", cfg.split), m, 1)
    if train_windows.height == 0:
        raise UserError(f"{cfg.data_dir}: no reward-group session has {m} events; lower session_items")

    if mode == "logged":
        towers = available_towers(sessions)
        if not towers:
            raise UserError(f"{cfg.data_dir}: labels.mode=logged but the log has no watch time, like or follow; use labels.mode=proxy")
        train_set = logged_set(train_windows, m, towers, cfg.labels, None)
        kept = []
        for tower in towers:
            positives = int(np.nansum(train_set.labels[tower])) if tower in BINARY_TOWERS else len(train_set)
            if positives < cfg.labels.min_positives:
                log.warning("reward: tower %s dropped: %d positive training sessions < labels.min_positives=%d", tower, positives, cfg.labels.min_positives)
            else:
                kept.append(tower)
        towers = kept
        if not towers:
            raise UserError(f"{cfg.data_dir}: no tower has labels.min_positives={cfg.labels.min_positives} positive sessions")
        swt_reference = train_set.swt_ms
        holdout_set = logged_set(holdout_windows, m, towers, cfg.labels, swt_reference)
        eval_set = holdout_set
    else:
        towers = ["vtr"]
        train_set = logged_set(train_windows, m, [], cfg.labels, None)
        swt_reference = np.zeros(0)
        holdout_set = logged_set(holdout_windows, m, [], cfg.labels, None)
        eval_set = proxy.expand(holdout_set, np.random.default_rng([cfg.seed, 11]))

    pretrained = None
    if cfg.model.pretrained_items and (bundle.path / "item_embeddings.npy").is_file():
        pretrained = np.load(bundle.path / "item_embeddings.npy")
    targets = ["real"] if mode == "proxy" else [t for t in ITEM_TARGETS if t != "real" and not np.isnan(train_set.item_labels[..., ITEM_TARGETS.index(t)]).all()]  # type: ignore[index]
    model = RewardModel(cfg.model, bundle.num_items, towers, cfg.weights, pretrained.shape[1] if pretrained is not None else 0, targets)
    durations = bundle.items.sort("item_idx")["duration_ms"].to_numpy() if "duration_ms" in bundle.items.columns else np.full(bundle.num_items, np.nan)
    model.items.set_tables(duration_buckets(durations, cfg.model.duration_buckets), pretrained)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log.info("reward: %s labels, towers %s, m=%d, %d training / %d held-out sessions", mode, towers, m, len(train_set), len(eval_set))

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    logger = RunLogger(run_dir, tensorboard=False)
    per_epoch = len(train_set) * (1 + (cfg.labels.proxy_negatives if mode == "proxy" else 0)) // cfg.batch_size
    total_steps = max(1, per_epoch * cfg.epochs)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.1)
    bar = tqdm(total=total_steps, desc="onerec-reward", disable=not cfg.show_progress, unit="step")
    step = 0
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        data = proxy.expand(train_set, rng) if mode == "proxy" else train_set
        order = rng.permutation(len(data))[: per_epoch * cfg.batch_size].reshape(per_epoch, cfg.batch_size)
        model.train()
        losses = []
        for rows in order:
            if step >= total_steps:
                break
            history, lengths = histories.padded(data.users[rows], data.ends[rows], cfg.model.max_history)
            labels = {t: torch.from_numpy(data.labels[t][rows]).to(device) for t in towers}
            logits, per_item = model.training_logits(history.to(device), lengths.to(device), torch.from_numpy(data.items[rows]).to(device))
            per_item_labels = torch.from_numpy(data.item_labels[rows]).to(device) if data.item_labels is not None else None
            loss = batch_loss(model, logits, labels, per_item, per_item_labels, cfg.item_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", epoch=epoch + 1)
        preds = predict(model, eval_set, histories)
        held = {f"holdout_log_loss_{t}": tower_metrics(preds[t], eval_set.labels[t])["log_loss"] for t in towers}
        logger.log(step, "epoch", {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, **held})
    bar.close()
    logger.close()

    metrics: dict[str, Any] = {
        "label_mode": mode,
        "towers_trained": towers,
        "session_items": m,
        "train_sessions": len(train_set),
        "train_users": int(np.unique(train_set.users).size),
        "holdout_sessions": len(eval_set),
        "holdout_users": int(np.unique(eval_set.users).size),
        "weights": model.weights,
        **evaluate(model, eval_set, histories, bundle, proxy, cfg, m),
        "seconds": round(time.perf_counter() - clock, 1),
    }
    quantiles = np.quantile(swt_reference, np.linspace(0, 1, 101)).tolist() if swt_reference.size else []
    meta = {
        "data_dir": str(bundle.path),
        "label_mode": mode,
        "session_items": m,
        "labels": vars(cfg.labels),
        "split": vars(cfg.split),
        "seed": cfg.seed,
        "swt_ms_quantiles": quantiles,
    }
    save_reward_model(model.cpu(), run_dir / REWARD_FILE, meta)
    from omegaconf import OmegaConf

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return model.eval(), metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """The lines a user reads after ``onerec-reward``."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"labels: {metrics['label_mode']}  m={metrics['session_items']}  train sessions: {metrics['train_sessions']:,}"
        f" ({metrics['train_users']:,} users)  held-out: {metrics['holdout_sessions']:,} ({metrics['holdout_users']:,} users)",
        f"{'tower':<6}{'auc':>9}{'log_loss':>10}{'label':>9}{'pred':>9}",
    ]
    for tower, t in metrics["towers"].items():
        lines.append(f"{tower:<6}{fmt(t['auc']):>9}{fmt(t['log_loss']):>10}{fmt(t['label_mean']):>9}{fmt(t['pred_mean']):>9}")
    for key in ("swt_spearman_observed", "swt_spearman_truth", "reward_spearman_truth"):
        if key in metrics:
            lines.append(f"{key}: {fmt(metrics[key])}")
    if "candidates" in metrics:
        lines.append("candidates (ground truth): " + ", ".join(f"{k}={fmt(v)}" for k, v in metrics["candidates"].items()))
    return "\n".join(lines)


def report(cfg: RewardConfig) -> None:
    _, metrics = train_reward(cfg)
    print(format_metrics(metrics))
    print(f"reward model: {Path(cfg.run_dir) / REWARD_FILE}")


def main() -> None:
    from onerec.stages import hydra_main

    hydra_main("reward", "onerec-reward", report)


if __name__ == "__main__":
    main()
