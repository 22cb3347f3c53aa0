"""Helpers routes share: the engine of the app, and cancelling work when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request

from servers.errors import NotReadyError, ServingError

T = TypeVar("T")
_DISCONNECT_POLL_S = 0.25


class ClientDisconnectedError(ServingError):
    status = 499
    type = "client_closed_request"


def engine_of(request: Request) -> Any:
    """The engine on ``app.state``; 503 until the model is loaded and warmed up."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise NotReadyError()
    return engine


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it so its items leave the queue unrun."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise ClientDisconnectedError("client disconnected; request cancelled")
    except asyncio.CancelledError:
        task.cancel()
        raise
