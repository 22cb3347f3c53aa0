"""``EmbeddingClient``: framework-free client of an embedding server (native ``/embed`` or OpenAI style).

The LlamaIndex, LightRAG and Milvus integrations all embed through this class, so they share one
request format and the retry/auth policy of :class:`~rag_plugins.http.ServiceClient`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S, RetryPolicy, ServiceClient
from rag_plugins.protocol import (
    EmbedRequest,
    EmbedResponse,
    InputType,
    OpenAIEmbeddingData,
    embeddings_to_array,
    wire_body,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8001"
DEFAULT_EMBED_BATCH_SIZE = 64
#: Client-side query format for ``api_style="openai"`` servers that know no ``input_type`` (vLLM, OpenAI):
#: the Qwen3-Embedding query format.
DEFAULT_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery:{text}"

ApiStyle = Literal["native", "openai"]


@dataclass
class EmbeddingClient:
    """Embed texts through a server.

    Attributes:
        base_url: Server root (native) or OpenAI base URL (``.../v1`` or the root).
        api_style: ``native`` (rag-serve ``/embed``, server applies query instructions) or ``openai``.
        model: Model name sent to OpenAI-style servers.
        api_key: Bearer token.
        dimensions: Matryoshka size to request (None: full).
        query_instruction: Task instruction for queries (None: model default on native servers).
        query_template: Client-side query format for ``openai`` style when an instruction is set.
        batch_size: Texts per request.
        timeout_s: Seconds per HTTP attempt.
        max_retries: Retries on 429/503/connection errors.
    """

    base_url: str = DEFAULT_BASE_URL
    api_style: ApiStyle = "native"
    model: str | None = None
    api_key: str | None = None
    dimensions: int | None = None
    query_instruction: str | None = None
    query_template: str = DEFAULT_QUERY_TEMPLATE
    batch_size: int = DEFAULT_EMBED_BATCH_SIZE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES

    def __post_init__(self) -> None:
        if self.api_style not in ("native", "openai"):
            raise ValueError(f"api_style must be 'native' or 'openai', not {self.api_style!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.http = ServiceClient(
            self.base_url, api_key=self.api_key, timeout_s=self.timeout_s,
            retry=RetryPolicy(max_retries=self.max_retries),
        )

    def request_for(self, texts: list[str], input_type: InputType) -> tuple[str, dict[str, Any]]:
        """Path and JSON body of one request, built from the wire models of :mod:`rag_plugins.protocol`."""
        if self.api_style == "native":
            native = EmbedRequest.model_construct(
                texts=texts, input_type=input_type, encoding_format="base64", dimensions=self.dimensions,
                instruction=self.query_instruction if input_type == "query" else None,
            )
            return "/embed", wire_body(native)
        if input_type == "query" and self.query_instruction is not None:
            texts = [self.query_template.format(instruction=self.query_instruction, text=t) for t in texts]
        # Only the OpenAI fields: other OpenAI-compatible servers may refuse our extensions.
        body: dict[str, Any] = {"input": texts, "model": self.model or "default", "encoding_format": "base64"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        path = "/embeddings" if self.base_url.rstrip("/").endswith("/v1") else "/v1/embeddings"
        return path, body

    def parse(self, answer: dict[str, Any]) -> np.ndarray:
        """float32 (n, dim) from a server answer of either style.

        The native answer is parsed as :class:`~rag_plugins.protocol.EmbedResponse`; OpenAI-compatible
        answers (which other servers fill differently beyond ``data``) as their
        :class:`~rag_plugins.protocol.OpenAIEmbeddingData` items.
        """
        if self.api_style == "native":
            return EmbedResponse.model_validate(answer).as_array()
        rows = [OpenAIEmbeddingData.model_validate(d) for d in answer["data"]]
        items = [r.embedding for r in sorted(rows, key=lambda r: r.index)]
        if items and isinstance(items[0], str):
            return embeddings_to_array([str(i) for i in items], 0)
        return embeddings_to_array([i for i in items if isinstance(i, list)], len(items[0]) if items else 0)

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]

    def embed(self, texts: list[str], input_type: InputType = "document") -> np.ndarray:
        """Embed ``texts`` (any number, sent ``batch_size`` at a time); float32 (n, dim), input order."""
        parts = [self.parse(self.http.post(*self.request_for(c, input_type))) for c in self._chunks(texts)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    async def aembed(self, texts: list[str], input_type: InputType = "document") -> np.ndarray:
        """Async :meth:`embed`; the requests of one call run concurrently."""

        async def one(chunk: list[str]) -> np.ndarray:
            return self.parse(await self.http.apost(*self.request_for(chunk, input_type)))

        parts = await asyncio.gather(*(one(c) for c in self._chunks(texts)))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def info(self) -> dict[str, Any]:
        """The server's ``/info`` (rag-serve): model, dim, limits."""
        answer: dict[str, Any] = self.http.get("/info")
        return answer

    async def ainfo(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self.http.aget("/info")
        return answer
