"""The ``onerec-serve`` HTTP app: ``build_app(backend, config)``, ``run(config, backend)``.

Routes:

- ``POST /v1/recommend``: :class:`~serving.api.RecommendBody` in,
  :class:`~serving.api.RecommendReply` out, through the :class:`~serving.batcher.DynamicBatcher`.
- ``GET /healthz``: 200 ``{"status": "ok", "model_version": ...}`` while the batcher runs.
- ``GET /metrics``: JSON counters (``?format=prometheus`` for Prometheus text).
- ``GET /openapi.json``, ``GET /docs``: the schema FastAPI derives from the pydantic models.

Status codes: 200; 400/422 malformed JSON or a bad field (the message names it); 404/405; 413
body over ``max_body_bytes``; 503 queue full or server stopping (with ``Retry-After``); 500 a
backend fault. Client mistakes never answer 5xx, and no request, good or bad, stops the server.

Note: this module must not use ``from __future__ import annotations``: the recommend route's
body type is made per app (its ``num_items`` maximum comes from the config), and FastAPI reads
it from the handler's annotation, which has to be the class itself rather than a string.
"""

import asyncio
import logging
import math
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api import (
    ErrorReply,
    HealthReply,
    InvalidRequestError,
    RecommendBody,
    RecommendReply,
    RecommendRequest,
    RecommendResponse,
    normalise_item_id,
    recommend_body_model,
    to_request,
)
from serving.backend import SessionBackend
from serving.batcher import BackendError, BatcherClosedError, DynamicBatcher, QueueFullError
from serving.metrics import ServingMetrics

__all__ = ["BackgroundServer", "ServeConfig", "build_app", "run"]

log = logging.getLogger(__name__)

RECOMMEND_PATH = "/v1/recommend"
_UNMETERED_PATHS = frozenset({"/healthz", "/metrics"})  # monitoring traffic is not counted
_RETRY_AFTER_S = "1"


