"""Old import path of :class:`~rag_plugins.llamaindex.embedding.LocalEmbedding` (kept working)."""

from __future__ import annotations

from rag_plugins.llamaindex.embedding import LocalEmbedding

__all__ = ["LocalEmbedding"]
