"""FastAPI app factory: ``create_app(settings) -> FastAPI``.

The app holds no model logic. Its lifespan loads the engine in the background (``/health`` answers 503
until the model is loaded and a warm-up forward passed), the guard middleware enforces the body-size cap
and Bearer auth and records request metrics, and every error leaves as the one envelope
``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers.engine_api import Engine
from servers.errors import QueueFullError, ServingError
from servers.heap import HeapFreezer
from servers.kinds import kind_spec
from servers.metrics import REQUEST_LANE, RequestLane, ServerMetrics
from servers.responses import error_response
from servers.routes import common
from servers.settings import ServerSettings

logger = logging.getLogger(__name__)

EngineFactory = Callable[[ServerSettings, ServerMetrics], Engine]


def default_engine_factory(settings: ServerSettings, metrics: ServerMetrics) -> Engine:
    """Build the engine of ``settings.kind`` from the kind registry (imports torch lazily)."""
    engine: Engine = kind_spec(settings.kind).engine_class().from_settings(settings, metrics)
    return engine


class RequestGuard:
    """ASGI middleware: body-size cap, Bearer auth, and per-route request metrics."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics, routes: set[str]) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.routes = routes
        self._keys = [k.encode() for k in settings.api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = path if path in self.routes else "other"
        started = time.perf_counter()
        status_holder = {"status": 500}
        lane = RequestLane()
        lane_token = REQUEST_LANE.set(lane)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = int(message["status"])
            await send(message)

        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await rejection(scope, receive, send_wrapper)
                return
            # Read the body here, under the cap, before the app sees it: an exception raised from inside the
            # app's receive() would be swallowed by FastAPI's body parser (it answers 400 "error parsing
            # the body"), so a chunked body without Content-Length could not get its 413 that way.
            limit = self.settings.max_body_bytes
            parts: list[bytes] = []
            received = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    status_holder["status"] = 499  # the client went away before sending its whole body
                    return
                body = message.get("body", b"")
                received += len(body)
                if received > limit:
                    await _too_large(limit)(scope, receive, send_wrapper)
                    return
                parts.append(body)
                if not message.get("more_body", False):
                    break
            replayed = False

            async def replay_receive() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": b"".join(parts), "more_body": False}
                return await receive()  # later calls: disconnect detection

            await self.app(scope, replay_receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, str(status_holder["status"])).inc()
            self.metrics.request_seconds.labels(route, lane.lane).observe(time.perf_counter() - started)
            REQUEST_LANE.reset(lane_token)

    def _reject(self, scope: Scope) -> Any:
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_body_bytes:
            return _too_large(self.settings.max_body_bytes)
        if self._keys and scope["path"] not in common.PUBLIC_PATHS:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not any(hmac.compare_digest(token.strip(), k) for k in self._keys):
                return error_response(
                    401, "missing or invalid API key: send 'Authorization: Bearer <key>'", "authentication_error",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None


def _too_large(limit: int) -> Any:
    return error_response(
        413, f"request body is larger than {limit} bytes (--max-body-bytes); send fewer or shorter inputs",
        "request_too_large",
    )


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next((e.get("ctx", {}).get("error", "") for e in errors if e.get("type") == "json_invalid"), "")
        return 400, f"malformed JSON body: {detail}".rstrip(": ")
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "invalid request: " + "; ".join(parts) + more


def create_app(
    settings: ServerSettings,
    engine: Engine | None = None,
    engine_factory: EngineFactory = default_engine_factory,
) -> FastAPI:
    """Build the server app for ``settings.kind``.

    Args:
        settings: The process's settings.
        engine: An engine that is already built (tests, notebooks); else ``engine_factory`` loads one in the
            background when the app starts.
        engine_factory: Loads the engine; runs in a thread so ``/health`` can answer 503 meanwhile.
    """
    spec = kind_spec(settings.kind)
    metrics: ServerMetrics = getattr(engine, "metrics", None) or ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.started_at = time.time()
        app.state.metrics = metrics
        app.state.engine = None
        app.state.load_error = None
        heap = app.state.heap = HeapFreezer(enabled=settings.gc_freeze)
        metrics.gc_pauses.install()
        tasks: list[asyncio.Task[None]] = []

        async def bring_up() -> None:
            try:
                built = engine if engine is not None else await asyncio.to_thread(engine_factory, settings, metrics)
                await built.start()
                # Before /health turns 200: the start-up heap leaves garbage collection (servers/heap.py).
                heap.freeze("engine ready")
                app.state.engine = built
                logger.info("ready: %s", built.info())
            except Exception as exc:
                logger.exception("model failed to load")
                app.state.load_error = type(exc).__name__ + (f": {exc}" if isinstance(exc, (ValueError, OSError)) else "")
                return
            tasks.append(asyncio.create_task(heap.freeze_when_accelerated(built)))

        tasks.append(asyncio.create_task(bring_up()))
        try:
            yield
        finally:
            for task in reversed(tasks):
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            if app.state.engine is not None:
                await app.state.engine.stop()
            metrics.gc_pauses.remove()
            heap.unfreeze()

    app = FastAPI(
        title=f"rag-plugins {settings.kind} server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    routers = [common.router, *spec.router_objects()]
    for router in routers:
        app.include_router(router)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> Any:
        if isinstance(exc, QueueFullError):
            metrics.rejected.inc()
        return error_response(exc.status, exc.message, exc.type, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        status, message = _validation_message(exc)
        return error_response(status, message, "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        message = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed here"}.get(
            exc.status_code, str(exc.detail)
        )
        return error_response(exc.status_code, message, kinds.get(exc.status_code, "http_error"))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Any:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal server error; see the server log", "server_error")

    routes = {str(getattr(r, "path", "")) for router in routers for r in router.routes}
    app.add_middleware(RequestGuard, settings=settings, metrics=metrics, routes=routes)
    return app
