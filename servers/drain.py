"""Graceful drain on SIGTERM: refuse new work, finish what was accepted, then exit 0.

uvicorn on its own stops listening at the first SIGTERM (new clients see "connection refused", which a
load balancer cannot tell from a crash), gives in-flight requests ``timeout_graceful_shutdown`` seconds and
then re-raises the signal, so the process ends with status -15. A server that runs for weeks behind a
Service or a supervisor needs the opposite order:

1. SIGTERM: :class:`DrainState` turns ``draining``; the :class:`DrainGuard` middleware answers every new
   request 503 with ``Retry-After`` (``/health`` too, so balancers take the replica out), except
   ``/metrics`` so the last scrape still works. The listening socket stays open meanwhile.
2. Requests already accepted (in the queue or in a forward pass) run to the end: the scheduler keeps
   running until uvicorn's shutdown, which only starts once nothing is in flight.
3. When nothing is in flight, or ``drain_grace_s`` passed, :class:`DrainingServer` lets uvicorn shut
   down; the process exits 0. A second SIGINT/SIGTERM exits at once (operator's choice).

A request counts as accepted once it passed the drain gate; ``accepted == completed`` in the final log line
is the "no accepted request was dropped" invariant the reliability suite checks.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

#: Paths still answered while draining: Prometheus' last scrape of the dying process.
DRAIN_OPEN_PATHS = frozenset({"/metrics"})
DRAIN_RETRY_AFTER_S = 2


@dataclass
class DrainState:
    """Counters of one server process; read by the drain thread, written on the event loop.

    Attributes:
        draining: True from the first SIGTERM on.
        in_flight: Requests past the gate whose response has not been fully sent.
        accepted: Work requests (any method but GET/HEAD) that passed the gate since start.
        completed: Work requests whose handler returned (any status; the client got an answer).
        refused: Requests answered 503 because the server was draining.
    """

    draining: bool = False
    in_flight: int = 0
    accepted: int = 0
    completed: int = 0
    refused: int = 0
    started_drain_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self) -> None:
        with self._lock:
            if not self.draining:
                self.draining = True
                self.started_drain_at = time.monotonic()

    def idle(self) -> bool:
        return self.in_flight == 0


class DrainGuard:
    """ASGI middleware: counts in-flight requests and refuses new ones (503) once draining.

    Args:
        app: The wrapped app.
        state: Shared drain state (also held by :class:`DrainingServer`).
    """

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = self.state
        if state.draining and scope["path"] not in DRAIN_OPEN_PATHS:
            state.refused += 1
            await _send_draining(send)
            return
        work = scope.get("method", "GET") not in ("GET", "HEAD")
        state.in_flight += 1
        if work:
            state.accepted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.in_flight -= 1
            if work:
                state.completed += 1


async def _send_draining(send: Send) -> None:
    # Built by hand (not servers.responses) so this module stays independent of the app's routing code.
    body = (
        b'{"error":{"message":"server is shutting down; retry on another replica or after the indicated '
        b'delay","type":"unavailable_error","code":503}}'
    )
    start: Message = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(DRAIN_RETRY_AFTER_S).encode()),
            (b"connection", b"close"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


def install_drain(app: Any) -> DrainState:
    """Add :class:`DrainGuard` as the outermost middleware of ``app``; return its state.

    Call before the app serves its first request (Starlette builds its middleware stack then).
    """
    state = DrainState()
    app.add_middleware(DrainGuard, state=state)
    app.state.drain = state
    return state


def _server_class() -> type:
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """``uvicorn.Server`` whose first SIGTERM/SIGINT drains (see the module doc) and which exits 0."""

        def __init__(self, config: Any, state: DrainState, grace_s: float) -> None:
            super().__init__(config)
            self.drain_state = state
            self.grace_s = grace_s
            self._drain_thread: threading.Thread | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the process
            # would end with -15 instead of 0.
            if self.drain_state.draining:
                logger.warning("second %s: exiting without waiting for in-flight requests", signal.Signals(sig).name)
                self.should_exit = True
                self.force_exit = True
                return
            self.drain_state.begin()
            logger.info(
                "%s: draining, %d request(s) in flight, grace %.0fs",
                signal.Signals(sig).name, self.drain_state.in_flight, self.grace_s,
            )
            self._drain_thread = threading.Thread(target=self._finish_drain, name="drain", daemon=True)
            self._drain_thread.start()

        def _finish_drain(self) -> None:
            state = self.drain_state
            started = time.monotonic()
            deadline = started + self.grace_s
            while not state.idle() and time.monotonic() < deadline:
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            if state.idle():
                logger.info(
                    "drained in %.2fs: accepted=%d completed=%d refused_while_draining=%d",
                    elapsed, state.accepted, state.completed, state.refused,
                )
            else:
                logger.error(
                    "drain grace of %.0fs passed with %d request(s) in flight: accepted=%d completed=%d",
                    self.grace_s, state.in_flight, state.accepted, state.completed,
                )
            self.should_exit = True

    return DrainingServer


def run_draining(app: Any, state: DrainState, grace_s: float, **uvicorn_config: Any) -> None:
    """Serve ``app`` with uvicorn until SIGTERM/SIGINT, draining first (see the module doc)."""
    import uvicorn

    config = uvicorn.Config(app, **uvicorn_config)
    server = _server_class()(config, state, grace_s)
    server.run()
