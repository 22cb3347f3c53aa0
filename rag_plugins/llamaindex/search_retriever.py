"""``SearchServiceRetriever``: a LlamaIndex retriever over a search server (``rag-serve search``)."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle

from rag_plugins.llamaindex.milvus_nodes import node_from_hit
from rag_plugins.milvus.store import Hit
from rag_plugins.protocol import SearchResponse
from rag_plugins.search_client import SearchClient


class SearchServiceRetriever(BaseRetriever):
    """Retrieve through ``POST /search``: the server embeds, searches, fuses and (optionally) reranks.

    Nodes are built like :class:`~rag_plugins.llamaindex.hybrid_retriever.HybridRetriever`'s (``TextNode`` /
    ``ImageNode`` from the stored fields); the score is the rerank score when the server reranked, else the
    fused score (kept in ``metadata["fused_score"]`` either way).

    Args:
        client: A :class:`SearchClient`, or None to build one from ``base_url`` and ``api_key``.
        base_url: Search server root (when ``client`` is None).
        api_key: Bearer token (when ``client`` is None).
        callback_manager: LlamaIndex callback manager.
        **options: :class:`~rag_plugins.protocol.SearchRequest` fields sent with every query (``top_k``,
            ``fusion``, ``weights``, ``rrf_k``, ``filters``, ``rerank``, ``top_n`` ...).

    Example:
        >>> retriever = SearchServiceRetriever(base_url="http://127.0.0.1:8010", top_k=20, rerank=True, top_n=5)
        >>> nodes = retriever.retrieve("red planet")
    """

    def __init__(self, client: SearchClient | None = None, *, base_url: str | None = None,
                 api_key: str | None = None, callback_manager: CallbackManager | None = None,
                 **options: Any) -> None:
        if client is None:
            client = SearchClient(base_url=base_url, api_key=api_key) if base_url else SearchClient(api_key=api_key)
        self.client = client
        self.options = options
        super().__init__(callback_manager=callback_manager)

    @staticmethod
    def nodes(answer: SearchResponse) -> list[NodeWithScore]:
        """``NodeWithScore`` s of an answer, best first."""
        out = []
        for c in answer.candidates:
            node = node_from_hit(Hit(id=c.id, score=c.score, fields=c.fields))
            node.metadata["fused_score"] = c.score
            out.append(NodeWithScore(node=node, score=c.rerank_score if c.rerank_score is not None else c.score))
        return out

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.nodes(self.client.search(query_bundle.query_str, **self.options))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.nodes(await self.client.asearch(query_bundle.query_str, **self.options))
