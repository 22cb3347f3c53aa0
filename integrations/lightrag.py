"""LightRAG / RAG-Anything adapters: ``embedding_func``, ``rerank_model_func`` and ``search_func``.

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

``search_func`` retrieves chunks through a search server (``rag-serve search``) in the shape of LightRAG's
``BaseVectorStorage.query``; it replaces the chunk vector search of ``naive`` / ``mix`` queries:

    await rag.initialize_storages()
    rag.chunks_vdb.query = search_func("http://127.0.0.1:8010", rerank=True, top_n=10)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rag_plugins.embedding_client import DEFAULT_EMBED_BATCH_SIZE, ApiStyle, EmbeddingClient
from rag_plugins.http import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_S
from rag_plugins.optional import require
from rag_plugins.protocol import SearchResponse
from rag_plugins.rerank_client import RerankApiStyle, RerankClient
from rag_plugins.search_client import DEFAULT_SEARCH_BASE_URL, SearchClient

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


#: Keys of ``MultiVectorMilvusStorage``'s ``meta`` field that hold LightRAG's own id and creation time.
_META_ID_KEY = "lightrag_id"
_META_CREATED_KEY = "created_at"


def search_records(answer: SearchResponse) -> list[dict[str, Any]]:
    """A search server's answer as LightRAG vector-storage query results, best first.

    Each record has LightRAG's chunk keys: ``id`` (the LightRAG id kept in ``meta`` by
    ``MultiVectorMilvusStorage``, else the Milvus primary key), ``content`` (the stored ``text``),
    ``distance`` (the rerank score when the server reranked, else the fused score: higher is better, as in
    LightRAG's storages), ``created_at``, ``file_path``; plus ``fused_score``, ``rerank_score`` and the other
    stored scalar fields and ``meta`` keys.

    Args:
        answer: A ``POST /search`` answer.

    Returns:
        One dict per candidate, in the answer's order.
    """
    out = []
    for c in answer.candidates:
        fields = dict(c.fields)
        meta = fields.pop("meta", None)
        meta = dict(meta) if isinstance(meta, dict) else {}
        # Stored fields first, then meta (LightRAG's own keys such as file_path / full_doc_id), then the keys
        # LightRAG reads, so a meta key can never shadow them.
        record: dict[str, Any] = {**fields, **meta}
        record.update(
            id=str(meta.pop(_META_ID_KEY, c.id)),
            content=str(fields.get("text", "")),
            distance=c.rerank_score if c.rerank_score is not None else c.score,
            created_at=meta.get(_META_CREATED_KEY),
            file_path=meta.get("file_path", fields.get("uri") or "unknown_source"),
            fused_score=c.score,
            rerank_score=c.rerank_score,
        )
        record.pop(_META_ID_KEY, None)
        out.append(record)
    return out


def search_func(
    base_url: str = DEFAULT_SEARCH_BASE_URL,
    *,
    client: SearchClient | None = None,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    **options: Any,
) -> Any:
    """Build an async chunk search over a search server (``rag-serve search``) with LightRAG's query shape.

    LightRAG 1.5 has no retrieval-function hook in ``QueryParam`` or ``LightRAG(...)``; chunk retrieval for
    ``naive`` and ``mix`` queries is ``await rag.chunks_vdb.query(query, top_k=chunk_top_k,
    query_embedding=...)`` (``operate._get_vector_context``), which keeps ``id``, ``content``, ``file_path`` and
    ``created_at`` of each record. The returned function has that signature, so it plugs in as
    ``rag.chunks_vdb.query = search_func(...)`` after ``await rag.initialize_storages()``: the search
    server then embeds, searches, fuses and (with ``rerank=True``) reranks. Indexing still goes through
    LightRAG's own storage; point the server at the collection holding the chunks (with
    ``MultiVectorMilvusStorage`` that is ``rag.chunks_vdb.collection_name``, whose rows the server reads
    as they are). Entity / relation searches (``local`` / ``global``) are not affected.

    Args:
        base_url: Search server root (when ``client`` is None).
        client: A :class:`~rag_plugins.search_client.SearchClient` to share (its retry/auth policy is used).
        api_key: Bearer token (when ``client`` is None).
        timeout: Seconds per HTTP attempt (when ``client`` is None).
        max_retries: Retries on 429/503/connection errors (when ``client`` is None).
        **options: :class:`~rag_plugins.protocol.SearchRequest` fields sent with every query (``fusion``,
            ``weights``, ``rrf_k``, ``filters``, ``rerank``, ``top_n`` ...). ``top_k`` here is a default:
            LightRAG's ``top_k`` argument (its ``chunk_top_k``) wins.

    Returns:
        ``async (query, top_k=None, query_embedding=None, **kwargs) -> list[dict]`` (see
        :func:`search_records`), best first; ``query_embedding`` is ignored because the server embeds the
        query with its own model. The client is at ``.client``.
    """
    if client is None:
        client = SearchClient(base_url=base_url, api_key=api_key, timeout_s=timeout, max_retries=max_retries)
    default_top_k = options.pop("top_k", None)

    async def search(query: str, top_k: int | None = None, query_embedding: Any = None,
                     **_: Any) -> list[dict[str, Any]]:
        limit = top_k if top_k is not None else default_top_k
        if not query or (limit is not None and limit <= 0):
            return []
        request = dict(options) if limit is None else {**options, "top_k": int(limit)}
        return search_records(await client.asearch(query, **request))

    search.client = client  # type: ignore[attr-defined]
    return search
