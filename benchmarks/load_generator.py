"""A closed-loop HTTP load generator: latency percentiles, throughput and status counts.

``concurrency`` worker threads each keep one keep-alive connection (stdlib ``http.client``) and
send requests back to back, each built by ``payload_factory(i)`` for the request's index
``i``; the run stops after ``total_requests`` or ``duration_s``, whichever comes first (at least
one is required: a load run is always bounded). Latency is measured per request from send to
fully-read response; transport failures are counted as ``"error:<Exception>"`` and carry no
latency.

Why threads and ``http.client`` rather than asyncio + httpx: measured here, an
``httpx.AsyncClient`` spends ~6 ms of CPU per request and ``http.client`` well under 1 ms, and
on a small machine the client's CPU is stolen from the server it measures. The threads wait on
sockets with the GIL released. Still, run the generator in another process than the server.

Library use (e.g. from a serving latency benchmark)::

    from benchmarks.load_generator import run_load, recommend_payloads
    report = run_load("http://127.0.0.1:8000/v1/recommend", recommend_payloads(history_length=20),
                      concurrency=16, duration_s=10)
    print(report.latency_ms["p99"], report.requests_per_s, report.status_counts)

Command line (without ``--url`` it serves a ``FakeBackend`` in-process first: handy for a
smoke run, but then client and server share one interpreter)::

    python -m benchmarks.load_generator --url http://127.0.0.1:8000/v1/recommend \\
        --concurrency 16 --duration 10 --history-length 20 --json-out load.json

Only point it at servers you run yourself on loopback addresses.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["LoadReport", "LoadRequest", "recommend_payloads", "run_load"]


@dataclass(frozen=True)
class LoadRequest:
    """One request to send. ``content`` (raw bytes) wins over ``json``; neither: no body.

    Args:
        method: HTTP method.
        url: absolute URL; ``None`` means the generator's ``url``.
        json: a JSON-serialisable body (sent with ``Content-Type: application/json``).
        content: raw body bytes, sent as given (for malformed or oversized bodies).
        headers: extra headers.
    """

    method: str = "POST"
    url: str | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None


#: What a payload factory may return: a full :class:`LoadRequest`, or a JSON body to POST.
Payload = LoadRequest | Mapping[str, Any]
PayloadFactory = Callable[[int], Payload]


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list; ``None`` when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class LoadReport:
    """The outcome of one load run.

    Attributes:
        requests: requests completed (HTTP answers plus transport errors).
        duration_s: wall time from first send to last answer.
        requests_per_s: ``requests / duration_s``.
        latency_ms: ``p50``, ``p90``, ``p99``, ``mean``, ``max`` over HTTP answers (any status).
        status_counts: ``{"200": n, "422": n, "error:ConnectError": n, ...}``.
        concurrency: workers used.
        latencies_ms: every latency, grouped by worker (left out of :meth:`to_dict`).
    """

    requests: int
    duration_s: float
    requests_per_s: float
    latency_ms: dict[str, float | None]
    status_counts: dict[str, int]
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def server_errors(self) -> int:
        """How many answers had a 5xx status."""
        return sum(n for k, n in self.status_counts.items() if k.isdigit() and int(k) >= 500)

    @property
    def transport_errors(self) -> int:
        """How many requests got no HTTP answer at all (connection refused, timeout ...)."""
        return sum(n for k, n in self.status_counts.items() if k.startswith("error:"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the raw latencies)."""
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 4),
            "requests_per_s": round(self.requests_per_s, 2),
            "latency_ms": self.latency_ms,
            "status_counts": self.status_counts,
            "concurrency": self.concurrency,
        }


def _as_request(payload: Payload) -> LoadRequest:
    if isinstance(payload, LoadRequest):
        return payload
    if isinstance(payload, Mapping):
        return LoadRequest(json=dict(payload))
    raise TypeError(f"a payload factory must return a LoadRequest or a mapping, got {type(payload).__name__}")


_RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class _Connections:
    """One worker's keep-alive connections, one per ``(scheme, host, port)``."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._open: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}

    def get(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        key = (scheme, host, port)
        if key not in self._open:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            self._open[key] = cls(host, port, timeout=self.timeout_s)
        return self._open[key]

    def close(self) -> None:
        for conn in self._open.values():
            conn.close()
        self._open.clear()


def _encode(req: LoadRequest) -> tuple[bytes | None, dict[str, str]]:
    headers = dict(req.headers or {})
    if req.content is not None:
        return req.content, headers
    if req.json is not None:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json"
        return json.dumps(req.json, separators=(",", ":")).encode("utf-8"), headers
    return None, headers


def _send(
    conns: _Connections, req: LoadRequest, default_url: str
) -> tuple[int, float]:
    """Send one request; ``(status, seconds)``. A keep-alive connection the server closed
    while idle is reopened and the request sent again (that first attempt is not timed)."""
    target = urlsplit(req.url or default_url)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise ValueError(f"a load target must be an http(s) URL, got {req.url or default_url!r}")
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    body, headers = _encode(req)
    for attempt in (0, 1):
        conn = conns.get(target.scheme, target.hostname, target.port)
        reused = conn.sock is not None
        sent = time.perf_counter()
        try:
            conn.request(req.method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
        except _RETRYABLE:
            conn.close()
            if reused and attempt == 0:
                continue
            raise
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        return response.status, time.perf_counter() - sent
    raise AssertionError("unreachable")


def run_load(
    url: str,
    payload_factory: PayloadFactory,
    *,
    concurrency: int = 8,
    total_requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 10.0,
) -> LoadReport:
    """Drive ``url`` with ``concurrency`` closed-loop workers; see the module docstring.

    Args:
        url: the target for payloads that do not name their own.
        payload_factory: ``i -> LoadRequest | JSON body`` for the ``i``-th request (0-based);
            called from the worker threads, so it must be thread-safe (a pure function of ``i``).
        concurrency: requests in flight at once (one thread and connection each).
        total_requests: stop after this many requests.
        duration_s: stop sending after this many seconds (requests in flight finish).
        timeout_s: per-request socket timeout; a timeout counts as ``"error:TimeoutError"``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if total_requests is None and duration_s is None:
        raise ValueError("give total_requests or duration_s: a load run must be bounded")
    if total_requests is not None and total_requests < 0:
        raise ValueError(f"total_requests must be >= 0, got {total_requests}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")

    lock = threading.Lock()
    issued = 0
    results: list[tuple[Counter[str], list[float]]] = []
    failures: list[BaseException] = []
    start = time.perf_counter()
    deadline = start + duration_s if duration_s is not None else math.inf

    def next_index() -> int | None:
        nonlocal issued
        with lock:
            if (total_requests is not None and issued >= total_requests) or (
                time.perf_counter() >= deadline
            ):
                return None
            issued += 1
            return issued - 1

    def worker() -> None:
        statuses: Counter[str] = Counter()
        latencies: list[float] = []
        conns = _Connections(timeout_s)
        try:
            while (index := next_index()) is not None:
                req = _as_request(payload_factory(index))
                try:
                    status, seconds = _send(conns, req, url)
                except (OSError, http.client.HTTPException) as exc:
                    statuses[f"error:{type(exc).__name__}"] += 1
                    continue
                latencies.append(seconds * 1000.0)
                statuses[str(status)] += 1
        except BaseException as exc:  # a bad factory or URL: report it, don't hang
            failures.append(exc)
        finally:
            conns.close()
            with lock:
                results.append((statuses, latencies))

    threads = [
        threading.Thread(target=worker, name=f"load-{i}", daemon=True) for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]

    statuses_all: Counter[str] = Counter()
    latencies_all: list[float] = []
    for statuses, latencies in results:
        statuses_all.update(statuses)
        latencies_all.extend(latencies)
    ordered = sorted(latencies_all)
    completed = sum(statuses_all.values())
    return LoadReport(
        requests=completed,
        duration_s=elapsed,
        requests_per_s=completed / elapsed if elapsed > 0 else 0.0,
        latency_ms={
            "p50": _percentile(ordered, 50),
            "p90": _percentile(ordered, 90),
            "p99": _percentile(ordered, 99),
            "mean": sum(ordered) / len(ordered) if ordered else None,
            "max": ordered[-1] if ordered else None,
        },
        status_counts=dict(sorted(statuses_all.items())),
        concurrency=concurrency,
        latencies_ms=latencies_all,
    )


def recommend_payloads(
    history_length: int = 20,
    catalogue_size: int = 1000,
    num_items: int | None = 10,
    seed: int = 0,
    first_id: int = 1,
) -> PayloadFactory:
    """A factory of valid ``/v1/recommend`` bodies: random histories over ``first_id..``.

    Deterministic per index (request ``i`` always carries the same history for a given seed),
    so two runs send the same traffic. Histories are 1..``history_length`` items long.
    """
    if history_length < 1 or catalogue_size < 1:
        raise ValueError(
            f"history_length and catalogue_size must be >= 1, got {history_length}, {catalogue_size}"
        )

    def factory(index: int) -> Payload:
        rng = random.Random(seed * 1_000_003 + index)
        length = rng.randint(1, history_length)
        body: dict[str, Any] = {
            "history": [rng.randrange(first_id, first_id + catalogue_size) for _ in range(length)]
        }
        if num_items is not None:
            body["num_items"] = num_items
        return body

    return factory


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: print the report as JSON (and write it with ``--json-out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="target, e.g. http://127.0.0.1:8000/v1/recommend "
                        "(default: serve a FakeBackend in-process and target it)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=None, help="stop after this many")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--history-length", type=int, default=20)
    parser.add_argument("--catalogue-size", type=int, default=1000)
    parser.add_argument("--num-items", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json-out", default=None, help="also write the report here")
    args = parser.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.duration = 5.0

    factory = recommend_payloads(args.history_length, args.catalogue_size, args.num_items, args.seed)
    kwargs = dict(concurrency=args.concurrency, total_requests=args.requests,
                  duration_s=args.duration, timeout_s=args.timeout)
    if args.url:
        report = run_load(args.url, factory, **kwargs)
    else:
        from serving import BackgroundServer, FakeBackend, build_app  # only for the smoke mode

        with BackgroundServer(build_app(FakeBackend(catalogue=range(1, args.catalogue_size + 1)))) as srv:
            report = run_load(srv.url + "/v1/recommend", factory, **kwargs)
    text = json.dumps(report.to_dict(), indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0 if report.server_errors == 0 and report.transport_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
