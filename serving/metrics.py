"""Serving metrics: request counts, statuses, latency percentiles, batch sizes, queue depth.

One :class:`ServingMetrics` per app, updated from the event loop (per HTTP request) and from
the batcher's worker threads (per batch), so every update takes a lock; each is a few dict
operations. ``GET /metrics`` renders :meth:`ServingMetrics.snapshot` as JSON, or
:meth:`ServingMetrics.to_prometheus` as Prometheus text with ``?format=prometheus``.

Latency percentiles cover a sliding window of the most recent ``window`` samples (not a time
window): cheap, and what a dashboard polling every few seconds wants under steady load.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["ServingMetrics", "percentile"]

PERCENTILES = (50, 90, 99)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of an ascending list (``nan`` when empty)."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _summary(samples: Iterable[float]) -> dict[str, float | int | None]:
    values = sorted(samples)
    out: dict[str, float | int | None] = {
        f"p{q}": (round(percentile(values, q), 3) if values else None) for q in PERCENTILES
    }
    out["mean"] = round(sum(values) / len(values), 3) if values else None
    out["count"] = len(values)
    return out


class ServingMetrics:
    """Thread-safe counters and windows for one server.

    Args:
        window: how many recent latency samples the percentiles cover.
        queue_depth: called at snapshot time for the batcher's current queue depth.
        queue_capacity: the queue's bound, reported beside the depth.

    Example::

        >>> m = ServingMetrics(window=100)
        >>> m.observe_request(200, 0.004, recommend=True)
        >>> m.observe_batch(size=3, seconds=0.002)
        >>> m.snapshot()["batch_size_histogram"]
        {'3': 1}
    """

    def __init__(
        self,
        window: int = 4096,
        queue_depth: Callable[[], int] | None = None,
        queue_capacity: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"metrics window must be >= 1, got {window}")
        self._lock = threading.Lock()
        self._queue_depth = queue_depth
        self._queue_capacity = queue_capacity
        self._requests = 0
        self._by_status: Counter[int] = Counter()
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._backend_ms: deque[float] = deque(maxlen=window)
        self._batch_sizes: Counter[int] = Counter()
        self._batches = 0
        self._batched_requests = 0
        self._fallbacks = 0
        self._unknown_items = 0
        self._backend_failures = 0

    def bind_queue(self, queue_depth: Callable[[], int], queue_capacity: int) -> None:
        """Tell the metrics where to read the queue depth (the batcher is built after them)."""
        self._queue_depth = queue_depth
        self._queue_capacity = queue_capacity

    def observe_request(self, status: int, seconds: float, *, recommend: bool) -> None:
        """Count one HTTP answer; a successful recommend also feeds the latency window."""
        with self._lock:
            self._requests += 1
            self._by_status[status] += 1
            if recommend and status == 200:
                self._latency_ms.append(seconds * 1000.0)

    def observe_batch(self, size: int, seconds: float, *, failed: bool = False) -> None:
        """Count one ``backend.recommend_batch`` call of ``size`` requests taking ``seconds``."""
        with self._lock:
            self._batches += 1
            self._batched_requests += size
            self._batch_sizes[size] += 1
            self._backend_ms.append(seconds * 1000.0)
            if failed:
                self._backend_failures += 1

    def observe_answer(self, *, fallback: bool, unknown_items: int) -> None:
        """Count what one successful answer reported."""
        with self._lock:
            self._fallbacks += int(fallback)
            self._unknown_items += unknown_items

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of every metric (the body of ``GET /metrics``)."""
        with self._lock:
            by_status = dict(self._by_status)
            latency = list(self._latency_ms)
            backend = list(self._backend_ms)
            snap: dict[str, Any] = {
                "requests_total": self._requests,
                "responses_by_status": {str(k): v for k, v in sorted(by_status.items())},
                "errors_by_status": {str(k): v for k, v in sorted(by_status.items()) if k >= 400},
                "batches_total": self._batches,
                "batch_size_histogram": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                "mean_batch_size": (
                    round(self._batched_requests / self._batches, 3) if self._batches else None
                ),
                "backend_failures_total": self._backend_failures,
                "fallback_total": self._fallbacks,
                "unknown_items_total": self._unknown_items,
            }
        snap["latency_ms"] = _summary(latency)
        snap["backend_latency_ms"] = _summary(backend)
        snap["queue_depth"] = self._queue_depth() if self._queue_depth is not None else 0
        snap["queue_capacity"] = self._queue_capacity
        return snap

    def to_prometheus(self, prefix: str = "onerec_serve") -> str:
        """The snapshot in Prometheus text exposition format (summaries as quantile gauges)."""
        snap = self.snapshot()
        lines: list[str] = []

        def emit(name: str, kind: str, samples: list[tuple[str, float | int | None]]) -> None:
            lines.append(f"# TYPE {prefix}_{name} {kind}")
            for labels, value in samples:
                shown = "NaN" if value is None else repr(float(value))
                lines.append(f"{prefix}_{name}{labels} {shown}")

        emit("requests_total", "counter", [("", snap["requests_total"])])
        emit(
            "responses_total",
            "counter",
            [(f'{{status="{k}"}}', v) for k, v in snap["responses_by_status"].items()],
        )
        emit("batches_total", "counter", [("", snap["batches_total"])])
        emit(
            "batch_size_total",
            "counter",
            [(f'{{size="{k}"}}', v) for k, v in snap["batch_size_histogram"].items()],
        )
        emit("backend_failures_total", "counter", [("", snap["backend_failures_total"])])
        emit("fallback_total", "counter", [("", snap["fallback_total"])])
        emit("unknown_items_total", "counter", [("", snap["unknown_items_total"])])
        for name in ("latency_ms", "backend_latency_ms"):
            summary = snap[name]
            emit(
                name,
                "gauge",
                [(f'{{quantile="0.{q:02d}"}}', summary[f"p{q}"]) for q in PERCENTILES],
            )
        emit("queue_depth", "gauge", [("", snap["queue_depth"])])
        return "\n".join(lines) + "\n"
