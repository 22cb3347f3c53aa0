"""LlamaIndex adapters: every class here subclasses a LlamaIndex base class.

* :class:`LocalEmbedding` (``BaseEmbedding``) and :class:`LocalMultiModalEmbedding` (``MultiModalEmbedding``):
  text and image-space embeddings from a local embedding server.
* :class:`LocalRerank` (``BaseNodePostprocessor``): reranking with a local rerank server.
* :class:`MilvusFieldVectorStore` (``BasePydanticVectorStore``): a vector store over one vector field of
  :class:`~rag_plugins.milvus.MultiVectorMilvusStore`.
* :class:`HybridRetriever` (``BaseRetriever``): fused text + image-space search over that store.
* :class:`SearchServiceRetriever` (``BaseRetriever``): the same search through a ``rag-serve search`` server.

Importing this package needs the ``llamaindex`` extra; without it the import raises
:class:`~rag_plugins.errors.MissingExtraError` naming ``pip install 'rag-plugins[llamaindex]'``. The classes
are loaded lazily, so ``import rag_plugins.llamaindex`` stays cheap. The older paths
(``rag_plugins.embedding``, ``rag_plugins.rerank``, ``rag_plugins.multimodal``,
``rag_plugins.milvus.llamaindex_store``, ``rag_plugins.milvus.retriever``) re-export these classes.
"""

from __future__ import annotations

from rag_plugins.optional import lazy_attributes, require

require("llama_index.core", "llamaindex")

_LAZY = {
    "LocalEmbedding": "rag_plugins.llamaindex.embedding",
    "LocalMultiModalEmbedding": "rag_plugins.llamaindex.multimodal",
    "LocalRerank": "rag_plugins.llamaindex.rerank",
    "MilvusFieldVectorStore": "rag_plugins.llamaindex.milvus_store",
    "HybridRetriever": "rag_plugins.llamaindex.hybrid_retriever",
    "SearchServiceRetriever": "rag_plugins.llamaindex.search_retriever",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = sorted(_LAZY)