@dataclass
class ServeConfig:
    """Server settings (``conf/serve.yaml`` carries the same keys).

    Args:
        host, port: where uvicorn listens (port 0: any free port).
        max_batch_size: most requests per backend call.
        max_wait_ms: longest a batch waits for company after its first request, while another
            batch is being computed (a lone request on an idle server runs at once).
        num_workers: batcher worker threads (backend calls in flight at once).
        queue_size: most requests waiting for a worker; beyond it, 503.
        max_body_bytes: larger request bodies answer 413 without being parsed.
        max_num_items: the largest ``num_items`` a client may ask for.
        default_num_items: ``num_items`` when the client sends none.
        log_level: uvicorn's log level.
        access_log: uvicorn's per-request access log (off: it costs latency under load).
        metrics_window: how many recent requests the latency percentiles cover.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    num_workers: int = 2
    queue_size: int = 256
    max_body_bytes: int = 1_000_000
    max_num_items: int = 50
    default_num_items: int = 5
    log_level: str = "info"
    access_log: bool = False
    metrics_window: int = 4096

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_batch_size", "num_workers", "queue_size", "max_body_bytes",
                     "max_num_items", "metrics_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if not 1 <= self.default_num_items <= self.max_num_items:
            raise ValueError(
                f"default_num_items must be in [1, max_num_items={self.max_num_items}], "
                f"got {self.default_num_items}"
            )


# ---------------------------------------------------------------------------------------
# ASGI middleware (pure ASGI: no per-request task or body copy beyond what they need).


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": _RETRY_AFTER_S} if status == 503 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


class _BodyLimitMiddleware:
    """Answers 413 for a body over ``max_body_bytes``, before anything parses it.

    A declared ``Content-Length`` over the limit is refused without reading; otherwise the body
    is read with a running count (chunked uploads lie about nothing but can be long) and then
    replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                await self._too_large(scope, receive, send, f"{int(value)} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, f"more than {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        response = JSONResponse(
            {"detail": f"request body is {size}, over the {self.max_body_bytes}-byte limit"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class _MetricsMiddleware:
    """Counts every answer by status and times it (monitoring routes excluded)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNMETERED_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response started is a 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            self.metrics.observe_request(
                status, time.perf_counter() - start, recommend=scope["path"] == RECOMMEND_PATH
            )


# ---------------------------------------------------------------------------------------
# Error rendering.


def _safe_text(value: object, limit: int = 200) -> str:
    """``str(value)`` that is valid UTF-8 (lone surrogates escaped) and at most ``limit`` chars."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """``(where, message)`` for one pydantic/FastAPI error, readable and safe to echo."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        where = loc[1] if len(loc) > 1 else "?"
        return "body", f"malformed JSON at character {where}: {_safe_text(reason)}"
    if loc == ("body",) and kind == "missing":
        return "body", "missing: send a JSON object with Content-Type: application/json"
    if loc == ("body",) and isinstance(error.get("input"), (bytes, bytearray)):
        return "body", "must be a JSON object sent with Content-Type: application/json"
    where = ".".join(_safe_text(part, 60) for part in loc[1:]) or "body"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return where, _safe_text(message)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())[:20]
    described = [_describe(e) for e in errors]
    return _error(
        422,
        _safe_text("invalid request: " + "; ".join(f"{w}: {m}" for w, m in described), 2000),
        errors=[
            {"loc": [_safe_text(p, 60) for p in e.get("loc", ())], "msg": m, "type": e.get("type")}
            for e, (_, m) in zip(errors, described)
        ],
    )


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this answer, so uvicorn still logs the traceback.
    return _error(500, f"internal error: {type(exc).__name__}")


# ---------------------------------------------------------------------------------------
# Answer building.


def _reply(
    body: RecommendBody, request: RecommendRequest, response: RecommendResponse, model_version: str
) -> RecommendReply:
    """Check the backend's answer against its contract and turn it into the wire reply."""
    items, scores = list(response.items), list(response.scores)
    if len(items) != len(scores):
        raise BackendError(f"backend returned {len(items)} items but {len(scores)} scores")
    if len(items) > request.num_items:
        raise BackendError(f"backend returned {len(items)} items for num_items={request.num_items}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise BackendError(f"backend returned item id {item!r} of type {type(item).__name__}")
    try:
        float_scores = [float(s) for s in scores]
    except (TypeError, ValueError) as exc:
        raise BackendError(f"backend returned a non-numeric score: {exc}") from None
    if not all(math.isfinite(s) for s in float_scores):
        raise BackendError(f"backend returned a non-finite score in {float_scores[:10]}")
    if request.exclude:
        excluded = set(request.exclude).intersection(normalise_item_id(i) for i in items)
        if excluded:
            raise BackendError(f"backend returned excluded items {sorted(excluded)[:10]}")
    as_sent: dict[str, int | str] = {}
    for item in body.history:  # echo unknown ids as the client spelled them (first spelling)
        as_sent.setdefault(normalise_item_id(item), item)
    return RecommendReply(
        items=items,
        scores=float_scores,
        model_version=model_version,
        unknown_items=[as_sent.get(u, u) for u in response.unknown_items],
        fallback=response.fallback,
    )


# ---------------------------------------------------------------------------------------
# The app.


def build_app(backend: SessionBackend, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``backend`` with ``config`` (defaults: :class:`ServeConfig`).

    The batcher's worker threads start and stop with the app's lifespan, so in-process tests
    must enter the client (``with TestClient(app) as client: ...``).

    Example::

        app = build_app(FakeBackend(), ServeConfig(max_batch_size=8))
        with TestClient(app) as client:
            client.post("/v1/recommend", json={"history": [1, 2, 3]}).json()["items"]
    """
    config = config if config is not None else ServeConfig()
    metrics = ServingMetrics(window=config.metrics_window)
    batcher = DynamicBatcher(
        backend,
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        num_workers=config.num_workers,
        queue_size=config.queue_size,
        metrics=metrics,
    )
    metrics.bind_queue(batcher.queue_depth, config.queue_size)
    body_model = recommend_body_model(config.max_num_items)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(
        title="onerec-serve",
        version="1",
        description="OneRec generative recommender: a user's history in, a session of items out.",
        lifespan=lifespan,
    )
    app.state.backend = backend
    app.state.config = config
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
    app.add_middleware(_BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)  # outermost: sees 413s too

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorReply, "description": text}
        for code, text in {
            400: "Unparseable body",
            413: "Body larger than max_body_bytes",
            422: "Malformed JSON or a bad field; the message names it",
            500: "Backend fault",
            503: "Queue full or server stopping; retry after Retry-After seconds",
        }.items()
    }

    @app.post(RECOMMEND_PATH, response_model=RecommendReply, responses=error_responses)
    async def recommend(body: body_model) -> Any:  # type: ignore[valid-type]
        """A session of ``num_items`` items for the user whose ``history`` is given."""
        request = to_request(body, config.default_num_items)
        try:
            future = batcher.submit(request)
        except (QueueFullError, BatcherClosedError) as exc:
            return _error(503, str(exc))
        try:
            response = await asyncio.wrap_future(future)
            reply = _reply(body, request, response, backend.model_version)
        except InvalidRequestError as exc:
            return _error(422, f"invalid request: {_safe_text(exc, 2000)}")
        except BatcherClosedError as exc:
            return _error(503, str(exc))
        except Exception as exc:  # a backend fault: answer it, keep serving
            log.warning("backend failed on a request: %s: %s", type(exc).__name__, exc)
            return _error(500, f"backend failed: {type(exc).__name__}: {_safe_text(exc, 2000)}")
        metrics.observe_answer(
            fallback=reply.fallback is not None, unknown_items=len(reply.unknown_items)
        )
        return reply

    @app.get("/healthz", response_model=HealthReply, responses={503: {"model": HealthReply}})
    async def healthz() -> Any:
        """Liveness/readiness: 200 while the server can take requests."""
        if batcher.running:
            return HealthReply(status="ok", model_version=backend.model_version)
        return JSONResponse(
            {"status": "unavailable", "model_version": backend.model_version}, status_code=503
        )

    @app.get("/metrics")
    async def metrics_route(format: Literal["json", "prometheus"] = "json") -> Any:
        """Request/error counts, latency percentiles, batch-size histogram, queue depth."""
        if format == "prometheus":
            return PlainTextResponse(metrics.to_prometheus())
        return {"model_version": backend.model_version, **metrics.snapshot()}

    return app


def run(config: ServeConfig, backend: SessionBackend) -> None:
    """Serve ``backend`` with uvicorn until interrupted (one process: the model lives in it).

    uvicorn's multi-process ``workers`` would need an import string and a model per process;
    scale with ``num_workers`` threads here, and with more server processes behind a balancer.
    """
    uvicorn.run(
        build_app(backend, config),
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        access_log=config.access_log,
    )


class BackgroundServer:
    """A real uvicorn server in a daemon thread, on a free loopback port: for tests and benchmarks.

    Args:
        app: the ASGI app (usually from :func:`build_app`).
        host: the address to bind.
        port: 0 picks a free port (the socket is bound before the thread starts: no race).
        log_level: uvicorn's log level.

    Example::

        with BackgroundServer(build_app(FakeBackend())) as server:
            httpx.get(server.url + "/healthz")
    """

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
            name="onerec-serve-background",
        )

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 20.0) -> str:
        """Start serving; returns :attr:`url` once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"uvicorn exited during startup on {self.url}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start on {self.url} within {timeout_s}s")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout_s: float = 20.0) -> None:
        """Ask uvicorn to exit gracefully and wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
