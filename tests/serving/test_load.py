"""Load and fault test: a real ``onerec-serve`` process under a few thousand mixed requests.

The server runs through :func:`serving.run` (uvicorn) in a subprocess on a free loopback port;
the load comes from ``benchmarks/load_generator.py``. Good and malformed requests are mixed
deterministically, so the exact status counts are known in advance: zero 5xx, every bad request
refused with its own 4xx, and the server still healthy, correct and able to shut down cleanly.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from serving import FakeBackend, RecommendRequest

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
MAX_BODY = 4096

SERVER_SCRIPT = f"""
from serving import FakeBackend, ServeConfig, run
config = ServeConfig(port=0, max_body_bytes={MAX_BODY}, max_num_items=20, queue_size=1024,
                     max_wait_ms=2.0, log_level="info")
run(config, FakeBackend(delay_s=0.0005, invalid_ids=["666666"]))
"""


def _load_generator() -> ModuleType:
    """``benchmarks/load_generator.py`` (benchmarks/ is a folder of scripts, not a package)."""
    name = "onerec_bench_load_generator"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "load_generator.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


lg = _load_generator()


class ServerProcess:
    """``python -c SERVER_SCRIPT``: waits for uvicorn's "running on" line, keeps stderr."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        found = threading.Event()
        self.url = ""

        def drain() -> None:  # keep the pipe empty, or a chatty server would block on it
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = re.search(r"Uvicorn running on (http://\S+)", line)
                if match:
                    self.url = match.group(1)
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 30
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("server did not start:\n" + "".join(self.log))

    def stop(self) -> int:
        """SIGTERM (uvicorn's graceful shutdown) and the exit code.

        uvicorn re-raises the signal it caught once it has shut down, so a clean stop exits
        with -SIGTERM (older uvicorn: 0).
        """
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess()
    try:
        yield process
    finally:
        process.stop()


# One entry per kind of request: (status expected, index -> LoadRequest). The mix is cycled.
JSON = {"content-type": "application/json"}
Factory = Callable[[int], "lg.LoadRequest"]


def _good(i: int) -> dict:
    return {"history": [1 + (i * 7 + k) % 900 for k in range(1 + i % 25)], "num_items": 1 + i % 20}


MIX: list[tuple[int, Factory]] = [
    (200, lambda i: lg.LoadRequest(json=_good(i))),
    (200, lambda i: lg.LoadRequest(json={"history": [str(h) for h in _good(i)["history"]]})),
    (200, lambda i: lg.LoadRequest(json={**_good(i), "exclude": [1, 2, "3"]})),
    (200, lambda i: lg.LoadRequest(json={**_good(i), "user_features": {"age": i % 90, "tags": ["a", 1]}})),
    (200, lambda i: lg.LoadRequest(json={"history": list(range(1, 400))})),  # > max_history
    (200, lambda i: lg.LoadRequest(json={"history": []})),  # popularity fallback
    (200, lambda i: lg.LoadRequest(json={"history": ["ghost", -1, 10**40]})),  # all unknown
    (422, lambda i: lg.LoadRequest(json={"history": [1], "num_items": 0})),
    (422, lambda i: lg.LoadRequest(json={"history": [1], "num_items": 21})),
    (422, lambda i: lg.LoadRequest(json={"history": "1,2,3"})),
    (422, lambda i: lg.LoadRequest(json={"history": [1, 2.5, None]})),
    (422, lambda i: lg.LoadRequest(json={"history": [1], "surprise": True})),
    (422, lambda i: lg.LoadRequest(json={"user_features": {}})),
    (422, lambda i: lg.LoadRequest(content=b'{"history": [1, 2', headers=JSON)),
    (422, lambda i: lg.LoadRequest(content=b'{"history": [NaN]}', headers=JSON)),
    (422, lambda i: lg.LoadRequest(content=b'{"history": ["\\udc80"]}', headers=JSON)),
    (422, lambda i: lg.LoadRequest(content=bytes(range(256)) * 2, headers=JSON)),
    (422, lambda i: lg.LoadRequest(content=b"", headers=JSON)),
    (422, lambda i: lg.LoadRequest(content=b"null", headers=JSON)),
    (422, lambda i: lg.LoadRequest(content=b'{"history": [1]}')),  # no content type
    (422, lambda i: lg.LoadRequest(json={"history": [5, 666666]})),  # backend's InvalidRequestError
    (400, lambda i: lg.LoadRequest(content=b"[" * 3000, headers=JSON)),  # too deep to parse
    (413, lambda i: lg.LoadRequest(content=b'{"history": [' + b"1," * 3000 + b"1]}", headers=JSON)),
    (404, lambda i: lg.LoadRequest(json={"history": [1]}, url="/v2/nothing")),
    (405, lambda i: lg.LoadRequest(method="GET")),
]


