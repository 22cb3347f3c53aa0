"""Old import path of :class:`~rag_plugins.llamaindex.multimodal.LocalMultiModalEmbedding` (kept working)."""

from __future__ import annotations

from rag_plugins.llamaindex.multimodal import LocalMultiModalEmbedding

__all__ = ["LocalMultiModalEmbedding"]
