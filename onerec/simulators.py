"""Offline user simulators: how would this user respond to this generated session?

One interface, two implementations::

    response = simulator.score(users [B], history [B, T], lengths [B], sessions [B, m])
    response.watch_ms [B, m]   expected watch time of each item (ms)
    response.view_through [B, m]  P(watched to at least vtr_ratio of its duration)
    response.like / .follow [B, m]  P(like), P(follow)
    response.swt [B]           expected session watch time = watch_ms.sum(1)

Items ``< 0`` (no item) score 0 and are left out of the per-session rates. Inputs may be
numpy arrays or CPU/GPU tensors; outputs are float64 numpy arrays.

- ``ground_truth``: the synthetic generator's exact expectations
  (:class:`data_pipeline.ground_truth.GroundTruth`); the history is not needed. With watch
  logit z and noise scale σ, P(view-through) = Φ((z - logit(vtr_ratio)) / σ) exactly.
- ``learned``: a per-item user-response model, history → user vector (attention + mean
  pooling, plus the bundle's categorical user features), then one MLP over
  ``[u ⊙ v, u, v]`` with four outputs: watch ratio (BCE against the observed ratio clipped
  to [0, 1], so sigmoid = E[ratio]; expected watch = ratio × duration), view-through,
  like and follow. It trains on the ``simulator_train`` users' logged events before their
  evaluation period (:mod:`onerec.user_split`), with its own seed, so it never shares data
  with the reward model that IPA optimised against; its fit is reported on the
  ``simulator_holdout`` users. Responses the log lacks (no like column) come back as NaN.

Example::

    sim = make_simulator("learned", bundle, path="runs/simulator")   # trains if missing
    r = sim.score(users, history, lengths, sessions)
    r.swt.mean(), r.vtr.mean()
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from scipy.special import logit, ndtr
from scipy.stats import pearsonr
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_pipeline.bundle import Bundle
from data_pipeline.cli import UserError
from data_pipeline.ground_truth import GroundTruth
from onerec.reward import HistoryPooling, ItemFeatures, duration_buckets, history_tail, watch_list_column
from onerec.train_reward import UserHistories, binary_auc, log_loss, pick_device, spearman
from onerec.user_split import UserSplitConfig, sessions_for

log = logging.getLogger(__name__)

SIMULATORS = ("ground_truth", "learned")
SIMULATOR_FILE = "simulator.pt"
RESPONSES = ("ratio", "view_through", "like", "follow")


@dataclass
class SessionResponse:
    """Expected responses to a batch of sessions (see the module docstring)."""

    watch_ms: np.ndarray
    view_through: np.ndarray
    like: np.ndarray
    follow: np.ndarray
    real: np.ndarray  # [B, m] bool: the slot holds an item

    @property
    def swt(self) -> np.ndarray:
        """``[B]`` expected session watch time (ms)."""
        return self.watch_ms.sum(1)

    def _rate(self, values: np.ndarray) -> np.ndarray:
        return (values * self.real).sum(1) / np.maximum(self.real.sum(1), 1)

    @property
    def vtr(self) -> np.ndarray:
        """``[B]`` mean P(view-through) over the session's items."""
        return self._rate(self.view_through)

    @property
    def ltr(self) -> np.ndarray:
        return self._rate(self.like)

    @property
    def wtr(self) -> np.ndarray:
        return self._rate(self.follow)


class Simulator(Protocol):
    name: str

    def score(self, users: Any, history: Any, lengths: Any, sessions: Any) -> SessionResponse: ...


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


