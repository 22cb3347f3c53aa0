"""Async engines: the model behind an API a route (or a notebook, without HTTP) can await.

The model engines import torch, so they are imported on first use (``from servers.engines import
EmbeddingEngine``): the search engine (``servers.engines.search``) lives in this package without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "EngineBase": "servers.engines.base",
    "EmbeddingEngine": "servers.engines.embedding",
    "EmbeddingResult": "servers.engines.embedding",
    "RerankEngine": "servers.engines.rerank",
    "RerankResult": "servers.engines.rerank",
    "ScoreResult": "servers.engines.rerank",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EmbeddingEngine", "EmbeddingResult", "EngineBase", "RerankEngine", "RerankResult", "ScoreResult"]