def _mixed(base: str) -> Callable[[int], "lg.LoadRequest"]:
    def factory(i: int) -> lg.LoadRequest:
        req = MIX[i % len(MIX)][1](i)
        if req.url is not None:
            return lg.LoadRequest(req.method, base + req.url, req.json, req.content, req.headers)
        return req

    return factory


def test_thousands_of_mixed_requests_get_no_5xx(server: ServerProcess) -> None:
    rounds = 100
    total = rounds * len(MIX)  # 2,500
    report = lg.run_load(
        server.url + "/v1/recommend", _mixed(server.url), concurrency=16, total_requests=total,
        timeout_s=20,
    )
    expected = Counter(str(MIX[i % len(MIX)][0]) for i in range(total))
    assert report.server_errors == 0, report.status_counts
    assert report.transport_errors == 0, report.status_counts
    assert report.status_counts == dict(expected)
    assert report.requests == total

    # Still healthy, still right, and the metrics saw it all.
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    reply = httpx.post(server.url + "/v1/recommend", json={"history": [4, 8, 15], "num_items": 6})
    alone = FakeBackend().recommend_batch([RecommendRequest(("4", "8", "15"), num_items=6)])[0]
    assert reply.status_code == 200 and reply.json()["items"] == list(alone.items)
    metrics = httpx.get(server.url + "/metrics").json()
    assert metrics["requests_total"] == total + 1
    assert not [s for s in metrics["responses_by_status"] if s.startswith("5")]
    assert metrics["queue_depth"] == 0
    print("\nmixed load:", json.dumps(report.to_dict()))


def test_duration_bounded_run_reports_latency_and_throughput(server: ServerProcess) -> None:
    report = lg.run_load(
        server.url + "/v1/recommend", lg.recommend_payloads(history_length=10, num_items=5),
        concurrency=8, duration_s=0.5,
    )
    assert report.requests > 0 and report.status_counts == {"200": report.requests}
    assert 0.5 <= report.duration_s < 5
    lat = report.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert report.requests_per_s == pytest.approx(report.requests / report.duration_s)
    assert len(report.latencies_ms) == report.requests
    assert set(report.to_dict()) == {
        "requests", "duration_s", "requests_per_s", "latency_ms", "status_counts", "concurrency"
    }


def test_load_generator_counts_transport_errors() -> None:
    # A port nothing listens on (bound, never listening): every request is a ConnectError.
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/recommend"
        report = lg.run_load(url, lg.recommend_payloads(), concurrency=2, total_requests=4, timeout_s=2)
    assert report.requests == 4 and report.transport_errors == 4
    assert report.latency_ms["p50"] is None


def test_load_generator_refuses_unbounded_runs() -> None:
    with pytest.raises(ValueError, match="bounded"):
        lg.run_load("http://127.0.0.1:1/", lg.recommend_payloads())


def test_server_shuts_down_cleanly_after_the_load(server: ServerProcess) -> None:
    """Stops the module's server: keep this test last in the file (pytest runs file order)."""
    assert server.stop() in (0, -signal.SIGTERM), "".join(server.log[-30:])
    time.sleep(0.1)  # let the drain thread read the last lines
    log = "".join(server.log)
    assert "Application shutdown complete" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
