"""Fuzz the request schema: whatever a client sends, the answer is never a 5xx.

Hypothesis generates (1) arbitrary JSON documents, (2) near-valid bodies where each field is
either right or arbitrary JSON, (3) raw byte strings, including JSON texts JSON's own encoder
would never write (NaN, lone surrogates, deep nesting). A 200 must also honour the reply schema.
In-process (TestClient), so a few hundred examples take seconds.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

with warnings.catch_warnings():  # starlette >= 1.x nudges TestClient users towards httpx2
    warnings.filterwarnings("ignore", message=".*httpx2")
    from fastapi.testclient import TestClient

from serving import FakeBackend, RecommendReply, ServeConfig, build_app

pytestmark = pytest.mark.timeout(120)

CONFIG = ServeConfig(max_body_bytes=20_000, max_num_items=20, max_wait_ms=0.5)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    backend = FakeBackend(catalogue=[*range(1, 200), *(f"s{i}" for i in range(50))], max_history=8)
    with TestClient(build_app(backend, CONFIG)) as test_client:
        yield test_client


# -- strategies ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
item_ids = st.integers(min_value=-5, max_value=260) | st.sampled_from(["1", "s3", "nope", "", "42"])


def _maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid value, sometimes arbitrary JSON."""
    return st.one_of(good, good, good, json_values)


near_valid_bodies = st.fixed_dictionaries(
    {"history": _maybe(st.lists(item_ids, max_size=40))},
    optional={
        "num_items": _maybe(st.integers(min_value=-3, max_value=25)),
        "exclude": _maybe(st.lists(item_ids, max_size=10)),
        "user_features": _maybe(
            st.dictionaries(
                st.text(max_size=8),
                scalars | st.lists(scalars, max_size=4),
                max_size=4,
            )
        ),
        "extra": json_values,
    },
)

raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b'{"history": [NaN, Infinity, -Infinity]}',
            b'{"history": ["\\ud800", "\\udfff"]}',
            b'{"history": [1], "user_features": {"\\ud83d": "\\ude00x"}}',
            b'{"history": [1], "num_items": 1e400}',
            b'{"history": [1], "num_items": 18446744073709551617}',
            b'{"history": [1], "history": "dup"}',
            b"[" * 5000 + b"]" * 5000,
            b'{"history": ' + b"[" * 900 + b"]" * 900 + b"}",
            b'{"history": [1]} trailing',
            b"\xef\xbb\xbf" + b'{"history": [1]}',
        ]
    ),
)
content_types = st.sampled_from(
    [None, "application/json", "application/json; charset=utf-8", "text/plain",
     "application/x-www-form-urlencoded", "application/vnd.api+json", "multipart/form-data"]
)


# -- checks --------------------------------------------------------------------------------


def _post(client: TestClient, content: bytes, content_type: str | None) -> Any:
    headers = {"content-type": content_type} if content_type else {}
    return client.post("/v1/recommend", content=content, headers=headers)


def _check(response: Any, body: object = None) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500], body)
    assert response.status_code in (200, 400, 413, 422), (response.status_code, response.text[:500])
    payload = response.json()  # every answer, error or not, is JSON
    if response.status_code != 200:
        assert isinstance(payload["detail"], str) and payload["detail"]
        return
    reply = RecommendReply.model_validate(payload)
    assert len(reply.items) == len(reply.scores)
    if not isinstance(body, dict):  # raw bytes that happened to be a valid body (BOM, spacing)
        return
    wanted = body.get("num_items") or CONFIG.default_num_items
    assert len(reply.items) <= wanted
    excluded = {str(e) for e in body.get("exclude") or []}
    assert not excluded & {str(i) for i in reply.items}
    if reply.fallback is None:
        assert reply.items  # the FakeBackend always has items to give


def _dumps(body: object) -> bytes:
    # Python's encoder, unlike the client's, writes NaN/Infinity: servers meet those too.
    return json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")


@FUZZ
@given(body=json_values)
def test_arbitrary_json_documents(client: TestClient, body: object) -> None:
    _check(_post(client, _dumps(body), "application/json"), body)


@FUZZ
@given(body=near_valid_bodies)
def test_near_valid_bodies(client: TestClient, body: dict) -> None:
    _check(_post(client, _dumps(body), "application/json"), body)


@FUZZ
@given(content=raw_bodies, content_type=content_types)
def test_raw_bytes(client: TestClient, content: bytes, content_type: str | None) -> None:
    _check(_post(client, content, content_type))


def test_server_still_answers_after_the_fuzzing(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/recommend", json={"history": [1, 2, 3]}).status_code == 200
    statuses = client.get("/metrics").json()["responses_by_status"]
    assert not [s for s in statuses if s.startswith("5")], statuses