class GroundTruthSimulator:
    """Exact expected responses of the synthetic generator's users.

    Args:
        truth: the bundle's ground truth (``Bundle.ground_truth()``).
        vtr_ratio: view-through threshold as a share of duration.
    """

    name = "ground_truth"

    def __init__(self, truth: GroundTruth, vtr_ratio: float = 0.7) -> None:
        self.truth = truth
        self.vtr_ratio = vtr_ratio

    def score(self, users: Any, history: Any, lengths: Any, sessions: Any) -> SessionResponse:
        users, sessions = _numpy(users).astype(np.int64), _numpy(sessions).astype(np.int64)
        real = sessions >= 0
        items = np.where(real, sessions, 0)
        u = users[:, None]
        t = self.truth
        z = t.watch_logit(*np.broadcast_arrays(u, items))
        sigma = t.coefficients.watch_noise
        threshold = logit(self.vtr_ratio) if self.vtr_ratio < 1 else np.inf
        through = ndtr((z - threshold) / sigma) if sigma > 0 else (z >= threshold).astype(np.float64)
        return SessionResponse(
            watch_ms=t.expected_watch_ms(u, items) * real,
            view_through=through * real,
            like=t.engagement_prob(u, items, "like") * real,
            follow=t.engagement_prob(u, items, "follow") * real,
            real=real,
        )


# ---------------------------------------------------------------------------- learned
@dataclass
class LearnedSimulatorConfig:
    """The learned simulator's sizes and training.

    Attributes:
        seed: differs from the reward model's on purpose (another initialisation and order).
        vtr_ratio: view-through threshold (as the reward's labels).
        user_features: add the bundle's categorical user features to the user vector.
        min_positives: the like / follow output needs this many positive training events
            (fewer: that response is not modelled and comes back as NaN).
        split: must equal the reward run's split so that the two use disjoint users.
    """

    dim: int = 64
    pool_queries: int = 4
    hidden: int = 128
    dropout: float = 0.1
    max_history: int = 64
    duration_buckets: int = 16
    pretrained_items: bool = True
    item_embedding: bool = True
    user_features: bool = True
    vtr_ratio: float = 0.7
    min_positives: int = 20
    epochs: int = 4
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 1
    split: UserSplitConfig = field(default_factory=UserSplitConfig)
    device: str = "auto"
    threads: int = 0
    show_progress: bool = True


class ResponseNet(nn.Module):
    """History (+ user features) and items → logits of :data:`RESPONSES` per item."""

    def __init__(
        self, cfg: LearnedSimulatorConfig, num_items: int, feature_cards: list[int], num_users: int, pretrained_dim: int
    ) -> None:
        super().__init__()
        d = cfg.dim
        self.cfg = cfg
        self.items = ItemFeatures(num_items, d, cfg.duration_buckets, pretrained_dim if cfg.pretrained_items else 0, cfg.item_embedding)
        self.user = HistoryPooling(d, cfg.pool_queries, cfg.dropout)
        self.features = nn.ModuleList(nn.Embedding(c, d) for c in feature_cards)
        self.register_buffer("user_features", torch.zeros(num_users, len(feature_cards), dtype=torch.long))
        self.register_buffer("duration_ms", torch.zeros(num_items, dtype=torch.float64))
        self.mlp = nn.Sequential(
            nn.Linear(3 * d, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, len(RESPONSES))
        )

    def forward(self, users: Tensor, history: Tensor, lengths: Tensor, items: Tensor) -> Tensor:
        """``users [B]``, ``history [B, T]``, ``lengths [B]``, ``items [B, m]`` (valid) → ``[B, m, 4]``."""
        history, lengths = history_tail(history, lengths, self.cfg.max_history)
        real = torch.arange(history.shape[1], device=history.device)[None, :] < lengths[:, None]
        u = self.user(self.items(torch.where(real, history, 0)), lengths)  # (B, D)
        if len(self.features):
            feats = self.user_features[users]  # (B, F)
            u = u + sum(table(feats[:, k]) for k, table in enumerate(self.features))
        v = self.items(items)  # (B, m, D)
        u = u[:, None, :].expand_as(v)
        return self.mlp(torch.cat([u * v, u, v], dim=-1))


