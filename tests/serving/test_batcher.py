"""Dynamic batching: batched answers equal single answers, batches form, bounds hold."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future

import httpx
import pytest

with warnings.catch_warnings():  # starlette >= 1.x nudges TestClient users towards httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from serving import (
    BackendError,
    BackgroundServer,
    BatcherClosedError,
    DynamicBatcher,
    FakeBackend,
    QueueFullError,
    RecommendRequest,
    RecommendResponse,
    ServeConfig,
    build_app,
)

pytestmark = pytest.mark.timeout(60)


class Gate:
    """A FakeBackend ``on_batch`` hook that holds every batch until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[tuple[RecommendRequest, ...]] = []

    def __call__(self, batch: Sequence[RecommendRequest]) -> None:
        self.seen.append(tuple(batch))
        self.entered.set()
        assert self.release.wait(10), "test gate never released"


def _varied_requests(n: int, seed: int = 0) -> list[RecommendRequest]:
    """Requests that differ in every field a batch may mix: length, num_items, exclude."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        history = [str(rng.randint(1, 1000)) for _ in range(rng.randint(0, 30))]
        if rng.random() < 0.2:
            history.append(f"unknown-{rng.randint(0, 9)}")
        exclude = tuple(str(rng.randint(1, 1000)) for _ in range(rng.randint(0, 5)))
        out.append(RecommendRequest(tuple(history), num_items=rng.randint(1, 20), exclude=exclude))
    return out


def _alone(request: RecommendRequest) -> RecommendResponse:
    return FakeBackend().recommend_batch([request])[0]


def test_batched_answers_equal_single_answers() -> None:
    backend = FakeBackend(delay_s=0.003)
    requests = _varied_requests(300)
    with DynamicBatcher(backend, max_batch_size=16, max_wait_ms=2.0, num_workers=2, queue_size=512) as b:
        futures = [b.submit(r) for r in requests]
        answers = [f.result(timeout=20) for f in futures]
    for request, answer in zip(requests, answers):
        assert answer == _alone(request)
    assert max(backend.batch_sizes) > 1, backend.batch_sizes
    assert max(backend.batch_sizes) <= 16
    assert sum(backend.batch_sizes) == len(requests)


def test_batches_form_over_http_and_answers_match() -> None:
    """Concurrent HTTP clients against a real socket: batches > 1, each answer its own."""
    backend = FakeBackend(delay_s=0.005)
    config = ServeConfig(max_batch_size=32, max_wait_ms=3.0, num_workers=2)
    requests = _varied_requests(160, seed=1)

    async def fire(url: str) -> list[dict]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=20) as client:
            sem = asyncio.Semaphore(32)

            async def one(r: RecommendRequest) -> dict:
                async with sem:
                    body = {"history": list(r.history), "num_items": r.num_items, "exclude": list(r.exclude)}
                    response = await client.post("/v1/recommend", json=body)
                    assert response.status_code == 200, response.text
                    return response.json()

            return await asyncio.gather(*(one(r) for r in requests))

    with BackgroundServer(build_app(backend, config)) as server:
        replies = asyncio.run(fire(server.url))
        metrics = httpx.get(server.url + "/metrics").json()

    for request, reply in zip(requests, replies):
        expected = _alone(request)
        assert reply["items"] == list(expected.items)
        assert reply["scores"] == pytest.approx(list(expected.scores))
        assert reply["fallback"] == expected.fallback
    sizes = {int(k): v for k, v in metrics["batch_size_histogram"].items()}
    assert max(sizes) > 1, sizes
    assert metrics["mean_batch_size"] > 1
    assert sum(k * v for k, v in sizes.items()) == len(requests)


def test_batch_size_is_capped() -> None:
    gate = Gate()
    backend = FakeBackend()
    backend.on_batch = gate
    with DynamicBatcher(backend, max_batch_size=4, max_wait_ms=50, num_workers=1, queue_size=64) as b:
        futures = [b.submit(r) for r in _varied_requests(1)]
        assert gate.entered.wait(5)
        futures += [b.submit(r) for r in _varied_requests(10, seed=2)]
        gate.release.set()
        for f in futures:
            f.result(timeout=10)
    assert backend.batch_sizes == [1, 4, 4, 2]


def test_a_lone_request_on_an_idle_server_does_not_wait() -> None:
    """Nothing else runs, so waiting for company would only add latency: a max_wait of a
    minute must not delay the answer (the result() timeout would fail if it did)."""
    backend = FakeBackend()
    with DynamicBatcher(backend, max_batch_size=32, max_wait_ms=60_000, num_workers=2) as b:
        b.submit(RecommendRequest(("1",), num_items=3)).result(timeout=10)
        b.submit(RecommendRequest(("2",), num_items=3)).result(timeout=10)
    assert backend.batch_sizes == [1, 1]


def test_while_a_batch_runs_the_next_one_waits_for_company() -> None:
    """Worker 1 holds a batch; worker 2 takes the next request and waits (max_wait is a
    minute) until a second one fills its batch of two: one call for both."""
    gate = Gate()
    backend = FakeBackend()
    backend.on_batch = gate
    first, second, third = _varied_requests(3, seed=5)
    with DynamicBatcher(backend, max_batch_size=2, max_wait_ms=60_000, num_workers=2) as b:
        futures = [b.submit(first)]
        assert gate.entered.wait(5)
        futures.append(b.submit(second))
        time.sleep(0.2)  # worker 2 is now waiting for company
        assert len(gate.seen) == 1
        futures.append(b.submit(third))
        gate.release.set()
        answers = [f.result(timeout=10) for f in futures]
    assert gate.seen == [(first,), (second, third)]
    assert answers == [_alone(r) for r in (first, second, third)]


def test_queue_full_raises() -> None:
    gate = Gate()
    backend = FakeBackend()
    backend.on_batch = gate
    with DynamicBatcher(backend, max_batch_size=1, max_wait_ms=0, num_workers=1, queue_size=2) as b:
        held = b.submit(RecommendRequest(("1",), 1))
        assert gate.entered.wait(5)  # the worker holds it; the queue is empty again
        queued = [b.submit(RecommendRequest(("2",), 1)), b.submit(RecommendRequest(("3",), 1))]
        assert b.queue_depth() == 2
        with pytest.raises(QueueFullError, match="queue is full"):
            b.submit(RecommendRequest(("4",), 1))
        gate.release.set()
        for f in [held, *queued]:
            assert f.result(timeout=5).items


def test_queue_full_is_503_over_http_and_serving_resumes() -> None:
    gate = Gate()
    backend = FakeBackend()
    backend.on_batch = gate
    config = ServeConfig(max_batch_size=1, max_wait_ms=0, num_workers=1, queue_size=2)
    with TestClient(build_app(backend, config)) as client:
        batcher: DynamicBatcher = client.app.state.batcher  # type: ignore[attr-defined]
        futures = [batcher.submit(RecommendRequest(("1",), 1))]
        assert gate.entered.wait(5)
        futures += [batcher.submit(RecommendRequest(("1",), 1)) for _ in range(2)]
        r = client.post("/v1/recommend", json={"history": [1]})
        assert r.status_code == 503
        assert "queue is full" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        assert client.get("/metrics").json()["queue_depth"] == 2
        gate.release.set()
        for f in futures:
            f.result(timeout=5)
        assert client.post("/v1/recommend", json={"history": [1]}).status_code == 200
        assert client.get("/metrics").json()["errors_by_status"] == {"503": 1}


def test_a_poisoned_request_fails_alone() -> None:
    gate = Gate()
    backend = FakeBackend(poison_ids=["666"])
    backend.on_batch = gate
    with DynamicBatcher(backend, max_batch_size=32, max_wait_ms=20, num_workers=1) as b:
        first = b.submit(RecommendRequest(("1",), 2))
        assert gate.entered.wait(5)
        good = [b.submit(RecommendRequest((str(i),), 2)) for i in range(2, 8)]
        bad = b.submit(RecommendRequest(("5", "666"), 2))
        gate.release.set()
        assert first.result(timeout=5).items
        for f in good:
            assert f.result(timeout=5).items
        with pytest.raises(RuntimeError, match="poisoned by history item '666'"):
            bad.result(timeout=5)
    assert backend.batch_sizes[:2] == [1, 7]  # the batch of 7 failed, then ran one by one
    assert backend.batch_sizes[2:] == [1] * 7


def test_wrong_number_of_answers_is_a_backend_error() -> None:
    class Short(FakeBackend):
        def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
            return super().recommend_batch(requests)[:-1]

    with DynamicBatcher(Short(), max_batch_size=4, num_workers=1) as b:
        with pytest.raises(BackendError, match="returned 0 answers for a batch of 1"):
            b.submit(RecommendRequest(("1",), 1)).result(timeout=5)


def test_closed_batcher_refuses_and_fails_what_waits() -> None:
    gate = Gate()
    backend = FakeBackend()
    backend.on_batch = gate
    b = DynamicBatcher(backend, max_batch_size=1, max_wait_ms=0, num_workers=1)
    with pytest.raises(BatcherClosedError):
        b.submit(RecommendRequest(("1",), 1))
    b.start()
    running = b.submit(RecommendRequest(("1",), 1))
    assert gate.entered.wait(5)
    waiting = b.submit(RecommendRequest(("2",), 1))
    threading.Timer(0.2, gate.release.set).start()
    b.close()
    assert running.result(timeout=5).items  # a batch in flight finishes
    with pytest.raises(BatcherClosedError, match="shutting down"):
        waiting.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        b.submit(RecommendRequest(("1",), 1))


def test_cancelled_requests_are_not_computed() -> None:
    gate = Gate()
    backend = FakeBackend()
    backend.on_batch = gate
    with DynamicBatcher(backend, max_batch_size=8, max_wait_ms=20, num_workers=1) as b:
        held = b.submit(RecommendRequest(("1",), 1))
        assert gate.entered.wait(5)
        gone: Future[RecommendResponse] = b.submit(RecommendRequest(("2",), 1))
        kept = b.submit(RecommendRequest(("3",), 1))
        assert gone.cancel()
        gate.release.set()
        held.result(timeout=5)
        kept.result(timeout=5)
    assert [[r.history for r in batch] for batch in gate.seen] == [[("1",)], [("3",)]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
        ({"max_wait_ms": -1.0}, "max_wait_ms must be >= 0, got -1.0"),
        ({"num_workers": 0}, "num_workers must be >= 1, got 0"),
        ({"queue_size": 0}, "queue_size must be >= 1, got 0"),
    ],
)
def test_bad_batcher_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DynamicBatcher(FakeBackend(), **kwargs)
