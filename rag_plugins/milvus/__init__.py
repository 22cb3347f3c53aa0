"""Milvus multi-vector store (``text_vec`` + ``image_vec``) and hybrid retriever.

``MultiVectorMilvusStore`` needs the ``milvus`` extra; ``HybridRetriever`` and ``MilvusFieldVectorStore`` (a
LlamaIndex vector store over one vector field) also need ``llamaindex``.
Both are imported lazily so a missing extra is named when the class is first touched.
"""

from __future__ import annotations

from rag_plugins.optional import lazy_attributes

_LAZY = {
    "MultiVectorMilvusStore": "rag_plugins.milvus.store",
    "Hit": "rag_plugins.milvus.store",
    "MilvusStoreSettings": "rag_plugins.milvus.settings",
    "FieldIndexSettings": "rag_plugins.milvus.settings",
    "StoreItem": "rag_plugins.milvus.items",
    "Fusion": "rag_plugins.milvus.fusion",
    "HybridRetriever": "rag_plugins.milvus.retriever",
    "MilvusFieldVectorStore": "rag_plugins.milvus.llamaindex_store",
    "SearchService": "rag_plugins.milvus.search_service",
    "SearchRequest": "rag_plugins.milvus.search_service",
    "SearchResponse": "rag_plugins.milvus.search_service",
    "TextEmbedder": "rag_plugins.milvus.embedders",
    "ImageSpaceEmbedder": "rag_plugins.milvus.embedders",
    "DimensionMismatchError": "rag_plugins.milvus.errors",
    "CollectionNotFoundError": "rag_plugins.milvus.errors",
    "FusionConfigError": "rag_plugins.milvus.errors",
    "MilvusStoreError": "rag_plugins.milvus.errors",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted(_LAZY)
