"""The shared HTTP client policy, against a small aiohttp server started in-process on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from rag_plugins.errors import ServerResponseError, ServerUnavailableError
from rag_plugins.http import RetryPolicy, ServiceClient
from tests.support.serve import free_port

FAST = RetryPolicy(max_retries=3, backoff_base_s=0.01, backoff_max_s=5.0)


@dataclass
class ScriptedServer:
    """An aiohttp server on its own thread and loop; each path answers from a script, hits are recorded."""

    base: str = ""
    hits: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    headers: list[dict[str, str]] = field(default_factory=list)
    peers: list[Any] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path].append(time.monotonic())
        self.headers.append(dict(request.headers))
        self.peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        n = len(self.hits[path])
        envelope = {"error": {"message": "", "type": "", "code": 0}}
        if path == "/retry-after-then-ok":
            if n == 1:
                envelope["error"] = {"message": "queue full", "type": "overloaded_error", "code": 429}
                return web.json_response(envelope, status=429, headers={"Retry-After": "1"})
            return web.json_response({"ok": True, "attempt": n, "body": await request.json()})
        if path == "/503-twice":
            if n <= 2:
                return web.json_response({"error": {"message": "loading", "type": "not_ready", "code": 503}}, status=503)
            return web.json_response({"ok": True, "attempt": n})
        if path == "/always-429":
            return web.json_response(
                {"error": {"message": "still full", "type": "overloaded_error", "code": 429}},
                status=429, headers={"Retry-After": "0"},
            )
        if path == "/bad-request":
            envelope["error"] = {
                "message": "invalid request: texts: List should have at least 1 item", "type": "invalid_request_error",
                "code": 400,
            }
            return web.json_response(envelope, status=400)
        if path == "/unauthorized":
            return web.json_response(
                {"error": {"message": "missing or invalid API key", "type": "authentication_error", "code": 401}},
                status=401,
            )
        if path == "/plain-text-404":
            return web.Response(status=404, text="nothing here")
        if path == "/fastapi-detail":
            return web.json_response({"detail": "Not Found"}, status=422)
        return web.json_response({"ok": True, "auth": request.headers.get("Authorization")})


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    port = free_port()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", scripted.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box.append(runner)
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    scripted.base = f"http://127.0.0.1:{port}"
    yield scripted
    asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def fresh_hits(server: ScriptedServer, path: str) -> None:
    server.hits.pop(path, None)


async def test_429_with_retry_after_then_200(server: ScriptedServer) -> None:
    fresh_hits(server, "/retry-after-then-ok")
    client = ServiceClient(server.base, retry=RetryPolicy(max_retries=3, backoff_base_s=0.01))
    started = time.monotonic()
    answer = await client.apost("/retry-after-then-ok", {"texts": ["a"]})
    elapsed = time.monotonic() - started
    await client.aclose()
    assert answer == {"ok": True, "attempt": 2, "body": {"texts": ["a"]}}
    hits = server.hits["/retry-after-then-ok"]
    assert len(hits) == 2
    # Retry-After: 1 was honoured (the backoff alone would have waited about 10 ms).
    assert hits[1] - hits[0] >= 0.95
    assert elapsed < 5


async def test_503_is_retried_with_backoff(server: ScriptedServer) -> None:
    fresh_hits(server, "/503-twice")
    client = ServiceClient(server.base, retry=FAST)
    assert await client.aget("/503-twice") == {"ok": True, "attempt": 3}
    await client.aclose()


async def test_400_is_raised_at_once_with_the_servers_message(server: ScriptedServer) -> None:
    fresh_hits(server, "/bad-request")
    client = ServiceClient(server.base, retry=FAST)
    with pytest.raises(ServerResponseError) as info:
        await client.apost("/bad-request", {"texts": []})
    await client.aclose()
    err = info.value
    assert err.status == 400
    assert err.message == "invalid request: texts: List should have at least 1 item"
    assert err.error_type == "invalid_request_error"
    assert "texts: List should have at least 1 item" in str(err)
    assert len(server.hits["/bad-request"]) == 1, "a 400 must not be retried"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/unauthorized", 401, "missing or invalid API key"),
        ("/plain-text-404", 404, "nothing here"),
        ("/fastapi-detail", 422, "Not Found"),
    ],
)
async def test_other_4xx_raised_once(server: ScriptedServer, path: str, status: int, message: str) -> None:
    fresh_hits(server, path)
    client = ServiceClient(server.base, retry=FAST)
    with pytest.raises(ServerResponseError) as info:
        await client.aget(path)
    await client.aclose()
    assert (info.value.status, info.value.message) == (status, message)
    assert len(server.hits[path]) == 1


async def test_retryable_status_raised_after_last_retry(server: ScriptedServer) -> None:
    fresh_hits(server, "/always-429")
    client = ServiceClient(server.base, retry=RetryPolicy(max_retries=2, backoff_base_s=0.01))
    with pytest.raises(ServerResponseError) as info:
        await client.apost("/always-429", {})
    await client.aclose()
    assert info.value.status == 429
    assert info.value.message == "still full"
    assert len(server.hits["/always-429"]) == 3  # first attempt + 2 retries


async def test_connection_refused_becomes_server_unavailable_after_retries() -> None:
    port = free_port()  # nothing listens there
    client = ServiceClient(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_retries=2, backoff_base_s=0.01))
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="after 3 attempts"):
        await client.apost("/embed", {"texts": ["a"]})
    assert time.monotonic() - started < 5
    await client.aclose()


def test_connection_refused_on_sync_path() -> None:
    client = ServiceClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(max_retries=1, backoff_base_s=0.01))
    with pytest.raises(ServerUnavailableError, match="after 2 attempts"):
        client.get("/health")


async def test_bearer_token_is_sent(server: ScriptedServer) -> None:
    client = ServiceClient(server.base, api_key="s3cret", retry=FAST)
    assert (await client.aget("/echo"))["auth"] == "Bearer s3cret"
    await client.aclose()
    anonymous = ServiceClient(server.base, retry=FAST)
    assert (await anonymous.aget("/echo"))["auth"] is None
    await anonymous.aclose()


def test_sync_calls_reuse_one_connection(server: ScriptedServer) -> None:
    client = ServiceClient(server.base, retry=FAST)
    before = len(server.peers)
    for _ in range(5):
        assert client.post("/echo", {"x": 1})["ok"] is True
    peers = server.peers[before:]
    client.close()
    assert len(peers) == 5
    assert len(set(peers)) == 1, f"sync calls opened {len(set(peers))} connections: {peers}"


def test_sync_path_works_inside_a_running_event_loop(server: ScriptedServer) -> None:
    client = ServiceClient(server.base, retry=FAST)

    async def notebook_cell() -> Any:
        return client.get("/echo")  # a sync call while this loop runs, as in Jupyter

    assert asyncio.run(notebook_cell())["ok"] is True
    client.close()


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base_s=0.2, backoff_max_s=3.0)
    # Never earlier than Retry-After; spread over up to twice it so refused clients do not return as a herd.
    waits = [policy.delay_s(0, "1") for _ in range(200)]
    assert min(waits) >= 1.0
    assert max(waits) <= 2.0
    assert max(waits) - min(waits) > 0.5
    assert policy.delay_s(0, "120") == 3.0  # capped
    assert policy.delay_s(0, "-5") == 0.0
    # An HTTP-date Retry-After falls back to backoff: base * 2**attempt * [0.5, 1].
    assert 0.2 <= policy.delay_s(1, "Wed, 21 Oct 2015 07:28:00 GMT") <= 0.4
    assert 1.5 <= policy.delay_s(10) <= 3.0
