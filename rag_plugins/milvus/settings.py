"""Settings of :class:`~rag_plugins.milvus.store.MultiVectorMilvusStore`: connection, schema, indexes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

IndexType = Literal["HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX"]
Metric = Literal["COSINE", "IP"]

#: Build parameters used when none are given (Milvus' own usual defaults).
DEFAULT_BUILD_PARAMS: dict[str, dict[str, Any]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 128},
    "FLAT": {},
    "AUTOINDEX": {},
}
#: Search parameters used when none are given.
DEFAULT_SEARCH_PARAMS: dict[str, dict[str, Any]] = {
    "HNSW": {"ef": 128},
    "IVF_FLAT": {"nprobe": 16},
    "FLAT": {},
    "AUTOINDEX": {},
}


@dataclass(frozen=True)
class FieldIndexSettings:
    """Index of one vector field.

    Attributes:
        index_type: ``HNSW`` (default), ``IVF_FLAT``, ``FLAT`` (exact) or ``AUTOINDEX`` (Zilliz/Milvus picks).
        metric: ``COSINE`` (default; any vectors) or ``IP`` (equal to cosine for L2-normalized vectors, which
            is what rag-serve returns).
        build_params: Index build parameters (None: :data:`DEFAULT_BUILD_PARAMS`).
        search_params: Search parameters (None: :data:`DEFAULT_SEARCH_PARAMS`).
    """

    index_type: IndexType = "HNSW"
    metric: Metric = "COSINE"
    build_params: dict[str, Any] | None = None
    search_params: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.index_type not in DEFAULT_BUILD_PARAMS:
            raise ValueError(f"index_type must be one of {sorted(DEFAULT_BUILD_PARAMS)}, not {self.index_type!r}")
        if self.metric not in ("COSINE", "IP"):
            raise ValueError(f"metric must be 'COSINE' or 'IP', not {self.metric!r}")

    def build(self) -> dict[str, Any]:
        """Build parameters to send."""
        return dict(DEFAULT_BUILD_PARAMS[self.index_type] if self.build_params is None else self.build_params)

    def search(self) -> dict[str, Any]:
        """``param`` of a search request on this field: metric plus search parameters."""
        params = DEFAULT_SEARCH_PARAMS[self.index_type] if self.search_params is None else self.search_params
        return {"metric_type": self.metric, "params": dict(params)}


@dataclass(frozen=True)
class MilvusStoreSettings:
    """Where the collection lives and how it is laid out.

    Attributes:
        uri: ``./file.db`` (Milvus Lite, in process; the default) or ``http://host:19530`` (Milvus Lite gRPC
            server, Milvus standalone/cluster, Zilliz), passed to ``MilvusClient`` unchanged.
        token: ``user:password`` or an API key, for servers that want one.
        db_name: Database on a Milvus server ("" = the server default).
        collection_name: Collection to use (created on first use unless the store is opened with
            ``create=False``).
        text_dim: ``text_vec`` size; None = the text embedder's ``info()["dim"]``.
        image_dim: ``image_vec`` size; None = the image-space embedder's ``info()["dim"]``.
        text_index: Index of ``text_vec``.
        image_index: Index of ``image_vec``.
        batch_size: Items embedded and upserted per batch.
        embed_text_into_image_space: Give text-only items an ``image_vec`` from the multimodal model's text
            side (the seed plan), so text chunks are found by image-space queries too.
        max_varchar_bytes: Max UTF-8 bytes of ``text``/``caption`` (Milvus' VARCHAR limit is 65,535).
        consistency_level: Milvus consistency; ``Strong`` so a search sees every finished upsert.
        local_search: Answer ``search`` / ``search_field`` from an exact in-process copy of the vectors
            (:mod:`rag_plugins.milvus.local_index`): None (default) = only for embedded file URIs, where
            milvus-lite 3.x's pure-Python search path costs O(rows) per query; False = always ask Milvus;
            True = also for a server URI (only safe when this process is the only writer).
    """

    uri: str = "./milvus_rag.db"
    token: str = ""
    db_name: str = ""
    collection_name: str = "rag_multivector"
    text_dim: int | None = None
    image_dim: int | None = None
    text_index: FieldIndexSettings = field(default_factory=FieldIndexSettings)
    image_index: FieldIndexSettings = field(default_factory=FieldIndexSettings)
    batch_size: int = 64
    embed_text_into_image_space: bool = True
    max_varchar_bytes: int = 65_535
    consistency_level: str = "Strong"
    local_search: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        for name in ("text_dim", "image_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1")
