"""Async engines: the model behind an API a route (or a notebook, without HTTP) can await."""

from __future__ import annotations

from servers.engines.base import EngineBase
from servers.engines.embedding import EmbeddingEngine, EmbeddingResult
from servers.engines.rerank import RerankEngine, RerankResult, ScoreResult

__all__ = ["EmbeddingEngine", "EmbeddingResult", "EngineBase", "RerankEngine", "RerankResult", "ScoreResult"]
