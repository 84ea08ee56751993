"""The scoring service: FastAPI app over a model registry, reloading promoted versions without a restart.

Endpoints: `POST /v1/surfaces/{surface}/score`, `GET /healthz` (liveness), `GET /readyz` (every surface
serves the live version its pointer names), `GET /v1/models`, `GET /metrics`. The models follow the
registry through `models.ModelStore`: a background thread polls each surface's `pointer.json` and loads
each role's new version on its own; a version that fails to load leaves the last good one serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter
from starlette.requests import ClientDisconnect

from unictr.config import ServeSpec
from unictr.data.errors import DataError
from unictr.serving.http import GuardedH11Protocol, InflightLimit, content_type_error, score_openapi
from unictr.serving.models import ModelStore
from unictr.serving.registry import Registry, RegistryError
from unictr.serving.request import RequestError
from unictr.serving.scorer import Scorer, ScoreResult
from unictr.serving.telemetry import ServingMetrics

log = logging.getLogger("unictr.serving")

# The answer's JSON bytes, written by pydantic's core: the same JSON values as the standard library's
# encoder behind `JSONResponse`, many times faster (docs/performance.md).
ANSWER_JSON = TypeAdapter(dict[str, Any])


class ShadowRunner:
    """Scores requests with the shadow model on one worker thread, off the response path.

    At most `max_pending` requests wait; more are skipped (and counted), so shadowing never
    queues without bound or slows the live responses.
    """

    def __init__(self, metrics: ServingMetrics, max_pending: int = 4) -> None:
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unictr-shadow")
        self._slots = threading.BoundedSemaphore(max_pending)

    def submit(self, shadow: Scorer, body: bytes, live: ScoreResult) -> None:
        if not self._slots.acquire(blocking=False):
            self.metrics.shadow_skipped.labels(live.surface).inc()
            return
        self._pool.submit(self._run, shadow, body, live)

    def _run(self, shadow: Scorer, body: bytes, live: ScoreResult) -> None:
        try:
            self.metrics.observe_shadow(live, shadow.score(body))
        except Exception:
            log.exception("%s: shadow scoring with %s failed", live.surface, shadow.version)
            self.metrics.errors.labels(live.surface, "shadow").inc()
        finally:
            self._slots.release()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _read_body(request: Request, limit: int) -> bytes:
    """The JSON request body, refusing a non-JSON Content-Type (415) and anything over `limit` bytes (413)
    before reading it all."""
    if problem := content_type_error(request.headers.get("content-type")):
        raise RequestError(problem, 415)
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(f"body: {declared} bytes; at most {limit}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"body: more than {limit} bytes", 413)
    return bytes(body)


# The `unictr_errors_total` kind of each refusal's status.
ERROR_KINDS = {413: "too_large", 415: "content_type", 422: "validation"}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def create_app(registry_dir: str | Path, spec: ServeSpec | None = None) -> FastAPI:
    """The scoring app over `registry_dir`; models load at startup and follow the registry after.

    `spec` (default `ServeSpec()`): `threads` is set here, process-wide; `backend` and `bf16` choose how
    each surface's model runs (see `Scorer`). `inline` scores on the event loop's thread instead of
    handing each request to a worker thread: less time per request (the hand-over and its GIL traffic,
    docs/performance.md), but the process then scores one request at a time and answers health checks
    between requests; meant for one process per core with one thread each.
    """
    spec = spec or ServeSpec()
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    metrics = ServingMetrics()
    registry = Registry(registry_dir)
    store = ModelStore(registry, metrics, spec)
    shadow = ShadowRunner(metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.refresh()
        store.start()
        try:
            yield
        finally:
            store.stop()
            shadow.shutdown()

    app = FastAPI(title="unictr scoring service", lifespan=lifespan)
    app.state.store = store
    app.state.metrics = metrics
    app.post("/v1/surfaces/{surface}/score", openapi_extra=score_openapi())(_score_endpoint(store, shadow, spec))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers; `live` is what each surface serves (None: nothing)."""
        return {"status": "ok", "live": {s: m["live"] for s, m in store.summary().items()}}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """200 when every surface serves the live version its pointer names, else 503 with the reasons."""
        report = store.readiness()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        """What each surface serves and its load state, and every published version (role, when, whether
        signed; no paths of the machine that published it). `versions` is None while the registry cannot be
        listed (the reason is in the log and in `surfaces[...].pointer_error`)."""
        try:
            versions = registry.listing(public=True)
        except RegistryError:
            log.exception("listing the registry failed")
            versions = None
        return {"surfaces": store.summary(), "versions": versions}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _score_endpoint(
    store: ModelStore, shadow: ShadowRunner, spec: ServeSpec
) -> Callable[[str, Request], Awaitable[Response]]:
    """The handler of `POST /v1/surfaces/{surface}/score`: at most `spec.max_concurrency` in flight."""
    metrics = store.metrics
    inflight = InflightLimit(spec.max_concurrency)

    async def score(surface: str, request: Request) -> Response:
        """Probabilities per task for every candidate of the request (format: docs/serving.md)."""
        start = time.perf_counter()
        models = store.get(surface)
        if models is None:
            if store.known(surface):
                metrics.errors.labels(surface, "unavailable").inc()
                return _error(503, store.unavailable(surface))
            metrics.errors.labels("unknown", "not_found").inc()
            return _error(404, f"unknown surface {surface!r}; serving {sorted(store.summary())}")
        if not inflight.enter():
            metrics.errors.labels(surface, "busy").inc()
            return _error(503, f"busy: {inflight.limit} score requests in flight; retry", {"Retry-After": "1"})
        try:
            body = await _read_body(request, spec.max_body_bytes)
            if spec.inline:
                result = models.live.score(body)
            else:
                result = await run_in_threadpool(models.live.score, body)
        except (RequestError, DataError) as e:  # DataError: a rule of the encoder shared with the reader
            status = e.status if isinstance(e, RequestError) else 422
            metrics.errors.labels(surface, ERROR_KINDS[status]).inc()
            return _error(status, str(e))
        except ClientDisconnect:  # the client left, or its body missed the deadline (`GuardedH11Protocol`)
            metrics.errors.labels(surface, "disconnected").inc()
            return _error(408, "body: the connection closed before the whole body arrived")
        except Exception:
            log.exception("%s: scoring failed", surface)
            metrics.errors.labels(surface, "internal").inc()
            return _error(500, "internal error while scoring; see the server log")
        finally:
            inflight.leave()
        metrics.observe_score(result, time.perf_counter() - start)
        if models.shadow is not None:
            shadow.submit(models.shadow, body, result)
        return Response(ANSWER_JSON.dump_json(result.to_json()), media_type="application/json")

    return score


def serve(registry_dir: str | Path, spec: ServeSpec | None = None) -> None:
    """Run the app with uvicorn (blocking) on `spec.host`:`spec.port`, with the connection limits of `spec`:
    header and body deadlines (`GuardedH11Protocol`, so uvicorn's h11 protocol even where httptools is
    installed), the idle keep-alive timeout, and `max_connections` open connections before uvicorn answers
    503 (the score requests in flight are limited by the app, `max_concurrency`)."""
    import uvicorn

    spec = spec or ServeSpec()
    if not Path(registry_dir).is_dir():
        raise RegistryError(f"{registry_dir}: no such registry directory")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    protocol = partial(GuardedH11Protocol, header_timeout=spec.header_timeout, body_timeout=spec.body_timeout)
    uvicorn.run(
        create_app(registry_dir, spec), host=spec.host, port=spec.port, http=protocol,  # type: ignore[arg-type]
        limit_concurrency=spec.max_connections, timeout_keep_alive=spec.keepalive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=5, log_level="info",
    )
