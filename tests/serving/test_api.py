"""The HTTP contract of onerec-serve, in-process (FastAPI's TestClient; no socket)."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Sequence

import pytest

with warnings.catch_warnings():  # starlette >= 1.x nudges TestClient users towards httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from serving import (
    FakeBackend,
    RecommendReply,
    RecommendRequest,
    RecommendResponse,
    ServeConfig,
    build_app,
)
from serving.metrics import ServingMetrics, percentile

pytestmark = pytest.mark.timeout(60)

CONFIG = ServeConfig(max_body_bytes=4096, max_num_items=20, default_num_items=5, max_wait_ms=1.0)


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(model_version="fake-7", max_history=10)


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    with TestClient(build_app(backend, CONFIG)) as test_client:
        yield test_client


def _alone(backend: FakeBackend, **fields: object) -> RecommendResponse:
    """What the backend answers for one request, without HTTP or batching."""
    return backend.recommend_batch([RecommendRequest(**fields)])[0]  # type: ignore[arg-type]


# -- the happy path ----------------------------------------------------------------------


def test_recommend_returns_every_field(client: TestClient, backend: FakeBackend) -> None:
    r = client.post("/v1/recommend", json={"history": [3, 17, 42]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "scores", "model_version", "unknown_items", "fallback"}
    assert len(body["items"]) == CONFIG.default_num_items
    assert len(body["scores"]) == len(body["items"])
    assert all(isinstance(s, float) and math.isfinite(s) for s in body["scores"])
    assert body["model_version"] == "fake-7"
    assert body["unknown_items"] == []
    assert body["fallback"] is None
    expected = _alone(backend, history=("3", "17", "42"), num_items=CONFIG.default_num_items)
    assert body["items"] == list(expected.items)
    assert body["scores"] == pytest.approx(list(expected.scores))
    RecommendReply.model_validate(body)


def test_int_and_string_ids_name_the_same_item(client: TestClient) -> None:
    as_ints = client.post("/v1/recommend", json={"history": [3, 17], "num_items": 7}).json()
    as_strs = client.post("/v1/recommend", json={"history": ["3", "17"], "num_items": 7}).json()
    assert as_ints == as_strs


def test_ids_come_back_in_the_backend_maps_type() -> None:
    backend = FakeBackend(catalogue=[f"v{i}" for i in range(50)])
    with TestClient(build_app(backend, CONFIG)) as client:
        body = client.post("/v1/recommend", json={"history": ["v3", "v4"]}).json()
    assert body["items"] and all(isinstance(i, str) and i.startswith("v") for i in body["items"])


def test_num_items_is_honoured(client: TestClient) -> None:
    for n in (1, 12, CONFIG.max_num_items):
        body = client.post("/v1/recommend", json={"history": [5], "num_items": n}).json()
        assert len(body["items"]) == n


def test_exclude_is_never_returned(client: TestClient) -> None:
    first = client.post("/v1/recommend", json={"history": [9, 8], "num_items": 6}).json()["items"]
    banned = first[:3]
    second = client.post(
        "/v1/recommend", json={"history": [9, 8], "num_items": 6, "exclude": banned + ["nope"]}
    ).json()["items"]
    assert not set(banned) & set(second)
    assert second[:3] == first[3:]


def test_unknown_items_are_dropped_and_echoed_as_sent(client: TestClient, backend: FakeBackend) -> None:
    r = client.post("/v1/recommend", json={"history": [1, "nope", 99999, "nope", 2]}).json()
    assert r["unknown_items"] == ["nope", 99999]
    assert r["fallback"] is None
    assert r["items"] == list(_alone(backend, history=("1", "2"), num_items=5).items)


@pytest.mark.parametrize("history", [[], ["ghost", -4, 10**30]])
def test_no_known_history_gets_the_popularity_fallback(client: TestClient, history: list) -> None:
    r = client.post("/v1/recommend", json={"history": history, "num_items": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fallback"] == "popularity"
    assert body["items"] == [1, 2, 3, 4]  # FakeBackend's popularity order
    assert body["unknown_items"] == history[:1] + history[1:]  # all of them, as sent


def test_long_history_is_accepted_and_the_backend_keeps_the_last_n(client: TestClient) -> None:
    history = list(range(1, 200))  # max_history is 10
    long = client.post("/v1/recommend", json={"history": history}).json()
    tail = client.post("/v1/recommend", json={"history": history[-10:]}).json()
    assert long["items"] == tail["items"]


def test_user_features_reach_the_backend(backend: FakeBackend) -> None:
    seen: list[RecommendRequest] = []
    backend.on_batch = lambda batch: seen.extend(batch)
    features = {"age": 31, "country": "nz", "tags": [1, "a", None, 2.5], "new": True}
    with TestClient(build_app(backend, CONFIG)) as client:
        r = client.post("/v1/recommend", json={"history": [1], "user_features": features})
    assert r.status_code == 200, r.text
    assert seen[0].user_features == features


# -- client mistakes: 4xx naming the problem, never 5xx --------------------------------------


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({}, "history: Field required"),
        ({"history": "1,2,3"}, "history"),
        ({"history": [1, 2.5]}, "history.1"),
        ({"history": [True]}, "history.0"),
        ({"history": [[1]]}, "history.0"),
        ({"history": [1], "num_items": 0}, "num_items"),
        ({"history": [1], "num_items": CONFIG.max_num_items + 1}, "less than or equal to 20"),
        ({"history": [1], "num_items": "5"}, "num_items"),
        ({"history": [1], "num_items": 5.0}, "num_items"),
        ({"history": [1], "exclude": 7}, "exclude"),
        ({"history": [1], "user_features": [1, 2]}, "user_features"),
        ({"history": [1], "user_features": {"a": {"b": 1}}}, "user_features.a"),
        ({"history": [1], "user_features": {"a": [[1]]}}, "user_features.a"),
        ({"history": ["x" * 300]}, "300 characters"),
        ({"history": [1], "num_item": 5}, "num_item: Extra inputs"),
        ([1, 2, 3], "body"),
        (None, "body"),
    ],
)
def test_bad_fields_answer_422_naming_the_field(client: TestClient, body: object, names: str) -> None:
    r = client.post(
        "/v1/recommend", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert names in r.json()["detail"]
    assert r.json()["errors"]


@pytest.mark.parametrize(
    ("content", "status", "says"),
    [
        (b"{bad json", 422, "malformed JSON"),
        (b"", 422, "missing"),
        (b'{"history": [NaN]}', 422, "history.0"),
        (b'{"history": ["\\ud800"]}', 422, "lone surrogate"),
        (b'{"history": [1], "user_features": {"\\udfff": 1}}', 422, "lone surrogate"),
        (b'{"history": [1], "user_features": {"x": Infinity}}', 422, "finite"),
        (b"\xff\xfe\x00garbage", 422, "malformed JSON"),
        (b"[" * 3000, 400, "parsing"),  # too deep for json.loads: FastAPI answers 400
    ],
)
def test_malformed_bodies_answer_4xx(client: TestClient, content: bytes, status: int, says: str) -> None:
    r = client.post("/v1/recommend", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_body_without_json_content_type_is_explained(client: TestClient) -> None:
    r = client.post("/v1/recommend", content=b'{"history": [1]}')
    assert r.status_code == 422
    assert "Content-Type: application/json" in r.json()["detail"]


def test_oversized_body_answers_413(client: TestClient) -> None:
    big = json.dumps({"history": list(range(2000))}).encode()
    assert len(big) > CONFIG.max_body_bytes
    r = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert str(CONFIG.max_body_bytes) in r.json()["detail"]


def test_oversized_chunked_body_answers_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the middleware must count
        yield b'{"history": ['
        for _ in range(1000):
            yield b"123456789,"
        yield b"1]}"

    r = client.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_wrong_route_and_method(client: TestClient) -> None:
    assert client.get("/v1/recommend").status_code == 405
    assert client.post("/v2/recommend", json={"history": [1]}).status_code == 404


# -- backend faults: 500 with a message, and the server keeps serving -----------------------


def test_backend_exception_is_500_and_serving_continues(backend: FakeBackend) -> None:
    with TestClient(build_app(backend, CONFIG)) as client:
        backend.fail_with = RuntimeError("model exploded")
        r = client.post("/v1/recommend", json={"history": [1]})
        assert r.status_code == 500
        assert "model exploded" in r.json()["detail"]
        backend.fail_with = None
        assert client.post("/v1/recommend", json={"history": [1]}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").json()["backend_failures_total"] >= 1


def test_backend_invalid_request_error_is_422() -> None:
    backend = FakeBackend(invalid_ids=["13"])
    with TestClient(build_app(backend, CONFIG)) as client:
        r = client.post("/v1/recommend", json={"history": [13]})
    assert r.status_code == 422
    assert "'13'" in r.json()["detail"]


class _LyingBackend(FakeBackend):
    """Breaks the contract in the way named by ``mode``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[RecommendResponse]:
        good = super().recommend_batch(requests)
        if self.mode == "count":
            return good[:-1]
        bad = RecommendResponse(items=[1, 2], scores=[0.5], unknown_items=(), fallback=None)
        if self.mode == "nan":
            bad = RecommendResponse(items=[1], scores=[float("nan")])
        if self.mode == "excluded":
            bad = RecommendResponse(items=[int(requests[0].exclude[0])], scores=[1.0])
        return [bad for _ in requests]


