"""rag-plugins: client classes for local embedding and reranking servers.

The LlamaIndex classes live in :mod:`rag_plugins.llamaindex` and are imported lazily, so ``import rag_plugins``
works without llama-index installed; touching ``rag_plugins.LocalEmbedding`` then names the extra to install.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rag_plugins' has no attribute {name!r}")


__all__ = [*sorted(_LAZY), "__version__"]
