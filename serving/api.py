"""The HTTP contract of ``onerec-serve``: request/response schemas and the backend's dataclasses.

Two layers live here, on purpose side by side:

- **Wire schemas** (pydantic): :class:`RecommendBody` is what a client POSTs to
  ``/v1/recommend``, :class:`RecommendReply` what it gets back. FastAPI turns them into the
  OpenAPI schema at ``GET /openapi.json``.
- **Backend dataclasses** (plain, frozen): :class:`RecommendRequest` is what a
  :class:`~serving.backend.SessionBackend` receives, already normalised (item ids are
  ``str``, ``num_items`` resolved), and :class:`RecommendResponse` is what it returns.
  Backends never see pydantic or HTTP.

Item ids: a client may send ints or strings (``42`` and ``"42"`` name the same item). They are
normalised to ``str`` for the backend, whose id map decides the type of the ids it returns.
``unknown_items`` in the reply echo the client's own values (the first spelling seen).

Example::

    POST /v1/recommend
    {"history": [12, 7, "8812"], "num_items": 3, "exclude": [5]}

    200 {"items": [301, 44, 9], "scores": [0.93, 0.90, 0.71], "model_version": "m1-2024-06-01",
         "unknown_items": ["8812"], "fallback": null}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, create_model

__all__ = [
    "ClientItemId",
    "ErrorReply",
    "FeatureValue",
    "HealthReply",
    "InvalidRequestError",
    "MAX_ID_CHARS",
    "RecommendBody",
    "RecommendReply",
    "RecommendRequest",
    "RecommendResponse",
    "normalise_item_id",
    "recommend_body_model",
    "to_request",
]

#: Longest string item id (or feature string) accepted, in characters.
MAX_ID_CHARS = 256
#: Longest list inside one user feature.
MAX_FEATURE_LIST = 4096

Fallback = Literal["popularity"]
#: A feature value as the backend receives it: a JSON scalar or a flat list of scalars.
FeatureScalar = Union[bool, int, float, str, None]
FeatureValueT = Union[FeatureScalar, list[FeatureScalar]]


class InvalidRequestError(ValueError):
    """Raised by a backend for a request it cannot serve *because of the request's content*.

    The server answers it with 422 and the exception's message (a client mistake, never a
    5xx). Any other exception from a backend is a server fault and answers 500.
    """


# ---------------------------------------------------------------------------------------
# Value checks. Each names the bad value; previews are cut so a 1 MB string never echoes.


def _preview(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_text(value: str, what: str) -> str:
    if len(value) > MAX_ID_CHARS:
        raise ValueError(f"{what} is {len(value)} characters long, at most {MAX_ID_CHARS} allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON allows "\ud800" (a lone surrogate); it cannot be echoed back as UTF-8.
        raise ValueError(f"{what} {_preview(value)} is not valid unicode (lone surrogate)") from None
    return value


def _validate_item_id(value: object) -> int | str:
    # bool is an int in Python; `true` is never an item id.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"an item id must be an integer or a string, got {type(value).__name__} {_preview(value)}"
        )
    if isinstance(value, str):
        _check_text(value, "item id")
    return value


def _validate_scalar(value: object) -> FeatureScalar:
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a feature number must be finite, got {value!r}")
        return value
    if isinstance(value, str):
        return _check_text(value, "feature string")
    raise ValueError(
        "a feature value must be a number, string, boolean, null or a flat list of those, "
        f"got {type(value).__name__} {_preview(value)}"
    )


def _validate_feature(value: object) -> FeatureValueT:
    if isinstance(value, list):
        if len(value) > MAX_FEATURE_LIST:
            raise ValueError(f"a feature list has {len(value)} values, at most {MAX_FEATURE_LIST} allowed")
        return [_validate_scalar(v) for v in value]
    return _validate_scalar(value)


def _validate_feature_name(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a feature name must be a string, got {type(value).__name__}")
    return _check_text(value, "feature name")


_SCALAR_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number"},
        {"type": "string", "maxLength": MAX_ID_CHARS},
        {"type": "boolean"},
        {"type": "null"},
    ]
}

#: An item id as a client sends it: a JSON integer or string (``true`` and ``1.0`` are not ids).
ClientItemId = Annotated[
    Union[int, str],
    PlainValidator(_validate_item_id),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": MAX_ID_CHARS}]}),
]
#: One user feature: a finite number, string, boolean, null, or a flat list of those.
FeatureValue = Annotated[
    FeatureValueT,
    PlainValidator(_validate_feature),
    WithJsonSchema({"anyOf": [*_SCALAR_SCHEMA["anyOf"], {"type": "array", "items": _SCALAR_SCHEMA}]}),
]
FeatureName = Annotated[str, PlainValidator(_validate_feature_name), WithJsonSchema({"type": "string"})]


def normalise_item_id(item: int | str) -> str:
    """The backend-facing form of a client item id: ``42`` and ``"42"`` both become ``"42"``."""
    return item if isinstance(item, str) else str(item)


# ---------------------------------------------------------------------------------------
# Wire schemas.


class RecommendBody(BaseModel):
    """``POST /v1/recommend`` request body.

    ``history`` may be longer than the model's ``max_history``: it is accepted whole and the
    backend keeps the most recent ``max_history`` items. Unknown ids are dropped and reported in
    the reply. An empty (or all-unknown) history gets the popularity fallback.
    """

    model_config = ConfigDict(extra="forbid")

    history: list[ClientItemId] = Field(
        description="Original item ids the user interacted with, oldest first.",
    )
    user_features: dict[FeatureName, FeatureValue] | None = Field(
        default=None,
        description="Optional user features: name -> number/string/bool/null or a flat list of those.",
    )
    num_items: int | None = Field(
        default=None,
        ge=1,
        strict=True,  # 5.0 and "5" are type mistakes, not 5
        description="How many items to return (the server's default_num_items when absent).",
    )
    exclude: list[ClientItemId] | None = Field(
        default=None, description="Original item ids that must not be returned."
    )


def recommend_body_model(max_num_items: int) -> type[RecommendBody]:
    """:class:`RecommendBody` with ``num_items`` bounded by ``max_num_items``.

    The bound comes from the server config, so the model is made per app; that way the OpenAPI
    schema shows the real ``maximum`` and an out-of-range value is a 422 with pydantic's message.
    """
    if max_num_items < 1:
        raise ValueError(f"max_num_items must be >= 1, got {max_num_items}")
    return create_model(  # type: ignore[call-overload,no-any-return]
        "RecommendBody",
        __base__=RecommendBody,
        __doc__=RecommendBody.__doc__,
        num_items=(
            int | None,
            Field(
                default=None,
                ge=1,
                le=max_num_items,
                strict=True,
                description=f"How many items to return, 1..{max_num_items} "
                "(the server's default_num_items when absent).",
            ),
        ),
    )


class RecommendReply(BaseModel):
    """``POST /v1/recommend`` answer: a session of items, best first."""

    items: list[Union[int, str]] = Field(description="Original item ids, best first.")
    scores: list[float] = Field(
        description=(
            "One score per item, same order (higher is better). A generated session's items share "
            "its mean log-probability per item (the beam is scored as a whole); the popularity "
            "fallback scores 1 / rank."
        )
    )
    model_version: str
    unknown_items: list[Union[int, str]] = Field(
        description="History ids the model does not know (dropped), as the client sent them."
    )
    fallback: Fallback | None = Field(
        description='"popularity" when the history had no known item, else null.'
    )


class HealthReply(BaseModel):
    """``GET /healthz`` answer."""

    status: Literal["ok", "unavailable"]
    model_version: str


class ErrorReply(BaseModel):
    """Every 4xx/5xx answer: a human message, plus the field errors for a 422."""

    detail: str
    errors: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------------------------
# Backend dataclasses.


@dataclass(frozen=True)
class RecommendRequest:
    """One normalised request, as a :class:`~serving.backend.SessionBackend` receives it.

    Args:
        history: item ids as strings, oldest first, *not* truncated (the backend keeps the
            last ``max_history``) and possibly containing ids the backend does not know.
        num_items: how many items to return, already resolved and within the server's bounds.
        exclude: item ids (strings) that must not be returned.
        user_features: name -> scalar or flat list of scalars; empty when none were sent.
    """

    history: tuple[str, ...]
    num_items: int
    exclude: tuple[str, ...] = ()
    user_features: Mapping[str, FeatureValueT] = field(default_factory=dict)


@dataclass(frozen=True)
class RecommendResponse:
    """A backend's answer to one :class:`RecommendRequest`.

    Args:
        items: at most ``num_items`` item ids, best first, in the type the backend's id map holds.
        scores: one finite float per item.
        unknown_items: the request's history ids (strings, first occurrence order, no repeats)
            that the backend does not know and dropped.
        fallback: ``"popularity"`` when no history item was known, else ``None``.
    """

    items: Sequence[int | str]
    scores: Sequence[float]
    unknown_items: Sequence[str] = ()
    fallback: Fallback | None = None


def to_request(body: RecommendBody, default_num_items: int) -> RecommendRequest:
    """Normalise a validated body into the backend's :class:`RecommendRequest`."""
    return RecommendRequest(
        history=tuple(normalise_item_id(i) for i in body.history),
        num_items=body.num_items if body.num_items is not None else default_num_items,
        exclude=tuple(normalise_item_id(i) for i in body.exclude or ()),
        user_features=dict(body.user_features or {}),
    )
