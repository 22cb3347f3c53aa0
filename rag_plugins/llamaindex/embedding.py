"""``LocalEmbedding``: a LlamaIndex ``BaseEmbedding`` backed by a rag-serve (or any OpenAI-compatible) server."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr

from rag_plugins.embedding_client import (
    DEFAULT_BASE_URL,
    DEFAULT_EMBED_BATCH_SIZE,
    DEFAULT_QUERY_TEMPLATE,
    ApiStyle,
    EmbeddingClient,
)
from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from rag_plugins.llamaindex.text_methods import ClientTextEmbeddingMethods


class LocalEmbedding(ClientTextEmbeddingMethods, BaseEmbedding):
    """Text embeddings from a local server, for LlamaIndex indexes and query engines.

    ``api_style="native"`` talks to rag-serve's ``/embed`` (the server applies the model's query
    instruction); ``"openai"`` talks to any ``/v1/embeddings`` server (rag-serve, vLLM, Ollama, OpenAI),
    applying ``query_instruction`` client-side with ``query_template`` when one is set. Sync and async
    paths share one retry/auth policy and reuse one HTTP session per event loop.

    Example:
        >>> from llama_index.core import Settings
        >>> Settings.embed_model = LocalEmbedding(base_url="http://127.0.0.1:8001")
    """

    base_url: str = Field(default=DEFAULT_BASE_URL, description="Server root (native) or OpenAI base URL.")
    model: str | None = Field(default=None, description="Model name sent to OpenAI-style servers.")
    api_key: str | None = Field(default=None, description="Bearer token, if the server wants one.")
    dimensions: int | None = Field(default=None, description="Matryoshka size to request (None: full).")
    query_instruction: str | None = Field(
        default=None, description="Task instruction for queries (None: the model's default on native servers)."
    )
    query_template: str = Field(
        default=DEFAULT_QUERY_TEMPLATE, description="Client-side query format for api_style='openai'."
    )
    api_style: ApiStyle = Field(default="native", description="'native' (/embed) or 'openai' (/v1/embeddings).")
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, description="Seconds per HTTP attempt.")
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, description="Retries on 429/503/connection errors.")
    embed_batch_size: int = Field(default=DEFAULT_EMBED_BATCH_SIZE, gt=0, description="Texts per request.")

    _client: EmbeddingClient = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        data.setdefault("model_name", data.get("model") or "rag-serve")
        super().__init__(**data)
        self._client = EmbeddingClient(
            base_url=self.base_url, api_style=self.api_style, model=self.model, api_key=self.api_key,
            dimensions=self.dimensions, query_instruction=self.query_instruction,
            query_template=self.query_template, batch_size=self.embed_batch_size, timeout_s=self.timeout,
            max_retries=self.max_retries,
        )

    @classmethod
    def class_name(cls) -> str:
        return "LocalEmbedding"

    @property
    def client(self) -> EmbeddingClient:
        """The framework-free client behind this class (numpy in, numpy out)."""
        return self._client
