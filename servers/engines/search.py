"""The search engine: a :class:`~rag_plugins.milvus.search_service.SearchService` behind ``rag-serve search``.

It holds a :class:`~rag_plugins.milvus.store.MultiVectorMilvusStore` and calls the text embedding, the
multimodal embedding and the rerank servers through the torch-free clients. No model, no torch: starting it
opens the collection and waits until every upstream server answers ``/health``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from rag_plugins.embedding_client import EmbeddingClient
from rag_plugins.errors import ServerResponseError, ServerUnavailableError
from rag_plugins.milvus.errors import MilvusStoreError
from rag_plugins.milvus.search_service import SearchService
from rag_plugins.milvus.settings import MilvusStoreSettings
from rag_plugins.milvus.store import MultiVectorMilvusStore
from rag_plugins.multimodal_client import MultiModalEmbeddingClient
from rag_plugins.protocol import SearchRequest, SearchResponse
from rag_plugins.rerank_client import RerankClient
from servers.errors import InvalidRequestError, NotReadyError, ServingError
from servers.metrics import ServerMetrics
from servers.settings import ServerSettings

logger = logging.getLogger(__name__)
#: Seconds between health probes of the upstream servers while the engine starts.
UPSTREAM_POLL_S = 0.5


def names_a_file(image: str) -> bool:
    """Whether the image client would read ``image`` as a file path of this host (refused: a file-read hole)."""
    return len(image) < 4096 and os.path.isfile(image.strip())


class _NeverRaised(Exception):
    """Placeholder for pymilvus' ``MilvusException`` until the store is open."""


class UpstreamError(ServingError):
    """An upstream model server failed or is unreachable (502)."""

    status = 502
    type = "upstream_error"


class SearchEngine:
    """Answer :class:`SearchRequest` s over one collection through the upstream model servers.

    Args:
        settings: The process's settings (``milvus_uri``, ``collection``, ``embed_url``, ``mm_embed_url``,
            ``rerank_url``, ``upstream_api_key``).
        metrics: The server's metrics.
    """

    kind = "search"

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.ready = False
        key = settings.upstream_api_key
        self.text_client = EmbeddingClient(base_url=str(settings.embed_url), api_key=key)
        self.image_client = (MultiModalEmbeddingClient(base_url=settings.mm_embed_url, api_key=key)
                             if settings.mm_embed_url else None)
        self.rerank_client = RerankClient(base_url=settings.rerank_url, api_key=key) if settings.rerank_url else None
        self.store: MultiVectorMilvusStore | None = None
        self.service: SearchService | None = None
        self._milvus_error: type[Exception] = _NeverRaised

    @classmethod
    def from_settings(cls, settings: ServerSettings, metrics: ServerMetrics) -> SearchEngine:
        """The engine of ``settings`` (the app factory's hook)."""
        return cls(settings, metrics)

    def upstreams(self) -> dict[str, str]:
        """Base URLs of the servers this engine calls, by role."""
        urls = {"embed": self.settings.embed_url, "mm_embed": self.settings.mm_embed_url,
                "rerank": self.settings.rerank_url}
        return {role: str(url) for role, url in urls.items() if url}

    async def _wait_for_upstreams(self) -> None:
        clients: list[Any] = [c for c in (self.text_client, self.image_client, self.rerank_client) if c is not None]
        pending = set(range(len(clients)))
        while pending:
            for i in sorted(pending):
                try:
                    await clients[i].http.aget("/health")
                    pending.discard(i)
                except Exception as exc:  # not up yet: retried until the app stops the loader
                    logger.info("waiting for %s: %s", clients[i].base_url, type(exc).__name__)
            if pending:
                await asyncio.sleep(UPSTREAM_POLL_S)

    async def start(self) -> None:
        """Open the collection and wait until every upstream server is healthy.

        Raises:
            CollectionNotFoundError: the collection does not exist.
        """
        milvus = MilvusStoreSettings(uri=str(self.settings.milvus_uri), collection_name=str(self.settings.collection))
        self.store = await asyncio.to_thread(MultiVectorMilvusStore, settings=milvus, create=False)
        self._milvus_error = self.store._pymilvus.MilvusException
        await self._wait_for_upstreams()
        self.service = SearchService(self.store, text_embedder=self.text_client, image_embedder=self.image_client,
                                     reranker=self.rerank_client)
        self.ready = True

    async def stop(self) -> None:
        """Close the collection and the clients' connections."""
        self.ready = False
        for client in (self.text_client, self.image_client, self.rerank_client):
            if client is not None:
                await client.http.aclose()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    def accelerating(self) -> bool:
        """Never: the search server holds no model."""
        return False

    def info(self) -> dict[str, Any]:
        """``/info`` facts: the collection, its vector fields and the upstream servers."""
        store = self.store
        return {
            "model": self.settings.model_name, "kind": self.kind, "milvus_uri": self.settings.milvus_uri,
            "collection": self.settings.collection, "upstreams": self.upstreams(),
            "text_dim": getattr(store, "text_dim", None), "image_dim": getattr(store, "image_dim", None),
        }

    async def search(self, request: SearchRequest) -> SearchResponse:
        """Answer one request.

        Raises:
            InvalidRequestError: invalid fusion parameters, filters, rerank without a rerank server, or an
                image given as a path on this host.
            UpstreamError: an upstream server refused the query or could not be reached.
        """
        if self.service is None:
            raise NotReadyError("the search server is starting")
        if request.image is not None and names_a_file(request.image):
            raise InvalidRequestError("image paths are not read by the search server; send a data URI, base64 "
                                      "or an http(s) URL")
        if request.image is not None and self.image_client is None:
            raise InvalidRequestError("image queries need a multimodal embedding server (--mm-embed-url)")
        try:
            return await self.service.search(request)
        except ServerResponseError as exc:
            if 400 <= exc.status < 500 and exc.status != 429:
                raise InvalidRequestError(f"an upstream server refused the query: {exc}") from None
            raise UpstreamError(f"an upstream server failed: {exc}") from None
        except ServerUnavailableError as exc:
            raise UpstreamError(f"an upstream server is unavailable: {exc}") from None
        except (ValueError, MilvusStoreError) as exc:
            raise InvalidRequestError(str(exc)) from None
        except self._milvus_error as exc:  # Milvus refused the expression (unknown field, syntax)
            message = getattr(exc, "message", None) or "invalid search parameters"
            raise InvalidRequestError(f"Milvus refused the search: {message}") from None
