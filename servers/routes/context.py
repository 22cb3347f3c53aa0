"""Helpers routes share: the app's engine (typed per route family), and cancelling work when the client goes
away."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar, cast

from fastapi import Request

from servers.engine_api import Engine, MultiModalEmbedder, Reranker, Searcher, TextEmbedder, TokenEmbedder
from servers.errors import NotReadyError, ServingError

T = TypeVar("T")
_DISCONNECT_POLL_S = 0.25


class ClientDisconnectedError(ServingError):
    status = 499
    type = "client_closed_request"


def engine_of(request: Request) -> Engine:
    """The engine on ``app.state``; 503 until the model is loaded and warmed up."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise NotReadyError()
    return cast(Engine, engine)


# The app mounts a router only for kinds whose engine has its methods (servers.kinds), so these casts hold.
def text_embedder(request: Request) -> TextEmbedder:
    """The engine of ``/embed`` (text or multimodal embedding server)."""
    return cast(TextEmbedder, engine_of(request))


def token_embedder(request: Request) -> TokenEmbedder:
    """The engine of the text server's ``/v1/embeddings``."""
    return cast(TokenEmbedder, engine_of(request))


def multimodal_embedder(request: Request) -> MultiModalEmbedder:
    """The engine of ``/embed_image`` and the multimodal ``/v1/embeddings``."""
    return cast(MultiModalEmbedder, engine_of(request))


def reranker(request: Request) -> Reranker:
    """The engine of the rerank routes."""
    return cast(Reranker, engine_of(request))


def searcher(request: Request) -> Searcher:
    """The engine of ``/search``."""
    return cast(Searcher, engine_of(request))


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
