"""Old import path of the LlamaIndex vector store adapter, now in :mod:`rag_plugins.llamaindex.milvus_store`."""

from __future__ import annotations

from rag_plugins.llamaindex.milvus_store import (
    SCALAR_FILTER_KEYS,
    MilvusFieldVectorStore,
    metadata_filters_to_expr,
)

__all__ = ["SCALAR_FILTER_KEYS", "MilvusFieldVectorStore", "metadata_filters_to_expr"]
