"""Dynamic batching: concurrent requests are grouped into one ``backend.recommend_batch`` call.

::

    HTTP handlers ──submit()──► bounded queue ──► worker 1: collect ≤ max_batch_size (waiting
                   (Full → 503)                              ≤ max_wait_ms while another batch
                                                             runs), then recommend_batch(batch)
                                               ──► worker 2: collects the next batch while
                                                             worker 1 runs the model ...

- **Bounded queue.** :meth:`DynamicBatcher.submit` never blocks: a full queue raises
  :class:`QueueFullError` (the server answers 503), so overload sheds load instead of growing
  latency without bound.
- **Collection.** One worker at a time collects (a lock), so two idle workers never split a
  burst into two half-batches. It blocks for the first request, takes whatever is already
  queued, and then, **only while another batch is being computed**, waits for more until the
  batch is full or ``max_wait_ms`` has passed since the first. On an idle server a lone
  request runs at once: waiting would add its whole length to the latency, and nobody is
  busy. Under load the wait buys larger batches, which cost less per request.
- **Workers are threads.** The backend runs on ``num_workers`` threads, off the event loop.
  torch releases the GIL inside its ops, so while one worker is in the model another can collect
  and run the next batch: threads give real parallelism here without copying the model into
  processes. Python-heavy backends (like :class:`~serving.backend.FakeBackend`) get concurrency
  but little parallelism.
- **Fault isolation.** If a batch of several requests raises, each request is retried alone,
  so one poisoned request fails only itself. A backend that returns the wrong number of
  answers fails the whole batch with :class:`BackendError`.
- Requests whose future was cancelled (client gone) are dropped before the model runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from serving.api import RecommendRequest, RecommendResponse
from serving.backend import SessionBackend
from serving.in_flight import InFlight
from serving.metrics import ServingMetrics

__all__ = ["BackendError", "BatcherClosedError", "DynamicBatcher", "QueueFullError"]

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often an idle collector checks for shutdown


class QueueFullError(RuntimeError):
    """The batcher's queue is at capacity: the request was not accepted (answer 503)."""


class BatcherClosedError(RuntimeError):
    """The batcher is not running (not started yet, or shutting down): answer 503."""


class BackendError(RuntimeError):
    """The backend broke its contract (e.g. returned the wrong number of answers): answer 500."""


@dataclass
class _Pending:
    request: RecommendRequest
    future: Future[RecommendResponse]


class DynamicBatcher:
    """Groups submitted requests into batches for a :class:`~serving.backend.SessionBackend`.

    Args:
        backend: answers batches; called from ``num_workers`` threads at once.
        max_batch_size: most requests per ``recommend_batch`` call.
        max_wait_ms: longest a batch waits for more requests after its first arrived, while
            another batch is being computed (an idle server does not wait).
        num_workers: worker threads (batches in flight at once).
        queue_size: most requests waiting; beyond it :meth:`submit` raises ``QueueFullError``.
        metrics: optional; receives batch sizes and backend latencies.
        isolate_failures: retry each request of a failed multi-request batch alone.

    Example::

        batcher = DynamicBatcher(FakeBackend(), max_batch_size=8, max_wait_ms=2.0)
        batcher.start()
        response = batcher.submit(RecommendRequest(history=("3",), num_items=5)).result()
        batcher.close()
    """

    def __init__(
        self,
        backend: SessionBackend,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        num_workers: int = 2,
        queue_size: int = 256,
        metrics: ServingMetrics | None = None,
        isolate_failures: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.num_workers = num_workers
        self.queue_size = queue_size
        self.metrics = metrics
        self.isolate_failures = isolate_failures
        # None is a wake-up sentinel put by close(); it is never a request.
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=queue_size)
        self._collect_lock = threading.Lock()
        self._busy = InFlight()  # workers computing a batch now
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._running

    def queue_depth(self) -> int:
        """Requests waiting in the queue now (not counting batches being computed)."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if self._running:
            return
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._work, name=f"onerec-batcher-{i}", daemon=True)
            for i in range(self.num_workers)
        ]
        for thread in self._threads:
            thread.start()
        self._running = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the workers (letting batches in flight finish) and fail whatever still waits."""
        self._running = False
        self._stop.set()
        for _ in self._threads:  # wake idle collectors now rather than at their next poll
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break  # workers are busy and will see the stop flag after their batch
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                _fail(pending.future, BatcherClosedError("the server is shutting down"))

    def __enter__(self) -> DynamicBatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submission --------------------------------------------------------------------

    def submit(self, request: RecommendRequest) -> Future[RecommendResponse]:
        """Queue one request; its future resolves to the backend's answer (or its exception).

        Raises:
            QueueFullError: the queue holds ``queue_size`` requests already.
            BatcherClosedError: the batcher is not running.
        """
        if not self._running:
            raise BatcherClosedError("the batcher is not running (server starting or stopping)")
        future: Future[RecommendResponse] = Future()
        try:
            self._queue.put_nowait(_Pending(request, future))
        except queue.Full:
            raise QueueFullError(
                f"request queue is full ({self.queue_size} waiting); retry later"
            ) from None
        return future

    # -- workers -----------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._collect_lock:
                batch = self._collect()
            if batch:
                try:
                    self._run(batch)
                except BaseException as exc:  # never let a worker die silently
                    log.exception("batcher worker error")
                    for pending in batch:
                        _fail(pending.future, exc)
                finally:
                    self._busy.end()

    def _collect(self) -> list[_Pending]:
        try:
            first = self._queue.get(timeout=_POLL_S)
        except queue.Empty:
            return []
        if first is None:
            return []
        batch = [first]
        # Wait for company only while another worker computes (see the module docstring).
        deadline = time.monotonic() + (self.max_wait_s if self._busy.count > 0 else 0.0)
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                more = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:  # shutting down: answer what we have
                break
            batch.append(more)
        # Drop requests whose caller gave up; mark the rest running so they can't be cancelled.
        batch = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if batch:
            self._busy.begin()  # still under the collect lock: the next collector sees it
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        try:
            responses = self._call_backend([p.request for p in batch])
        except Exception as exc:
            if self.isolate_failures and len(batch) > 1:
                for pending in batch:
                    self._run_alone(pending)
            else:
                for pending in batch:
                    _fail(pending.future, exc)
            return
        for pending, response in zip(batch, responses):
            pending.future.set_result(response)

    def _run_alone(self, pending: _Pending) -> None:
        try:
            (response,) = self._call_backend([pending.request])
        except Exception as exc:
            _fail(pending.future, exc)
        else:
            pending.future.set_result(response)

    def _call_backend(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        start = time.perf_counter()
        failed = True
        try:
            responses = list(self.backend.recommend_batch(list(requests)))
            if len(responses) != len(requests):
                raise BackendError(
                    f"backend returned {len(responses)} answers for a batch of {len(requests)}"
                )
            failed = False
            return responses
        finally:
            if self.metrics is not None:
                self.metrics.observe_batch(
                    len(requests), time.perf_counter() - start, failed=failed
                )


def _fail(future: Future[RecommendResponse], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
