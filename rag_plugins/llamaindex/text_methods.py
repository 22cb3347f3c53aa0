"""``ClientTextEmbeddingMethods``: the LlamaIndex text/query embedding methods, answered by a client.

``LocalEmbedding`` and ``LocalMultiModalEmbedding`` both embed text through a client with
``embed(texts, input_type)`` / ``aembed(texts, input_type)`` returning (n, dim) arrays; this mixin maps the
six ``BaseEmbedding`` hooks onto it (queries as ``input_type="query"``, everything else as documents).
"""

from __future__ import annotations

from typing import Any


class ClientTextEmbeddingMethods:
    """Mixin for ``BaseEmbedding`` subclasses whose ``_client`` has ``embed`` / ``aembed``."""

    _client: Any

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._client.embed([query], "query")[0].tolist()  # type: ignore[no-any-return]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._client.aembed([query], "query"))[0].tolist()  # type: ignore[no-any-return]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._client.embed([text], "document")[0].tolist()  # type: ignore[no-any-return]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._client.aembed([text], "document"))[0].tolist()  # type: ignore[no-any-return]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._client.embed(texts, "document").tolist()  # type: ignore[no-any-return]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return (await self._client.aembed(texts, "document")).tolist()  # type: ignore[no-any-return]
