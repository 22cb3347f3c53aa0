"""Async engines: the model behind an API a route (or a notebook, without HTTP) can await.

The model engines import torch, so they are imported on first use (``from servers.engines import
EmbeddingEngine``): the search engine (``servers.engines.search``) lives in this package without loading torch.
"""

from __future__ import annotations

from rag_plugins.optional import lazy_attributes

_LAZY = {
    "EngineBase": "servers.engines.base",
    "EmbeddingEngine": "servers.engines.embedding",
    "EmbeddingResult": "servers.engines.embedding",
    "RerankEngine": "servers.engines.rerank",
    "RerankResult": "servers.engines.rerank",
    "ScoreResult": "servers.engines.rerank",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = ["EmbeddingEngine", "EmbeddingResult", "EngineBase", "RerankEngine", "RerankResult", "ScoreResult"]
