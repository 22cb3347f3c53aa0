"""LightRAG / RAG-Anything adapters: ``embedding_func`` and ``rerank_model_func``.

    from lightrag import LightRAG
    from integrations.lightrag import embedding_func, rerank_model_func

    rag = LightRAG(
        working_dir="./rag",
        embedding_func=embedding_func("http://127.0.0.1:8001"),
        rerank_model_func=rerank_model_func("http://127.0.0.1:8002"),
        ...,
    )

LightRAG passes ``context="query"`` when it embeds a search query and ``context="document"`` when it
indexes; the adapter sends that to the server as ``input_type`` so queries get the model's instruction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rag_plugins.embedding_client import DEFAULT_EMBED_BATCH_SIZE, ApiStyle, EmbeddingClient
from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from rag_plugins.optional import require
from rag_plugins.rerank_client import RerankApiStyle, RerankClient

DEFAULT_MAX_TOKEN_SIZE = 8192
_CONTEXT_TO_INPUT_TYPE = {"query": "query", "document": "document", "passage": "document"}


def embedding_func(
    base_url: str = "http://127.0.0.1:8001",
    *,
    api_style: ApiStyle = "native",
    model: str | None = None,
    api_key: str | None = None,
    dimensions: int | None = None,
    query_instruction: str | None = None,
    embedding_dim: int | None = None,
    max_token_size: int | None = None,
    batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
) -> Any:
    """Build a LightRAG ``EmbeddingFunc`` that embeds through a rag-serve (or OpenAI-style) server.

    Args:
        base_url: Embedding server.
        api_style: ``native`` or ``openai``.
        model: Model name (OpenAI style; also LightRAG's workspace isolation key).
        api_key: Bearer token.
        dimensions: Matryoshka size to request.
        query_instruction: Task instruction for queries (None: the model's default).
        embedding_dim: Vector size; read from the server's ``/info`` when None (native servers).
        max_token_size: Token limit LightRAG uses when summarising; server's ``max_length`` when None.
        batch_size: Texts per HTTP request.

    Returns:
        ``lightrag.utils.EmbeddingFunc`` whose call returns float32 ``np.ndarray`` (n, dim).
    """
    utils = require("lightrag.utils", "lightrag")
    client = EmbeddingClient(
        base_url=base_url, api_style=api_style, model=model, api_key=api_key, dimensions=dimensions,
        query_instruction=query_instruction, batch_size=batch_size,
    )
    model_name = model
    if embedding_dim is None or max_token_size is None or model_name is None:
        if api_style != "native":
            if embedding_dim is None:
                raise ValueError("embedding_dim is required for api_style='openai' (the server has no /info)")
        else:
            info = client.info()
            embedding_dim = embedding_dim or int(dimensions or info["dim"])
            max_token_size = max_token_size or int(info.get("max_length", DEFAULT_MAX_TOKEN_SIZE))
            model_name = model_name or str(info.get("model"))

    async def embed(texts: list[str], context: str = "document", **_: Any) -> np.ndarray:
        input_type = _CONTEXT_TO_INPUT_TYPE.get(context, "document")
        return await client.aembed(list(texts), input_type)  # type: ignore[arg-type]

    wrap = utils.wrap_embedding_func_with_attrs(
        embedding_dim=int(embedding_dim),  # type: ignore[arg-type]
        max_token_size=max_token_size or DEFAULT_MAX_TOKEN_SIZE,
        model_name=model_name,
        supports_asymmetric=True,
    )
    return wrap(embed)


def _document_text(doc: Any) -> str:
    """LightRAG passes chunk texts; accept chunk dicts too (``content`` / ``text``)."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict):
        for key in ("content", "text", "chunk_content", "document"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return str(doc)


def rerank_model_func(
    base_url: str = "http://127.0.0.1:8002",
    *,
    api_style: RerankApiStyle = "native",
    model: str | None = None,
    api_key: str | None = None,
    instruction: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Any:
    """Build a LightRAG ``rerank_model_func`` that reranks through a rag-serve (or Cohere-style) server.

    LightRAG calls it as ``await func(query=..., documents=[chunk texts], top_n=...)`` and keeps the order
    it gets (it does not re-sort), so the results come best first.

    Args:
        base_url: Rerank server.
        api_style: ``native`` (``/rerank``) or ``cohere`` (``/v1/rerank``).
        model: Model name (Cohere style).
        api_key: Bearer token.
        instruction: Task instruction (None: the server's default).
        timeout: Seconds per HTTP attempt.
        max_retries: Retries on 429/503/connection errors.

    Returns:
        ``async (query, documents, top_n=None, **kwargs) -> [{"index": int, "relevance_score": float}]``,
        best first, at most ``top_n`` entries.
    """
    client = RerankClient(
        base_url=base_url, api_style=api_style, model=model, api_key=api_key, instruction=instruction,
        timeout_s=timeout, max_retries=max_retries,
    )

    async def rerank(
        query: str, documents: list[Any], top_n: int | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        if not documents:
            return []
        texts = [_document_text(d) for d in documents]
        hits = await client.arerank(query, list(texts), top_n=top_n)
        return [{"index": h.index, "relevance_score": h.score} for h in hits]

    rerank.client = client  # type: ignore[attr-defined]
    return rerank
