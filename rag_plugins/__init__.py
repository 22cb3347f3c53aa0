"""rag-plugins: client classes for local embedding and reranking servers.

The LlamaIndex classes live in :mod:`rag_plugins.llamaindex` and are imported lazily, so ``import rag_plugins``
works without llama-index installed; touching ``rag_plugins.LocalEmbedding`` then names the extra to install.
"""

from __future__ import annotations

__version__ = "0.1.0"

from rag_plugins.optional import lazy_attributes

_LAZY = {
    "LocalEmbedding": "rag_plugins.llamaindex.embedding",
    "LocalMultiModalEmbedding": "rag_plugins.llamaindex.multimodal",
    "LocalRerank": "rag_plugins.llamaindex.rerank",
    "MultiModalEmbeddingClient": "rag_plugins.multimodal_client",
    "EmbeddingClient": "rag_plugins.embedding_client",
    "RerankClient": "rag_plugins.rerank_client",
    "ServiceClient": "rag_plugins.http",
    "from_stack": "rag_plugins.stack",
    "StackClients": "rag_plugins.stack",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [*sorted(_LAZY), "__version__"]
