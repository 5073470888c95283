"""A seeded generator of Kuaishou-like short-video logs: the project's embedded default.

Users and items live in a latent taste space organised by topics. Each user has a few
favourite topics; each session dwells on one topic (often the previous session's), and a
logging recommender shows items from it, picking among popular candidates by affinity,
with some uniform exploration. Watch time depends on user-item affinity and on the
item's duration (lognormal, like KuaiRand's ``video_duration``: geometric mean ~60 s,
log-std ~1); likes, follows and shares are rarer events. The exact response model is
:class:`data_pipeline.ground_truth.GroundTruth`, handed on with the log.

Generation is vectorised per chunk of users, so 10M rows take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from data_pipeline.ground_truth import GroundTruth, ResponseCoefficients, _sigmoid
from data_pipeline.schema import ROW_NUMBER
from data_pipeline.sources.base import SourceData

_DAY_MS = 86_400_000
_START_MS = 1_649_376_000_000  # 2022-04-08, KuaiRand's era


@dataclass
class SyntheticConfig:
    """Size and shape of the synthetic log.

    Attributes:
        num_users / num_items / num_topics / latent_dim: the latent world.
        rows: if set, ``num_users`` is derived so the log has about this many rows.
        sessions_per_user / items_per_session: means (1 + Poisson).
        topic_stickiness: chance a session stays on the previous session's topic.
        exploration: share of impressions drawn uniformly from all items.
        candidates: popular in-topic candidates the logging policy chooses among.
        policy_temperature: softmax temperature of that choice over affinity.
        session_gap_hours: mean gap between sessions (exponential).
        seed: the generator's seed; the same seed gives the same log.
    """

    num_users: int = 3000
    num_items: int = 4000
    num_topics: int = 24
    latent_dim: int = 16
    rows: int | None = None
    sessions_per_user: float = 10.0
    items_per_session: float = 8.0
    topic_stickiness: float = 0.6
    user_topic_concentration: float = 0.25
    item_noise: float = 0.6
    user_noise: float = 0.5
    exploration: float = 0.1
    candidates: int = 6
    policy_temperature: float = 0.7
    popularity_exponent: float = 0.8
    session_gap_hours: float = 8.0
    authors_per_topic: int = 40
    seed: int = 0
    chunk_users: int = 4_000
    coefficients: dict[str, float] = field(default_factory=dict)

    def read(self) -> SourceData:
        return generate(self)


def _world(cfg: SyntheticConfig, rng: np.random.Generator, num_users: int) -> tuple[GroundTruth, dict[str, np.ndarray]]:
    """Draw topics, items and users: the latent world."""
    k, d, n_items = cfg.num_topics, cfg.latent_dim, cfg.num_items
    topic_centres = rng.normal(0.0, 1.0, (k, d)) / np.sqrt(d)
    topic_popularity = rng.dirichlet(np.full(k, 2.0))
    item_topic = rng.choice(k, size=n_items, p=topic_popularity)
    item_vec = topic_centres[item_topic] + rng.normal(0.0, cfg.item_noise / np.sqrt(d), (n_items, d))
    item_quality = rng.normal(0.0, 0.5, n_items)
    coefficients = ResponseCoefficients(**cfg.coefficients)
    duration = np.exp(rng.normal(coefficients.log_duration_mean, 1.0, n_items)).clip(3_000, 600_000)
    author = item_topic * cfg.authors_per_topic + rng.integers(0, cfg.authors_per_topic, n_items)
    # Zipf-like popularity of the logging policy, random rank within the catalogue.
    popularity = (1.0 + rng.permutation(n_items)) ** -cfg.popularity_exponent

    user_topics = rng.dirichlet(np.full(k, cfg.user_topic_concentration), size=num_users)
    user_vec = user_topics @ topic_centres + rng.normal(0.0, cfg.user_noise / np.sqrt(d), (num_users, d))
    truth = GroundTruth(
        # float32 halves the memory traffic of the affinity gathers, which dominate generation.
        user_vec=user_vec.astype(np.float32),
        item_vec=item_vec.astype(np.float32),
        item_quality=item_quality,
        duration_ms=duration,
        coefficients=coefficients,
    )
    # Items sorted by topic with a cumulative popularity that runs from k to k+1 inside
    # topic k: one searchsorted then samples an in-topic item for every row at once.
    order = np.lexsort((np.arange(n_items), item_topic))
    sorted_topic = item_topic[order]
    weights = popularity[order]
    topic_totals = np.bincount(sorted_topic, weights=weights, minlength=k)
    within = np.cumsum(weights) - np.concatenate([[0.0], np.cumsum(topic_totals)])[sorted_topic]
    global_cdf = sorted_topic + within / topic_totals[sorted_topic]
    tables = {
        "user_topics": user_topics,
        "item_order": order,
        "global_cdf": global_cdf,
        "author": author,
        "topic_has_items": topic_totals > 0,
    }
    return truth, tables


def _sample_sessions(
    cfg: SyntheticConfig, rng: np.random.Generator, truth: GroundTruth, tables: dict[str, np.ndarray], users: np.ndarray
) -> pl.DataFrame:
    """Generate every impression of the given users (one chunk)."""
    n_sessions = 1 + rng.poisson(cfg.sessions_per_user - 1.0, users.size)
    session_user = np.repeat(users, n_sessions)
    first_of_user = np.concatenate([[0], np.cumsum(n_sessions)[:-1]])
    # Session topics: sticky Markov chain over the user's topic mixture.
    cum_topics = np.cumsum(tables["user_topics"][session_user], axis=1)
    fresh = (cum_topics < rng.random((session_user.size, 1))).sum(1).clip(max=cfg.num_topics - 1)
    fresh = np.where(tables["topic_has_items"][fresh], fresh, np.argmax(tables["topic_has_items"]))
    stay = rng.random(session_user.size) < cfg.topic_stickiness
    stay[first_of_user] = False
    # A session that stays copies its predecessor's topic: resolve the chains with the
    # index of the last "fresh" session at or before each one.
    last_fresh = np.maximum.accumulate(np.where(~stay, np.arange(fresh.size), 0))
    topic = fresh[last_fresh]

    gaps = rng.exponential(cfg.session_gap_hours * 3_600_000, session_user.size)
    session_start = np.cumsum(gaps)
    session_start -= np.repeat(session_start[first_of_user], n_sessions)
    session_start += np.repeat(_START_MS + rng.integers(0, _DAY_MS, users.size), n_sessions)

    n_items = 1 + rng.poisson(cfg.items_per_session - 1.0, session_user.size)
    row_session = np.repeat(np.arange(session_user.size), n_items)
    row_user = session_user[row_session]
    rows = row_user.size

    # Logging policy: `candidates` popular in-topic items, one chosen by softmax(affinity / T).
    draws = topic[row_session][:, None] + rng.random((rows, cfg.candidates))
    cand = tables["item_order"][np.searchsorted(tables["global_cdf"], draws).clip(max=cfg.num_items - 1)]
    aff = truth.affinity(row_user[:, None], cand) / cfg.policy_temperature
    gumbel = -np.log(-np.log(rng.random(aff.shape)))
    item = cand[np.arange(rows), np.argmax(aff + gumbel, axis=1)]
    explore = rng.random(rows) < cfg.exploration
    item[explore] = rng.integers(0, cfg.num_items, int(explore.sum()))

    c = truth.coefficients
    a = truth.affinity(row_user, item)
    z = truth.watch_logit(row_user, item, affinity=a) + c.watch_noise * rng.standard_normal(rows)
    watch = np.round(truth.duration_ms[item] * _sigmoid(z))
    like = rng.random(rows) < _sigmoid(c.like_bias + c.engagement_affinity * a)
    follow = rng.random(rows) < _sigmoid(c.follow_bias + c.engagement_affinity * a)
    share = rng.random(rows) < _sigmoid(c.share_bias + c.engagement_affinity * a)

    # Within a session each video starts after the previous one was watched (+ a swipe).
    step = watch + 2_000.0
    first_row = np.concatenate([[0], np.cumsum(n_items)[:-1]])
    offset = np.cumsum(step) - step
    offset -= np.repeat(offset[first_row], n_items)
    timestamp = (session_start[row_session] + offset).astype(np.int64)

    return pl.DataFrame(
        {
            "user_id": row_user.astype(np.int64),
            "item_id": item.astype(np.int64),
            "timestamp": timestamp,
            "watch_time_ms": watch,
            "duration_ms": np.round(truth.duration_ms[item]),
            "like": like.astype(np.int8),
            "follow": follow.astype(np.int8),
            "share": share.astype(np.int8),
        }
    )


def generate(cfg: SyntheticConfig) -> SourceData:
    """Generate the log, its item side features and its ground truth."""
    if cfg.num_items < 2 or cfg.num_topics < 1:
        raise ValueError(f"synthetic data needs num_items >= 2 and num_topics >= 1, got {cfg.num_items}, {cfg.num_topics}")
    num_users = cfg.num_users
    if cfg.rows is not None:
        num_users = max(1, int(round(cfg.rows / (cfg.sessions_per_user * cfg.items_per_session))))
    rng = np.random.default_rng(cfg.seed)
    truth, tables = _world(cfg, rng, num_users)
    chunks = []
    for start in range(0, num_users, cfg.chunk_users):
        users = np.arange(start, min(num_users, start + cfg.chunk_users))
        chunks.append(_sample_sessions(cfg, rng, truth, tables, users))
    log = pl.concat(chunks).with_row_index(ROW_NUMBER, offset=1)
    item_features = pl.DataFrame(
        {
            "item_id": np.arange(cfg.num_items).astype(str),
            "duration_ms": np.round(truth.duration_ms),
            "author_id": tables["author"].astype(str),
        }
    )
    columns = ["user_id", "item_id", "timestamp", "watch_time_ms", "duration_ms", "like", "follow", "share"]
    return SourceData(
        name=f"synthetic(seed={cfg.seed}, users={num_users}, items={cfg.num_items})",
        interactions=log.lazy(),
        columns=columns,
        item_features=item_features,
        ground_truth=truth,
    )
