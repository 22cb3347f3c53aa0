"""Search core: one async class that answers a :class:`SearchRequest` with a :class:`SearchResponse`.

Torch-free and framework-free (no FastAPI, no LlamaIndex): it takes the embedding clients, an optional rerank
client and a :class:`~rag_plugins.milvus.store.MultiVectorMilvusStore`, so a ``rag-serve search`` server
kind is a thin route around :meth:`SearchService.search`. For the same query it returns what
:class:`~rag_plugins.milvus.retriever.HybridRetriever` returns (same embedding calls, same
``store.search``), plus the rerank stage's scores.

Example:
    >>> service = SearchService(store, text_embedder=EmbeddingClient(...), image_embedder=mm_client,
    ...                         reranker=RerankClient(...))
    >>> answer = await service.search(SearchRequest(text="red planet", top_k=20, rerank=True, top_n=5))
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from rag_plugins.milvus.embedders import ImageSpaceEmbedder, TextEmbedder
from rag_plugins.milvus.fusion import Fusion
from rag_plugins.milvus.store import Hit, MultiVectorMilvusStore

# The wire models live in rag_plugins.protocol (the search server's routes declare them); re-exported here.
from rag_plugins.protocol import Candidate, SearchRequest, SearchResponse

__all__ = ["Candidate", "SearchRequest", "SearchResponse", "SearchService"]


class SearchService:
    """Embed the query, search the multi-vector store, fuse, optionally rerank.

    Args:
        store: The collection to search.
        text_embedder: Embeds query texts into ``text_vec`` (default: the store's).
        image_embedder: Embeds query texts/images into ``image_vec`` (default: the store's).
        reranker: A client with ``async arerank(query, documents, top_n) -> [hit.index, hit.score]``
            (``rag_plugins.rerank_client.RerankClient``); None disables ``rerank=True`` requests.
    """

    def __init__(self, store: MultiVectorMilvusStore, *, text_embedder: TextEmbedder | None = None,
                 image_embedder: ImageSpaceEmbedder | None = None, reranker: Any = None) -> None:
        self.store = store
        self.text_embedder = text_embedder or store.text_embedder
        self.image_embedder = image_embedder or store.image_embedder
        self.reranker = reranker

    async def embed(self, request: SearchRequest) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The query's ``text_vec`` (dim,) and image-space vector (dim,) or None, computed concurrently."""

        async def nothing() -> None:
            return None

        text_job: Any = None
        image_job: Any = None
        if request.use_text and request.text and self.text_embedder is not None:
            text_job = self.text_embedder.aembed([request.text], "query")
        if request.use_image and self.image_embedder is not None:
            if request.image is not None:
                image_job = self.image_embedder.aembed_images(
                    [request.image], [request.text] if request.text else None, "query")
            elif request.text:
                image_job = self.image_embedder.aembed([request.text], "query")
        text_out, image_out = await asyncio.gather(text_job or nothing(), image_job or nothing())
        return (None if text_out is None else np.asarray(text_out)[0],
                None if image_out is None else np.asarray(image_out)[0])

    async def search(self, request: SearchRequest) -> SearchResponse:
        """Answer one request.

        Raises:
            ValueError: no field can be searched for this request, or ``rerank=True`` without a reranker.
            FusionConfigError: invalid fusion parameters.
        """
        fusion = Fusion(request.fusion, rrf_k=request.rrf_k, weights=tuple(request.weights))  # type: ignore[arg-type]
        if request.rerank and self.reranker is None:
            raise ValueError("rerank=True but the search service has no reranker")
        started = time.perf_counter()
        text_vec, image_vec = await self.embed(request)
        embedded = time.perf_counter()
        if text_vec is None and image_vec is None:
            raise ValueError("no field to search: the query needs an embedder for text_vec or image_vec")
        hits: list[Hit] = await asyncio.to_thread(
            self.store.search, text_vec, image_vec, fusion=fusion, top_k=request.top_k,
            text_limit=request.text_limit, image_limit=request.image_limit, filters=request.filters,
        )
        searched = time.perf_counter()
        timings = {"embed": (embedded - started) * 1e3, "search": (searched - embedded) * 1e3}
        fields = [f for f, v in (("text_vec", text_vec), ("image_vec", image_vec)) if v is not None]
        candidates = [Candidate(id=h.id, score=h.score, fields=self._fields(h, request)) for h in hits]
        if not (request.rerank and candidates):
            return SearchResponse(candidates=candidates, fields_searched=fields, timings_ms=timings)
        query: Any = request.text or ""
        if request.image is not None:
            query = {"text": request.text, "image": request.image} if request.text else {"image": request.image}
        docs = [h.fields.get("text") or h.fields.get("caption") or "" for h in hits]
        ranked = await self.reranker.arerank(query, docs, request.top_n)
        reranked = [candidates[r.index].model_copy(update={"rerank_score": float(r.score)}) for r in ranked]
        timings["rerank"] = (time.perf_counter() - searched) * 1e3
        return SearchResponse(candidates=reranked[: request.top_n], fields_searched=fields, reranked=True,
                              timings_ms=timings)

    @staticmethod
    def _fields(hit: Hit, request: SearchRequest) -> dict[str, Any]:
        if request.output_fields is None:
            return dict(hit.fields)
        return {k: hit.fields[k] for k in request.output_fields if k in hit.fields}
