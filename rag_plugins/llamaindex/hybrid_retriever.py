"""``HybridRetriever``: LlamaIndex retriever over :class:`MultiVectorMilvusStore` (text + image-space)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from rag_plugins.http import run_sync
from rag_plugins.llamaindex.milvus_nodes import node_from_hit
from rag_plugins.milvus.filters import Filter
from rag_plugins.milvus.fusion import DEFAULT_RRF_K, Fusion
from rag_plugins.milvus.store import MultiVectorMilvusStore


class HybridRetriever(BaseRetriever):
    """Search ``text_vec`` and ``image_vec`` together and fuse (RRF or weighted), then optionally rerank.

    The query is embedded by the store's text embedder (``input_type="query"``) and, when the store has one,
    by its image-space embedder (text into the image space), concurrently. Returns ``NodeWithScore`` of
    ``TextNode`` / ``ImageNode``, so it plugs into ``RetrieverQueryEngine``.

    Args:
        store: The multi-vector store.
        top_k: Hits returned (before the rerank stage).
        fusion: ``"rrf"`` or ``"weighted"``.
        rrf_k: RRF ``k``.
        weights: ``(alpha, 1 - alpha)`` for text_vec / image_vec in weighted fusion; must sum to 1.
        text_limit: Candidates from ``text_vec`` (default ``top_k``).
        image_limit: Candidates from ``image_vec`` (default ``top_k``).
        filters: Scalar filter (Milvus expression or ``{field: value | [values]}``).
        reranker: Optional LlamaIndex postprocessor (e.g. ``LocalRerank``) applied to the fused hits.
        use_text: Search ``text_vec``.
        use_image: Search ``image_vec`` (needs an image-space embedder for text queries).
        callback_manager: LlamaIndex callback manager.

    Raises:
        FusionConfigError: unknown fusion, weights not summing to 1, invalid ``rrf_k``.

    Example:
        >>> retriever = HybridRetriever(store, top_k=20, fusion="rrf", reranker=LocalRerank(top_n=5))
        >>> engine = RetrieverQueryEngine.from_args(retriever)
    """

    def __init__(
        self,
        store: MultiVectorMilvusStore,
        *,
        top_k: int = 10,
        fusion: str = "rrf",
        rrf_k: int = DEFAULT_RRF_K,
        weights: tuple[float, float] = (0.5, 0.5),
        text_limit: int | None = None,
        image_limit: int | None = None,
        filters: Filter = None,
        reranker: BaseNodePostprocessor | None = None,
        use_text: bool = True,
        use_image: bool = True,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        self.fusion = Fusion(name=fusion, rrf_k=rrf_k, weights=tuple(weights))  # type: ignore[arg-type]
        self.store = store
        self.top_k = top_k
        self.text_limit = text_limit
        self.image_limit = image_limit
        self.filters = filters
        self.reranker = reranker
        self.use_text = use_text and store.text_embedder is not None
        self.use_image = use_image and store.image_embedder is not None
        if not (self.use_text or self.use_image):
            raise ValueError("the store has no embedder for the fields to search; pass text_embedder/image_embedder")
        super().__init__(callback_manager=callback_manager)

    # --------------------------------------------------------------------------------------- embedding
    async def aembed_query(self, query: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The query's ``text_vec`` and image-space vector (None for a field not searched), concurrently."""

        async def nothing() -> None:
            return None

        text_job = (self.store.text_embedder.aembed([query], "query")
                    if self.use_text and self.store.text_embedder is not None else nothing())
        image_job = (self.store.image_embedder.aembed([query], "query")
                     if self.use_image and self.store.image_embedder is not None else nothing())
        text_out, image_out = await asyncio.gather(text_job, image_job)
        return (None if text_out is None else np.asarray(text_out)[0],
                None if image_out is None else np.asarray(image_out)[0])

    # ------------------------------------------------------------------------------------------ search
    def _search(
        self, text_vec: np.ndarray | None, image_vec: np.ndarray | None, overrides: dict[str, Any]
    ) -> list[NodeWithScore]:
        fusion = self.fusion.with_overrides(overrides.get("fusion"), overrides.get("rrf_k"), overrides.get("weights"))
        hits = self.store.search(
            text_vec, image_vec, fusion=fusion, top_k=overrides.get("top_k") or self.top_k,
            text_limit=overrides.get("text_limit") or self.text_limit,
            image_limit=overrides.get("image_limit") or self.image_limit,
            filters=overrides.get("filters", self.filters),
        )
        return [NodeWithScore(node=node_from_hit(h), score=h.score) for h in hits]

    @staticmethod
    def _overrides(**kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if v is not None}

    def retrieve_with(
        self, query: str | QueryBundle, *, fusion: str | None = None, rrf_k: int | None = None,
        weights: tuple[float, float] | None = None, top_k: int | None = None, text_limit: int | None = None,
        image_limit: int | None = None, filters: Filter = None, rerank: bool = True,
    ) -> list[NodeWithScore]:
        """:meth:`retrieve` with per-query overrides of fusion, k, weights, limits and filters."""
        # The async path on the clients' shared background loop (works inside Jupyter too).
        return run_sync(self.aretrieve_with(
            query, fusion=fusion, rrf_k=rrf_k, weights=weights, top_k=top_k, text_limit=text_limit,
            image_limit=image_limit, filters=filters, rerank=rerank,
        ))

    async def aretrieve_with(
        self, query: str | QueryBundle, *, fusion: str | None = None, rrf_k: int | None = None,
        weights: tuple[float, float] | None = None, top_k: int | None = None, text_limit: int | None = None,
        image_limit: int | None = None, filters: Filter = None, rerank: bool = True,
    ) -> list[NodeWithScore]:
        """Per-query overrides of fusion, k, weights, limits and filters (async)."""
        bundle = query if isinstance(query, QueryBundle) else QueryBundle(query_str=query)
        overrides = self._overrides(fusion=fusion, rrf_k=rrf_k, weights=weights, top_k=top_k,
                                    text_limit=text_limit, image_limit=image_limit, filters=filters)
        text_vec, image_vec = await self.aembed_query(bundle.query_str)
        nodes = await asyncio.to_thread(self._search, text_vec, image_vec, overrides)
        if rerank and self.reranker is not None:
            nodes = await self.reranker.apostprocess_nodes(nodes, query_bundle=bundle)
        return nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.retrieve_with(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await self.aretrieve_with(query_bundle)