@pytest.mark.parametrize("mode", ["count", "lengths", "nan", "excluded"])
def test_backend_contract_violations_are_500_with_a_message(mode: str) -> None:
    with TestClient(build_app(_LyingBackend(mode), CONFIG)) as client:
        r = client.post("/v1/recommend", json={"history": [1], "exclude": [7]})
        assert r.status_code == 500
        assert r.json()["detail"].startswith("backend failed")
        assert client.get("/healthz").status_code == 200


# -- health, metrics, schema -------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model_version": "fake-7"}


def test_metrics_count_requests_errors_latency_batches(client: TestClient) -> None:
    for _ in range(3):
        client.post("/v1/recommend", json={"history": [1, 2]})
    client.post("/v1/recommend", json={"history": [1], "num_items": 0})
    client.post("/v1/recommend", json={"history": []})
    m = client.get("/metrics").json()
    assert m["requests_total"] == 5
    assert m["responses_by_status"] == {"200": 4, "422": 1}
    assert m["errors_by_status"] == {"422": 1}
    assert m["latency_ms"]["count"] == 4
    assert 0 < m["latency_ms"]["p50"] <= m["latency_ms"]["p90"] <= m["latency_ms"]["p99"]
    assert sum(m["batch_size_histogram"].values()) == m["batches_total"] >= 1
    assert m["queue_depth"] == 0 and m["queue_capacity"] == CONFIG.queue_size
    assert m["fallback_total"] == 1
    assert m["model_version"] == "fake-7"


