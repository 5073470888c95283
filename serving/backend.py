"""What the server needs from a model: the :class:`SessionBackend` Protocol, and a test double.

The real backend (loading the exported TorchScript / AOTInductor artefact and its item tables)
lives elsewhere and only has to satisfy :class:`SessionBackend`; the server, batcher and tests
never import it. :class:`FakeBackend` is a deterministic stand-in for tests and benchmarks.

Threading: ``recommend_batch`` is called from ``num_workers`` batcher threads at once, so a
backend must be safe to call concurrently (a TorchScript module in ``eval`` / ``inference_mode``
is; torch releases the GIL inside its ops, which is what makes worker threads give parallelism).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from serving.api import InvalidRequestError, RecommendRequest, RecommendResponse

__all__ = ["FakeBackend", "SessionBackend"]


@runtime_checkable
class SessionBackend(Protocol):
    """A model that turns histories into sessions of items, a batch at a time.

    Contract (the server relies on each point):

    - ``model_version``: a short string naming the artefact, echoed in every reply.
    - ``max_history``: the longest history the model reads; longer histories are passed whole
      and the backend keeps the most recent ``max_history`` *known* items.
    - ``recommend_batch(requests)`` returns one :class:`RecommendResponse` per request, **same
      order**, and each answer must equal the answer to that request alone (requests in a batch
      may differ in history length, ``num_items``, ``exclude``). For each request: map ids
      (strings) through the id map, drop and report unknown ones, answer an empty or all-unknown
      history with the popularity list and ``fallback="popularity"``, never return an excluded
      item or more than ``num_items`` items, one finite score per item.
    - Raise :class:`~serving.api.InvalidRequestError` for a request whose *content* the model
      cannot serve (a client mistake, answered 422). Any other exception is a server fault
      (500). After a failed batch the batcher retries its requests one by one, so one bad
      request does not fail its batch-mates.
    - Called concurrently from several threads.
    """

    model_version: str
    max_history: int

    def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        """Answer ``requests`` (a non-empty batch), one response per request, same order."""
        ...


_MIX = 2654435761  # Knuth's multiplicative hash constant: a cheap, deterministic shuffle.


class FakeBackend:
    """A deterministic :class:`SessionBackend` over a fixed catalogue, for tests and benchmarks.

    The answer depends on the whole (known, truncated) history in order, so a batcher that
    mixed up requests gives visibly wrong answers. Items are ranked by a hash of
    ``(history, item)``; history and excluded items are never returned. An empty or all-unknown
    history gets the catalogue in order (its "popularity" list) and ``fallback="popularity"``.

    Args:
        catalogue: the known item ids, in popularity order; their type is what replies carry.
            Default: the ints ``1..1000``.
        model_version: echoed in replies.
        max_history: only the last ``max_history`` known history items count.
        delay_s: seconds each ``recommend_batch`` call sleeps (a model's batch latency).
        per_item_delay_s: extra seconds slept per request in the batch.
        fail_with: when set, every ``recommend_batch`` call raises it.
        poison_ids: a request whose history holds one of these raises ``RuntimeError``
            (the batch containing it fails; alone, only it fails).
        invalid_ids: a request whose history holds one of these raises ``InvalidRequestError``.

    Attributes:
        batch_sizes: the size of every ``recommend_batch`` call so far, in call order.
        on_batch: an optional hook called with each batch before answering it (tests use it
            to block or count); ``delay_s`` and friends may also be changed between calls.

    Example::

        >>> from serving import FakeBackend, RecommendRequest
        >>> backend = FakeBackend(catalogue=range(1, 11))
        >>> r = backend.recommend_batch([RecommendRequest(history=("3", "99"), num_items=2)])[0]
        >>> len(r.items), r.unknown_items, r.fallback
        (2, ('99',), None)
    """

    def __init__(
        self,
        catalogue: Iterable[int | str] | None = None,
        *,
        model_version: str = "fake-1",
        max_history: int = 50,
        delay_s: float = 0.0,
        per_item_delay_s: float = 0.0,
        fail_with: BaseException | None = None,
        poison_ids: Iterable[int | str] = (),
        invalid_ids: Iterable[int | str] = (),
    ) -> None:
        self._catalogue: list[int | str] = list(catalogue) if catalogue is not None else list(range(1, 1001))
        if not self._catalogue:
            raise ValueError("FakeBackend needs a non-empty catalogue")
        self._index: dict[str, int] = {str(item): i for i, item in enumerate(self._catalogue)}
        if len(self._index) != len(self._catalogue):
            raise ValueError("FakeBackend catalogue has duplicate ids (after str())")
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.model_version = model_version
        self.max_history = max_history
        self.delay_s = delay_s
        self.per_item_delay_s = per_item_delay_s
        self.fail_with = fail_with
        self.poison_ids = frozenset(str(i) for i in poison_ids)
        self.invalid_ids = frozenset(str(i) for i in invalid_ids)
        self.on_batch: Callable[[Sequence[RecommendRequest]], None] | None = None
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        """Answer each request independently (see the class docstring), same order."""
        with self._lock:
            self.batch_sizes.append(len(requests))
        if self.on_batch is not None:
            self.on_batch(requests)
        delay = self.delay_s + self.per_item_delay_s * len(requests)
        if delay > 0:
            time.sleep(delay)
        if self.fail_with is not None:
            raise self.fail_with
        return [self._recommend_one(r) for r in requests]

    def _recommend_one(self, request: RecommendRequest) -> RecommendResponse:
        for item in request.history:
            if item in self.poison_ids:
                raise RuntimeError(f"FakeBackend poisoned by history item {item!r}")
            if item in self.invalid_ids:
                raise InvalidRequestError(f"FakeBackend refuses history item {item!r}")
        known: list[int] = []
        unknown: list[str] = []
        for item in request.history:
            idx = self._index.get(item)
            if idx is not None:
                known.append(idx)
            elif item not in unknown:
                unknown.append(item)
        known = known[-self.max_history :]
        banned = {self._index[e] for e in request.exclude if e in self._index}

        if not known:
            ranked = [i for i in range(len(self._catalogue)) if i not in banned][: request.num_items]
            scores = [1.0 / (rank + 1) for rank in range(len(ranked))]
            return RecommendResponse(
                items=[self._catalogue[i] for i in ranked],
                scores=scores,
                unknown_items=tuple(unknown),
                fallback="popularity",
            )

        banned.update(known)
        seed = 0
        for pos, idx in enumerate(known):  # order-sensitive
            seed = (seed * 1_000_003 + (idx + 1) * (pos + 7)) % (1 << 32)
        keys = {i: (i * _MIX + seed) % (1 << 32) for i in range(len(self._catalogue)) if i not in banned}
        ranked = heapq.nsmallest(request.num_items, keys, key=keys.__getitem__)
        return RecommendResponse(
            items=[self._catalogue[i] for i in ranked],
            scores=[1.0 - keys[i] / float(1 << 32) for i in ranked],
            unknown_items=tuple(unknown),
            fallback=None,
        )
