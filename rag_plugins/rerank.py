"""Old import path of :class:`~rag_plugins.llamaindex.rerank.LocalRerank` (kept working)."""

from __future__ import annotations

from rag_plugins.llamaindex.rerank import LocalRerank, node_document, query_document

__all__ = ["LocalRerank", "node_document", "query_document"]
