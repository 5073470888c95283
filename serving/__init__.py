"""``onerec-serve``: the HTTP serving layer of OneRec.

A history of original item ids goes in, a session of items comes out, through a
:class:`DynamicBatcher` that groups concurrent requests into one model call. The model sits
behind the :class:`SessionBackend` Protocol, so the server knows nothing of TorchScript,
AOTInductor or id maps; :class:`FakeBackend` stands in for it in tests and benchmarks.

Example::

    from serving import FakeBackend, ServeConfig, run
    run(ServeConfig(port=8000), FakeBackend())

    # curl -s localhost:8000/v1/recommend -H 'content-type: application/json' \\
    #      -d '{"history": [3, 17, 42], "num_items": 5}'
"""

from serving.api import (
    ErrorReply,
    HealthReply,
    InvalidRequestError,
    RecommendBody,
    RecommendReply,
    RecommendRequest,
    RecommendResponse,
)
from serving.backend import FakeBackend, SessionBackend
from serving.batcher import BackendError, BatcherClosedError, DynamicBatcher, QueueFullError
from serving.metrics import ServingMetrics
from serving.server import BackgroundServer, ServeConfig, build_app, run

__all__ = [
    "BackendError",
    "BackgroundServer",
    "BatcherClosedError",
    "DynamicBatcher",
    "ErrorReply",
    "FakeBackend",
    "HealthReply",
    "InvalidRequestError",
    "QueueFullError",
    "RecommendBody",
    "RecommendReply",
    "RecommendRequest",
    "RecommendResponse",
    "ServeConfig",
    "ServingMetrics",
    "SessionBackend",
    "build_app",
    "run",
]
