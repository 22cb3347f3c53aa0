"""What the routes need from an engine, as typing protocols (torch-free).

The engines in ``servers.engines`` import torch; the routes only import these protocols, so building the
app and its OpenAPI schema never loads a model library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rag_plugins.protocol import InputType, SearchRequest, SearchResponse
from servers.images import MultiModalInput
from servers.settings import ServerSettings

#: A rerank query or document: a text, or a text and/or image input for multimodal rerankers.
RerankItem = str | MultiModalInput


class EmbeddingOutput(Protocol):
    """Vectors of one request: float32 ``(n, dim)`` and the tokens the model read."""

    @property
    def vectors(self) -> np.ndarray: ...

    @property
    def prompt_tokens(self) -> int: ...


class ScoreOutput(Protocol):
    """Scores of pairs in pair order: after (``scores``) and before (``raw_scores``) the activation."""

    @property
    def scores(self) -> np.ndarray: ...

    @property
    def raw_scores(self) -> np.ndarray: ...

    @property
    def prompt_tokens(self) -> int: ...


class RerankOutput(ScoreOutput, Protocol):
    """Scores of one query's documents plus ``order``: indices best first, cut to ``top_n``."""

    @property
    def order(self) -> list[int]: ...


class Engine(Protocol):
    """Every engine: settings, readiness, ``/info`` fields, lifecycle."""

    kind: str
    settings: ServerSettings
    ready: bool

    def info(self) -> dict[str, Any]: ...

    def accelerating(self) -> bool:
        """Whether graphs or compiled code are still being built in the background."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class TextEmbedder(Engine, Protocol):
    """Engines that embed texts (``/embed``): the text and the multimodal embedding engines."""

    async def embed(
        self, texts: Sequence[str], *, input_type: InputType = "document", instruction: str | None = None,
        dimensions: int | None = None, normalize: bool = True, truncate: bool = True,
    ) -> EmbeddingOutput: ...


class TokenEmbedder(TextEmbedder, Protocol):
    """Text embedding engines that also take token-id arrays (``/v1/embeddings``)."""

    async def embed_token_ids(
        self, token_arrays: Sequence[Sequence[int]], *, dimensions: int | None = None, normalize: bool = True,
        truncate: bool = True,
    ) -> EmbeddingOutput: ...


class MultiModalEmbedder(TextEmbedder, Protocol):
    """Multimodal embedding engines (``/embed_image``, ``/v1/embeddings`` with image items)."""

    async def embed_images(
        self, images: Sequence[Any], texts: Sequence[str] | None = None, *, input_type: InputType = "document",
        instruction: str | None = None, dimensions: int | None = None, normalize: bool = True,
    ) -> EmbeddingOutput: ...

    async def embed_inputs(
        self, items: Sequence[MultiModalInput], *, input_type: InputType = "document",
        instruction: str | None = None, dimensions: int | None = None, normalize: bool = True,
        truncate: bool = True,
    ) -> EmbeddingOutput: ...


class Reranker(Engine, Protocol):
    """Rerank engines (``/rerank``, ``/v1/rerank``, ``/score``)."""

    @property
    def accepts_images(self) -> bool: ...

    async def rerank(
        self, query: RerankItem, docs: Sequence[RerankItem], *, instruction: str | None = None,
        top_n: int | None = None, truncate: bool = True,
    ) -> RerankOutput: ...

    async def score(
        self, pairs: Sequence[tuple[RerankItem, RerankItem]], *, instruction: str | None = None, truncate: bool = True
    ) -> ScoreOutput: ...


class Searcher(Engine, Protocol):
    """The search engine (``/search``): hybrid search through the upstream model servers."""

    async def search(self, request: SearchRequest) -> SearchResponse: ...