def test_metrics_in_prometheus_text(client: TestClient) -> None:
    client.post("/v1/recommend", json={"history": [1]})
    text = client.get("/metrics", params={"format": "prometheus"}).text
    assert 'onerec_serve_responses_total{status="200"} 1.0' in text
    assert 'onerec_serve_latency_ms{quantile="0.99"}' in text


def test_openapi_documents_the_contract(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/recommend"]["post"]
    assert {"200", "413", "422", "503", "500"} <= set(op["responses"])
    body = schema["components"]["schemas"]["RecommendBody"]
    assert body["required"] == ["history"]
    num_items = next(s for s in body["properties"]["num_items"]["anyOf"] if s.get("type") == "integer")
    assert num_items["minimum"] == 1 and num_items["maximum"] == CONFIG.max_num_items
    assert "/healthz" in schema["paths"] and "/metrics" in schema["paths"]


def test_serve_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="default_num_items"):
        ServeConfig(max_num_items=3, default_num_items=4)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="port"):
        ServeConfig(port=70000)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert math.isnan(percentile([], 50))
    m = ServingMetrics(window=3)
    for ms in (100, 1, 2, 3):  # the first falls out of the window
        m.observe_request(200, ms / 1000, recommend=True)
    assert m.snapshot()["latency_ms"]["p99"] == 3.0
