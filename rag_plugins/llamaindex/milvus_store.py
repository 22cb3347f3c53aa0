"""``MilvusFieldVectorStore``: a LlamaIndex vector store over ONE vector field of :class:`MultiVectorMilvusStore`.

The official ``llama-index-vector-stores-milvus`` pins ``pymilvus<3``; this adapter works on the collection of
:class:`~rag_plugins.milvus.store.MultiVectorMilvusStore` (pymilvus 3) instead. Two adapters over the same
store, one per field, give ``MultiModalVectorStoreIndex`` its text store and its image store in ONE Milvus
collection: text nodes get a ``text_vec`` (text model), image nodes an ``image_vec`` (image-space model).

Each adapter sees only the rows that hold a vector for its field (``has_text_vec`` / ``has_image_vec``), as if
the two were separate stores. A node added through both adapters (LlamaIndex adds an ``ImageNode`` that has
text to the text store too, under the same id) becomes one row with both vectors: adding through one adapter
keeps the vector the other adapter wrote. Deletes are row-level: a row is removed for both adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from llama_index.core.schema import BaseNode
from llama_index.core.storage.storage_context import StorageContext
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from pydantic import Field, PrivateAttr

from rag_plugins.llamaindex.milvus_nodes import item_from_node, node_from_hit
from rag_plugins.milvus.filters import and_exprs, in_expr, literal
from rag_plugins.milvus.items import key_for_id
from rag_plugins.milvus.store import HAS_FLAG, IMAGE_FIELD, TEXT_FIELD, Hit, MultiVectorMilvusStore

#: Metadata keys that live in scalar columns (filtered as ``key``); every other key is ``meta["key"]``.
SCALAR_FILTER_KEYS = ("doc_id", "chunk_id", "modality", "uri", "page", "caption")


def metadata_filters_to_expr(filters: MetadataFilters | None) -> str:
    """A Milvus expression for LlamaIndex ``MetadataFilters`` ("" = no filter).

    Supported: ``EQ`` and ``IN`` filters (``ExactMatchFilter`` is an ``EQ`` filter), joined with ``AND``,
    nested ``MetadataFilters`` with ``AND`` included. Keys in :data:`SCALAR_FILTER_KEYS` filter their scalar
    column; any other key filters ``meta["key"]``.

    Raises:
        NotImplementedError: another operator, or an ``OR`` / ``NOT`` condition.
    """
    if filters is None:
        return ""
    condition = filters.condition
    if condition is not None and condition != FilterCondition.AND:
        raise NotImplementedError(
            f"MilvusFieldVectorStore supports only AND-joined metadata filters, not {condition.value!r}; "
            f"pass a Milvus expression to MultiVectorMilvusStore.search_field for anything else"
        )
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(metadata_filters_to_expr(f))
            continue
        target = f.key if f.key in SCALAR_FILTER_KEYS else f"meta[{literal(f.key)}]"
        if f.operator == FilterOperator.EQ:
            parts.append(f"{target} == {literal(f.value)}")
        elif f.operator == FilterOperator.IN:
            if not isinstance(f.value, list):
                raise ValueError(f"filter {f.key!r}: the IN operator needs a list value, got {f.value!r}")
            parts.append(in_expr(target, f.value))
        else:
            raise NotImplementedError(
                f"filter {f.key!r}: MilvusFieldVectorStore supports the operators '==' (EQ) and 'in' (IN), "
                f"not {f.operator.value!r}"
            )
    return and_exprs(*parts)


class MilvusFieldVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store over one vector field (``text_vec`` or ``image_vec``) of a multi-vector store.

    Nodes carry their embeddings (LlamaIndex computes them); this class only stores and searches them.
    Scores are the field's similarity (cosine for ``COSINE``, inner product for ``IP``), higher is better.
    ``ImageNode`` objects with an ``image_path`` / ``image_url`` come back as ``ImageNode`` with the same path
    or URL; images given only as base64 are not stored (keep them in files).

    Args:
        store: The multi-vector store (its collection must exist; dims come from it).
        field: ``text_vec`` (text model) or ``image_vec`` (image-space model).

    Example:
        >>> store = MultiVectorMilvusStore(settings=MilvusStoreSettings(uri="./mm.db", text_dim=384,
        ...                                                             image_dim=1536))
        >>> storage = StorageContext.from_defaults(vector_store=MilvusFieldVectorStore(store, "text_vec"),
        ...                                        image_store=MilvusFieldVectorStore(store, "image_vec"))
        >>> index = MultiModalVectorStoreIndex(nodes, storage_context=storage, embed_model=LocalEmbedding(),
        ...                                    image_embed_model=LocalMultiModalEmbedding())
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False
    field: Literal["text_vec", "image_vec"] = Field(
        default="text_vec",
        description="Vector field this store reads and writes: text_vec (text model) or image_vec (image space).",
    )

    _store: MultiVectorMilvusStore = PrivateAttr()

    def __init__(self, store: MultiVectorMilvusStore, field: str = TEXT_FIELD, **kwargs: Any) -> None:
        # ``field`` is this subclass's pydantic field; the base class's typed __init__ does not list it.
        super().__init__(**{**kwargs, "field": field})
        self._store = store

    @classmethod
    def class_name(cls) -> str:
        return "MilvusFieldVectorStore"

    @classmethod
    def storage_context(cls, store: MultiVectorMilvusStore, **kwargs: Any) -> StorageContext:
        """A ``StorageContext`` whose text store is ``store``'s ``text_vec`` and image store its ``image_vec``.

        Args:
            store: The multi-vector store both adapters share.
            **kwargs: More ``StorageContext.from_defaults`` arguments (``docstore``, ``persist_dir``, ...).
        """
        return StorageContext.from_defaults(
            vector_store=cls(store, TEXT_FIELD), image_store=cls(store, IMAGE_FIELD), **kwargs
        )

    @property
    def client(self) -> Any:
        """The ``pymilvus.MilvusClient`` of the store."""
        return self._store.client

    @property
    def store(self) -> MultiVectorMilvusStore:
        """The multi-vector store behind this adapter."""
        return self._store

    @property
    def _other_field(self) -> str:
        return IMAGE_FIELD if self.field == TEXT_FIELD else TEXT_FIELD

    # -------------------------------------------------------------------------------------------- writes
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes with their embedding in this store's field (the row's other vector is kept).

        Returns:
            The node ids, in node order.

        Raises:
            ValueError: a node has no embedding.
            DimensionMismatchError: an embedding's dim differs from the field's.
        """
        if not nodes:
            return []
        items, vectors = [], []
        for node in nodes:
            if node.embedding is None:
                raise ValueError(
                    f"node {node.node_id!r} has no embedding: {self.class_name()} stores precomputed vectors; "
                    f"embed the nodes first (VectorStoreIndex / MultiModalVectorStoreIndex do)"
                )
            items.append(item_from_node(node))
            vectors.append(self._store.check_vector(self.field, node.get_embedding()))
        other = self._other_field
        existing = {
            str(row["id"]): row
            for row in self._store.get([item.key for item in items], output_fields=["id", other, HAS_FLAG[other]])
        }
        kept = [existing[item.key][other] if existing.get(item.key, {}).get(HAS_FLAG[other]) else None
                for item in items]
        if self.field == TEXT_FIELD:
            self._store.upsert_vectors(items, vectors, kept)
        else:
            self._store.upsert_vectors(items, kept, vectors)
        return [node.node_id for node in nodes]

    def _delete_where(self, expr: str) -> None:
        self._store.delete_where(and_exprs(f"{HAS_FLAG[self.field]} == true", expr))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the rows of document ``ref_doc_id`` (its ``doc_id`` column) that have this field's vector."""
        self._delete_where(f"doc_id == {literal(ref_doc_id)}")

    def delete_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        """Delete the rows with these node ids and/or matching ``filters`` that have this field's vector.

        Raises:
            ValueError: neither ``node_ids`` nor ``filters`` given (use :meth:`clear` to delete everything).
        """
        if node_ids is None and filters is None:
            raise ValueError("give node_ids and/or filters (clear() deletes every row of this field)")
        expr = and_exprs(in_expr("id", [key_for_id(n) for n in node_ids]) if node_ids is not None else "",
                         metadata_filters_to_expr(filters))
        self._delete_where(expr)

    def clear(self) -> None:
        """Delete every row that has this field's vector (rows holding both vectors go too)."""
        self._delete_where("")

    # --------------------------------------------------------------------------------------------- reads
    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Nodes (without embeddings) with these ids and/or matching ``filters``, among this field's rows."""
        expr = and_exprs(f"{HAS_FLAG[self.field]} == true",
                         in_expr("id", [key_for_id(n) for n in node_ids]) if node_ids is not None else "",
                         metadata_filters_to_expr(filters))
        return [node_from_hit(Hit(id=str(row["id"]), score=0.0, fields=row)) for row in self._store.query(expr)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Nearest rows of this field to ``query.query_embedding``.

        Honors ``similarity_top_k``, ``filters`` (see :func:`metadata_filters_to_expr`), ``doc_ids`` and
        ``node_ids``; an empty ``doc_ids`` / ``node_ids`` list means no restriction (``VectorStoreIndex``
        passes ``node_ids=[]`` for stores that keep text).

        Raises:
            ValueError: no ``query_embedding``.
            NotImplementedError: a query mode other than the default, or an unsupported filter.
        """
        if query.query_embedding is None:
            raise ValueError(f"{self.class_name()} needs query.query_embedding (an embedding query)")
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise NotImplementedError(f"{self.class_name()} supports only the default (dense) query mode, "
                                      f"not {query.mode.value!r}")
        expr = and_exprs(
            metadata_filters_to_expr(query.filters),
            in_expr("doc_id", list(query.doc_ids)) if query.doc_ids else "",
            in_expr("id", [key_for_id(n) for n in query.node_ids]) if query.node_ids else "",
        )
        hits = self._store.search_field(self.field, query.query_embedding, top_k=query.similarity_top_k,
                                        filters=expr or None)
        return VectorStoreQueryResult(nodes=[node_from_hit(h) for h in hits], similarities=[h.score for h in hits],
                                      ids=[h.id for h in hits])