class LearnedSimulator:
    """A trained :class:`ResponseNet` behind the :class:`Simulator` interface."""

    name = "learned"

    def __init__(self, net: ResponseNet, has: dict[str, bool], metrics: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.has = has
        self.metrics = metrics or {}
        self.split = net.cfg.split

    @torch.no_grad()
    def score(self, users: Any, history: Any, lengths: Any, sessions: Any, batch_size: int = 4096) -> SessionResponse:
        device = self.net.duration_ms.device
        users_t = torch.as_tensor(_numpy(users), dtype=torch.long)
        history_t = torch.as_tensor(_numpy(history), dtype=torch.long)
        lengths_t = torch.as_tensor(_numpy(lengths), dtype=torch.long)
        sessions_t = torch.as_tensor(_numpy(sessions), dtype=torch.long)
        probs = []
        for start in range(0, users_t.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            logits = self.net(
                users_t[rows].to(device), history_t[rows].to(device), lengths_t[rows].to(device), sessions_t[rows].clamp(min=0).to(device)
            )
            probs.append(torch.sigmoid(logits.double()).cpu())
        p = torch.cat(probs).numpy() if probs else np.zeros((0, sessions_t.shape[1], len(RESPONSES)))
        real = sessions_t.numpy() >= 0
        duration = self.net.duration_ms.cpu().numpy()[np.where(real, sessions_t.numpy(), 0)]
        nan = np.full(real.shape, np.nan)
        out = {k: p[..., i] * real for i, k in enumerate(RESPONSES)}
        return SessionResponse(
            watch_ms=out["ratio"] * duration * real if self.has["ratio"] else nan,
            view_through=out["view_through"] if self.has["ratio"] else nan,
            like=out["like"] if self.has["like"] else nan,
            follow=out["follow"] if self.has["follow"] else nan,
            real=real,
        )


@dataclass
class EventSet:
    """Logged events: ``users, ends`` (history end), ``items``, ``labels [N, 4]`` (NaN =
    unknown), ``watch_ms`` and ``duration_ms`` (NaN = unknown), ``session``."""

    users: np.ndarray
    ends: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    watch_ms: np.ndarray
    duration_ms: np.ndarray
    session: np.ndarray

    def __len__(self) -> int:
        return int(self.users.size)


def logged_events(sessions: pl.DataFrame, vtr_ratio: float) -> EventSet:
    """Every event of the given sessions with its labels (watch ratio, view-through, like, follow)."""
    watch = watch_list_column(sessions)
    lists = ["items", *[c for c in (watch, "duration_ms", "like", "follow", "positive") if c and c in sessions.columns]]
    events = sessions.select("session_idx", "user_idx", "positives_before", *lists).explode(*lists)
    if "positive" in events.columns:
        pos = pl.col("positive").fill_null(False).cast(pl.Int64)
        events = events.with_columns((pl.col("positives_before") + pos.cum_sum().over("session_idx") - pos).alias("ends"))
    else:
        events = events.with_columns(pl.col("positives_before").alias("ends"))
    n = events.height
    labels = np.full((n, len(RESPONSES)), np.nan, dtype=np.float32)
    watch_ms = np.full(n, np.nan)
    duration_ms = np.full(n, np.nan)
    if "duration_ms" in events.columns:
        duration_ms = events["duration_ms"].fill_null(np.nan).to_numpy().astype(np.float64)
    if watch is not None and "duration_ms" in events.columns:
        w = events[watch].fill_null(np.nan).to_numpy().astype(np.float64)
        d = events["duration_ms"].fill_null(0.0).to_numpy().astype(np.float64)
        known = (d > 0) & ~np.isnan(w)
        ratio = np.where(known, w / np.where(d > 0, d, 1.0), np.nan)
        labels[:, 0] = np.clip(ratio, 0.0, 1.0)
        labels[:, 1] = np.where(known, (ratio >= vtr_ratio).astype(np.float32), np.nan)
        watch_ms = w
    for k, column in ((2, "like"), (3, "follow")):
        if column in events.columns:
            labels[:, k] = (events[column].fill_null(0).to_numpy() == 1).astype(np.float32)
    return EventSet(
        users=events["user_idx"].to_numpy().astype(np.int64),
        ends=events["ends"].to_numpy().astype(np.int64),
        items=events["items"].to_numpy().astype(np.int64),
        labels=labels,
        watch_ms=watch_ms,
        duration_ms=duration_ms,
        session=events["session_idx"].to_numpy().astype(np.int64),
    )


def item_durations(bundle: Bundle, events: EventSet | None = None) -> np.ndarray:
    """``[num_items]`` duration (ms): the item table's, else the median logged one, else the overall median."""
    duration = np.full(bundle.num_items, np.nan)
    if "duration_ms" in bundle.items.columns:
        duration = bundle.items.sort("item_idx")["duration_ms"].fill_null(np.nan).to_numpy().astype(np.float64)
    if events is not None:
        logged = pl.DataFrame({"item": events.items, "d": events.duration_ms}).filter(pl.col("d") > 0)
        medians = logged.group_by("item").agg(pl.col("d").median())
        fill = np.full(bundle.num_items, np.nan)
        fill[medians["item"].to_numpy()] = medians["d"].to_numpy()
        duration = np.where(np.isfinite(duration) & (duration > 0), duration, fill)
    known = np.isfinite(duration) & (duration > 0)
    return np.where(known, duration, np.median(duration[known]) if known.any() else 0.0)


def _correlations(pred: np.ndarray, target: np.ndarray) -> dict[str, float | None]:
    ok = np.isfinite(pred) & np.isfinite(target)
    if ok.sum() < 3 or np.ptp(pred[ok]) == 0 or np.ptp(target[ok]) == 0:
        return {"pearson": None, "spearman": None}
    return {"pearson": float(pearsonr(pred[ok], target[ok]).statistic), "spearman": spearman(pred[ok], target[ok])}


def simulator_fit(sim: LearnedSimulator, events: EventSet, histories: UserHistories, bundle: Bundle, cfg: LearnedSimulatorConfig) -> dict[str, Any]:
    """Fit on held-out events: AUCs, watch-time correlations (and against the ground truth)."""
    history, lengths = histories.padded(events.users, events.ends, cfg.max_history)
    r = sim.score(events.users, history, lengths, events.items[:, None])
    out: dict[str, Any] = {"events": len(events), "users": int(np.unique(events.users).size)}
    labels = events.labels
    if sim.has["ratio"]:
        known = ~np.isnan(labels[:, 0])
        ratio = r.watch_ms[:, 0] / np.maximum(sim.net.duration_ms.cpu().numpy()[events.items], 1e-9)
        out["watch_ratio_log_loss"] = log_loss(ratio[known], labels[known, 0])
        out["watch_ms_vs_observed"] = _correlations(r.watch_ms[:, 0], events.watch_ms)
        out["view_through_auc"] = binary_auc(r.view_through[known, 0], labels[known, 1] > 0.5)
    for k, name in ((2, "like"), (3, "follow")):
        if sim.has[name]:
            out[f"{name}_auc"] = binary_auc(getattr(r, name)[:, 0], labels[:, k] > 0.5)
            out[f"{name}_positives"] = int(np.nansum(labels[:, k]))
    if bundle.has_ground_truth:
        duration = np.maximum(sim.net.duration_ms.cpu().numpy()[events.items], 1e-9)
        truth = GroundTruthSimulator(bundle.ground_truth(), cfg.vtr_ratio).score(events.users, None, None, events.items[:, None])
        out["truth"] = {
            "watch_ms": _correlations(r.watch_ms[:, 0], truth.watch_ms[:, 0]),
            # the ratio strips out duration, which alone explains much of watch time:
            "watch_ratio": _correlations(r.watch_ms[:, 0] / duration, truth.watch_ms[:, 0] / duration),
            "like_prob": _correlations(r.like[:, 0], truth.like[:, 0]),
            "view_through_prob": _correlations(r.view_through[:, 0], truth.view_through[:, 0]),
            # the best any model can do against noisy single observations:
            "truth_watch_ms_vs_observed": _correlations(truth.watch_ms[:, 0], events.watch_ms),
        }
        # Session level: the first (up to) 5 events of each held-out session.
        frame = pl.DataFrame({"s": events.session, "pred": r.watch_ms[:, 0], "true": truth.watch_ms[:, 0]})
        per = frame.group_by("s").agg(pl.col("pred").head(5).sum(), pl.col("true").head(5).sum())
        out["truth"]["session_watch_spearman"] = spearman(per["pred"].to_numpy(), per["true"].to_numpy())
    return out


def train_learned_simulator(bundle: Bundle, cfg: LearnedSimulatorConfig, out_dir: str | Path | None = None) -> LearnedSimulator:
    """Fit the learned simulator on the ``simulator_train`` users; report its fit on
    ``simulator_holdout``; save it to ``out_dir`` when given."""
    clock = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    sessions = bundle.sessions()
    if watch_list_column(sessions) is None or "duration_ms" not in sessions.columns:
        raise UserError(f"{bundle.path}: the learned simulator needs watch time and duration in the log; this bundle has neither")
    train = logged_events(sessions_for(sessions, "simulator_train", cfg.split), cfg.vtr_ratio)
    holdout = logged_events(sessions_for(sessions, "simulator_holdout", cfg.split), cfg.vtr_ratio)
    if len(train) == 0:
        raise UserError(f"{bundle.path}: no simulator-group events to train on")
    has = {
        "ratio": True,
        "view_through": True,
        "like": "like" in sessions.columns and np.nansum(train.labels[:, 2]) >= max(cfg.min_positives, 1),
        "follow": "follow" in sessions.columns and np.nansum(train.labels[:, 3]) >= max(cfg.min_positives, 1),
    }
    histories = UserHistories(bundle.positives(), bundle.num_users)
    pretrained = None
    if cfg.pretrained_items and (bundle.path / "item_embeddings.npy").is_file():
        pretrained = np.load(bundle.path / "item_embeddings.npy")
    names = bundle.user_feature_names if cfg.user_features else []
    cards = bundle.user_feature_cardinalities if cfg.user_features else []
    net = ResponseNet(cfg, bundle.num_items, cards, bundle.num_users, pretrained.shape[1] if pretrained is not None else 0)
    duration = item_durations(bundle, train)
    net.items.set_tables(duration_buckets(duration, cfg.duration_buckets), pretrained)
    net.duration_ms.copy_(torch.from_numpy(duration))
    if names:
        table = bundle.users.sort("user_idx").select([f"uf_{n}" for n in names]).to_numpy().astype(np.int64)
        net.user_features.copy_(torch.from_numpy(table))
    net.to(device)

    # Heads with data: ratio and view-through where known, like/follow where the log has them.
    head_on = torch.tensor([has["ratio"], has["view_through"], has["like"], has["follow"]], device=device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = max(1, len(train) // cfg.batch_size)
    total = per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    bar = tqdm(total=total, desc="learned simulator", disable=not cfg.show_progress, unit="step")
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(len(train))
        if order.size >= cfg.batch_size:
            order = order[: per_epoch * cfg.batch_size]
        net.train()
        for rows in np.array_split(order, per_epoch):
            history, lengths = histories.padded(train.users[rows], train.ends[rows], cfg.max_history)
            logits = net(
                torch.from_numpy(train.users[rows]).to(device), history.to(device), lengths.to(device),
                torch.from_numpy(train.items[rows, None]).to(device),
            )[:, 0, :]  # (B, 4)
            y = torch.from_numpy(train.labels[rows]).to(device)
            known = ~torch.isnan(y) & head_on[None, :]
            loss = F.binary_cross_entropy_with_logits(logits[known], y[known], reduction="sum") / max(len(rows), 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)
    bar.close()
    sim = LearnedSimulator(net.cpu(), has)
    metrics = {
        "train_events": len(train),
        "train_users": int(np.unique(train.users).size),
        "seed": cfg.seed,
        "holdout": simulator_fit(sim, holdout, histories, bundle, cfg) if len(holdout) else {},
        "seconds": round(time.perf_counter() - clock, 1),
    }
    sim.metrics = metrics
    if out_dir is not None:
        save_learned_simulator(sim, Path(out_dir), bundle, cfg)
    return sim


def save_learned_simulator(sim: LearnedSimulator, out_dir: Path, bundle: Bundle, cfg: LearnedSimulatorConfig) -> None:
    """``simulator.pt`` (weights + sizes), ``config.yaml`` and ``metrics.json``."""
    from omegaconf import OmegaConf

    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    net = sim.net
    state = {
        "model": net.state_dict(),
        "config": asdict(cfg),
        "num_items": bundle.num_items,
        "num_users": bundle.num_users,
        "feature_cards": [m.num_embeddings for m in net.features],
        "pretrained_dim": int(net.items.pretrained.shape[1]) if net.items.pretrained is not None else 0,
        "has": sim.has,
        "metrics": sim.metrics,
        "data_dir": str(bundle.path),
    }
    tmp = out_dir / (SIMULATOR_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out_dir / SIMULATOR_FILE)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (out_dir / "metrics.json").write_text(json.dumps(sim.metrics, indent=2))


def load_learned_simulator(path: str | Path) -> LearnedSimulator:
    """A learned simulator saved by :func:`train_learned_simulator`, on CPU."""
    file = Path(path).expanduser() / SIMULATOR_FILE
    if not file.is_file():
        raise UserError(f"no learned simulator at {file}")
    state = torch.load(file, map_location="cpu", weights_only=False)
    raw = dict(state["config"])
    raw["split"] = UserSplitConfig(**raw["split"])
    cfg = LearnedSimulatorConfig(**raw)
    net = ResponseNet(cfg, state["num_items"], state["feature_cards"], state["num_users"], state["pretrained_dim"])
    net.load_state_dict(state["model"])
    return LearnedSimulator(net, state["has"], state.get("metrics"))


def make_simulator(
    name: str,
    bundle: Bundle,
    path: str | Path | None = None,
    cfg: LearnedSimulatorConfig | None = None,
    reward_run: str | Path | None = None,
) -> GroundTruthSimulator | LearnedSimulator:
    """``ground_truth`` (synthetic bundles) or ``learned`` (loaded from ``path``, trained
    there first when missing).

    Args:
        reward_run: when given, the learned simulator must use the reward run's user split
            (so their users are disjoint); a new one is trained with it.
    """
    if reward_run is not None:
        from onerec.reward import load_reward_model

        split = UserSplitConfig(**load_reward_model(reward_run).meta.get("split", {}))  # type: ignore[operator]
        cfg = cfg or LearnedSimulatorConfig()
        cfg.split = split
    if name == "ground_truth":
        if not bundle.has_ground_truth:
            raise UserError(f"simulator=ground_truth needs a synthetic bundle; {bundle.path} has no ground truth (use simulator=learned)")
        return GroundTruthSimulator(bundle.ground_truth(), (cfg or LearnedSimulatorConfig()).vtr_ratio)
    if name == "learned":
        if path is not None and (Path(path).expanduser() / SIMULATOR_FILE).is_file():
            sim = load_learned_simulator(path)
            if cfg is not None and sim.split != cfg.split:
                raise UserError(f"the learned simulator in {path} used the user split {sim.split}, not {cfg.split}; remove it to retrain")
            return sim
        return train_learned_simulator(bundle, cfg or LearnedSimulatorConfig(), path)
    raise UserError(f"simulator={name!r}; expected one of {list(SIMULATORS)}")


def format_fit(metrics: dict[str, Any]) -> str:
    """The learned simulator's fit as indented JSON (what a user reads after fitting)."""
    return json.dumps(metrics, indent=2)


def main(argv: list[str] | None = None) -> None:
    """Fit the learned simulator on a bundle::

        python -m onerec.simulators data_dir=BUNDLE out_dir=SIM_DIR [epochs=4] [seed=1] [split.salt=...]

    Keys are :class:`LearnedSimulatorConfig`'s (dotted for ``split``), checked by OmegaConf.
    """
    import sys

    from omegaconf import OmegaConf

    from data_pipeline.cli import clear_errors, setup_logging

    @clear_errors("onerec.simulators")
    def run() -> None:
        setup_logging()
        cli = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
        data_dir, out_dir = cli.pop("data_dir", None), cli.pop("out_dir", None)
        if not data_dir or not out_dir:
            raise UserError("usage: python -m onerec.simulators data_dir=BUNDLE out_dir=SIM_DIR [key=value ...]")
        cfg: LearnedSimulatorConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LearnedSimulatorConfig), cli))  # type: ignore[assignment]
        sim = train_learned_simulator(Bundle.open(data_dir), cfg, out_dir)
        print(format_fit(sim.metrics))
        print(f"learned simulator: {Path(out_dir) / SIMULATOR_FILE}")

    run()


if __name__ == "__main__":
    main()
