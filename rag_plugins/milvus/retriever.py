"""Old import path of :class:`~rag_plugins.llamaindex.hybrid_retriever.HybridRetriever` (kept working)."""

from __future__ import annotations

from rag_plugins.llamaindex.hybrid_retriever import HybridRetriever

__all__ = ["HybridRetriever"]
