"""The one HTTP client policy every rag-plugins client class uses.

* Async path: one ``aiohttp.ClientSession`` per event loop, reused for every request on that loop.
* Sync path: the same async code, run on one private background event loop (one thread for the whole
  process), so sync calls reuse that loop's session and its keep-alive connections, and work inside
  Jupyter, whose own loop is already running.
* Retries: connection errors, timeouts and HTTP 429/502/503/504 are retried with exponential backoff and
  jitter; a ``Retry-After`` header is honoured. Other 4xx are raised at once as
  :class:`~rag_plugins.errors.ServerResponseError` carrying the server's own message.
* Auth: ``Authorization: Bearer <api_key>`` when a key is given.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import random
import threading
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from rag_plugins.errors import ServerResponseError, ServerUnavailableError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MAX_RETRIES = 8
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a request again.

    Attributes:
        max_retries: Retries after the first attempt (0: no retry).
        backoff_base_s: First backoff; doubles each retry.
        backoff_max_s: Cap of one wait, ``Retry-After`` included.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base_s: float = 0.2
    backoff_max_s: float = 30.0

    def delay_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        With ``Retry-After`` the wait is never shorter than the server asked, and is spread at random over
        up to twice that, so that the many clients an overloaded server refused at once do not all come
        back in the same instant and get refused again.
        """
        if retry_after:
            try:
                floor = min(self.backoff_max_s, max(0.0, float(retry_after)))
            except ValueError:
                floor = None  # an HTTP-date; fall back to backoff
            if floor is not None:
                return max(floor, min(self.backoff_max_s, floor * random.uniform(1.0, 2.0)))
        backoff = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return backoff * random.uniform(0.5, 1.0)


class _BackgroundLoop:
    """One event loop on a daemon thread, shared by the sync paths of every client in the process."""

    _lock = threading.Lock()
    _instance: _BackgroundLoop | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sessions: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rag-plugins-http", daemon=True)
        self.thread.start()
        atexit.register(self.shutdown)

    def shutdown(self) -> None:
        """Close the sessions opened on this loop (at interpreter exit), so no 'Unclosed' warnings."""
        sessions = [s for s in list(self.sessions) if not s.closed]
        if not sessions or not self.thread.is_alive():
            return

        async def close_all() -> None:
            await asyncio.wait_for(asyncio.gather(*(s.close() for s in sessions)), timeout=5)

        try:
            self.run(close_all())
        except Exception:  # best effort at interpreter exit
            pass

    @classmethod
    def get(cls) -> _BackgroundLoop:
        with cls._lock:
            if cls._instance is None or not cls._instance.thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


def _drop_session_of_closed_loop(session: aiohttp.ClientSession) -> None:
    """Release a session whose event loop is already closed (e.g. one made under ``asyncio.run``).

    Its ``close()`` coroutine can no longer run; closing the connector marks the session closed and drops
    its sockets synchronously.
    """
    connector = session.connector
    if connector is None or connector.closed:
        return
    # aiohttp's public close() is a coroutine on TCPConnector; its synchronous core is _close().
    close_now = getattr(connector, "_close", None)
    try:
        if close_now is not None:
            close_now()
    except Exception:  # the closed loop may refuse callbacks; the connector is marked closed first
        pass


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, on the shared background loop of the clients.

    Works inside Jupyter (whose own loop is running) and reuses the clients' sessions on that loop.
    """
    return _BackgroundLoop.get().run(coro)


def _close_sessions_soon(sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession]) -> None:
    for loop, session in list(sessions.items()):
        if session.closed:
            continue
        if loop.is_closed() or not loop.is_running():
            _drop_session_of_closed_loop(session)
            continue
        try:
            asyncio.run_coroutine_threadsafe(session.close(), loop)
        except RuntimeError:
            _drop_session_of_closed_loop(session)


def _error_from_body(status: int, text: str, url: str) -> ServerResponseError:
    message, error_type = text.strip()[:2000] or f"HTTP {status}", "http_error"
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and "message" in err:
            message, error_type = str(err["message"]), str(err.get("type", error_type))
        elif isinstance(err, str):
            message = err
        elif "detail" in body:
            message = str(body["detail"])
        elif "message" in body:
            message = str(body["message"])
    return ServerResponseError(status, message, error_type, url)


class ServiceClient:
    """JSON-over-HTTP client of one server, with the shared retry/auth/error policy.

    Args:
        base_url: Server root, e.g. ``http://127.0.0.1:8001``.
        api_key: Sent as ``Authorization: Bearer``; None for none.
        timeout_s: Total seconds for one attempt.
        retry: Retry policy.
        headers: Extra headers for every request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._lock = threading.Lock()
        # Close this client's sessions when it is garbage-collected (the dict outlives it via the finalizer).
        weakref.finalize(self, _close_sessions_soon, self._sessions)

    # ------------------------------------------------------------------------------------------ sessions
    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        with self._lock:
            for old_loop in [lp for lp in self._sessions if lp.is_closed()]:
                _drop_session_of_closed_loop(self._sessions.pop(old_loop))
            session = self._sessions.get(loop)
            if session is None or session.closed:
                session = aiohttp.ClientSession(
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                    connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60),
                )
                self._sessions[loop] = session
                background = _BackgroundLoop._instance
                if background is not None and background.loop is loop:
                    background.sessions.add(session)
            return session

    async def aclose(self) -> None:
        """Close the session of the running loop."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()

    def close(self) -> None:
        """Close the session the sync path uses."""
        background = _BackgroundLoop.get()
        session = self._sessions.pop(background.loop, None)
        if session is not None:
            background.run(session.close())

    # ------------------------------------------------------------------------------------------ requests
    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path.lstrip('/')}"

    async def arequest(self, method: str, path: str, payload: Any | None = None) -> Any:
        """Send one request with retries; return the parsed JSON answer.

        Raises:
            ServerResponseError: a non-retryable error status, or a retryable one after the last retry.
            ServerUnavailableError: the server could not be reached through every retry.
        """
        url = self.url(path)
        data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            try:
                async with self._session().request(method, url, data=data) as resp:
                    text = await resp.text()
                    if resp.status < 400:
                        return json.loads(text) if text else None
                    error = _error_from_body(resp.status, text, url)
                    if resp.status not in RETRYABLE_STATUSES or attempt >= self.retry.max_retries:
                        raise error
                    wait = self.retry.delay_s(attempt, resp.headers.get("Retry-After"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
                if attempt >= self.retry.max_retries:
                    raise ServerUnavailableError(
                        f"{method} {url} failed after {attempt + 1} attempts: {type(exc).__name__}: {exc}"
                    ) from exc
                wait = self.retry.delay_s(attempt)
            attempt += 1
            await asyncio.sleep(wait)

    async def apost(self, path: str, payload: Any) -> Any:
        return await self.arequest("POST", path, payload)

    async def aget(self, path: str) -> Any:
        return await self.arequest("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        """Sync :meth:`apost` (runs on the shared background loop; safe inside Jupyter)."""
        return run_sync(self.apost(path, payload))

    def get(self, path: str) -> Any:
        return run_sync(self.aget(path))
