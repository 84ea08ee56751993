"""The scoring service's HTTP limits: connection deadlines, the in-flight limit, the JSON content-type rule
and the score body's OpenAPI schema (docs/serving.md, *Limits*).

uvicorn times out only idle keep-alive connections (after a response); a client that never finishes its
headers, or sends less body than its Content-Length, holds its connection for ever. `GuardedH11Protocol`
closes such connections at a deadline, and `serve` runs uvicorn with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal, NotRequired

import h11
from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("unictr.serving")

Phase = Literal["headers", "body"]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two deadlines per request, each closing the connection when passed:
    `header_timeout` seconds from the connection's start (or the previous response's end) to the end of
    the request's headers, and `body_timeout` seconds from there to the end of its body. Partial data
    does not extend them (a client dribbling a byte a second is closed all the same)."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeouts: dict[Phase, float] = {"headers": header_timeout, "body": body_timeout}
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline of the phase the client's side of the connection is in now (h11's state)."""
        state = self.conn.their_state
        self._arm("headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

    def _arm(self, phase: Phase | None) -> None:
        if phase == self._phase:
            return  # still in the same phase: its deadline stands
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self._timeouts[phase], self._expire, phase)

    def _expire(self, phase: Phase) -> None:
        log.info("closing the connection from %s: request %s not complete within %g s", self.client, phase,
                 self._timeouts[phase])
        self._deadline = None
        self.transport.close()


def content_type_error(value: str | None) -> str | None:
    """Why a request's Content-Type is not JSON, or None when it is.

    JSON is `application/json` or `application/<name>+json`, any parameters, a charset only UTF-8 (RFC
    8259). A missing Content-Type counts as JSON: clients posting raw bytes (`httpx` `content=`, the
    benchmarks) send none, and the body is validated as JSON anyway.
    """
    if value is None:
        return None
    media, *params = (part.strip() for part in value.split(";"))
    media = media.lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        return f"content-type: {value!r} is not JSON; send application/json"
    for param in params:
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return f"content-type: charset {arg.strip()!r}; JSON bodies are UTF-8"
    return None


class InflightLimit:
    """At most `limit` requests in flight (reading their body or being scored); `enter` refuses more at once,
    so excess load gets a quick 503 instead of a queue, and cheap endpoints (`/healthz`) keep answering.
    Used on the event loop's thread only, so a plain counter is safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


# The score body's shape for the OpenAPI schema (`/openapi.json`) and the fuzz tests: feature names and
# view types are each surface's own, so they are free here; the request is validated per surface by
# `request.request_adapter`, which this schema does not replace.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
UserRef = str | int


class SequenceBody(TypedDict):
    """A user's events, one entry per event in each list (any order), plus one list per sequence side feature."""

    items: list[Int64]
    actions: list[Int64]
    timestamps_ms: list[Int64]


class UserBody(TypedDict):
    id: UserRef
    features: dict[str, Int64 | float]
    sequence: NotRequired[SequenceBody]


class CandidateBody(TypedDict):
    user: UserRef
    view_type: str
    features: dict[str, Int64 | float]


class CandidateColumnsBody(TypedDict):
    user: list[UserRef]
    view_type: list[str]
    features: dict[str, list[Int64 | float]]


class ScoreBody(TypedDict):
    """A score request: users and their candidates, as `candidates` or as `candidate_columns` (one of the two)."""

    request_time_ms: NotRequired[Int64]
    users: list[UserBody]
    candidates: NotRequired[list[CandidateBody]]
    candidate_columns: NotRequired[CandidateColumnsBody]


def score_openapi() -> dict[str, Any]:
    """The score operation's `requestBody` for FastAPI's `openapi_extra` (the handler reads raw bytes)."""
    schema = TypeAdapter(ScoreBody).json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _inline(schema)}}}}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` references replaced by the definitions (none is recursive), so it stands
    alone inside the OpenAPI document."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)
