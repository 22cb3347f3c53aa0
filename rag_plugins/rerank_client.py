"""``RerankClient``: framework-free client of a rerank server (native ``/rerank`` or Cohere-style ``/v1/rerank``).

``LocalRerank`` (LlamaIndex) and the LightRAG ``rerank_model_func`` both rerank through this class, so they
share one request format and the retry/auth policy of :class:`~rag_plugins.http.ServiceClient`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, RetryPolicy, ServiceClient
from rag_plugins.protocol import CohereRerankRequest, RerankRequest, RerankResponse, RerankResult, wire_body

DEFAULT_RERANK_BASE_URL = "http://127.0.0.1:8002"
#: Documents per HTTP request; longer lists are split and the answers merged (scores are per pair).
DEFAULT_MAX_DOCUMENTS_PER_REQUEST = 1024

RerankApiStyle = Literal["native", "cohere"]
#: A document: its text, or (native style, multimodal rerankers) ``{"text": ..., "image": ImageInput}``.
Document = str | dict[str, Any]


@dataclass(frozen=True)
class RerankHit:
    """One scored document.

    Attributes:
        index: Position of the document in the list that was sent.
        score: Relevance score (higher is better).
    """

    index: int
    score: float


@dataclass
class RerankClient:
    """Rerank documents through a server.

    Attributes:
        base_url: Server root (``/v1`` suffix allowed for ``cohere`` style).
        api_style: ``native`` (rag-serve ``/rerank``) or ``cohere`` (``/v1/rerank`` of rag-serve, vLLM,
            Infinity, Jina/Cohere-compatible proxies).
        model: Model name sent in Cohere-style bodies.
        api_key: Bearer token.
        instruction: Task instruction (None: the server's default).
        max_documents_per_request: Split longer document lists over several requests.
        timeout_s: Seconds per HTTP attempt.
        max_retries: Retries on 429/503/connection errors.
    """

    base_url: str = DEFAULT_RERANK_BASE_URL
    api_style: RerankApiStyle = "native"
    model: str | None = None
    api_key: str | None = None
    instruction: str | None = None
    max_documents_per_request: int = DEFAULT_MAX_DOCUMENTS_PER_REQUEST
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES

    def __post_init__(self) -> None:
        if self.api_style not in ("native", "cohere"):
            raise ValueError(f"api_style must be 'native' or 'cohere', not {self.api_style!r}")
        if self.max_documents_per_request < 1:
            raise ValueError("max_documents_per_request must be >= 1")
        self.http = ServiceClient(
            self.base_url, api_key=self.api_key, timeout_s=self.timeout_s,
            retry=RetryPolicy(max_retries=self.max_retries),
        )

    def request_for(self, query: Document, documents: list[Document], top_n: int | None) -> tuple[str, dict[str, Any]]:
        """Path and JSON body of one request (``query`` may carry an image like a document, for multimodal
        rerankers), built from the wire models of :mod:`rag_plugins.protocol`."""
        if self.api_style == "native":
            native = RerankRequest.model_construct(
                query=query, docs=documents, top_n=top_n, instruction=self.instruction
            )
            return "/rerank", wire_body(native)
        cohere = CohereRerankRequest.model_construct(
            query=query, documents=documents, model=self.model or "default", top_n=top_n, instruction=self.instruction
        )
        path = "/rerank" if self.base_url.rstrip("/").endswith("/v1") else "/v1/rerank"
        return path, wire_body(cohere)

    def parse(self, answer: dict[str, Any], offset: int = 0) -> list[RerankHit]:
        """Hits best first from an answer of either style; ``offset`` shifts indices of a split request.

        The native answer is parsed as :class:`~rag_plugins.protocol.RerankResponse`; Cohere/Jina answers
        (whose envelopes differ between vendors) as their :class:`~rag_plugins.protocol.RerankResult` items.
        """
        if self.api_style == "native":
            native = RerankResponse.model_validate(answer)
            return [RerankHit(offset + i, float(native.scores[i])) for i in native.order]
        results = [RerankResult.model_validate(r) for r in answer["results"]]
        return [RerankHit(offset + r.index, float(r.relevance_score)) for r in results]

    def _chunks(self, documents: list[Document]) -> list[tuple[int, list[Document]]]:
        step = self.max_documents_per_request
        return [(i, documents[i : i + step]) for i in range(0, len(documents), step)]

    @staticmethod
    def _merge(parts: list[list[RerankHit]], top_n: int | None) -> list[RerankHit]:
        hits = sorted((h for part in parts for h in part), key=lambda h: (-h.score, h.index))
        return hits if top_n is None else hits[:top_n]

    def rerank(self, query: Document, documents: list[Document], top_n: int | None = None) -> list[RerankHit]:
        """Score ``documents`` against ``query``; hits best first, at most ``top_n``.

        Raises:
            ValueError: ``top_n`` < 0.
            rag_plugins.errors.ServerResponseError: the server refused the request (its message included).
        """
        if top_n is not None and top_n < 0:
            raise ValueError("top_n must be >= 0")
        if not documents:
            return []
        parts = [self.parse(self.http.post(*self.request_for(query, c, top_n)), i) for i, c in self._chunks(documents)]
        return self._merge(parts, top_n)

    async def arerank(self, query: Document, documents: list[Document], top_n: int | None = None) -> list[RerankHit]:
        """Async :meth:`rerank`; the requests of a split call run concurrently."""
        if top_n is not None and top_n < 0:
            raise ValueError("top_n must be >= 0")
        if not documents:
            return []

        async def one(offset: int, chunk: list[Document]) -> list[RerankHit]:
            return self.parse(await self.http.apost(*self.request_for(query, chunk, top_n)), offset)

        parts = await asyncio.gather(*(one(i, c) for i, c in self._chunks(documents)))
        return self._merge(list(parts), top_n)

    def info(self) -> dict[str, Any]:
        """The server's ``/info`` (rag-serve): model, recipe, scoring, limits."""
        answer: dict[str, Any] = self.http.get("/info")
        return answer
