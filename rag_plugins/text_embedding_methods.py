"""Old import path of :class:`~rag_plugins.llamaindex.text_methods.ClientTextEmbeddingMethods` (kept working)."""

from __future__ import annotations

from rag_plugins.llamaindex.text_methods import ClientTextEmbeddingMethods

__all__ = ["ClientTextEmbeddingMethods"]
