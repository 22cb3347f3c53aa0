"""``SearchClient``: framework-free client of a search server (``rag-serve search``, ``POST /search``).

``SearchServiceRetriever`` (LlamaIndex) and LightRAG-style functions search through this class, so they share
the wire models of :mod:`rag_plugins.protocol` and the retry/auth policy of
:class:`~rag_plugins.http.ServiceClient`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, RetryPolicy, ServiceClient
from rag_plugins.protocol import SearchRequest, SearchResponse, wire_body

DEFAULT_SEARCH_BASE_URL = "http://127.0.0.1:8010"


@dataclass
class SearchClient:
    """Hybrid search through a search server.

    Attributes:
        base_url: Server root.
        api_key: Bearer token.
        timeout_s: Seconds per HTTP attempt.
        max_retries: Retries on 429/503/connection errors.

    Example:
        >>> client = SearchClient("http://127.0.0.1:8010")
        >>> answer = client.search("red planet", top_k=20, rerank=True, top_n=5)
        >>> [c.id for c in answer.candidates]
    """

    base_url: str = DEFAULT_SEARCH_BASE_URL
    api_key: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES

    def __post_init__(self) -> None:
        self.http = ServiceClient(self.base_url, api_key=self.api_key, timeout_s=self.timeout_s,
                                  retry=RetryPolicy(max_retries=self.max_retries))

    @staticmethod
    def body(text: str | None = None, **options: Any) -> dict[str, Any]:
        """The JSON body of one request: ``text`` plus :class:`~rag_plugins.protocol.SearchRequest` fields
        (``image``, ``fusion``, ``weights``, ``rrf_k``, ``text_limit``, ``image_limit``, ``filters``, ``top_k``,
        ``rerank``, ``top_n`` ...); the fields left out take the server's defaults."""
        request = SearchRequest.model_construct(text=text, **options)
        body = wire_body(request)
        if "weights" in body:
            body["weights"] = list(body["weights"])
        return body

    def search(self, text: str | None = None, **options: Any) -> SearchResponse:
        """Search; see :meth:`body` for the options.

        Raises:
            rag_plugins.errors.ServerResponseError: the server refused the request (its message included).
        """
        return SearchResponse.model_validate(self.http.post("/search", self.body(text, **options)))

    async def asearch(self, text: str | None = None, **options: Any) -> SearchResponse:
        """Async :meth:`search`."""
        return SearchResponse.model_validate(await self.http.apost("/search", self.body(text, **options)))

    def info(self) -> dict[str, Any]:
        """The server's ``/info``: collection, upstream servers, limits."""
        answer: dict[str, Any] = self.http.get("/info")
        return answer
