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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from rag_plugins.milvus.embedders import ImageSpaceEmbedder, TextEmbedder
from rag_plugins.milvus.fusion import DEFAULT_RRF_K, Fusion
from rag_plugins.milvus.store import Hit, MultiVectorMilvusStore


class SearchRequest(BaseModel):
    """A hybrid search over ``text_vec`` and ``image_vec``.

    A text query is embedded into ``text_vec`` (text model) and into the image space (multimodal model's
    text side); an image query into the image space (fused with the text when both are given). Fields with
    no query vector, or disabled with ``use_text`` / ``use_image``, are not searched.
    """

    text: str | None = Field(None, description="Query text.")
    image: str | None = Field(None, description="Query image: path, URL, data URI or base64.")
    fusion: Literal["rrf", "weighted"] = "rrf"
    weights: tuple[float, float] = Field((0.5, 0.5), description="(alpha, 1 - alpha) for text_vec / image_vec.")
    rrf_k: int = DEFAULT_RRF_K
    text_limit: int | None = Field(None, ge=1, description="Candidates from text_vec (default top_k).")
    image_limit: int | None = Field(None, ge=1, description="Candidates from image_vec (default top_k).")
    filters: str | dict[str, Any] | None = Field(None, description="Milvus expression or {field: value | [values]}.")
    top_k: int = Field(10, ge=1, description="Fused candidates kept.")
    use_text: bool = True
    use_image: bool = True
    rerank: bool = False
    top_n: int | None = Field(None, ge=1, description="Candidates kept after the rerank stage (default all).")
    output_fields: list[str] | None = Field(None, description="Stored fields returned (default all scalars).")

    @model_validator(mode="after")
    def _needs_query(self) -> SearchRequest:
        if not self.text and self.image is None:
            raise ValueError("give a text and/or an image query")
        return self


class Candidate(BaseModel):
    """One answer: primary key, fused score, rerank score (when reranked) and stored fields."""

    id: str
    score: float = Field(description="Fused score (RRF or weighted) from the vector search.")
    rerank_score: float | None = None
    fields: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    """Candidates best first (by rerank score when reranked, else by fused score)."""

    candidates: list[Candidate]
    fields_searched: list[str]
    reranked: bool = False


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
        text_vec, image_vec = await self.embed(request)
        if text_vec is None and image_vec is None:
            raise ValueError("no field to search: the query needs an embedder for text_vec or image_vec")
        hits: list[Hit] = await asyncio.to_thread(
            self.store.search, text_vec, image_vec, fusion=fusion, top_k=request.top_k,
            text_limit=request.text_limit, image_limit=request.image_limit, filters=request.filters,
        )
        fields = [f for f, v in (("text_vec", text_vec), ("image_vec", image_vec)) if v is not None]
        candidates = [Candidate(id=h.id, score=h.score, fields=self._fields(h, request)) for h in hits]
        if not (request.rerank and candidates):
            return SearchResponse(candidates=candidates, fields_searched=fields)
        query: Any = request.text or ""
        if request.image is not None:
            query = {"text": request.text, "image": request.image} if request.text else {"image": request.image}
        docs = [h.fields.get("text") or h.fields.get("caption") or "" for h in hits]
        ranked = await self.reranker.arerank(query, docs, request.top_n)
        reranked = [candidates[r.index].model_copy(update={"rerank_score": float(r.score)}) for r in ranked]
        return SearchResponse(candidates=reranked[: request.top_n], fields_searched=fields, reranked=True)

    @staticmethod
    def _fields(hit: Hit, request: SearchRequest) -> dict[str, Any]:
        if request.output_fields is None:
            return dict(hit.fields)
        return {k: hit.fields[k] for k in request.output_fields if k in hit.fields}
